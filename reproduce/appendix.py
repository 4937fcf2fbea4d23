"""Appendix C baselines. Table 2: multi-task parameter averaging on the sinusoid, beside the
pretrained and MAML rows of `make sinusoid` (reused, not trained again). Tables 3-5: the context
vector against MAML (trained by the campaign; evaluated here or by reproduce.rl).

    python -m reproduce.appendix table2          # make appendix-table2
    python -m reproduce.appendix context-pilot   # the context vector's size, from the pilot runs
    python -m reproduce.appendix context         # Tables 3, 4, 5 -> results/appendix/context.md
    python -m reproduce.appendix context --tables 4   # make appendix-table4

`context` evaluates the context-vector runs of the tables it is given (default all) that have a
checkpoint: Table 3's here, with the protocol of Table 1, Tables 4 and 5's through `reproduce.rl
ENV --methods context --eval-only`. With --train it first trains (or resumes) them to their budget
(hours: the campaign trains them a few at a time); with --report-only it evaluates nothing. A table
not given keeps its committed rows (Table 3) or reads results/rl/ENV.json as written (Tables 4, 5).

For each variant (no regularisation, weight decay, toward the running mean) the strength is
chosen on a pilot set of training tasks (the largest of the config's grid at which every pilot
regressor reaches the target), 500 regressors are trained (maml_tf/multitask.py) and averaged, and
the average is fine-tuned on K = 5 points of the 600 fixed test tasks with a step size tuned on
training tasks. Output: results/appendix/table2.{md,json}; the averaged parameters and how they
were trained in results/appendix/multitask/<variant>.{npz,json} (a variant trained with the same
settings is not trained again).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

from maml_tf import config as config_lib
from maml_tf import records
from maml_tf.runs import TrainingError, read_jsonl   # read_jsonl: a line cut by a kill is skipped
from reproduce import common
from reproduce import rl as rl_repro
from reproduce import sinusoid

# imported on first use: --help answers without TensorFlow
evaluate, maml, multitask, nets = (common.lazy(f"maml_tf.{m}") for m in ("evaluate", "maml", "multitask", "nets"))

CONFIG = common.CONFIGS / "appendix" / "multitask_sinusoid.yaml"
VARIANTS = {"none": "multi-task, no regularisation", "l2": "multi-task, l2 regularisation (weight decay)",
            "mean": "multi-task, regularisation to the mean theta"}
PAPER = {"none": [4.19, 3.85, 3.69], "l2": [7.18, 5.69, 5.60], "mean": [2.91, 2.72, 2.71],
         "pretrained": [2.41, 2.23, 2.19], "maml": [0.67, 0.38, 0.35]}
STEPS = (1, 5, 10)


def load_config(path: Path = CONFIG) -> dict:
    raw = config_lib.yaml_load(path.read_text())
    allowed = {"seed": int, "pilot_seed": int, "pilot_regressors": int, "strengths": dict, "settings": dict}
    config_lib._check_keys("appendix", raw, allowed)
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in (raw.get("settings") or {}).items()}
    settings = config_lib._dataclass(multitask.Settings, "settings", given)
    return {**raw, "settings": settings}


def choose_strength(cfg: dict, reg: str, log) -> tuple[float, dict]:
    """The largest strength of the grid at which the pilot regressors reach the target as often as
    without regularisation (even then a few of them miss it within the step budget), by bisection
    over the sorted grid (a stronger penalty only makes the target harder to reach). A pilot gives
    up once a regressor has needed more than two new initialisations."""
    s = dataclasses.replace(cfg["settings"], chunks=2, max_restarts=2)  # "running mean": its first half
    grid, tried = sorted(cfg["strengths"][reg]), {}

    def pilot(kind: str, strength: float) -> int:
        r = multitask.train_regressors(s, kind, strength, cfg["pilot_seed"], n=cfg["pilot_regressors"])
        tried[f"{kind} {strength:g}"] = {"reached": r["reached"], "of": r["n"], "restarts": r["restarts"],
                                        "seconds": r["seconds"]}
        log(f"  pilot {kind} strength {strength:g}: {r['reached']} of {r['n']} reach MSE < {s.target}")
        return r["reached"]

    free = pilot("none", 0.0)
    lo, hi = -1, len(grid)  # grid[lo] passes (lo = -1: none known), grid[hi] fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pilot(reg, grid[mid]) >= free:
            lo = mid
        else:
            hi = mid
    if lo < 0:
        raise config_lib.ConfigError(
            f"no strength of {grid} lets the pilot regressors of {reg} reach the target as often as "
            f"without regularisation ({free} of {cfg['pilot_regressors']}): add smaller ones to {CONFIG}")
    return grid[lo], tried


def train_variant(cfg: dict, reg: str, out: Path, log) -> dict:
    """The averaged parameters of a variant (trained, or read back when the same settings trained them)."""
    npz, meta_path = out / f"{reg}.npz", out / f"{reg}.json"
    key = {"settings": dataclasses.asdict(cfg["settings"]), "seed": cfg["seed"],
           "strengths": cfg["strengths"].get(reg), "pilot_seed": cfg["pilot_seed"],
           "pilot_regressors": cfg["pilot_regressors"]}
    if npz.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["key"] == json.loads(json.dumps(key)):
            with np.load(npz) as z:
                return {"average": {k: z[k] for k in z.files}, **meta}
    log(f"== {VARIANTS[reg]}")
    strength, pilot = (0.0, {}) if reg == "none" else choose_strength(cfg, reg, log)
    r = multitask.train_regressors(cfg["settings"], reg, strength, cfg["seed"], log=log)
    meta = {"key": key, "strength": strength, "pilot": pilot,
            **{k: v for k, v in r.items() if k != "average"},
            "commit": records.commit(), "machine": records.machine(), "written": records.now()}
    out.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_suffix(".tmp.npz")
    np.savez(tmp, **r["average"])
    tmp.replace(npz)
    records.write_json(meta_path, meta)
    return {"average": r["average"], **meta}


def evaluate_average(average: dict) -> dict:
    """5-shot MSE of the fine-tuned average on the sinusoid test tasks (the sinusoid protocol)."""
    cfg = common.load("sinusoid/pretrained")
    model = nets.build(cfg.model)
    params = {k: np.asarray(v, np.float32) for k, v in average.items()}
    alpha, search = sinusoid.finetune_alpha(model, params, cfg, 5)
    r = evaluate.evaluate(model, params, sinusoid.task_source(cfg, 5), maml.mse, maml.mse, cfg.eval.steps,
                          alpha, n_tasks=cfg.eval.tasks, seed=cfg.eval.seed)
    return {"mse": [float(x) for x in r["mean"]], "ci95": [float(x) for x in r["ci95"]], "alpha": alpha,
            "alpha_search": {str(a): v for a, v in search.items()}}


def table2_markdown(t: dict) -> str:
    lines = ["# Appendix C, Table 2: multi-task parameter averaging (sinusoid, K = 5)", "",
             "Generated by `make appendix-table2` (`python -m reproduce.appendix table2`); do not edit by hand. "
             f"Commit {t['commit']}.", "",
             "MSE on the 600 fixed test tasks of the sinusoid experiment after 1 / 5 / 10 fine-tuning steps "
             "on K = 5 points (mean ± 95% CI), step size tuned on training tasks. The pretrained and MAML "
             "rows are those of `make sinusoid` (results/sinusoid/summary.json).", "",
             "| method | strength | regressors at MSE < 0.02 | step | 1 step | 5 steps | 10 steps | paper (1 / 5 / 10) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in t["rows"].items():
        cells = [f"{row['mse'][k]:.2f} ± {row['ci95'][k]:.2f}" for k in STEPS]
        lines.append(f"| {row['label']} | {row.get('strength', '-')} | {row.get('reached', '-')} | {row['alpha']} | "
                     + " | ".join(cells) + f" | {' / '.join(str(v) for v in PAPER[name])} |")
    lines += [""] + [f"- {f}" for f in t["findings"]] + [""]
    return "\n".join(lines)


def findings(rows: dict, variants: dict) -> list[str]:
    out = []
    pre = rows.get("pretrained")
    for reg, label in VARIANTS.items():
        if reg not in rows:
            continue
        r, v = rows[reg], variants[reg]
        how = ("no penalty" if reg == "none" else
               f"strength {v['strength']:g}, the largest of {v['key']['strengths']} at which the "
               f"{v['key']['pilot_regressors']} pilot regressors (other training tasks) reached MSE < 0.02 "
               f"as often as without regularisation")
        text = (f"{label}: {how}; {v['reached']} of {v['n']} regressors reached the target (median "
                f"{v['median_steps']:.0f} Adam steps, {v['restarts']} restarts from a new initialisation)")
        if pre:
            worse = all(r["mse"][k] - r["ci95"][k] > pre["mse"][k] + pre["ci95"][k] for k in STEPS)
            better = all(r["mse"][k] + r["ci95"][k] < pre["mse"][k] - pre["ci95"][k] for k in STEPS)
            text += ("; worse than the pretrained network beyond both CIs at 1, 5 and 10 steps, as in the paper"
                     if worse else "; better than the pretrained network beyond both CIs" if better
                     else "; within the CIs of the pretrained network at some step")
        out.append(text + ".")
    out.append("Why averaging does badly: the regressors' parameters lie in different basins (ReLU units "
               "can be permuted), so their average is not itself a good regressor of anything; it is close "
               "to the network that predicts the mean function (about 0) — the fine-tuning then starts from "
               "worse than the pretrained network, which was trained for exactly that mean.")
    return out


def table2(args) -> int:
    cfg = load_config()
    out_dir = args.results / "appendix"
    log = lambda m: print(m, file=sys.stderr, flush=True)
    summary_path = args.results / "sinusoid" / "summary.json"
    rows, variants = {}, {}
    for reg in VARIANTS:
        variants[reg] = train_variant(cfg, reg, out_dir / "multitask", log)
        rows[reg] = {"label": VARIANTS[reg], "strength": f"{variants[reg]['strength']:g}",
                     "reached": f"{variants[reg]['reached']} / {variants[reg]['n']}",
                     **evaluate_average(variants[reg]["average"])}
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        for name, label in (("pretrained", "pretrain on all tasks"), ("maml", "MAML")):
            m = s["metrics"][name]["K5"]
            rows[name] = {"label": label, "mse": m["mse"], "ci95": m["ci95"], "alpha": m["alpha"],
                          "source": "results/sinusoid/summary.json", "status": s["runs"][name]["status"]}
    path = out_dir / "table2.json"
    old = json.loads(path.read_text()) if path.exists() else None
    metrics = {k: {"mse": [round(x, 4) for x in r["mse"]], "ci95": [round(x, 4) for x in r["ci95"]]}
               for k, r in rows.items()}
    if old and old.get("metrics") == metrics and (out_dir / "table2.md").exists():  # nothing changed
        print(Path(out_dir / "table2.md").read_text())
        return 0
    t = {"experiment": "appendix/table2", "config": {k: (dataclasses.asdict(v) if k == "settings" else v)
                                                       for k, v in cfg.items()},
         "commit": records.commit(), "seed": cfg["seed"], "machine": records.machine(), "written": records.now(),
         "wall_time_s": round(sum(v["seconds"] for v in variants.values()), 1), "status": "full",
         "training": {k: {kk: vv for kk, vv in v.items() if kk != "average"} for k, v in variants.items()},
         "metrics": metrics, "rows": rows, "paper": PAPER}
    t["findings"] = findings(rows, variants)
    records.write_json(path, t)
    (out_dir / "table2.md").write_text(table2_markdown(t))
    print(table2_markdown(t))
    return 0


# ----------------------------------------------------------------------------- context vector

CONTEXT_PAPER = {"table3": {1: (94.9, 0.9), 5: (97.7, 0.3)},
                 "point": [-42.42, -13.90, -5.17, -3.18], "cheetah_dir": [-40.49, -44.08, -38.27, -42.50]}


def _score(run_dir: Path) -> tuple[float | None, str]:
    """A pilot's score: the best meta-validation accuracy (classification) or the mean
    post-update training return of its last 5 iterations (RL)."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    vals = [(r["val_accuracy"], r["step"]) for r in rows if "val_accuracy" in r]
    if vals:
        best = max(vals)
        return 100 * best[0], f"best meta-validation accuracy {100 * best[0]:.1f}% (iteration {best[1]})"
    last = [r for r in rows if "post_return" in r][-5:]
    if last:
        ret = np.mean([r["post_return"] for r in last])
        gain = np.mean([r["post_return"] - r["pre_return"] for r in last])
        return float(ret), (f"post-update training return {ret:.1f} (mean of the last {len(last)} iterations; "
                            f"post minus pre-update {gain:+.1f})")
    return None, "not trained yet"


