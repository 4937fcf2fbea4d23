"""Reinforcement learning (paper §5.3): train (or resume) MAML-TRPO and the baselines (pretrained,
random initialisation, oracle) for one environment, evaluate them on 40 fixed test tasks after 0..3
adaptation steps (point: 0..4), and regenerate results/rl/: <env>.json, table.md and the figures
(like Figures 4 and 5).

    python -m reproduce.rl point [--iterations N] [--methods maml pretrained ...]   # make rl-point

ENV is one of point, cheetah_vel, cheetah_dir, ant_vel, ant_dir. Methods not trained in this call
keep their metrics from an earlier results/rl/<env>.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from maml_tf import records
from maml_tf.config import ConfigError
from maml_tf.runs import TrainingError, read_jsonl
from reproduce import common

ENVS = ("point", "cheetah_vel", "cheetah_dir", "ant_vel", "ant_dir")
BASE_METHODS = ("maml", "pretrained", "random", "oracle")
# the official script's inner step beside the paper's; the context-vector policy (Appendix C)
EXTRA_METHODS = {"point": ("maml_alpha0.5", "context"), "cheetah_dir": ("context",)}
APPENDIX_METHODS = ("context",)
TITLES = {"point": "2D point navigation", "cheetah_vel": "half-cheetah goal velocity",
          "cheetah_dir": "half-cheetah forward/backward", "ant_vel": "ant goal velocity",
          "ant_dir": "ant forward/backward"}
# Average return after 0 / 1 / 2 / 3 policy-gradient steps and the oracle (../shared/REFERENCE.md,
# from the official result files; point and cheetah direction match paper Tables 4 and 5).
PAPER = {"point": ([-40.41, -11.68, -3.33, -3.23], -2.29),
         "cheetah_vel": ([-129.5, -78.6, -66.6, -60.8], -54.5),
         "cheetah_dir": ([-50.7, 293.2, 313.5, 315.7], 442.7),
         "ant_vel": ([30.6, 96.7, 100.1, 101.4], 107.9),
         "ant_dir": ([8.7, 499.2, 500.7, 499.1], 524.8)}
STYLES = {"maml": ("MAML (ours)", "tab:green"), "maml_alpha0.5": ("MAML, alpha 0.5 (code)", "tab:olive"),
          "pretrained": ("pretrained + fine-tune", "tab:red"), "random": ("random init + fine-tune", "tab:gray"),
          "oracle": ("oracle", "tab:blue"), "context": ("context vector (App. C)", "tab:purple")}


def methods_of(env: str) -> tuple[str, ...]:
    return BASE_METHODS + EXTRA_METHODS.get(env, ())


def run_method(env: str, name: str, args) -> tuple[dict, dict]:
    """Train (or resume) one method, evaluate it; (metrics, run record)."""
    from maml_tf import rl, train as train_lib  # here: --help answers without TensorFlow
    cfg_name = common.CONFIGS / "rl" / env / f"{name}.yaml"  # a path: names like maml_alpha0.5 have a dot
    cfg = common.load(cfg_name, None if name == "random" else args.iterations, args.set)
    run_dir = common.run_dir(cfg, args.results) if name in BASE_METHODS else \
        args.results / cfg.experiment / name
    if args.eval_only and name == "random":  # its "training" is saving the initial policy: seconds
        train_lib.train(cfg, run_dir, quiet=True)
    elif args.eval_only:
        if not (run_dir / "checkpoints" / "checkpoint").exists():
            raise TrainingError(f"no checkpoint in {run_dir}: run `python -m reproduce.rl {env} --methods "
                                f"{name}` without --eval-only to train it")
    else:
        if not args.quiet:
            from reproduce import campaign
            print(f"== {env}/{name}: " + campaign.estimate(run_dir, 0 if name == "random" else cfg.train.iterations,
                                                              None if args.set else f"rl/{env}/{name}", args.results),
                  file=sys.stderr)
        train_lib.train(cfg, run_dir, quiet=args.quiet)
    learner, evaluated = train_lib.restore(cfg, run_dir, cfg.eval.checkpoint)
    if not args.quiet:
        print(f"== {env}/{name}: evaluating iteration {evaluated} ({cfg.eval.checkpoint}) on "
              f"{cfg.eval.tasks} test tasks", file=sys.stderr)
    metrics = rl.evaluate_run(cfg, learner)
    metrics["_per_task"] = metrics.pop("per_task")   # for the seeds' statistics; taken out before writing
    run = common.record(cfg, learner, common.paper_iterations(cfg_name), run_dir)
    run["evaluated_iteration"] = evaluated
    run["env_steps"] = int(learner.env_steps.numpy())
    best = run_dir / "best.json"
    if best.exists():
        run["best"] = json.loads(best.read_text())
    return metrics, run


def other_seeds(env: str, name: str, args) -> list[dict]:
    """The method's runs with other seeds (`<method>_seed<N>` beside its run, as `make campaign`
    trains them), each evaluated as the main run (the same test tasks and protocol)."""
    from maml_tf import rl, train as train_lib
    if name not in BASE_METHODS or name == "random":
        return []
    cfg_name = common.CONFIGS / "rl" / env / f"{name}.yaml"

    def evaluate_one(cfg, d) -> dict:
        learner, evaluated = train_lib.restore(cfg, d, cfg.eval.checkpoint)
        m = rl.evaluate_run(cfg, learner)
        run = common.record(cfg, learner, common.paper_iterations(cfg_name), d)
        return {"status": run["status"], "iterations": run["iterations"], "evaluated_iteration": evaluated,
                "values": [float(v) for v in m["returns"]], "ci95": [float(v) for v in m["ci95"]],
                "training_commits": run["training_commits"], "wall_time_s": run["wall_time_s"],
                "_per_task": m["per_task"]}
    return common.other_seeds(cfg_name, common.run_dir(common.load(cfg_name), args.results), args.iterations,
                              args.set, evaluate_one)


def paper_columns(env: str, name: str, n_steps: int) -> list | None:
    """The paper's returns after 0.. steps for `name` (MAML's; None for the other methods)."""
    return (list(PAPER[env][0]) + [None] * n_steps)[:n_steps] if name == "maml" else None


def seed_section(env: str, s: dict) -> tuple[list[str], list[str]]:
    """Table rows and findings for the methods' runs with other seeds (none: nothing)."""
    seeds = s.get("seeds") or {}
    if not seeds:
        return [], []
    n_steps = max(len(s["metrics"][name]["returns"]) for name in seeds)
    lines = ["", f"Seeds (each run on the same {s.get('eval_tasks', 40)} test tasks; the config's own seed first):", "",
             "| method | seed | iterations | " + " | ".join(f"{k} steps" for k in range(n_steps)) + " |",
             "|---|---|---|" + "---|" * n_steps]
    found = []
    for name, rows in seeds.items():
        m, run = s["metrics"][name], s["runs"][name]
        own = {"seed": run["seed"], "status": run["status"], "iterations": run["iterations"], "values": m["returns"]}
        table_rows, finding = common.seed_lines(name, [own] + rows, [f"{k} steps" for k in range(len(m["returns"]))],
                                                paper_columns(env, name, len(m["returns"])),
                                                (s.get("seeds_vs_paper") or {}).get(name))
        lines += table_rows
        found += [finding] if finding else []
    return lines, found


