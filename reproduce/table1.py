"""Table 1: few-shot classification on Omniglot and MiniImagenet.

For every cell: train (or resume) its config up to the budget, restore the checkpoint that
meta-validation picked, evaluate it on 600 fixed test tasks, and write results/table1.md and
results/table1.json beside the paper's numbers. Cells whose data is absent, or that have no
checkpoint with --eval-only, are reported as not run, with the reason; a cell whose data is absent
here but that table1.json lists as evaluated keeps that row (a clone without MiniImagenet's images
leaves the committed MiniImagenet numbers as they are).

    python -m reproduce.table1 [--iterations N] [--cells omniglot_5w1s_conv,...] [--eval-only [--reuse-unchanged]]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from maml_tf import records, runs
from maml_tf.config import ConfigError
from maml_tf.runs import TrainingError
from reproduce import common

PAPER_ITERATIONS = 60000


def inside(accuracy: float, ci95: float, value: float) -> bool:
    """Whether `value` lies inside accuracy ± ci95, as the table shows them (two decimals: an edge
    that float rounding puts a hair outside is inside)."""
    return bool(round(abs(accuracy - value), 2) <= ci95)


class Cell(NamedTuple):
    dataset: str
    way: int
    shot: int
    model: str
    order: str
    config: str
    paper_accuracy: float
    paper_ci95: float

    @property
    def name(self) -> str:
        suffix = "" if self.order == "second" else "_first_order"
        return f"{self.dataset}_{self.way}w{self.shot}s_{self.model}{suffix}"


CELLS = [
    Cell("omniglot", 5, 1, "mlp", "second", "omniglot/mlp_5w1s", 89.7, 1.1),
    Cell("omniglot", 5, 5, "mlp", "second", "omniglot/mlp_5w5s", 97.5, 0.6),
    Cell("omniglot", 5, 1, "conv", "second", "omniglot/conv_5w1s", 98.7, 0.4),
    Cell("omniglot", 5, 5, "conv", "second", "omniglot/conv_5w5s", 99.9, 0.1),
    Cell("omniglot", 20, 1, "conv", "second", "omniglot/conv_20w1s", 95.8, 0.3),
    Cell("omniglot", 20, 5, "conv", "second", "omniglot/conv_20w5s", 98.9, 0.2),
    Cell("omniglot", 5, 1, "conv", "first", "omniglot/conv_5w1s_first_order", None, None),
    Cell("miniimagenet", 5, 1, "conv", "first", "miniimagenet/conv_5w1s_first_order", 48.07, 1.75),
    Cell("miniimagenet", 5, 5, "conv", "first", "miniimagenet/conv_5w5s_first_order", 63.15, 0.91),
    Cell("miniimagenet", 5, 1, "conv", "second", "miniimagenet/conv_5w1s", 48.70, 1.84),
    Cell("miniimagenet", 5, 5, "conv", "second", "miniimagenet/conv_5w5s", 63.11, 0.92),
]


# what a reused test evaluation carries over (`run_cell`'s `previous`): the test numbers and the
# provenance of the evaluation that measured them
REUSED = ("accuracy", "ci95", "accuracy_by_step", "ci95_by_step", "paired_ci95_by_step", "commit", "machine")


def best_digest(run_dir) -> str | None:
    """sha256 over the files of the run's best checkpoint (best/<prefix>.index and .data-*: their
    names, which hold its step, and contents), or None when it has none yet: what identifies the
    parameters a test evaluation measured."""
    import hashlib
    import re
    from data_prep.common import sha256
    best = Path(run_dir) / "best"
    try:
        prefix = re.search(r'^model_checkpoint_path: "(.+)"$', (best / "checkpoint").read_text(), re.M).group(1)
    except (OSError, AttributeError):
        return None
    files = sorted(best.glob(f"{prefix}.*"))
    return hashlib.sha256(" ".join(f"{f.name}:{sha256(f)}" for f in files).encode()).hexdigest() if files else None


def config_digest(cfg) -> str:
    """sha256 of every setting of the config but its budget (train.iterations): the test protocol
    and everything else an evaluation reads (task, model, eval, the step size, meta-validation)."""
    import hashlib
    settings = cfg.to_dict()
    settings["train"].pop("iterations", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def blank_row(cell: Cell, note: str = "") -> dict:
    """The cell's row before anything is evaluated (status not_run)."""
    return {"dataset": cell.dataset, "way": cell.way, "shot": cell.shot, "model": cell.model,
            "order": cell.order, "accuracy": None, "ci95": None, "paper_accuracy": cell.paper_accuracy,
            "paper_ci95": cell.paper_ci95, "iterations": 0, "paper_iterations": PAPER_ITERATIONS,
            "wall_time_s": None, "status": "not_run", "note": note, "config": cell.config}


