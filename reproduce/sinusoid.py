"""Sinusoid regression (paper §5.1): train MAML, the pretrained and the oracle baselines, evaluate
them on 600 fixed test tasks for K = 5, 10, 20 and 0..10 gradient steps, and regenerate
results/sinusoid/: summary.json, table.md, and the figures (like Figures 2, 3, 6 and 7).

    python -m reproduce.sinusoid [--iterations N]      # make sinusoid
"""
from __future__ import annotations

import sys

import numpy as np

from maml_tf import records
from maml_tf.config import ConfigError
from maml_tf.runs import TrainingError
from reproduce import common

# imported on first use: --help answers without TensorFlow
tf = common.lazy("tensorflow")
evaluate, maml, tasks = (common.lazy(f"maml_tf.{m}") for m in ("evaluate", "maml", "tasks"))
train_lib = common.lazy("maml_tf.train")

METHODS = {"maml": "sinusoid/maml", "maml_alpha0.01": "sinusoid/maml_alpha0.01",
           "pretrained": "sinusoid/pretrained", "oracle": "sinusoid/oracle"}
SHOTS = (5, 10, 20)
STEPS = 10  # the steps every method is reported at (0..10; the oracle, which does not adapt, repeats step 0)
FINETUNE_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
PAPER = {"maml": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}
PAPER_FINETUNE_ALPHA = {5: 0.01, 10: 0.02, 20: 0.02}


def task_source(cfg, shots: int, **extra):
    """The sinusoid's tasks with K = `shots` support points and the config's evaluation settings
    (which tasks: the seed the caller draws them with)."""
    return tasks.build({**cfg.task, **cfg.eval.task, "support": shots, **extra}, split="test")


def finetune_alpha(model, params, cfg, shots: int) -> tuple[float, dict]:
    """A baseline's fine-tuning step for K shots: the grid value with the lowest mean MSE over
    steps 1..10 on 200 held-out *training* tasks (the validation seed, never the test seed)."""
    def score(a):
        r = evaluate.evaluate(model, params, task_source(cfg, shots),
                              maml.mse, maml.mse, cfg.eval.steps, a, n_tasks=200, seed=cfg.train.val_seed)
        return np.mean(r["mean"][1:])
    with np.errstate(over="ignore", invalid="ignore"):  # the large steps diverge, as they should
        return evaluate.tune_step_size(FINETUNE_GRID, score, higher_is_better=False)


def evaluate_method(name: str, learner, cfg, shots=SHOTS) -> dict:
    out = {}
    for k in shots:
        alpha, search = evaluate.step_size(cfg), None
        if name == "pretrained":
            alpha, search = finetune_alpha(learner.model, learner.param_values(), cfg, k)
        # the alpha = 0.01 run diverges after a few steps, as it should (README, What we found): its
        # MSE overflows to inf, which the table shows; numpy's overflow warnings would only alarm
        with np.errstate(over="ignore", invalid="ignore"):
            r = evaluate.evaluate(learner.model, learner.param_values(), task_source(cfg, k), maml.mse,
                                  maml.mse, cfg.eval.steps, alpha, n_tasks=cfg.eval.tasks, seed=cfg.eval.seed)
        mse, ci = r["mean"].tolist(), r["ci95"].tolist()
        if name == "oracle":
            mse, ci = evaluate.not_adapted(mse, STEPS), evaluate.not_adapted(ci, STEPS)
        out[f"K{k}"] = {"mse": mse, "ci95": ci, "alpha": alpha if name != "oracle" else None}
        if k == 5 and name in SEED_METHODS:  # Table 2's columns task by task, for the seeds' statistics (taken out before writing)
            out["K5"]["_per_task"] = [np.asarray(r["per_task"][s], dtype=np.float64) for s in SEED_STEPS]
        if search:
            out[f"K{k}"]["alpha_search"] = {str(a): s for a, s in search.items()}
    return out


SEED_METHODS = ("maml", "pretrained")  # the runs `make campaign` trains with more seeds
SEED_STEPS = (1, 5, 10)                 # Table 2's columns


def other_seeds(name: str, main_dir, iterations, sets) -> list[dict]:
    """The method's runs with other seeds (`<method>_seed<N>` beside its run), each evaluated as
    the main run on the same 5-shot test tasks (Table 2's columns; the pretrained model's
    fine-tuning step searched again for its own parameters)."""
    def evaluate_one(cfg, d) -> dict:
        learner, _ = train_lib.restore(cfg, d)
        k5 = evaluate_method(name, learner, cfg, shots=(5,))["K5"]
        run = common.record(cfg, learner, common.paper_iterations(METHODS[name]), d)
        return {"status": run["status"], "iterations": run["iterations"],
                "values": [k5["mse"][s] for s in SEED_STEPS], "ci95": [k5["ci95"][s] for s in SEED_STEPS],
                "alpha": k5["alpha"], "training_commits": run["training_commits"],
                "wall_time_s": run["wall_time_s"], "_per_task": k5["_per_task"]}
    return common.other_seeds(METHODS[name], main_dir, iterations, sets, evaluate_one)


