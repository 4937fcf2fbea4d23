"""What every entry point shares: configs with command-line overrides, run directories, records."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from maml_tf import config as config_lib
from maml_tf import records, runs

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "reproduce" / "configs"
RESULTS = ROOT / "results"


def run_dir(cfg: config_lib.Config, results: Path = RESULTS, name: str | Path | None = None) -> Path:
    """RESULTS/<experiment>/<method>; with the config's `name`, a seed other than the one its file
    sets trains in <method>_seed<N> (as `make campaign` does), where `make table1` finds each seed."""
    suffix = seed_suffix(cfg.seed, load(name).seed) if name is not None else ""
    return results / cfg.experiment / (cfg.method + suffix)


def seed_suffix(seed: int | None, file_seed: int) -> str:
    """The run directory's suffix for `seed`: none for the seed the config's file sets (or none
    given), `_seed<N>` for another."""
    return f"_seed{seed}" if seed is not None and seed != file_seed else ""


def seed_dirs(run_dir: Path, own_seed: int | None = None) -> dict[int, Path]:
    """{seed: run directory} of the runs with other seeds beside `run_dir`: `<method>_seed<N>`
    (where `make campaign` trains them), each with a checkpoint; not `own_seed`'s (the run in
    `run_dir` itself: a copy of it must not count twice)."""
    out = {}
    for d in run_dir.parent.glob(f"{run_dir.name}_seed*"):
        n = d.name[len(run_dir.name) + len("_seed"):]
        if n.isdigit() and int(n) != own_seed and (d / "checkpoints" / "checkpoint").exists():
            out[int(n)] = d
    return dict(sorted(out.items()))


def other_seeds(config: str | Path, run_dir: Path, iterations: int | None, sets, evaluate) -> list[dict]:
    """The config's runs with other seeds beside `run_dir` (`seed_dirs`), each loaded with its seed
    and evaluated by `evaluate(cfg, directory) -> dict` as the caller evaluates the main run:
    {"seed", **that}, or {"seed", "error"} when it fails (one broken directory, whatever its
    error: a config, a missing or cut checkpoint file, must not stop the report)."""
    rows = []
    for seed, d in seed_dirs(run_dir, load(config).seed).items():
        try:
            rows.append({"seed": seed, **evaluate(load(config, iterations, list(sets) + [f"seed={seed}"]), d)})
        except Exception as e:
            rows.append({"seed": seed, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]})
    return rows


def seeds_against_paper(runs: list[dict], paper: list, paper_ci95: list | None = None) -> dict | None:
    """Over the full-budget runs among `runs` (each {"status", "_per_task": [column][task]}, the
    metric of every test task at each reported column; all on the same test tasks), when there are
    two or more: per column, where the paper's value (its 95% CI `paper_ci95`; none given: our test
    CI stands in for its own) lies against what seed variance and the test samples allow around their mean
    (`evaluate.against_seeds`), or None where the paper has no value. None: fewer than two."""
    import numpy as np
    full = [np.asarray(r["_per_task"], dtype=np.float64) for r in runs if r.get("status") == "full" and "_per_task" in r]
    if len(full) < 2:
        return None
    from maml_tf import evaluate
    out = []
    for j, p in enumerate(paper):
        if p is None:
            out.append(None)
            continue
        diff, half, df = evaluate.against_seeds(np.stack([f[j] for f in full]), p, paper_ci95[j] if paper_ci95 else None)
        out.append({"difference": round(diff, 6), "allowed": round(half, 6), "df": df})
    return {"runs": len(full), "columns": out}


def seed_lines(method: str, every: list[dict], columns: list, paper: list | None = None,
               against: dict | None = None, fmt=lambda v: f"{v:.2f}") -> tuple[list[str], str]:
    """A method's runs with different seeds as markdown rows (`| method | seed | iterations |
    value per column |`), then the mean ± std over those at the full budget when there are two or
    more, and a finding from `against` (`seeds_against_paper` of those runs): at which columns the
    paper's values lie within what seed variance and the test samples allow around that mean.
    `every`: {"seed", "status", "iterations", "values"} per run, or {"seed", "error"} for one that
    could not be evaluated."""
    rows = []
    for r in every:
        if "error" in r:
            rows.append(f"| {method} | {r['seed']} | not evaluated: {r['error']} |" + " |" * len(columns))
            continue
        label = str(r["iterations"]) + ("" if r["status"] == "full" else ", PARTIAL")
        rows.append(f"| {method} | {r['seed']} | {label} | " + " | ".join(fmt(v) for v in r["values"]) + " |")
    full = [r["values"] for r in every if "error" not in r and r["status"] == "full"]
    if len(full) < 2:
        return rows, ""
    import numpy as np
    x = np.asarray(full, dtype=np.float64)
    mean, std = x.mean(0), x.std(0, ddof=1)
    rows.append(f"| {method} | mean ± std of {len(full)} full runs | | " +
                " | ".join(f"{fmt(m)} ± {fmt(s)}" for m, s in zip(mean, std)) + " |")
    if not paper or not against or against["runs"] != len(full):
        return rows, ""
    from maml_tf.evaluate import SEEDS_FOR_A_VERDICT
    parts = [f"{col}: paper {fmt(p)} against our {fmt(m)}, a difference of {fmt(abs(a['difference']))} "
             f"{'within' if abs(a['difference']) <= a['allowed'] else 'beyond'} ± {fmt(a['allowed'])} ({a['df']} df)"
             for col, p, m, a in zip(columns, paper, mean, against["columns"]) if p is not None and a]
    finding = (f"{method} over {len(full)} seeds at the full budget, against the paper (95% for one more run on "
               "its own test tasks: seed variance and both test samples; the paper gives no CI, ours stands in): "
               + "; ".join(parts) + (f" ({len(full)} runs are too few to tell: {SEEDS_FOR_A_VERDICT} or more give a "
                                     "verdict)." if len(full) < SEEDS_FOR_A_VERDICT else "."))
    return rows, finding


def load(name: str | Path, iterations: int | None = None, sets: list[str] = ()) -> config_lib.Config:
    """Config `name` ('sinusoid/maml' or a path), with --iterations and --set overrides."""
    records.commit()  # pin the code commit as the process starts
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIGS / f"{name}.yaml"
    overrides = dict(config_lib.parse_override(s) for s in sets)
    if iterations is not None:
        overrides["train.iterations"] = iterations
    return config_lib.load(path, overrides)


def paper_iterations(name: str | Path) -> int:
    """The budget the config's own file sets (the paper's), whatever the command line says."""
    return load(name).train.iterations


def record(cfg: config_lib.Config, learner, paper_iters: int, run_dir: Path) -> dict:
    """The provenance block of a results file for one trained run: `commit` is the code that
    evaluated it, `training_commits` the code that trained it (one per training session)."""
    done = int(learner.step.numpy())
    return {"config": cfg.to_dict(), "commit": records.commit(),
            "training_commits": runs.training_commits(run_dir), "iterations": done,
            "paper_iterations": paper_iters, "status": "full" if done >= paper_iters else "partial",
            "seed": cfg.seed, "wall_time_s": round(float(learner.wall_time.numpy()), 1),
            "machine": records.machine(), "written": records.now()}


def lazy(name: str):
    """The module `name`, imported when first used rather than now: an entry point that names
    TensorFlow-backed modules at its top still answers --help in a fraction of a second."""
    import importlib.util
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def parser(description: str, trains: bool = True) -> argparse.ArgumentParser:
    """The command line every entry point shares; usage reads `python -m reproduce.<name>`. An
    entry point that never trains (`trains=False`) has no --iterations, --set or --threads."""
    script = Path(sys.argv[0])
    prog = f"python -m reproduce.{script.stem}" if script.parent.name == "reproduce" else None
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS, help="where run directories and results go")
    p.add_argument("--quiet", action="store_true", help="no progress lines (errors are still printed)")
    p.add_argument("--verbose", action="store_true",
                   help="show TensorFlow's own log lines, which are filtered out by default")
    if not trains:
        return p
    p.add_argument("--iterations", type=int, default=None,
                   help="training budget (default: the paper's, from the config); a smaller one is "
                        "labelled partial in every result")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.meta_batch=16")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU cores to use (default 0: all). Without a GPU, train.distribute: mirrored "
                        "(the classification configs) runs one single-threaded replica of the "
                        "meta-batch per core; 1 runs two jobs side by side on a 2-core machine")
    return p


def cores(threads: int = 0) -> int:
    """--threads, or every core this process may run on."""
    return threads or len(os.sched_getaffinity(0))


def parse(p: argparse.ArgumentParser, argv=None, replicas: bool | None = True) -> argparse.Namespace:
    """Parse the command line and set up TensorFlow's devices and threads for --threads before
    TensorFlow starts (one logical CPU per core with `replicas`; see distribute.use_cpu_cores). An
    entry point that only knows once it has read its config passes replicas=None and calls
    use_cores itself."""
    args = p.parse_args(argv)
    if args.verbose:
        from maml_tf import _quiet
        _quiet.uninstall()
    if replicas is not None:
        use_cores(getattr(args, "threads", 0), replicas)
    return args


def use_cores(threads: int, replicas: bool) -> None:
    from maml_tf import distribute
    distribute.use_cpu_cores(cores(threads), replicas)


def guard(body) -> int:
    """Run an entry point's `body()`: bad input, a missing or corrupt dataset, an unwritable or
    full disk and a stop by signal end in one `error:` (or `stopped:`) line and an exit code
    (2, or 130 for a signal) instead of a traceback. What was written before stays."""
    from maml_tf import tasks
    from maml_tf.runs import TrainingError
    try:
        return body() or 0
    except KeyboardInterrupt as e:
        if "second" in str(e):
            msg = "stopped at once by a second signal: the iterations since the last checkpoint are lost"
        elif str(e).startswith("signal"):
            msg = "stopped: a checkpoint was saved; the same command resumes the run"
        else:
            msg = "interrupted: the last checkpoint is kept; the same command resumes the run"
        print(msg, file=sys.stderr)
        return 130
    except (config_lib.ConfigError, TrainingError, tasks.MissingData) as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot write or read{where}: {e.strerror or e}. Make room on the disk or make the "
              f"folder writable (or use --results / --run-dir elsewhere), then run the same command again; "
              f"what was written before is kept.", file=sys.stderr)
    except Exception as e:  # TensorFlow's file errors (TensorFlow is imported only if the body did)
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(e, tf.errors.OpError):
            raise
        if not isinstance(e, (tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError,
                              tf.errors.DataLossError)) \
                and not any(s in e.message for s in ("No space left", "Read-only", "Permission denied")):
            raise
        print(f"error: TensorFlow could not write or read a file ({type(e).__name__}: {e.message}). Make "
              f"room on the disk or make the folder writable, then run the same command again; the last "
              f"complete checkpoint is kept.", file=sys.stderr)
    return 2