def _val_curve(run_dir: Path) -> list:
    """[[iteration, meta-validation accuracy %], ...] of a classification run (empty for RL)."""
    return [[r["step"], round(100 * r["val_accuracy"], 2)] for r in read_jsonl(run_dir / "metrics.jsonl")
            if "val_accuracy" in r]


def batch_norm_note(tested: bool = False) -> str:
    """How z meets the conv net's batch norm, measured (maml_tf.context.reach_through_batch_norm), to
    one decimal: float32 on another processor must not change the text (0.225 sits on a boundary)."""
    from maml_tf import context
    r = context.reach_through_batch_norm(z_dim=8)
    return ("- How the context vector reaches the conv net: concatenated channel-wise, z adds one constant "
            "per channel to the first convolution's output at every pixel whose window lies inside the image "
            f"(exactly, to float32 rounding; mean |shift| {r['before_norm']:.1f}), "
            "and the batch norm of the official network (the task's own statistics, no moving averages) "
            "subtracts such a constant. What is left in the interior comes through the per-channel statistics, "
            "which the last row and column (whose windows reach into the zero padding) move: changing z "
            f"(8 entries) from zero to a normal(0, 1) draw moves the first block's output by {r['border']:.1f} "
            f"on average there and by {r['interior']:.1f} in the interior (mean |activation| "
            f"{r['activation']:.1f}; the initial network, `context.reach_through_batch_norm`). So z adapts the "
            "net only through a per-channel rescaling and the border, a possible reason for the pilots' low "
            f"accuracy{' that the diagnostic pilot below tests' if tested else ' that we have not tested'}. "
            "The paper does not say how its context vector met batch norm; "
            "we keep the network of the MAML row, as Appendix C states.")