def run_cell(cell: Cell, iterations: int | None, eval_only: bool, results, quiet: bool,
             previous: dict | None = None, committed: dict | None = None) -> dict:
    """The cell's row of Table 1. With `previous` (the cell's row in table1.json, from
    `--reuse-unchanged`), a picked checkpoint that has not changed since (the same files and step,
    the same settings but the budget; no runs of other seeds, whose comparison needs the per-task
    results) keeps its test numbers and their provenance instead of being evaluated again;
    iterations, status, wall time and the notes follow the run as it is now. A change to the
    evaluation code is not seen: `make table1` (no reuse) measures again. `committed`, the cell's
    row as the results folder has it: kept, with a note on stderr, when this machine lacks the
    cell's dataset (a clone without MiniImagenet's images keeps the committed evaluation of the
    committed checkpoint) and that row was evaluated."""
    from maml_tf import supervised, tasks  # here: --help answers without TensorFlow
    from maml_tf import train as train_lib
    row = blank_row(cell)
    cfg = common.load(cell.config, iterations)
    run_dir = common.run_dir(cfg, results)
    try:
        test_source = supervised.task_source(cfg, "test")
    except tasks.MissingData as e:
        if (committed or {}).get("accuracy") is not None:
            print(f"note: {cell.name} not evaluated here ({e}); its row keeps the evaluation of commit "
                  f"{committed.get('commit', '?')[:12]}", file=sys.stderr)
            return committed
        row["note"] = str(e)
        return row
    has_checkpoint = (run_dir / "checkpoints" / "checkpoint").exists()
    if eval_only and not has_checkpoint:
        where = run_dir.relative_to(results.parent) if run_dir.is_relative_to(results.parent) else run_dir
        how = (f"make table1 TRAIN=1 TABLE1_ARGS=--cells {cell.name}" if cell.name in {c.name for c in CELLS}
               else f"python -m reproduce.train {cell.config}")  # (Appendix C's context cells)
        row["note"] = f"no checkpoint in {where}: train it with `{how}` or `make campaign`"
        return row
    if not eval_only:
        train_lib.train(cfg, run_dir, quiet=quiet)
    digest = best_digest(run_dir)  # (before the restore: a checkpoint written between them is not reused)
    best, best_step = train_lib.restore(cfg, run_dir, "best")  # its step and wall time: the latest's
    seeds = other_seeds(cell, iterations, run_dir, test_source)
    protocol = {"eval_seed": cfg.eval.seed, "eval_tasks": cfg.eval.tasks, "test_steps": cfg.eval.steps}
    settings = config_digest(cfg)
    # (the two digests imply the step, the config's settings and a row written with every REUSED key)
    reuse = bool(previous and digest and not seeds and previous.get("evaluated_checkpoint_sha256") == digest
                 and previous.get("evaluated_config_sha256") == settings)
    if reuse:
        row.update({k: previous[k] for k in REUSED}, **run_record(best, best_step, run_dir))
    else:
        row.update(evaluate_run(best, best_step, cfg, run_dir, test_source), commit=records.commit(),
                   machine=records.machine())
    row.update(seed=cfg.seed, **protocol)
    if digest:
        row.update(evaluated_checkpoint_sha256=digest, evaluated_config_sha256=settings)
    kept = lambda key: previous[key] if reuse and key in previous else None  # noqa: E731
    done = row["iterations"]
    if cell.paper_accuracy is not None:
        row["paper_inside_ci"] = inside(row["accuracy"], row["ci95"], cell.paper_accuracy)
        # the full runs of two or more seeds against the paper's value (one column: the headline step)
        against = common.seeds_against_paper([row] + seeds, [cell.paper_accuracy], [cell.paper_ci95])
        if against:
            a = against["columns"][0]
            row["seeds_vs_paper"] = {"runs": against["runs"], "difference": round(a["difference"], 2),
                                     "allowed": round(a["allowed"], 2), "df": a["df"]}
        if row["status"] == "full" and not row["paper_inside_ci"] and cfg.train.val_tasks:
            row["accuracy_by_split"] = kept("accuracy_by_split") or split_check(best, cfg)
    for r in [row] + seeds:
        r.pop("_per_task", None)
    if seeds:
        row["other_seeds"] = seeds
    notes = []
    if row["status"] == "partial":
        notes.append(f"PARTIAL: {done} of the paper's {PAPER_ITERATIONS} iterations")
    if (run_dir / "best" / "checkpoint").exists():
        notes.append(f"checkpoint picked by meta-validation at iteration {row['evaluated_checkpoint_step']}")
    else:
        notes.append(f"no meta-validation yet (every {cfg.train.val_every} iterations): the latest checkpoint")
    if row["status"] == "partial":
        notes.append(validation_trend(run_dir))
    trend = step_trend(row, cfg)
    if trend and cfg.train.val_tasks:  # the same curve on meta-validation tasks: not a test-set accident
        row["val_accuracy_by_step"] = kept("val_accuracy_by_step") or validation_by_step(best, cfg)
        trend += (f"; on {cfg.train.val_tasks} meta-validation tasks: " +
                  " / ".join(f"{a:.2f}" for a in row["val_accuracy_by_step"][1:]))
    notes += [trend, split_note(row), seed_spread(row)]
    row["note"] = "; ".join(n for n in notes if n)
    return row