def point_optimum(cfg: dict | None) -> float:
    """The best mean return possible in 2D point navigation: on the test tasks of `cfg` (a run's
    config), or (None) over the goal distribution (100,000 goals)."""
    from maml_tf import envs  # noqa: F401  (registers the environments)
    from maml_tf.envs import point
    from maml_tf.rl.sampler import task_sampler
    if cfg is None:
        goals = np.random.default_rng(0).uniform(point.GOAL_LOW, point.GOAL_HIGH, size=(100_000, 2))
    else:
        tasks = task_sampler(cfg["env"], cfg.get("env_kwargs"))(cfg["eval"]["tasks"], cfg["eval"]["seed"])
        goals = np.stack([t["goal"] for t in tasks])
    return float(point.optimal_returns(goals, cfg["train"]["horizon"] if cfg else 100).mean())


def inside_ci(paper: list, m: dict) -> list:
    """Each paper value (one per step) against our run's 95% CI (`m`: its "returns" and "ci95" by
    step): None where we have no such number, else (inside our CI, paper - ours, our half-width)."""
    return [(abs(p - m["returns"][k]) <= m["ci95"][k], p - m["returns"][k], m["ci95"][k])
            if k < len(m["returns"]) else None for k, p in enumerate(paper)]


def ci_marks(cells: list, missing: str = "") -> list[str]:
    """`inside_ci` results as the tables and findings write them: yes / no, `missing` where we have
    no number."""
    return [missing if c is None else ("yes" if c[0] else "no") for c in cells]