def input_weight_std(config: str, z_dim: int, sets=()) -> float:
    """The std of the context model's first-layer weights on the input itself (not z's rows) at
    initialisation: with model.init widened, z's entries count in that layer's fan-in (Glorot
    uniform, as the base net's); with base, it is the base network's whatever z_dim is."""
    from maml_tf import nets, rl
    cfg = common.load(config, sets=[*(s for s in sets if not s.startswith("model.z_dim=")), f"model.z_dim={z_dim}"])
    model = rl.build_model(cfg) if isinstance(cfg, config_lib.RLConfig) else nets.build(cfg.model)
    w = model.init(cfg.seed)
    w = (w["conv1"] if "conv1" in w else w["w1"]).numpy()
    return float(w[..., :w.shape[-2] - z_dim, :].std())


# which configs take their z_dim from which pilot setting (tests/test_committed.py checks them
# against results/appendix/context_pilot.json)
PILOT_DECIDES = {"omniglot_5w1s_base": ("omniglot/conv_5w1s_context", "omniglot/conv_5w5s_context"),
                 "point": ("rl/point/context",),
                 "cheetah_dir_base": ("rl/cheetah_dir/context",)}


# pilot settings that choose nothing: each tests a why against the setting it varies (campaign.QUEUE
# says what each changes): that setting, what the diagnostic is, and what a best score above,
# within or below the other's (by the margin of evaluation noise) says
DIAGNOSTICS = {"omniglot_5w1s_after_norm": (
    "omniglot_5w1s_base",
    "z's shift added after the first batch norm (`model.join: after_norm`, its own z_dim x filters matrix) "
    "instead of z joining the input, to test whether batch norm, which subtracts the shift, holds the Omniglot "
    "pilots back",
    {"above": "Passed around batch norm, z adapts the net better: batch norm's subtraction is at least part of "
              "what holds the pilots back.",
     "within": "Passed around batch norm, z does no better at this budget: batch norm's subtraction is not what "
               "holds the pilots back (one training seed each).",
     "below": "Passed around batch norm, z trained worse at this budget, which does not settle whether batch "
              "norm holds the pilots back (one training seed each)."})}