def evaluate_run(best, best_step: int, cfg, run_dir, test_source) -> dict:
    """A run's learner `best` with the parameters meta-validation picked (at `best_step`; the latest
    before the first validation), evaluated on the config's fixed test tasks: accuracy % and 95% CI
    after each test step."""
    from maml_tf import evaluate
    res = evaluate_protocol(best, cfg, test_source)
    step = cfg.eval.headline_step
    per_task = [100 * np.asarray(res["per_task"][step], dtype=np.float64)]  # the headline column (seeds' statistics; not written)
    paired = evaluate.ci95(res["per_task"] - res["per_task"][step])  # each step against the headline, task by task
    return {"accuracy": round(100 * float(res["mean"][step]), 2), "ci95": round(100 * float(res["ci95"][step]), 2),
            "accuracy_by_step": [round(100 * float(a), 2) for a in res["mean"]],
            "ci95_by_step": [round(100 * float(c), 2) for c in res["ci95"]],
            "paired_ci95_by_step": [round(100 * float(c), 2) for c in paired],
            **run_record(best, best_step, run_dir), "_per_task": per_task}


def run_record(best, best_step: int, run_dir) -> dict:
    """What a row says of the run itself: iterations done (the latest checkpoint's), the iteration
    of the evaluated parameters, wall time, status against the paper's budget, training commits."""
    done = int(best.step.numpy())
    return {"iterations": done, "evaluated_checkpoint_step": best_step,
            "wall_time_s": round(float(best.wall_time.numpy()), 1),
            "status": "full" if done >= PAPER_ITERATIONS else "partial",
            "training_commits": runs.training_commits(run_dir)}


def evaluate_protocol(best, cfg, source) -> dict:
    """`evaluate.evaluate` of the learner `best` with the test protocol (eval.tasks, eval.seed,
    eval.steps, the learner's step size) on the tasks of `source`."""
    from maml_tf import evaluate, supervised
    return evaluate.evaluate(best.model, best.param_values(), source, best.loss_fn, best.metric_fn,
                             cfg.eval.steps, supervised.step_size(best), n_tasks=cfg.eval.tasks,
                             seed=cfg.eval.seed, batch=cfg.eval.batch)