def beyond_both_cis(a: dict, b: dict, step: int) -> bool:
    """Whether run `a`'s return after `step` steps lies above run `b`'s beyond both 95% CIs."""
    return a["returns"][step] - a["ci95"][step] > b["returns"][step] + b["ci95"][step]


def paper_check(env: str, metrics: dict) -> dict:
    """The paper's MAML returns (steps 0..3) and oracle against our runs' 95% CIs (`inside_ci`)."""
    paper, oracle = PAPER[env]
    return {name: inside_ci(values, metrics[name]) for name, values in (("maml", paper), ("oracle", [oracle]))
            if name in metrics}


def ci_finding(checked: list, partial: list) -> str:
    """One line from `inside_ci` results, `checked` = [(label, cells, where)] with where(k) naming
    value k ("step 1", "oracle"): whether each paper value lies inside our 95% CI and, where it does
    not, whether the gap is within what two independent evaluations on 40 test tasks allow (the
    paper's tasks are its own; its CI is not published, so ours stands in for it: sqrt(2) x our
    half-width). Seed variance is not in that margin: a gap beyond it is a finding to explain, not
    yet a verdict. `partial`: the names of the runs below budget, said at the end."""
    said, gaps = [], []
    for label, cells, where in checked:
        said.append(f"{label} " + " / ".join(ci_marks(cells, "-")))
        for k, c in enumerate(cells):
            if c is None or c[0]:
                continue
            allowed = float(np.sqrt(2.0)) * c[2]
            gaps.append(f"{where(k)}: the paper's {abs(c[1]):.2f} {'below' if c[1] < 0 else 'above'} ours, "
                        f"{'within' if abs(c[1]) <= allowed else 'beyond'} ± {allowed:.2f}")
    if not said:
        return ""
    line = "Paper inside our 95% CI: " + "; ".join(said) + "."
    if gaps:
        line += (" Where it is not, against what two evaluations on 40 test tasks each allow (the paper's "
                 "tasks are its own and its CI unpublished: sqrt(2) x ours; seed variance not included): "
                 + "; ".join(gaps) + ".")
    if partial:
        line += f" {' and '.join(partial)} PARTIAL: the gaps include the budget not yet trained."
    return line


def paper_check_finding(env: str, metrics: dict, runs: dict) -> str:
    """`ci_finding` of the paper's MAML returns and oracle (`paper_check`)."""
    check = paper_check(env, metrics)
    labels = {"maml": ("MAML after 0..3 steps", lambda k: f"step {k}"), "oracle": ("oracle", lambda k: "oracle")}
    return ci_finding([(labels[n][0], cells, labels[n][1]) for n, cells in check.items() if cells],
                      [n for n in check if runs.get(n, {}).get("status") not in (None, "full")])


# Environments whose reward tracks a target (minus |v - goal|): there an oracle below the paper's by
# some amount reads as an offset every method may share. Where returns grow with speed (direction
# tasks) no such offset is assumed: MAML's return is given as a fraction of the oracle's instead.
TRACKING_ENVS = ("cheetah_vel", "ant_vel")


