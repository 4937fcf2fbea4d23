"""Appendix C baselines. Table 2: multi-task parameter averaging on the sinusoid, beside the
pretrained and MAML rows of `make sinusoid` (reused, not trained again).

    python -m reproduce.appendix table2          # make appendix-table2

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
import sys
from pathlib import Path

import numpy as np

from maml_tf import config as config_lib
from maml_tf import evaluate, maml, multitask, records, nets
from reproduce import common
from reproduce import sinusoid

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
    """The largest strength of the grid at which every pilot regressor reaches the target, by
    bisection over the sorted grid (a stronger penalty only makes the target harder to reach). A
    pilot gives up once a regressor has needed more than two new initialisations."""
    s = dataclasses.replace(cfg["settings"], chunks=2, max_restarts=2)  # "running mean": its first half
    grid, tried = sorted(cfg["strengths"][reg]), {}

    def ok(strength: float) -> bool:
        r = multitask.train_regressors(s, reg, strength, cfg["pilot_seed"], n=cfg["pilot_regressors"])
        tried[str(strength)] = {"reached": r["reached"], "of": r["n"], "restarts": r["restarts"],
                                "seconds": r["seconds"]}
        log(f"  pilot {reg} strength {strength:g}: {r['reached']} of {r['n']} reach MSE < {s.target}")
        return r["reached"] == r["n"]

    lo, hi = -1, len(grid)  # grid[lo] passes (lo = -1: none known), grid[hi] fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(grid[mid]):
            lo = mid
        else:
            hi = mid
    if lo < 0:
        raise RuntimeError(f"no strength of {grid} lets every pilot regressor of {reg} reach the target: "
                           f"add smaller ones to {CONFIG}")
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
    r = evaluate.evaluate(model, params, sinusoid.test_source(cfg, 5), maml.mse, maml.mse, cfg.eval.steps,
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
               f"strength {v['strength']:g}, the largest of {v['key']['strengths']} at which all "
               f"{v['key']['pilot_regressors']} pilot regressors still reached MSE < 0.02")
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
    if old and old.get("metrics") == metrics:  # nothing changed: leave the tracked files as they are
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


def main(argv=None) -> int:
    return common.guard(lambda: _main(argv))


def _main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("table", choices=["table2"], help="which appendix table to regenerate")
    args = common.parse(p, argv, replicas=False)
    return {"table2": table2}[args.table](args)


if __name__ == "__main__":
    sys.exit(main())