def validation_by_step(best, cfg) -> list[float]:
    """Meta-validation accuracy % after 0..eval.steps of the learner that table1 evaluates."""
    from maml_tf import supervised
    return [round(100 * float(a), 2) for a in supervised.validation_by_step(best, cfg)["mean"]]


SPLIT_NAMES = {"val": "meta-validation", "train": "meta-training"}


def split_check(best, cfg) -> dict[str, list[float]]:
    """The learner table1 evaluates, on as many tasks as the test (same seed, steps and step size)
    drawn from the meta-validation and the meta-training classes instead of the test classes:
    {split: [accuracy %, 95% CI] at the headline step}. For a full run whose interval misses the
    paper's value: is the gap in which classes are tested (Omniglot's split is not the official
    one, which cannot be rebuilt: data_prep/omniglot.py), or in the network? A diagnosis only:
    nothing is picked or tuned by it."""
    from maml_tf import supervised
    step, out = cfg.eval.headline_step, {}
    for split in SPLIT_NAMES:
        res = evaluate_protocol(best, cfg, supervised.task_source(cfg, split))
        out[split] = [round(100 * float(res["mean"][step]), 2), round(100 * float(res["ci95"][step]), 2)]
    return out


def split_note(row: dict) -> str:
    """`split_check`'s numbers beside the paper's value. The meta-validation classes are held out as
    the test classes are: the paper's value inside our interval there points at which classes are
    tested; outside it, not. The meta-training classes say whether the network reaches that value
    even on classes it was trained on."""
    by_split = row.get("accuracy_by_split")
    if not by_split:
        return ""
    units = "characters" if row["dataset"] == "omniglot" else "classes"
    paper = row["paper_accuracy"]
    where = {s: "inside" if inside(a, c, paper) else ("above" if paper > a else "below")
             for s, (a, c) in by_split.items()}
    text = (f"on {row.get('eval_tasks', 600)} tasks of the " + " / ".join(SPLIT_NAMES[s] for s in by_split) +
            f" {units} instead (a diagnosis): " + " / ".join(f"{a:.2f} ± {c:.2f}" for a, c in by_split.values()))
    held_out = {"inside": f"; the paper's value lies inside our interval on the held-out meta-validation {units}: "
                          f"the gap may lie in which {units} are tested",
                "above": f"; the paper's value lies above our interval on the held-out meta-validation {units} "
                         f"too: the gap is not in which {units} are tested",
                "below": f"; the paper's value lies below our interval on the held-out meta-validation {units}"}
    text += held_out[where["val"]]
    return text + {"inside": f"; on the meta-training {units} it lies inside our interval",
                   "above": f"; it lies above our interval even on the meta-training {units}",
                   "below": f"; on the meta-training {units} it lies below our interval"}[where["train"]]


def other_seeds(cell: Cell, iterations: int | None, run_dir, test_source) -> list[dict]:
    """The cell's runs with other seeds, each evaluated as the main run (same test tasks)."""
    from maml_tf import train as train_lib
    return common.other_seeds(cell.config, run_dir, iterations, (), lambda cfg, d: evaluate_run(
        *train_lib.restore(cfg, d, "best"), cfg, d, test_source))


def step_trend(row: dict, cfg) -> str:
    """A finding when accuracy falls with further test steps before the headline step (the paper's
    protocol): a model trained with fewer inner steps can do best earlier. Reported, never used to
    pick the headline number (these are meta-test tasks)."""
    acc, ci = row.get("accuracy_by_step") or [], row.get("ci95_by_step") or []
    headline = cfg.eval.headline_step
    if len(acc) <= headline or headline < 2:
        return ""
    peak = max(range(1, headline), key=lambda k: acc[k])
    # the fall, task by task on the same tasks (its paired CI), or, for older rows, the headline's CI
    paired = row.get("paired_ci95_by_step")
    margin = paired[peak] if paired and len(paired) == len(acc) else row["ci95"]
    if acc[peak] - acc[headline] <= margin:
        return ""
    text = (f"accuracy falls after test step {peak}: " + " / ".join(f"{a:.2f}" for a in acc[1:headline + 1]) +
            f" after 1..{headline} steps (trained with {cfg.train.inner_steps} inner step"
            f"{'s' if cfg.train.inner_steps > 1 else ''}; a fall of {acc[peak] - acc[headline]:.2f} ± {margin:.2f}"
            f"{', paired over the tasks' if paired else ''})")
    if row.get("paper_accuracy") is not None and not row.get("paper_inside_ci") and len(ci) == len(acc) \
            and inside(acc[peak], ci[peak], row["paper_accuracy"]):
        text += f"; the paper's value lies inside our interval after step {peak} ({acc[peak]:.2f} ± {ci[peak]:.2f})"
    return text