def oracle_gap_finding(env: str, metrics: dict, runs: dict) -> str:
    """MAML's returns after 1..3 steps measured from the oracle's (the return with the task given,
    trained as long, on the same environment), ours from ours and the paper's from the paper's.
    For a tracking reward (TRACKING_ENVS), where our oracle lies below the paper's beyond what two
    evaluations allow: if every method here loses that much (the environment differs from the
    paper's: envs/locomotion.py), what remains of MAML's gap to the paper, step by step, against
    what two evaluations of the difference allow (seed variance not included). For the direction
    tasks, where both oracles' returns are positive: MAML's return as a fraction of its oracle's.
    Not for the point, whose oracle row has its own finding (the paper's oracle was far from the
    optimum)."""
    if env == "point" or "maml" not in metrics or "oracle" not in metrics:
        return ""
    paper, oracle = PAPER[env]
    m, o = metrics["maml"], metrics["oracle"]
    steps = range(1, min(len(m["returns"]), len(paper)))
    if not steps:
        return ""
    our_oracle, ho = o["returns"][0], o["ci95"][0]
    ours = [our_oracle - m["returns"][k] for k in steps]
    theirs = [oracle - paper[k] for k in steps]
    line = (f"From the oracle (its return minus MAML's after 1..{steps[-1]} steps, each on its own "
            f"environment): ours {' / '.join(f'{v:.2f}' for v in ours)}, the paper's "
            f"{' / '.join(f'{v:.2f}' for v in theirs)}.")
    shared, allowed = oracle - our_oracle, float(np.sqrt(2.0)) * ho
    if env in TRACKING_ENVS and shared > allowed:
        rest = []
        for k, ours_k, theirs_k in zip(steps, ours, theirs):
            margin = float(np.sqrt(2.0 * (ho ** 2 + m["ci95"][k] ** 2)))
            gap = ours_k - theirs_k   # (paper's MAML - ours) - (paper's oracle - ours)
            rest.append(f"{gap:.2f} ({'within' if abs(gap) <= margin else 'beyond'} ± {margin:.2f})"
                        if gap > 0 else f"none ({gap:.2f}: no further from its oracle than the paper's)")
        line += (f" Our oracle lies {shared:.2f} below the paper's (beyond ± {allowed:.2f}). If every method "
                 f"here loses that much (the oracle trains as MAML does; the simulator and the observation "
                 f"differ from the paper's: maml_tf/envs/locomotion.py), what remains of MAML's gap to the "
                 f"paper after 1..{steps[-1]} steps is {' / '.join(rest)} (what two evaluations of that "
                 f"difference allow; seed variance not included).")
    elif env not in TRACKING_ENVS and our_oracle > 0 and oracle > 0:
        ours_f, theirs_f = ([f"{v:.2f}" for v in vs] for vs in ([m["returns"][k] / our_oracle for k in steps],
                                                                  [paper[k] / oracle for k in steps]))
        line += f" As fractions of the oracle's return: ours {' / '.join(ours_f)}, the paper's {' / '.join(theirs_f)}."
    partial = [n for n in ("maml", "oracle") if runs.get(n, {}).get("status") not in (None, "full")]
    if partial:
        line += f" {' and '.join(partial)} PARTIAL: not yet a finding."
    return line


TRAINING_WINDOWS = 5   # MAML's training curve in the findings: the budget in this many windows