# a diagnostic trained beyond the pilots it varies is compared with the run of its settings but for
# what it varies (the Table 3 run: z joining the input), at the iterations both validated
DIAGNOSTIC_REFERENCE_RUNS = {"omniglot_5w1s_after_norm": "omniglot/conv_5w1s_context"}


def _curve(c: dict) -> str:
    return " / ".join(f"{a:.1f}" for _, a in c.get("curve", [])) + "% at iterations " + \
        " / ".join(str(s) for s, _ in c.get("curve", []))


def _diagnostic_line(name: str, z, what: str, verdicts: dict, c: dict, ref: dict, against: str) -> str:
    """One diagnostic against its reference (a pilot, or the run of DIAGNOSTIC_REFERENCE_RUNS), by
    their best meta-validation accuracies (`score`) and the margin of evaluation noise."""
    cfgs = [common.load(r["config"], sets=r.get("sets", [])) for r in (c, ref)]
    n, n_ref = (cfg.train.val_tasks for cfg in cfgs)
    if n != n_ref:
        raise ValueError(f"{name} and {against} validate on {n} and {n_ref} tasks: not comparable")
    p, q = c["score"] / 100, ref["score"] / 100
    margin = 196 * math.sqrt((p * (1 - p) + q * (1 - q)) / n)
    diff = c["score"] - ref["score"]
    side = "above" if diff > margin else "below" if diff < -margin else "within"
    return (f"- Diagnostic (not the paper's model), {name}: z_dim {z}, {what}. Meta-validation accuracy "
            f"{_curve(c)}, against {_curve(ref)} for {against}; chance {100 / cfgs[0].task['way']:.0f}%). Best "
            f"{diff:+.1f} points; evaluation noise alone allows ±{margin:.1f} (1.96 standard errors over {n} tasks). "
            f"{verdicts[side]}")


def diagnostic_lines(settings: dict) -> list[str]:
    """What each diagnostic pilot found, against the same z_dim of the setting it varies: both
    meta-validation curves, the difference of their best accuracies, and whether it exceeds 1.96
    standard errors of a difference of two accuracies over the meta-validation tasks (each task
    one trial, wider than the queries' own spread). That margin is evaluation noise only: one
    training seed each, the best of a few checkpoints, the same validation tasks."""
    lines = []
    for name, (against, what, verdicts) in DIAGNOSTICS.items():
        for z, c in sorted(settings.get(name, {}).get("candidates", {}).items()):
            if c["score"] is None or c["iterations"] < c["budget"]:
                continue
            ref = settings.get(against, {}).get("candidates", {}).get(z)
            if ref and ref["score"] is not None and ref["iterations"] >= ref["budget"] == c["budget"]:
                lines.append(_diagnostic_line(name, z, what, verdicts, c, ref,
                                              f"{against} (the same z_dim, budget and validation tasks"))
                continue
            run = settings[name].get("reference_run")
            if not run or str(run["z_dim"]) != str(z) or run["iterations"] < c["budget"]:
                continue
            # at the iterations both validated, up to the diagnostic's budget
            shared = sorted({s for s, _ in c["curve"]} & {s for s, _ in run["curve"]})
            if not shared:
                continue
            cut = lambda curve: [[s, a] for s, a in curve if s in shared]  # noqa: E731
            mine, theirs = cut(c["curve"]), cut(run["curve"])
            lines.append(_diagnostic_line(
                name, z, what, verdicts, {**c, "curve": mine, "score": max(a for _, a in mine)},
                {"config": run["config"], "curve": theirs, "score": max(a for _, a in theirs)},
                f"the Table 3 run {run['config']} (the same settings and validation tasks but z joining the input; "
                f"the best of the iterations both validated, to {c['budget']}"))
    return lines