def seed_spread(row: dict) -> str:
    """With runs of other seeds: each seed's accuracy (partial runs labelled), and over the runs
    at the full budget, when there are two or more, their mean and standard deviation and whether
    the paper's value differs from their mean by more than seed variance and the two test samples
    allow (row["seeds_vs_paper"], from `evaluate.against_seeds` on the runs' per-task results)."""
    seeds = row.get("other_seeds") or []
    if not seeds:
        return ""
    import statistics
    every = [{"seed": row["seed"], "accuracy": row["accuracy"], "status": row["status"]}] + seeds
    shown = [f"{s['accuracy']:.2f}" + ("" if s["status"] == "full" else " (partial)") if "error" not in s
             else f"not evaluated ({s['error']})" for s in every]
    text = "seeds " + " / ".join(str(s["seed"]) for s in every) + ": " + " / ".join(shown)
    full = [s["accuracy"] for s in every if "error" not in s and s["status"] == "full"]
    if len(full) >= 2:
        text += f"; over the {len(full)} full runs mean {statistics.mean(full):.2f}, std {statistics.stdev(full):.2f}"
        v = row.get("seeds_vs_paper")
        if v and v["runs"] == len(full):
            from maml_tf.evaluate import SEEDS_FOR_A_VERDICT
            diff, half = v["difference"], v["allowed"]
            text += (f"; the paper's value {abs(diff):.2f} {'above' if diff > 0 else 'below'} their mean, "
                     f"{'within' if abs(diff) <= half else 'beyond'} the {half:.2f} that seed variance and the two "
                     f"test samples allow (95%, t with {v['df']} df): "
                     + (f"{v['runs']} runs are too few to tell" if v["runs"] < SEEDS_FOR_A_VERDICT else
                        "not seed variance" if abs(diff) > half else "seed variance can explain it"))
    return text


def validation_curve(run_dir) -> dict[int, float]:
    """Meta-validation accuracy by iteration, from the run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    return {r["step"]: r["val_accuracy"] for r in map(json.loads, path.read_text().splitlines())
            if "val_accuracy" in r}


def cell_curve(config: str, results) -> dict[int, float]:
    """`validation_curve` of the config's own run (its seed) under `results`."""
    return validation_curve(common.run_dir(common.load(config), results))


def validation_trend(run_dir, last: int = 4) -> str:
    """How the meta-validation accuracy moved over the run's last validations: whether a partial
    run had stopped improving or was still learning."""
    vals = sorted(validation_curve(run_dir).items())[-last:]
    if len(vals) < 2:
        return ""
    rise = 100 * (vals[-1][1] - vals[0][1])
    trend = "still rising" if rise > 1.0 else ("falling" if rise < -1.0 else "flat")
    return (f"meta-validation accuracy {trend} at the end: " +
            " / ".join(f"{100 * v:.1f} ({k})" for k, v in vals))