def seed_section(summary) -> tuple[list[str], list[str]]:
    """Table rows and findings for the methods' runs with other seeds (none: nothing)."""
    seeds = summary.get("seeds") or {}
    if not seeds:
        return [], []
    lines = ["", "## Seeds: 5-shot MSE after 1 / 5 / 10 steps", "",
             f"Each seed's run evaluated on the same {summary['eval_tasks']} test tasks; the config's own seed first.", "",
             "| method | seed | iterations | 1 step | 5 steps | 10 steps |", "|---|---|---|---|---|---|"]
    found = []
    for name, rows in seeds.items():
        m, run = summary["metrics"][name]["K5"], summary["runs"][name]
        own = {"seed": run["seed"], "status": run["status"], "iterations": run["iterations"],
               "values": [m["mse"][s] for s in SEED_STEPS]}
        table_rows, finding = common.seed_lines(name, [own] + rows, [f"{s} step{'s' * (s > 1)}" for s in SEED_STEPS],
                                                [PAPER[name][s] for s in SEED_STEPS],
                                                (summary.get("seeds_vs_paper") or {}).get(name), _num)
        lines += table_rows
        found += [finding] if finding else []
    return lines, found


# ----------------------------------------------------------------------------- figures

def _fits(learner, cfg, alpha, batch, steps=(0, 1, 10)):
    """Predictions on a dense grid after the given numbers of steps, for the tasks in `batch`."""
    xs = np.linspace(-5, 5, 200)
    source = task_source(cfg, batch["xs"].shape[1])
    grid = source.inputs(np.tile(xs, (len(batch["amplitude"]), 1)), batch["amplitude"], batch["phase"])
    fast = maml.per_task(learner.model, learner.param_values(), len(grid))
    preds = {}
    for s in range(max(steps) + 1):
        if s in steps:
            preds[s] = learner.model.apply(fast, tf.constant(grid)).numpy()[..., 0]
        fast = maml.adapt(learner.model, fast, tf.constant(batch["xs"]), tf.constant(batch["ys"]), maml.mse,
                          1, alpha, shared=False, first_step=s)
    return xs, preds


def figure_fits(learners, cfgs, metrics, path, n_tasks: int, seed: int, half: bool):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(k, None) for k in (5, 10)] + ([(5, [-5.0, 0.0])] if half else [])
    fig, axes = plt.subplots(len(rows) * n_tasks, 2, figsize=(10, 2.6 * len(rows) * n_tasks), squeeze=False)
    r = 0
    for k, support_range in rows:
        source = task_source(cfgs["maml"], k, support_range=support_range)
        for j in range(n_tasks):
            batch = source.sample(tasks.stream_rng(seed, j), 1)
            for c, name in enumerate(("maml", "pretrained")):
                alpha = metrics[name][f"K{k}"]["alpha"]
                xs, preds = _fits(learners[name], cfgs[name], alpha, batch)
                ax = axes[r, c]
                truth = batch["amplitude"][0] * np.sin(xs - batch["phase"][0])
                ax.plot(xs, truth, color="red", label="ground truth")
                ax.plot(xs, preds[0][0], ":", color="lightgreen", label="pre-update")
                ax.plot(xs, preds[1][0], "--", color="green", label="1 grad step")
                ax.plot(xs, preds[10][0], "-", color="darkgreen", label="10 grad steps")
                ax.plot(batch["xs"][0, :, 0], batch["ys"][0, :, 0], "^", color="purple",
                        label="used for grad")
                where = " (support in [-5, 0])" if support_range else ""
                ax.set_title(f"{'MAML' if name == 'maml' else 'pretrained'}, K={k}{where}", fontsize=9)
                ax.set_ylim(-6, 6)
                ax.set_ylabel("y", fontsize=8)
                if r == len(rows) * n_tasks - 1:
                    ax.set_xlabel("x", fontsize=8)
            r += 1
    # one legend for all panels, below them, where it covers no data
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / fig.get_size_inches()[1], 1, 1))
    records.write_figure(fig, path)
    plt.close(fig)