# An explanation of the Omniglot pilots' low accuracy that the pilots cannot test themselves: an
# inner step on z (8 numbers moved by one step of the MAML row's size) of the wrong size. The chosen
# pilot, restored at its best checkpoint, adapts the meta-validation tasks of its score with the
# config's inner step times each scale (1: the config's own), for 1..steps steps. At test time only:
# the pilot was meta-trained with the config's step. (setting, scales, steps)
INNER_STEP_CHECK = ("omniglot_5w1s_base", (0.25, 1, 2.5, 10, 40), 5)


def inner_step_check(settings: dict, results: Path, previous: dict | None) -> dict | None:
    """The accuracy by step for each inner-step scale of INNER_STEP_CHECK on the chosen pilot's best
    checkpoint, and after one step the paired 95% margin of each scale's difference to the config's
    step (the same tasks); computed once per checkpoint (`previous`, the last record's, is reused
    when it is of the same pilot, checkpoint, tasks and grid). None before the pilots have chosen,
    without the data, or for a run that learns its step sizes."""
    setting, scales, steps = INNER_STEP_CHECK
    z = settings.get(setting, {}).get("chosen_z_dim")
    if z is None:
        return None
    import yaml
    run_dir = results / "appendix" / "context_pilot" / f"{setting}_z{z}"
    best = json.loads((run_dir / "best.json").read_text())
    cfg = config_lib.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    t = cfg.train
    key = {"setting": setting, "z_dim": z, "checkpoint": best["step"], "score": best["value"],
           "tasks": t.val_tasks, "val_seed": t.val_seed, "scales": list(scales), "steps": steps}
    if previous and all(previous.get(k) == v for k, v in key.items()):
        return previous
    from maml_tf import evaluate, supervised, tasks, train
    try:
        source = supervised.task_source(cfg, "val")
    except tasks.MissingData as e:
        print(f"appendix: the inner-step check needs the Omniglot data ({e}); left out", file=sys.stderr)
        return None
    learner, _ = train.restore(cfg, run_dir, "best")
    alpha = supervised.step_size(learner)
    if not isinstance(alpha, (int, float)):
        print("appendix: the inner-step check scales one fixed step size; this run learns its own", file=sys.stderr)
        return None
    per_task = {scale: 100 * np.asarray(supervised.validation_by_step(learner, cfg, source, steps, alpha * scale)
                                        ["per_task"], np.float64) for scale in scales}
    return {**key, "inner_lr": float(alpha),
            "accuracy": {str(s): [round(float(m), 2) for m in a.mean(axis=1)] for s, a in per_task.items()},
            "paired_ci95_after_one": {str(s): round(float(evaluate.ci95(a[1] - per_task[1][1])), 2)
                                      for s, a in per_task.items()}}


def inner_step_line(check: dict | None) -> list[str]:
    """What the inner-step check found, in words (nothing before it has run): whether any scale
    beats the config's step after one step by more than the paired margin."""
    if not check:
        return []
    acc, margin = check["accuracy"], check["paired_ci95_after_one"]
    own = acc["1"]
    better = {s: a[1] - own[1] for s, a in acc.items() if a[1] - own[1] > margin[s] > 0}
    if not better:
        verdict = ("No step size tried does better than the config's beyond evaluation noise: at test time, the step "
                   "on z is not what holds the pilots back (meta-training with another step is untested).")
    else:
        best = max(better, key=better.get)
        verdict = (f"At test time {best} times the config's step does better by {better[best]:.1f} points (paired "
                   f"95% margin ±{margin[best]:.1f}): the step on z is part of what holds the pilots back.")
    return [f"- Inner step on z ({check['z_dim']} entries): the chosen Omniglot pilot at its best checkpoint "
            f"(iteration {check['checkpoint']}, meta-trained with step {check['inner_lr']:g}), on its {check['tasks']} "
            "meta-validation tasks, scores after one step with the config's step times " +
            ", ".join(f"{float(s):g}: {a[1]:.1f}%" for s, a in acc.items()) +
            f" ({own[0]:.1f}% before adapting; paired 95% margin of each difference to the config's step: "
            + ", ".join(f"{s}: ±{m:.1f}" for s, m in margin.items() if s != "1") +
            f"); with the config's step, after 1..{check['steps']} steps " + " / ".join(f"{a:.1f}" for a in own[1:])
            + f"%. {verdict}"]