def first_vs_second_order(rows: list[dict], results) -> None:
    """§5.2 compares first- and second-order MAML in accuracy and time. On the first-order row:
    meta-validation accuracy of both at the same iteration (fair when one run is shorter), and
    the measured step times (results/bench/latest.json, `make bench`)."""
    key = lambda r: (r["dataset"], r["way"], r["shot"], r["model"])
    bench_path = results / "bench" / "latest.json"
    bench = {b["name"]: b for b in json.loads(bench_path.read_text())["settings"]} if bench_path.exists() else {}
    for r in rows:
        second = next((q for q in rows if key(q) == key(r) and q["order"] == "second"), None)
        if r["order"] != "first" or second is None or r["accuracy"] is None:
            continue
        texts = []
        curves = [cell_curve(q["config"], results) for q in (r, second)]
        shared = sorted(set(curves[0]) & set(curves[1]))
        if shared:
            k = shared[-1]
            texts.append(f"meta-validation at iteration {k}: {100 * curves[0][k]:.1f} first vs "
                         f"{100 * curves[1][k]:.1f} second order")
        cell = f"{r['dataset']}_{r['way']}w{r['shot']}s"
        fo, so = (bench.get(f"{cell}_{r['model']}_{o}_order") or bench.get(f"{cell}_{o}_order")
                  for o in ("first", "second"))  # (the MiniImagenet rows do not name the net)
        if fo and so:
            fs, ss = fo["seconds_per_iteration"], so["seconds_per_iteration"]
            texts.append(f"meta-step {1e3 * fs:.0f} ms vs {1e3 * ss:.0f} ms second order (make bench, "
                         f"{ss / fs:.2f}x faster, {100 * (1 - fs / ss):.0f}% less time"
                         + ("; §5.2: about 33% faster" if r["dataset"] == "miniimagenet" else "") + ")")
        r["first_vs_second_order"] = "; ".join(texts)


FIGURE = "table1_validation.png"