def figure_curves(metrics, path, shots, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(shots), figsize=(4.6 * len(shots), 3.6), squeeze=False)
    styles = {"maml": ("MAML (ours)", "tab:green"), "pretrained": ("pretrained, step tuned", "tab:red"),
              "oracle": ("oracle", "tab:blue")}
    for ax, k in zip(axes[0], shots):
        for name, (label, color) in styles.items():
            m = metrics[name][f"K{k}"]
            y, ci = np.array(m["mse"]), np.array(m["ci95"])
            steps = np.arange(len(y))
            ax.plot(steps, y, "o-", ms=3, color=color, label=label)
            ax.fill_between(steps, y - ci, y + ci, color=color, alpha=0.2)
        if k == 5:
            for name, marker in (("maml", "x"), ("pretrained", "x")):
                ax.plot(list(PAPER[name]), list(PAPER[name].values()), marker, color=styles[name][1],
                        ms=8, mew=2, label=f"paper, {name}")
        ax.set_title(f"k-shot regression, k={k}")
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel("mean squared error")
        ax.set_ylim(bottom=0)
    handles = {l: h for ax in axes[0] for h, l in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)  # below the panels: it covers no curve
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.3 / fig.get_size_inches()[1], 1, 1))
    records.write_figure(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- tables

def table(summary) -> str:
    m, runs = summary["metrics"], summary["runs"]
    lines = ["# Sinusoid regression: results", "",
             "Generated by `make sinusoid` (`python -m reproduce.sinusoid`); do not edit by hand. "
             f"Commit {summary['commit']}, {summary['written']}.", "",
             "Test protocol: 600 fixed test tasks (seed "
             f"{summary['eval_seed']}), K support points, MSE on 100 query points of each task's curve, "
             "mean and 95% CI (1.96 std / sqrt(600)). Test step size = training step size for MAML; "
             "for the pretrained model, searched per K on held-out training tasks.", "",
             "## 5-shot MSE after 1 / 5 / 10 steps (paper App. C, Table 2)", "",
             "| method | iterations (paper) | 1 step | 5 steps | 10 steps | paper 1 / 5 / 10 |",
             "|---|---|---|---|---|---|"]
    for name in METHODS:
        k5 = m[name]["K5"]
        cells = [f"{_num(k5['mse'][s])} ± {_num(k5['ci95'][s])}" for s in (1, 5, 10)]
        paper = " / ".join(f"{v:.2f}" for v in PAPER[name].values()) if name in PAPER else "-"
        run = runs[name]
        label = f"{run['iterations']} ({run['paper_iterations']}){'' if run['status'] == 'full' else ', PARTIAL'}"
        lines.append(f"| {name} | {label} | {' | '.join(cells)} | {paper} |")
    lines += ["", "## MSE against steps (Figures 3 and 6)", "",
              "| method | K | alpha | " + " | ".join(f"{s}" for s in range(STEPS + 1)) + " |",
              "|---|---|---|" + "---|" * (STEPS + 1)]
    for name in METHODS:
        for k in SHOTS:
            e = m[name][f"K{k}"]
            lines.append(f"| {name} | {k} | {e['alpha']} | " + " | ".join(_num(v) for v in e["mse"]) + " |")
    seed_rows, _ = seed_section(summary)
    lines += seed_rows
    lines += ["", "## Findings", ""] + [f"- {f}" for f in summary["findings"]] + [""]
    return "\n".join(lines)


def _num(v: float) -> str:
    """Readable in a table: 2 decimals, 3 below 0.1, scientific when it diverged."""
    if not np.isfinite(v):
        return "diverged" if np.isnan(v) else "inf"
    return f"{v:.3g}" if abs(v) >= 1000 else (f"{v:.3f}" if abs(v) < 0.1 else f"{v:.2f}")


def findings(metrics, runs) -> list[str]:
    out = []
    a, b = metrics["maml"]["K5"]["mse"], metrics["maml_alpha0.01"]["K5"]["mse"]
    paper = [PAPER["maml"][s] for s in (1, 5, 10)]

    def gap(m):
        g = float(np.mean([abs(m[s] - p) for s, p in zip((1, 5, 10), paper)]))
        return g if np.isfinite(g) else float("inf")
    better = "alpha = 1e-3 (the code's flag)" if gap(a) <= gap(b) else "alpha = 0.01 (the paper text's)"
    out.append(f"Step size: with alpha = 1e-3 (default) the 5-shot MSE after 1/5/10 steps is "
               f"{_num(a[1])}/{_num(a[5])}/{_num(a[10])}; with alpha = 0.01 it is "
               f"{_num(b[1])}/{_num(b[5])}/{_num(b[10])} (paper 0.67/0.38/0.35). {better} is closer to the "
               f"paper: mean absolute gap {min(gap(a), gap(b)):.2f} against {max(gap(a), gap(b)):.2f}.")
    if not all(np.isfinite(b)) or b[10] > 2 * b[1]:
        out.append("With alpha = 0.01, MAML's one-step MSE is as low as the paper's but further steps "
                   "overshoot (the meta-learned initialisation sits where one step of 0.01 is just "
                   "right, so repeated steps diverge); Figure 3's curve, still improving at 10 steps, "
                   "is the alpha = 1e-3 behaviour.")
    for k in SHOTS:
        out.append(f"Pretrained fine-tuning step for K={k}, searched on held-out training tasks: "
                   f"{metrics['pretrained'][f'K{k}']['alpha']} (paper: {PAPER_FINETUNE_ALPHA[k]}).")
    partial = [n for n, r in runs.items() if r["status"] != "full"]
    if partial:
        out.append(f"PARTIAL: {', '.join(partial)} trained for fewer iterations than the paper's 70,000; "
                   "these numbers are not the full reproduction.")
    return out


def main(argv=None) -> int:
    return common.guard(lambda: _main(argv))


def _main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the configs')")
    p.add_argument("--eval-only", action="store_true",
                   help="train nothing: evaluate the committed (or existing) checkpoints")
    args = common.parse(p, argv)
    out = args.results / "sinusoid"
    sets = list(args.set) + ([f"seed={args.seed}"] if args.seed is not None else [])
    learners, cfgs, runs, metrics = {}, {}, {}, {}
    try:
        for name, cfg_name in METHODS.items():
            cfg = common.load(cfg_name, args.iterations, sets)
            if not args.quiet:
                print(f"== {name}", file=sys.stderr)
            run_dir = common.run_dir(cfg, args.results)
            if args.eval_only:
                learners[name], _ = train_lib.restore(cfg, run_dir)
            else:
                if not args.quiet:
                    from reproduce import campaign
                    print(campaign.estimate(run_dir, cfg.train.iterations, None if sets else cfg_name, args.results),
                          file=sys.stderr)
                learners[name] = train_lib.train(cfg, run_dir, quiet=args.quiet)
            cfgs[name] = cfg
            runs[name] = common.record(cfg, learners[name], common.paper_iterations(cfg_name), run_dir)
            metrics[name] = evaluate_method(name, learners[name], cfg)
    except (ConfigError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds = {name: rows for name in SEED_METHODS
             if (rows := other_seeds(name, common.run_dir(cfgs[name], args.results), args.iterations, sets))}
    against = {}
    for name, rows in seeds.items():
        own = {"status": runs[name]["status"], "_per_task": metrics[name]["K5"]["_per_task"]}
        if (a := common.seeds_against_paper([own] + rows, [PAPER[name][s] for s in SEED_STEPS])):
            against[name] = a
        for r in rows:
            r.pop("_per_task", None)
    for m in metrics.values():
        m["K5"].pop("_per_task", None)
    main_run = runs["maml"]
    summary = {"experiment": "sinusoid", "config": main_run["config"], "commit": main_run["commit"],
               "iterations": main_run["iterations"], "paper_iterations": main_run["paper_iterations"],
               "status": main_run["status"], "seed": main_run["seed"], "wall_time_s": main_run["wall_time_s"],
               "machine": main_run["machine"], "written": records.now(), "eval_seed": cfgs["maml"].eval.seed,
               "eval_tasks": cfgs["maml"].eval.tasks, "metrics": metrics, "runs": runs,
               "paper": {"maml": {"K5": PAPER["maml"]}, "pretrained": {"K5": PAPER["pretrained"]}}}
    if seeds:
        summary["seeds"] = seeds
    if against:
        summary["seeds_vs_paper"] = against
    summary["findings"] = findings(metrics, runs) + seed_section(summary)[1]
    out.mkdir(parents=True, exist_ok=True)
    # the figures are drawn every time (the same numbers draw the same bytes); the summary and
    # the table are rewritten only when a result changed
    if not (records.same_results(out / "summary.json", summary) and (out / "table.md").exists()):
        records.write_json(out / "summary.json", summary)
        (out / "table.md").write_text(table(summary))
    label = "" if main_run["status"] == "full" else f" PARTIAL: {main_run['iterations']} of 70,000 iterations"
    figure_curves(metrics, out / "fig3_learning_curves.png", (5, 10),
                  f"Figure 3 (ours): 600 test tasks, 95% CI bands.{label}")
    figure_curves(metrics, out / "fig6_learning_curves_k5_10_20.png", SHOTS,
                  f"Figure 6 (ours): 600 test tasks, 95% CI bands.{label}")
    figure_fits(learners, cfgs, metrics, out / "fig2_fits.png", n_tasks=1, seed=7, half=True)
    figure_fits(learners, cfgs, metrics, out / "fig7_fits_random_sample.png", n_tasks=3, seed=8, half=False)
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