def context_pilot(args) -> int:
    """The context vector's size per setting, from the pilot runs of the campaign queue."""
    from reproduce import campaign
    pilots = [r for r in campaign.QUEUE if r.dir.startswith("appendix/context_pilot/")]
    settings: dict = {}
    for r in pilots:
        d = r.run_dir(args.results)
        setting, z = d.name.rsplit("_z", 1)
        score, text = _score(d)
        done = campaign.done_iterations(d)
        settings.setdefault(setting, {})[z] = {"score": score, "summary": text, "iterations": done,
                                               "budget": r.budget(), "config": r.config, "sets": list(r.sets),
                                               "curve": _val_curve(d)}
    for setting, zs in settings.items():
        finished = {z: v for z, v in zs.items() if v["iterations"] >= v["budget"] and v["score"] is not None}
        zs_choice = max(finished, key=lambda z: finished[z]["score"]) \
            if len(finished) == len(zs) and setting not in DIAGNOSTICS else None
        settings[setting] = {"candidates": zs, "chosen_z_dim": int(zs_choice) if zs_choice else None}
        if setting in DIAGNOSTIC_REFERENCE_RUNS:
            ref = campaign.Run(DIAGNOSTIC_REFERENCE_RUNS[setting])
            d = ref.run_dir(args.results)
            settings[setting]["reference_run"] = {"config": ref.config, "z_dim": ref.raw()["model"]["z_dim"],
                                                  "iterations": campaign.done_iterations(d), "curve": _val_curve(d)}
    out = {"experiment": "appendix/context_pilot", "settings": settings, "commit": records.commit(),
           "written": records.now(), "machine": records.machine()}
    lines = ["# Appendix C: the size of the context vector, chosen by pilot runs", "",
             "Generated by `python -m reproduce.appendix context-pilot` from the pilot runs of the campaign "
             "queue (`reproduce/campaign.py`); do not edit by hand. Each candidate size trains a short run of "
             "its setting (training tasks; meta-validation tasks for Omniglot); the best one is the z_dim of "
             "the setting's config. Test tasks are never used.", "",
             "| setting | z_dim | iterations | score | chosen |", "|---|---|---|---|---|"]
    for setting, v in settings.items():
        for z, c in sorted(v["candidates"].items(), key=lambda kv: int(kv[0])):
            chosen = "**yes**" if v["chosen_z_dim"] == int(z) else "(a diagnostic: chooses nothing)" \
                if setting in DIAGNOSTICS else ""
            lines.append(f"| {setting} | {z} | {c['iterations']} / {c['budget']} | {c['summary']} | {chosen} |")
    lines.append("")
    for setting, v in settings.items():  # what the pilots say so far, in words
        scored = {int(z): c["score"] for z, c in v["candidates"].items() if c["score"] is not None
                  and c["iterations"] >= c["budget"]}
        if len(scored) >= 2 and setting not in DIAGNOSTICS:
            best = max(scored, key=scored.get)
            edge = " (the largest size tried: a larger one may be better still)" if best == max(map(int, v["candidates"])) else ""
            decides = PILOT_DECIDES.get(setting)
            role = (f" It sets the z_dim of {', '.join(decides)}." if decides else
                    " It sets no config's z_dim: superseded by the pilots of the same setting with model.init base.")
            spread = max(scored.values()) - min(scored.values())
            lines.append(f"- {setting}: so far z_dim = {best} scores best of {sorted(scored)}{edge}; all sizes "
                         f"within {spread:.1f} of each other.{role}")
    scales, based = [], []
    for setting, v in settings.items():
        if setting in DIAGNOSTICS:   # one size: nothing to say about the scale across sizes
            continue
        zs = sorted(map(int, v["candidates"]))
        first = v["candidates"][str(zs[0])]
        std = {z: input_weight_std(first["config"], z, first["sets"]) for z in (zs[0], zs[-1])}
        v["input_weight_std"] = std
        (based if "model.init=base" in first["sets"] else scales).append(
            f"{setting} {std[zs[0]]:.3f} at z_dim {zs[0]} and {std[zs[-1]]:.3f} at {zs[-1]}")
    lines.append("- The initial scale differs with z_dim: z's entries count in the first layer's fan-in (Glorot "
                 "uniform, as in the base network), so a larger z starts the weights on the input itself smaller "
                 f"(their std: {'; '.join(scales)}). Part of the pilots' differences may come from this scale rather "
                 "than from what z learns; for the RL pilots, what the inner step adds is the post minus "
                 "pre-update return in the table.")
    if based:
        lines.append("- Settings named `_base` repeat the pilots with `model.init: base`: every parameter starts as "
                     "the base network's of the same seed (the MAML row's starting point) and z's rows of the first "
                     "layer at that layer's own scale, so with z at zero every z_dim starts as the same network and "
                     f"the pilots differ only in what z adds (input weights' std: {'; '.join(based)}).")
    found = diagnostic_lines(settings)
    lines.append(batch_norm_note(tested=bool(found)))
    lines += found
    folder = args.results / "appendix"
    before = json.loads((folder / "context_pilot.json").read_text()) if (folder / "context_pilot.json").exists() else {}
    check = inner_step_check(settings, args.results, before.get("inner_step_check"))
    if check:
        out["inner_step_check"] = check
    lines += inner_step_line(check)
    records.write_table(folder / "context_pilot.json", out, folder / "context_pilot.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


# The paper's MAML rows of Tables 4 and 5 (its appendix's numbers, which the context vector's sit
# beside; `reproduce.rl.PAPER` has the official result files' values, the same to rounding)
PAPER_MAML = {"point": [-40.41, -11.68, -3.33, -3.23], "cheetah_dir": [-50.69, 293.19, 313.48, 315.65]}


def context_rl_findings(env: str, metrics: dict, runs: dict) -> list[str]:
    """What Tables 4 and 5 say next to the context vector's returns: the paper's values against our
    95% CI (`rl.ci_finding`), and the context vector against our MAML step by step (beyond both
    CIs or not), beside the paper's own comparison."""
    c, m = metrics.get("context"), metrics.get("maml")
    if c is None:
        return []
    paper = CONTEXT_PAPER[env]
    last = min(len(c["returns"]), len(paper)) - 1
    out = [f"Context vector: {' / '.join(f'{v:.2f}' for v in c['returns'][:last + 1])} after 0..{last} steps "
           f"(paper {' / '.join(str(v) for v in paper[:last + 1])})."]
    partial = [n for n in ("context", "maml") if n in runs and runs[n].get("status") != "full"]
    out.append(rl_repro.ci_finding([(f"context vector after 0..{last} steps", rl_repro.inside_ci(paper[:last + 1], c),
                                     lambda k: f"step {k}")], [n for n in partial if n == "context"]))
    steps = range(1, min(len(c["returns"]), len(m["returns"]), len(paper))) if m is not None else range(0)
    if steps:
        ahead = [s for s in steps if rl_repro.beyond_both_cis(c, m, s)]
        behind = [s for s in steps if rl_repro.beyond_both_cis(m, c, s)]
        if partial:
            verdict = "Partial runs: too early for a verdict."
        elif ahead or behind:
            verdict = "Beyond both CIs: " + "; ".join(
                f"context vector {word} at step(s) {', '.join(map(str, which))}"
                for word, which in (("ahead", ahead), ("behind", behind)) if which) + "."
        else:
            verdict = "No step where the two differ beyond both CIs."
        out.append(f"Context vector vs MAML (ours) after 1..{steps[-1]} steps: " + " / ".join(
            f"{c['returns'][s]:.2f} vs {m['returns'][s]:.2f}" for s in steps) + f". {verdict} The paper's: "
            + " / ".join(f"{paper[s]} vs {PAPER_MAML[env][s]}" for s in steps) + ".")
    return out


RL_TABLES = {4: "point", 5: "cheetah_dir"}


def evaluate_rl_context(table: int, args) -> None:
    """Train (with --train) and evaluate the context-vector run of an RL table through
    reproduce.rl, which writes results/rl/ENV.json; without --train, a run not trained yet is left
    as its table says ("not trained yet")."""
    env = RL_TABLES[table]
    if not args.train and not (args.results / "rl" / env / "context" / "checkpoints" / "checkpoint").exists():
        print(f"note: rl/{env}/context not trained yet: its table says so (`python -m reproduce.appendix context "
              f"--tables {table} --train` trains it)",
              file=sys.stderr)
        return
    argv = [env, "--methods", "context", "--results", str(args.results), "--threads", str(args.threads),
            *([] if args.train else ["--eval-only"]), *(["--quiet"] if args.quiet else []),
            *(["--iterations", str(args.iterations)] if args.iterations is not None else [])]
    if rl_repro._main(argv) != 0:
        raise TrainingError(f"reproduce.rl {' '.join(argv)} failed (its error is above)")


def context_tables(args) -> int:
    """Tables 3, 4, 5: the context vector beside MAML, each with the protocol of its MAML row.
    args.tables: the tables whose context runs are trained (with args.train) and evaluated (unless
    args.report_only); the others keep their rows as the results folder has them."""
    from reproduce import table1
    if args.set:
        raise config_lib.ConfigError("--set is not for `context`: each context run keeps its config's settings "
                                     "(train one with other settings through reproduce.train --run-dir)")
    tables = set(args.tables or (3, 4, 5)) if not args.report_only else set()
    for t in sorted(tables - {3}):
        evaluate_rl_context(t, args)
    out_dir = args.results / "appendix"
    t1 = {(r["dataset"], r["way"], r["shot"], r["model"], r["order"]): r
          for r in json.loads((args.results / "table1.json").read_text())} \
        if (args.results / "table1.json").exists() else {}
    saved = out_dir / "context.json"  # its rows are kept where this machine lacks Omniglot
    committed = {r["shot"]: r["context"] for r in json.loads(saved.read_text()).get("table3", [])} \
        if saved.exists() else {}
    rows3 = []
    for shot in (1, 5):
        cell = table1.Cell("omniglot", 5, shot, "conv_context", "second", f"omniglot/conv_{5}w{shot}s_context",
                           *CONTEXT_PAPER["table3"][shot])
        if 3 in tables:
            row = table1.run_cell(cell, args.iterations, not args.train, args.results, args.quiet,
                                  committed=committed.get(shot))
        else:   # kept as evaluated
            row = committed.get(shot) or table1.blank_row(
                cell, "not evaluated yet: `python -m reproduce.appendix context --tables 3` evaluates it")
        maml_row = t1.get(("omniglot", 5, shot, "conv", "second"), {})
        rows3.append({"shot": shot, "context": row, "maml": {k: maml_row.get(k) for k in
                                                             ("accuracy", "ci95", "iterations", "status")}})
    lines = ["# Appendix C: context-vector adaptation against MAML", "",
             "Generated by `python -m reproduce.appendix context`; do not edit by hand. Each context-vector run "
             "has the settings, budget and evaluation protocol of the MAML run beside it; z_dim from "
             "`context_pilot.md`.", "", "## Table 3: Omniglot 5-way, accuracy % (600 test tasks, 95% CI)", "",
             "| shot | context vector (ours) | iterations | paper | MAML (ours, Table 1) | paper MAML | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows3:
        c, m = r["context"], r["maml"]
        ours = f"{c['accuracy']:.2f} ± {c['ci95']:.2f}" if c.get("accuracy") is not None else "-"
        mm = f"{m['accuracy']:.2f} ± {m['ci95']:.2f}" if m.get("accuracy") is not None else "-"
        if m.get("accuracy") is not None and m.get("status") != "full":
            mm += f" (PARTIAL: {m.get('iterations')} iterations)"
        paper_maml = {1: "98.7 ± 0.4", 5: "99.9 ± 0.1"}[r["shot"]]
        lines.append(f"| {r['shot']} | {ours} | {c['iterations']} / 60000 | {c['paper_accuracy']} ± {c['paper_ci95']} "
                     f"| {mm} | {paper_maml} | {c['note']} |")
    pilots = out_dir / "context_pilot.json"   # the diagnostic pilots' findings, as context_pilot.md states them
    found = diagnostic_lines(json.loads(pilots.read_text())["settings"]) if pilots.exists() else []
    lines += ["", batch_norm_note(tested=bool(found)), *found]
    rl = {}
    for env, title in (("point", "Table 4: 2D point navigation"), ("cheetah_dir", "Table 5: half-cheetah forward/backward")):
        path = args.results / "rl" / f"{env}.json"
        s = json.loads(path.read_text()) if path.exists() else {"metrics": {}, "runs": {}}
        lines += ["", f"## {title}, average return after 0 / 1 / 2 / 3 steps (40 test tasks, 95% CI)", "",
                  "| method | iterations | 0 | 1 | 2 | 3 |", "|---|---|---|---|---|---|"]
        for name, label in (("context", "context vector (ours)"), ("maml", "MAML (ours)")):
            m, run = s["metrics"].get(name), s["runs"].get(name, {})
            if m is None:
                lines.append(f"| {label} | not trained yet | | | | |")
                continue
            cells = [f"{v:.2f} ± {c:.2f}" for v, c in list(zip(m["returns"], m["ci95"]))[:4]]
            status = "" if run.get("status") == "full" else ", PARTIAL"
            lines.append(f"| {label} | {run.get('iterations')} ({run.get('paper_iterations')}){status} | " + " | ".join(cells) + " |")
        lines.append("| paper, context vector | | " + " | ".join(str(v) for v in CONTEXT_PAPER[env]) + " |")
        lines.append("| paper, MAML | | " + " | ".join(str(v) for v in PAPER_MAML[env]) + " |")
        if (m := s["metrics"].get("context")) is not None:
            cells = rl_repro.ci_marks(rl_repro.inside_ci(CONTEXT_PAPER[env], m))
            lines.append("| paper in our 95% CI, context vector | | " + " | ".join(cells) + " |")
        found = context_rl_findings(env, s["metrics"], s["runs"])
        lines += [""] + [f"- {f}" for f in found] if found else []
        rl[env] = {**{k: s["metrics"].get(k) for k in ("context", "maml")}, "findings": found}
    out = {"experiment": "appendix/context", "table3": rows3, "rl": rl, "paper": CONTEXT_PAPER,
           "commit": records.commit(), "written": records.now(), "machine": records.machine()}
    records.write_table(out_dir / "context.json", out, out_dir / "context.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    return common.guard(lambda: _main(argv))


def _main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("table", choices=["table2", "context-pilot", "context"],
                   help="table2: multi-task parameter averaging; context-pilot: the context vector's size "
                        "from the pilot runs; context: Tables 3-5, the context vector against MAML")
    p.add_argument("--tables", type=int, nargs="+", choices=[3, 4, 5], default=None,
                   help="context only: the tables whose context runs to evaluate (default all); the others "
                        "keep their rows")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--train", action="store_true",
                     help="context only: first train (or resume) those runs to their budget (--iterations: less)")
    how.add_argument("--report-only", action="store_true",
                     help="context only: train and evaluate nothing; rewrite context.md from the results folder")
    args = common.parse(p, argv, replicas=None)
    if args.table != "context" and (args.tables or args.train or args.report_only):
        raise config_lib.ConfigError(f"--tables, --train and --report-only are for `context`, not `{args.table}`")
    if args.report_only and args.tables:
        raise config_lib.ConfigError("--report-only evaluates no table: give --tables without it")
    if args.table == "context" and args.iterations is not None and not (args.train and len(args.tables or ()) == 1):
        raise config_lib.ConfigError("--iterations is the budget to train one table's runs to (their budgets "
                                     "differ): give --train and one table (--tables 3, 4 or 5) with it")
    # training Table 3's runs (train.distribute: mirrored) splits the CPU into one device per core,
    # as reproduce.train does; everything else runs on one device
    common.use_cores(args.threads, replicas=args.table == "context" and args.train and 3 in (args.tables or (3,)))
    return {"table2": table2, "context-pilot": context_pilot, "context": context_tables}[args.table](args)


if __name__ == "__main__":
    sys.exit(main())