def figure(rows: list[dict], results) -> Path | None:
    """results/table1_validation.png: each cell's meta-validation accuracy against the iterations
    trained (from its metrics.jsonl), one panel per setting; a star marks the test accuracy of the
    checkpoint meta-validation picked (at its iteration), a dashed line the paper's test accuracy.
    Drawn from the committed records only; the same records draw the same bytes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = {id(r): sorted(c.items()) for r in rows if (c := cell_curve(r["config"], results))}
    panels = list(dict.fromkeys((r["dataset"], r["way"], r["shot"]) for r in rows if id(r) in curves))
    if not panels:
        return None
    cols = min(3, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(4.6 * cols, 3.4 * -(-len(panels) // cols)),
                             squeeze=False)
    for ax, (dataset, way, shot) in zip(axes.flat, panels):
        for i, r in enumerate(q for q in rows if (q["dataset"], q["way"], q["shot"]) == (dataset, way, shot)
                              and id(q) in curves):
            color = f"C{i}"
            label = f"{r['model']}, {r['order']} order" + (" (partial)" if r.get("status") == "partial" else "")
            steps, acc = zip(*curves[id(r)])
            ax.plot(steps, [100 * a for a in acc], color=color, lw=1.2, label=label)
            if r.get("accuracy") is not None and r.get("evaluated_checkpoint_step") is not None:
                ax.plot([r["evaluated_checkpoint_step"]], [r["accuracy"]], "*", color=color, ms=9)
            if r.get("paper_accuracy") is not None:
                ax.axhline(r["paper_accuracy"], color=color, ls="--", lw=0.9)
        ax.set_title(f"{dataset} {way}-way {shot}-shot", fontsize=10)
        ax.set_xlim(0, PAPER_ITERATIONS)
        ax.set_xlabel("meta-training iterations", fontsize=9)
        ax.set_ylabel("accuracy %", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Table 1 (ours): meta-validation accuracy while training (lines); test accuracy of the "
                 "picked checkpoint (stars); the paper's test accuracy (dashed)", fontsize=9)
    fig.tight_layout()
    path = Path(results) / FIGURE
    records.write_figure(fig, path)
    plt.close(fig)
    return path


def markdown(rows: list[dict]) -> str:
    lines = ["# Table 1: few-shot classification", "",
             "Generated by `make table1` (`python -m reproduce.table1`); do not edit by hand. Each row's "
             "provenance (config, the commits that trained and evaluated it, seed, machine) is in "
             "`results/table1.json`.", "",
             "Accuracy % on 600 fixed test tasks (mean, 95% CI = 1.96 std / sqrt(600)), with the "
             "checkpoint picked by meta-validation. A **partial** run trained fewer iterations than the "
             "paper's 60,000: its number is not the full reproduction. The meta-validation curves: "
             f"[`{FIGURE}`]({FIGURE}).", "",
             "| dataset | way | shot | net | MAML | ours | paper | paper in our CI | iterations | wall time | status | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = f"{r['accuracy']:.2f} ± {r['ci95']:.2f}" if r["accuracy"] is not None else "-"
        paper = f"{r['paper_accuracy']} ± {r['paper_ci95']}" if r["paper_accuracy"] is not None else "(§5.2: FO ≈ SO)"
        inside = {True: "yes", False: "no"}.get(r.get("paper_inside_ci"), "-")
        wall = f"{r['wall_time_s'] / 3600:.1f} h" if r["wall_time_s"] else "-"
        lines.append(f"| {r['dataset']} | {r['way']} | {r['shot']} | {r['model']} | {r['order']} order | {ours} | "
                     f"{paper} | {inside} | {r['iterations']} / {r['paper_iterations']} | {wall} | "
                     f"{r['status']} | {'; '.join(n for n in (r['note'], r.get('first_vs_second_order')) if n)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return common.guard(lambda: _main(argv))


def _main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--cells", default=None, help="comma-separated cell names (default: all): "
                   + ", ".join(c.name for c in CELLS))
    p.add_argument("--eval-only", action="store_true", help="evaluate existing checkpoints, train nothing")
    p.add_argument("--reuse-unchanged", action="store_true",
                   help="keep the test numbers of table1.json for a cell whose picked checkpoint has not changed "
                        "since they were measured (same files and step, same settings but the budget, no runs of "
                        "other seeds); the campaign's reports use it. Without it every picked checkpoint is evaluated")
    args = common.parse(p, argv)
    wanted = set(args.cells.split(",")) if args.cells else None
    unknown = (wanted or set()) - {c.name for c in CELLS}
    if unknown:
        print(f"error: unknown cell(s) {sorted(unknown)}; known: {[c.name for c in CELLS]}", file=sys.stderr)
        return 2
    if not args.eval_only:  # what training will cost, before any of it starts
        from reproduce import campaign
        for cell in CELLS:
            if wanted is None or cell.name in wanted:
                cfg = common.load(cell.config, args.iterations)
                print(campaign.estimate(common.run_dir(cfg, args.results), cfg.train.iterations, cell.config,
                                        args.results), file=sys.stderr)
    out_json = args.results / "table1.json"
    previous = {(r["dataset"], r["way"], r["shot"], r["model"], r["order"]): r
                for r in (json.loads(out_json.read_text()) if out_json.exists() else [])}
    rows = []
    try:
        for cell in CELLS:
            key = (cell.dataset, cell.way, cell.shot, cell.model, cell.order)
            if wanted is not None and cell.name not in wanted:
                if key in previous:
                    rows.append(previous[key])  # keep what an earlier run measured
                    continue
                rows.append(run_cell(cell, args.iterations, True, args.results, args.quiet))  # (not in table1.json)
                continue
            if not args.quiet:
                print(f"== {cell.name}", file=sys.stderr)
            rows.append(run_cell(cell, args.iterations, args.eval_only, args.results, args.quiet,
                                 previous.get(key) if args.reuse_unchanged else None, committed=previous.get(key)))
    except (ConfigError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    first_vs_second_order(rows, args.results)
    for i, r in enumerate(rows):
        old = previous.get((r["dataset"], r["way"], r["shot"], r["model"], r["order"]), {})
        if not r.get("training_commits"):  # a run older than sessions.jsonl: keep what was recorded
            r.pop("training_commits", None)
            if old.get("training_commits"):
                r["training_commits"] = old["training_commits"]
        if old and records.same_data(old, r):
            rows[i] = old  # an unchanged row keeps its provenance: which commit evaluated it, where
    figure(rows, args.results)  # (the same records draw the same bytes: rewritten only if they moved)
    if records.same_results(out_json, rows) and (args.results / "table1.md").exists():  # nothing changed
        print((args.results / "table1.md").read_text())
        return 0
    records.write_json(out_json, rows)
    (args.results / "table1.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