def training_finding(env: str, runs: dict, results: Path | None) -> str:
    """How MAML's training went (locomotion): the mean training return after the inner step (over
    the iteration's training tasks) and the share of TRPO steps accepted, window by window over
    the budget, for the config's run and each run with another seed beside it (`<method>_seed<N>`).
    From the runs' committed metrics.jsonl; training tasks only."""
    if env == "point" or results is None or "maml" not in runs or "config" not in runs["maml"]:
        return ""
    cfg = runs["maml"]["config"]
    own = results / cfg["experiment"] / cfg["method"]
    dirs = {runs["maml"].get("seed"): own, **common.seed_dirs(own, runs["maml"].get("seed"))}
    size = max(1, int(runs["maml"].get("paper_iterations") or cfg["train"]["iterations"]) // TRAINING_WINDOWS)
    parts = []
    for seed, d in dirs.items():
        # by step, the last record of each (`runs.rollback_metrics` already drops a killed run's extra rows)
        rows = {r["step"]: r for r in read_jsonl(d / "metrics.jsonl") if "post_return" in r}
        steps = sorted(rows)
        if not steps:
            continue
        cells = []
        for start in range(1, steps[-1] + 1, size):
            w = [rows[k] for k in steps if start <= k < start + size]
            if w:
                cells.append(f"{start}-{w[-1]['step']}: {np.mean([r['post_return'] for r in w]):.1f} "
                             f"({100.0 * np.mean([bool(r.get('accepted', True)) for r in w]):.0f}%)")
        parts.append(f"seed {seed} ({steps[-1]} iterations) " + ", ".join(cells))
    if not parts:
        return ""
    return ("MAML's training return after the inner step (mean over the iterations of each window; in brackets "
            "the share of TRPO steps accepted), by iterations: " + "; ".join(parts) + ".")


def pilot_finding(env: str, results: Path | None) -> str:
    """The RL pilots of this environment (`reproduce.rl_pilot`, results/rl/<set>.json): each
    pilot's setting and its last window against the config's own run."""
    if results is None:
        return ""
    from reproduce import rl_pilot
    lines = []
    for pilot_set, (_, _, setting) in rl_pilot.PILOTS.items():
        path = results / "rl" / f"{pilot_set}.json"
        if not path.exists():
            continue
        for p in json.loads(path.read_text())["pilots"]:
            if not p["config"].startswith(f"rl/{env}/") or not p.get("windows"):
                continue
            w = p["windows"][-1]
            lines.append(f"{p['config'].rsplit('/', 1)[1]} with {setting} (`results/rl/{pilot_set}.md`), "
                         f"{p['done']} of {p['budget']} iterations: "
                         f"{rl_pilot.verdict(w)} in the last window ({w['difference']:+.1f}, ± {w['margin']:.1f}, "
                         f"iterations {w['iterations'][0]}-{w['iterations'][1]})")
    if not lines:
        return ""
    return ("Pilots against this environment's runs, on the training return: "
            + "; ".join(lines) + ".")


def findings(env: str, metrics: dict, runs: dict, results: Path | None = None) -> list[str]:
    """The findings written next to the environment's numbers: from its JSON (metrics, runs) and,
    given `results`, from the runs' training logs and the pilots' reports there."""
    out = []
    paper, oracle = PAPER[env]
    if "maml" in metrics:
        m = metrics["maml"]["returns"]
        out.append(f"MAML: {' / '.join(f'{v:.2f}' for v in m[:4])} after 0..3 steps "
                   f"(paper {' / '.join(str(v) for v in paper)}).")
    if env == "point" and "maml" in metrics and "maml_alpha0.5" in metrics:
        err = lambda name: float(np.mean([abs(a - b) for a, b in zip(metrics[name]["returns"][:4], paper)]))
        a, b = err("maml"), err("maml_alpha0.5")
        closer = "alpha = 0.1 (the paper's)" if a <= b else "alpha = 0.5 (the official script's)"
        out.append(f"Inner step: mean absolute gap to the paper's 0..3-step returns {a:.2f} with alpha = 0.1 "
                   f"and {b:.2f} with alpha = 0.5; {closer} reproduces Table 4 / Figure 4 more closely.")
    for name in ("pretrained", "random"):
        if name in metrics and metrics[name].get("alpha") is not None:
            alpha, search = metrics[name]["alpha"], metrics[name].get("alpha_search") or {}
            grid = ", ".join(f"{k}: {v:.2f}" for k, v in search.items())
            steps = sorted(map(float, search))
            side = ("largest" if float(alpha) >= steps[-1] else "smallest" if float(alpha) <= steps[0] else None) \
                if len(steps) > 1 else None
            edge = f" It is the {side} step of the grid: a wider eval.lr_grid may find a better one." if side else ""
            out.append(f"{name}: fine-tuning step {alpha}, tuned on training tasks (mean return by "
                       f"step: {grid}).{edge}")
    if "maml" in metrics and "pretrained" in metrics:
        m, p = metrics["maml"], metrics["pretrained"]
        steps = range(1, min(len(m["returns"]), len(p["returns"])))
        ahead = [s for s in steps if beyond_both_cis(m, p, s)]
        behind = [s for s in steps if beyond_both_cis(p, m, s)]
        if any(runs[n]["status"] != "full" for n in ("maml", "pretrained") if n in runs):
            verdict = "Partial runs: too early for a verdict."
        elif ahead:
            verdict = f"MAML is ahead beyond both CIs at step(s) {ahead}."
            verdict += f" The pretrained policy is ahead beyond both CIs at step(s) {behind}." if behind else ""
        elif behind:
            verdict = (f"The pretrained policy is ahead beyond both CIs at step(s) {behind}, MAML at none: the "
                       f"opposite of the paper's figure, where MAML leads (its baseline's step was tuned by "
                       f"hand, ours on training tasks).")
        else:
            verdict = ("No step where MAML is ahead beyond both CIs: with its step size tuned on training "
                       "tasks, the pretrained policy adapts about as fast here (the paper's baseline step "
                       "was tuned by hand).")
        out.append("MAML vs pretrained after 1.. steps: " + " / ".join(
            f"{a:.2f} vs {b:.2f}" for a, b in zip(m["returns"][1:], p["returns"][1:])) + ". " + verdict)
    if "oracle" in metrics:
        line = f"Oracle: {metrics['oracle']['returns'][0]:.2f} (paper {oracle})."
        if env == "point" and "config" in runs.get("oracle", {}):
            best = point_optimum(runs["oracle"]["config"])
            line += (f" The best return possible on these test tasks (every step straight toward the goal at the "
                     f"action limit, `envs.point.optimal_returns`) is {best:.2f}: ours is "
                     f"{metrics['oracle']['returns'][0] - best:+.2f} from it, the paper's {oracle - best:+.2f} (over "
                     f"the whole goal distribution the optimum is {point_optimum(None):.2f}): the published "
                     f"oracle policy was far from optimal, ours is not, so our oracle row lies further above MAML's "
                     f"returns after adaptation than the paper's does.")
        out.append(line)
    line = oracle_gap_finding(env, metrics, runs)
    if line:
        out.append(line)
    line = paper_check_finding(env, metrics, runs)
    if line:
        out.append(line)
    out += [line for line in (training_finding(env, runs, results), pilot_finding(env, results)) if line]
    partial = [f"{n} ({r['iterations']} of {r['paper_iterations']})" for n, r in runs.items()
               if r["status"] != "full"]
    if partial:
        out.append(f"PARTIAL: {', '.join(partial)} iterations; not the full reproduction.")
    return out


# ----------------------------------------------------------------------------- table and figures

def table(results_dir: Path, envs=ENVS) -> str:
    lines = ["# RL (paper §5.3): average return after 0..3 policy-gradient steps", "",
             "Generated by `make rl` (`python -m reproduce.rl ENV`); do not edit by hand. Test protocol: 40 "
             "test tasks drawn with a fixed seed, fresh rollouts at every step (point: 40 trajectories per task, as the paper; locomotion: the training number), step alpha for "
             "the first update and alpha/2 after; mean return over tasks and 95% CI (1.96 std / sqrt(40)). "
             "Paper numbers: ../shared/REFERENCE.md (official result files).", ""]
    for env in envs:
        path = results_dir / f"{env}.json"
        if not path.exists():
            lines += [f"## {TITLES[env]}", "", f"Not trained yet: `make campaign` trains it (or `make "
                      f"rl-{env.replace('_', '-')} TRAIN=1`).", ""]
            continue
        s = json.loads(path.read_text())
        paper, oracle = PAPER[env]
        n_steps = max(len(m["returns"]) for m in s["metrics"].values())
        lines += [f"## {TITLES[env]}", "", f"Commit {s['commit']}, written {s['written']}.", "",
                  "| method | iterations (paper) | " + " | ".join(f"{k} steps" for k in range(n_steps)) + " |",
                  "|---|---|" + "---|" * n_steps]
        for name, m in s["metrics"].items():
            run = s["runs"][name]
            label = f"{run['iterations']} ({run['paper_iterations']})"
            if run["status"] != "full":
                label += ", PARTIAL"
            cells = [f"{v:.2f} ± {c:.2f}" for v, c in zip(m["returns"], m["ci95"])]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
        lines.append("| paper, MAML | | " + " | ".join(str(v) for v in paper) + " |" + " |" * (n_steps - 4))
        lines.append(f"| paper, oracle | | {oracle} |" + " |" * (n_steps - 1))
        check = paper_check(env, s["metrics"])
        for name in ("maml", "oracle"):
            if check.get(name):
                cells = ci_marks(check[name])
                cells += [""] * (n_steps - len(cells))
                lines.append(f"| paper in our 95% CI, {'MAML' if name == 'maml' else name} | | " + " | ".join(cells) + " |")
        lines += seed_section(env, s)[0]
        lines += [""] + [f"- {f}" for f in s.get("findings", [])] + [""]
    return "\n".join(lines)


def _plot_env(ax, s: dict, env: str) -> None:
    for name, m in s["metrics"].items():
        label, color = STYLES.get(name, (name, None))
        y, ci = np.array(m["returns"]), np.array(m["ci95"])
        x = np.arange(len(y))
        ls = "--" if name == "oracle" else "-"
        ax.plot(x, y, ls, marker="o", ms=3, color=color, label=label)
        ax.fill_between(x, y - ci, y + ci, color=color, alpha=0.15)
    paper, oracle = PAPER[env]
    ax.plot(range(len(paper)), paper, "x", color="black", ms=7, mew=2, label="paper, MAML")
    ax.axhline(oracle, color="black", lw=0.8, ls=":", label="paper, oracle")
    lo, hi = ax.get_ylim()  # room above the paper's oracle line, which otherwise sits on the edge
    ax.set_ylim(lo, max(hi, oracle + 0.06 * (max(hi, oracle) - lo)))
    partial = any(r["status"] != "full" for r in s["runs"].values())
    ax.set_title(TITLES[env] + (" (PARTIAL)" if partial else ""), fontsize=10)
    ax.set_xticks(range(max(len(m["returns"]) for m in s["metrics"].values())))
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")


def figures(results_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = {env: json.loads((results_dir / f"{env}.json").read_text()) for env in ENVS
            if (results_dir / f"{env}.json").exists()}
    panels = [("fig4_point.png", ["point"], "Figure 4 (ours): 2D navigation, 40 test tasks, 95% CI"),
              ("fig5_locomotion.png", list(ENVS[1:]), "Figure 5 (ours): locomotion, 40 test tasks, 95% CI")]
    written = []
    for name, envs, title in panels:
        envs = [env for env in envs if env in data]
        if not envs:
            continue
        fig, axes = plt.subplots(1, len(envs), figsize=(4.6 * len(envs) + 0.4, 3.8), squeeze=False)
        for ax, env in zip(axes[0], envs):
            _plot_env(ax, data[env], env)
        handles = {l: h for ax in axes[0] for h, l in zip(*ax.get_legend_handles_labels())}
        ncol = min(len(handles), 7 if len(envs) > 1 else 3)
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=ncol,
                   fontsize=9, frameon=False)  # one legend below the panels: it covers no data
        fig.suptitle(title, fontsize=10)
        rows = -(-len(handles) // ncol)
        fig.tight_layout(rect=(0, (0.1 + 0.22 * rows) / fig.get_size_inches()[1], 1, 1))
        records.write_figure(fig, results_dir / name)
        plt.close(fig)
        written.append(results_dir / name)
    return written


def figure_point_paths(args, metrics: dict, path: Path, steps=(0, 1, 3)) -> Path | None:
    """Like the bottom of Figure 4: the paths of MAML and of the fine-tuned pretrained policy on one
    test goal, before adaptation and after 1 and 3 steps (each step adapted on 20 fresh rollouts;
    one rollout drawn)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from maml_tf import evaluate, maml, rl, train
    names = [n for n in ("maml", "pretrained") if n in metrics]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        cfg = common.load(common.CONFIGS / "rl" / "point" / f"{name}.yaml", None, args.set)
        run_dir = common.run_dir(cfg, args.results)
        learner, _ = train.restore(cfg, run_dir, cfg.eval.checkpoint)
        alpha = metrics[name].get("alpha") or evaluate.step_size(cfg)  # as evaluated (tuned for pretrained)
        s = rl.sampler(learner.model, cfg, 1, cfg.train.trajectories)
        task = rl.task_sampler(cfg.env)(cfg.eval.tasks, cfg.eval.seed)[0]
        fast = maml.per_task(learner.model, learner.param_values(), 1)
        styles = {0: (":", "pre-update"), 1: ("--", "1 grad step"), 3: ("-", "3 grad steps")}
        for k in range(max(steps) + 1):
            batch = s.sample(fast, [task], rl.seed_of(cfg.eval.seed, 1000, k))
            if k in steps:
                n = int(batch.raw.lengths[0, 0])
                xy = batch.raw.obs[0, 0, :n]
                ls, label = styles.get(k, ("-", f"{k} steps"))
                ax.plot(xy[:, 0], xy[:, 1], ls, label=label)
            fast = maml.adapt(learner.model, fast, batch.obs, rl.inner_targets(batch), rl.vpg_loss, 1,
                              maml.halving(alpha), shared=False, first_step=k)
        ax.plot(*task["goal"], "*", color="red", ms=12, label="goal")
        ax.plot(0, 0, "o", color="black", ms=4)
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.set_aspect("equal")
        ax.set_title("MAML" if name == "maml" else f"pretrained, step {alpha}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Figure 4, bottom (ours): paths on one test goal", fontsize=9)
    fig.tight_layout()
    records.write_figure(fig, path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main

def report_only(args) -> int:
    out = args.results / "rl"
    path = out / f"{args.env}.json"
    if not path.exists():
        print(f"error: {path} does not exist: run `python -m reproduce.rl {args.env}` first", file=sys.stderr)
        return 2
    summary = json.loads(path.read_text())
    old_findings = summary.get("findings")
    summary["findings"] = findings(args.env, summary["metrics"], summary["runs"], args.results) + \
        seed_section(args.env, summary)[1]
    write_reports(out, path, summary, args.env, json_changed=summary["findings"] != old_findings)
    return 0


def write_reports(out: Path, path: Path, summary: dict, env: str, json_changed: bool = True) -> None:
    """The environment's JSON (unless `json_changed` says it holds `summary` already), then
    table.md (where its text changed) and the figures over every environment's JSON; prints the
    environment's part of the table."""
    if json_changed:
        records.write_json(path, summary)
    records.write_text(out / "table.md", table(out))
    figures(out)
    print(table(out, [env]))


def main(argv=None) -> int:
    return common.guard(lambda: _main(argv))


def _main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("env", choices=ENVS)
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"which methods to train and evaluate (default: all: {', '.join(BASE_METHODS)}, and "
                        f"for point also {', '.join(EXTRA_METHODS['point'])})")
    p.add_argument("--eval-only", action="store_true",
                   help="train nothing: evaluate the methods' existing checkpoints and regenerate the reports")
    p.add_argument("--report-only", action="store_true",
                   help="train and evaluate nothing: rewrite the findings, table.md and figures from "
                        "results/rl/<env>.json")
    args = common.parse(p, argv, replicas=False)
    if args.report_only:
        return report_only(args)
    # by default every method, but an Appendix C one only once it has been trained (the campaign
    # or `--methods context` trains it, after its pilot runs)
    methods = args.methods or [m for m in methods_of(args.env) if m not in APPENDIX_METHODS
                               or (args.results / "rl" / args.env / m / "checkpoints").exists()]
    unknown = [m for m in methods if m not in methods_of(args.env)]
    if unknown:
        print(f"error: unknown method(s) {', '.join(unknown)} for {args.env}; choose from "
              f"{', '.join(methods_of(args.env))}", file=sys.stderr)
        return 2
    out = args.results / "rl"
    path = out / f"{args.env}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    metrics, runs = dict(old.get("metrics", {})), dict(old.get("runs", {}))
    seeds = dict(old.get("seeds", {}))
    against = dict(old.get("seeds_vs_paper", {}))
    try:
        for name in methods:
            metrics[name], runs[name] = run_method(args.env, name, args)
            seeds[name] = other_seeds(args.env, name, args)
            own = {"status": runs[name]["status"], "_per_task": metrics[name].pop("_per_task")}
            paper = paper_columns(args.env, name, len(metrics[name]["returns"]))
            against[name] = common.seeds_against_paper([own] + seeds[name], paper) if paper else None
            for r in seeds[name]:
                r.pop("_per_task", None)
    except (ConfigError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    order = [m for m in methods_of(args.env) if m in metrics]
    metrics, runs = {m: metrics[m] for m in order}, {m: runs[m] for m in order}
    main_run = runs.get("maml") or next(iter(runs.values()))
    summary = {"experiment": f"rl/{args.env}", "config": main_run["config"], "commit": records.commit(),
               "iterations": main_run["iterations"], "paper_iterations": main_run["paper_iterations"],
               "status": main_run["status"], "seed": main_run["seed"],
               "wall_time_s": round(sum(r["wall_time_s"] for r in runs.values()), 1),
               "machine": records.machine(), "written": records.now(),
               "eval_tasks": main_run["config"]["eval"]["tasks"], "eval_seed": main_run["config"]["eval"]["seed"],
               "metrics": metrics, "runs": runs,
               "paper": {"maml": PAPER[args.env][0], "oracle": PAPER[args.env][1]}}
    seeds = {m: seeds[m] for m in order if seeds.get(m)}
    against = {m: against[m] for m in order if against.get(m) and m in seeds}
    if seeds:
        summary["seeds"] = seeds
    if against:
        summary["seeds_vs_paper"] = against
    summary["findings"] = findings(args.env, metrics, runs, args.results) + seed_section(args.env, summary)[1]
    out.mkdir(parents=True, exist_ok=True)
    if records.same_results(path, summary) and (out / "table.md").exists():  # no result changed
        print(table(out, [args.env]))
        return 0
    write_reports(out, path, summary, args.env)
    if args.env == "point":
        figure_point_paths(args, metrics, out / "fig4_point_paths.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
