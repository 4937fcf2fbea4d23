"""The reproduction campaign: every run the paper needs, trained to its budget in the background.

A fixed queue (QUEUE below, cheapest value first) of training runs, each with the paper's budget.
The campaign resumes the first unfinished runs of the queue, one per core it is given (each worker
is `python -m reproduce.train CONFIG --threads 1`), starts the next one when a run reaches its
budget, stops every worker cleanly (SIGTERM: the worker finishes its iteration and writes a
checkpoint) `--report-minutes` before `--hours` are up, then evaluates what moved and regenerates
the tables and figures it touched (`reproduce.table1 --eval-only`, `reproduce.rl ENV --eval-only`).
It prints, and writes to results/campaign.md, where every run stands: iterations done / budget, the
latest meta-validation metric or training return, the measured seconds per iteration and the
core-hours still needed (for a run not trained yet, estimated from another seed's run of its config
or from its `make bench` row, and marked ~).

    python -m reproduce.campaign --hours 2.5 --cores 1     # make campaign HOURS=2.5 CORES=1
    python -m reproduce.campaign --status                  # only the table; trains nothing

The workers run from a snapshot of the last commit (a git worktree in .campaign/, made by the
campaign): editing the code while the campaign runs changes nothing it runs, and every checkpoint
records the commit that trained it. Uncommitted changes are not part of the snapshot (the campaign
says so). The reports at the end run from a snapshot of the last commit at that time, so that
tables and findings come from the newest committed generators, not from those of the commit the
workers started from (the campaign's own table, results/campaign.md, is still written by the
campaign process, from its queue). Run directories stay in results/ of this checkout; a run
directory is locked by the process training it, so a run started by hand is skipped, not trained
twice.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from maml_tf import records
from maml_tf.runs import read_jsonl   # a line cut by a kill is skipped
from reproduce import common

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "reproduce" / "configs"
RESULTS = ROOT / "results"
# a worker trains on one core (--threads 1): NumPy's BLAS (the RL baseline's least squares) too
ONE_CORE_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the queue: a config (under reproduce/configs, or a path), an optional
    seed other than the config's (its run directory gets a `_seed<N>` suffix), and the report that
    evaluates it: ("table1", cell name), ("rl", env, method), ("appendix", table), ("sinusoid",),
    ("rl_pilot", pilot set) (reproduce.rl_pilot: training curves against the config's own run),
    or () for none yet."""
    config: str
    report: tuple = ()
    seed: int | None = None
    hold: str = ""    # why the run waits (it is listed, never started); empty: it may run
    sets: tuple = ()  # --set overrides (a pilot's variant of the config)
    iterations: int | None = None  # a budget other than the config's (a pilot)
    dir: str = ""     # run directory under results/ (default <experiment>/<method>[_seed<N>])
    like: str = ""    # a config whose measured speed stands in for this one's until it has its own

    @property
    def name(self) -> str:
        extra = [f"seed {self.seed}"] if self.seed is not None else []
        extra += list(self.sets) + ([f"{self.iterations} iterations"] if self.iterations else [])
        return self.config + (f" ({', '.join(extra)})" if extra else "")

    def path(self, root: Path = ROOT) -> Path:
        """The config file: a name resolves under `root` (the worker's tree: the snapshot)."""
        p = Path(self.config)
        return p if p.suffix in (".yaml", ".yml") else root / "reproduce" / "configs" / f"{self.config}.yaml"

    def raw(self, root: Path = ROOT) -> dict:
        return yaml.safe_load(self.path(root).read_text())

    def budget(self, root: Path = ROOT) -> int:
        return self.iterations or int(self.raw(root)["train"]["iterations"])

    def run_dir(self, results: Path) -> Path:
        if self.dir:
            return results / self.dir
        raw = self.raw()
        return results / raw["experiment"] / (raw.get("method", "maml") + common.seed_suffix(self.seed, raw.get("seed", 0)))

    def command(self, python: str, results: Path) -> list[str]:
        # a config name resolves in the worker's own checkout (the snapshot), a path as it is
        cmd = [python, "-m", "reproduce.train", self.config, "--threads", "1", "--quiet",
               "--results", str(results), "--run-dir", str(self.run_dir(results))]
        if self.seed is not None:
            cmd += ["--set", f"seed={self.seed}"]
        for s in self.sets:
            cmd += ["--set", s]
        if self.iterations:
            cmd += ["--iterations", str(self.iterations)]
        return cmd


def _rl(env: str, methods=("maml", "pretrained", "oracle"), like: str = "") -> list[Run]:
    return [Run(f"rl/{env}/{m}", ("rl", env, m), like=like and f"rl/{like}/{m}") for m in methods]


def _cell(config: str, cell: str, hold: str = "") -> Run:
    return Run(config, ("table1", cell), hold=hold)


PILOT_Z = (2, 8, 32, 128)  # 128: 8 beat 2 by 27 points at 3,000 Omniglot iterations; the grid must not end at the best
MINIIMAGENET = (("miniimagenet/conv_5w1s", "miniimagenet_5w1s_conv", 15000),
                ("miniimagenet/conv_5w1s_first_order", "miniimagenet_5w1s_conv_first_order", 5000),
                ("miniimagenet/conv_5w5s", "miniimagenet_5w5s_conv", 5000),
                ("miniimagenet/conv_5w5s_first_order", "miniimagenet_5w5s_conv_first_order", 5000))

# Cheapest value first (README, "The campaign"): the small Omniglot cells finish in hours and
# complete Table 1 rows; MiniImagenet's four cells follow the Omniglot 5-way ones (a first stage,
# then, after half-cheetah and Appendix C's context runs, to the full budget); two more seeds of
# the sinusoid and the point (minutes each); half-cheetah (about 3 core-hours per method); then
# the long ones: Omniglot 20-way 1-shot, ant (sampling-bound, about 10 core-hours per method) and
# 20-way 5-shot (about 50 core-hours). At the tail, two more seeds of Omniglot conv 5-way 1-shot,
# then of conv 5-way 5-shot (about 18 core-hours each), for the seed variance the paper never
# reported.
QUEUE: list[Run] = [
    _cell("omniglot/mlp_5w1s", "omniglot_5w1s_mlp"),
    _cell("omniglot/mlp_5w5s", "omniglot_5w5s_mlp"),
    _cell("omniglot/conv_5w1s_first_order", "omniglot_5w1s_conv_first_order"),
    # Appendix C's pilot runs, which choose the context vector's size (reproduce.appendix
    # context-pilot): cheap (about 1 core-hour in all), and they unblock the Appendix C runs below.
    # Half-cheetah's best was the largest size, 128, so it tries 512 too (then, since 512 led as
    # well, every size again with an initialisation that does not depend on z_dim).
    *[Run(config, ("appendix", "context-pilot"), sets=(f"model.z_dim={z}",) + extra, iterations=it,
          dir=f"appendix/context_pilot/{name}_z{z}")
      for config, name, it, extra, zs in (
          ("omniglot/conv_5w1s_context", "omniglot_5w1s", 3000, ("train.val_every=1000", "model.init=widened"), PILOT_Z),
          ("rl/point/context", "point", 30, (), PILOT_Z),
          ("rl/cheetah_dir/context", "cheetah_dir", 20, ("model.init=widened",), PILOT_Z + (512,)),
          # the widened pilots' ranking followed the initial scale (monotone in z_dim): the same
          # sizes again, each starting as the MAML row's policy (model.init: base)
          ("rl/cheetah_dir/context", "cheetah_dir_base", 20, ("model.init=base",), PILOT_Z + (512,)),
          # so Omniglot's too, since its context runs start as the MAML row's network as well
          ("omniglot/conv_5w1s_context", "omniglot_5w1s_base", 3000, ("train.val_every=1000", "model.init=base"),
           PILOT_Z),
          # a diagnostic, not the paper's model: the chosen size with z's shift added after the
          # first batch norm, which subtracts it when z joins the input; if batch norm is why the
          # Omniglot pilots score low, this one scores far higher (reproduce.appendix DIAGNOSTICS).
          # At 3,000 iterations it had only just left chance (its loss sat at chance until about
          # 2,400; the Table 3 run's until about 1,000): to 10,000, against the Table 3 run's curve
          ("omniglot/conv_5w1s_context", "omniglot_5w1s_after_norm", 10000,
           ("train.val_every=1000", "model.init=base", "model.join=after_norm"), (8,)))
      for z in zs],
    _cell("omniglot/conv_5w5s", "omniglot_5w5s_conv"),
    # MLP 5-way 5-shot ended outside the paper's interval: two more seeds (about 1.5 core-hours
    # each) tell seed variance from a real difference; Table 1 reports every seed of the cell
    *[Run("omniglot/mlp_5w5s", ("table1", "omniglot_5w5s_mlp"), seed) for seed in (1, 2)],
    # MiniImagenet in two stages: first every cell far enough to show where it goes (1-shot second
    # order to 15,000 iterations, the others to 5,000), then each to the paper's 60,000
    *[Run(c, ("table1", cell), iterations=it) for c, cell, it in MINIIMAGENET],
    # two more seeds of the sinusoid and the 2D point, reproduced at full budget: minutes each
    # (about half a core-hour in all), so ahead of the long runs; they give those results' seed
    # variance, and the point's tells whether its gap after two steps is seed variance (each
    # report evaluates a setting's seed runs beside its own run: results/sinusoid/table.md,
    # results/rl/table.md)
    *[Run(c, ("sinusoid",), seed) for seed in (1, 2) for c in ("sinusoid/maml", "sinusoid/pretrained")],
    *[Run("rl/point/maml", ("rl", "point", "maml"), seed) for seed in (2, 3)],  # the config's own seed is 1
    *_rl("cheetah_vel"),
    # Half-cheetah's observation (maml_tf/envs/locomotion.py, note 6): the official code (rllab),
    # and pytorch-maml-rl, which reproduced half-cheetah, observe 20 numbers, the robot's centre of
    # mass among them (its x grows with the distance run); ours by default Gymnasium's 17, without
    # it. Direction MAML levelled off near +50 after one step from about 100 iterations (paper:
    # 293 at the end): the oracle and MAML again with rllab's observation, as far as the default
    # runs' curves are known, tell whether the observation is why (results/rl/obs_pilot.md)
    *[Run(f"rl/cheetah_dir/{m}", ("rl_pilot", "obs_pilot"), sets=("env_kwargs.obs_mode=rllab",), iterations=it,
          dir=f"rl/obs_pilot/cheetah_dir_{m}") for m, it in (("oracle", 60), ("maml", 150))],
    *_rl("cheetah_dir"),
    # Half-cheetah MAML at the full 500 iterations lies below the paper: direction far below (73.9 /
    # 81.3 / 98.9 after 1..3 steps against 293.2 / 313.5 / 315.7; its training return after the
    # inner step levelled off near +50 from about iteration 100), velocity just beyond what two
    # evaluations allow after 2 and 3 steps. The environments are not why (our oracles reach the
    # paper's; rllab's observation changed nothing, results/rl/obs_pilot.md). Two more seeds of
    # direction (about 2.5 core-hours apiece) tell a seed's plateau from a systematic difference;
    # results/rl/table.md evaluates them beside the config's own seed.
    *[Run("rl/cheetah_dir/maml", ("rl", "cheetah_dir", "maml"), seed) for seed in (2, 3)],
    # Appendix C, the context vector at the budgets of the MAML runs (Table 2, parameter averaging,
    # is one run of `make appendix-table2`, not a queue entry), cheapest first
    Run("rl/point/context", ("rl", "point", "context")),   # z_dim 2, from its pilots
    Run("omniglot/conv_5w1s_context", ("appendix", "context")),   # z_dim 8, init base, from its pilots
    Run("rl/cheetah_dir/context", ("rl", "cheetah_dir", "context")),   # z_dim 512, init base, from its pilots
    Run("omniglot/conv_5w5s_context", ("appendix", "context"), like="omniglot/conv_5w5s"),  # its speed until measured
    # then velocity's two more seeds: its gap (just beyond two evaluations' margin after 2 and 3
    # steps) is smaller than direction's was, and direction's seeds showed that gap to be seed
    # variance (seed 2 reached the paper); the context runs complete Appendix C's tables first
    *[Run("rl/cheetah_vel/maml", ("rl", "cheetah_vel", "maml"), seed) for seed in (2, 3)],
    # MiniImagenet's second stage after them (the context runs complete Appendix C's tables for
    # fewer core-hours, point 0.2, Omniglot 5-way 1-shot about 4, 5-shot about 8, half-cheetah
    # about 4.5, than a MiniImagenet cell, about 45; velocity's seeds answer a question for about 5)
    *[_cell(c, cell) for c, cell, _ in MINIIMAGENET],
    _cell("omniglot/conv_20w1s", "omniglot_20w1s_conv"),
    *_rl("ant_vel"),
    *_rl("ant_dir", like="ant_vel"),   # the same body and methods: ant velocity's speeds until measured
    _cell("omniglot/conv_20w5s", "omniglot_20w5s_conv"),
    # two more seeds of Omniglot conv 5-way 1-shot, reproduced at full budget (about 4 core-hours
    # each; results/table1.md shows every seed of a cell)
    *[Run("omniglot/conv_5w1s", ("table1", "omniglot_5w1s_conv"), seed) for seed in (1, 2)],
    # conv 5-way 5-shot's result lies below the paper's interval (99.63 +- 0.11 at 54,644 iterations
    # against 99.9 +- 0.1): two more seeds tell seed variance from a real difference, as for MLP
    # 5-way 5-shot; last, at about 18 core-hours each
    *[Run("omniglot/conv_5w5s", ("table1", "omniglot_5w5s_conv"), seed) for seed in (1, 2)],
]


# ----------------------------------------------------------------------------- where a run stands

def done_iterations(run_dir: Path) -> int:
    """The iteration of the run's latest checkpoint (read from the checkpoint index, no TensorFlow)."""
    index = run_dir / "checkpoints" / "checkpoint"
    if not index.exists():
        return 0
    for line in index.read_text().splitlines():
        if line.startswith("model_checkpoint_path:"):
            return int(line.split('"')[1].rsplit("-", 1)[1])
    return 0


def latest_metric(run_dir: Path) -> str:
    """The latest meta-validation metric (supervised) or average training return (RL)."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    for r in reversed(rows):
        if "val_accuracy" in r:
            return f"val acc {100 * r['val_accuracy']:.1f}% @{r['step']}"
        if "val_mse" in r:
            return f"val mse {r['val_mse']:.3f} @{r['step']}"
        if "post_return" in r and r.get("post_return") is not None and "pre_return" in r:
            key = "post_return" if r["post_return"] != r["pre_return"] else "pre_return"
            return f"{'post-update' if key == 'post_return' else ''} return {r[key]:.1f} @{r['step']}".strip()
    return "-"


def seconds_per_iteration(run_dir: Path) -> tuple[float | None, int]:
    """(median seconds per iteration over the run's last logged intervals, cores used then): the
    cores come from sessions.jsonl (recorded since the campaign; older sessions used every core)."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    times = [1.0 / r["it_per_s"] for r in rows if r.get("it_per_s")][-10:]
    if not times:
        times = [r["iteration_s"] for r in rows if r.get("iteration_s")][-5:]
    sessions = read_jsonl(run_dir / "sessions.jsonl")
    cores = sessions[-1].get("cores") if sessions else None
    return (statistics.median(times) if times else None), cores


def estimate(run_dir: Path, budget: int, config: str | None = None, results: Path | None = None) -> str:
    """Where a run stands and, at its last measured speed, how long the rest takes: printed by
    the entry points before they train. A run not trained yet: from the `make bench` row of
    `config` (a config name, given only when no override changes the run) in `results`."""
    done = done_iterations(run_dir)
    if done >= budget:
        return f"{run_dir}: trained ({done} of {budget} iterations)"
    sec, cores = seconds_per_iteration(run_dir)
    if sec is None:
        bench = bench_speeds(results) if config and results else {}
        if config in bench:
            return (f"{run_dir}: {done} of {budget} iterations; at least {(budget - done) * bench[config] / 3600:.1f} "
                    f"core-hours left (its `make bench` row, which times the iteration alone)")
        return f"{run_dir}: {done} of {budget} iterations; speed not measured yet"
    hours = (budget - done) * sec / 3600
    return (f"{run_dir}: {done} of {budget} iterations; about {hours:.1f} hours left at its last measured "
            f"speed ({sec:.3g} s per iteration on {cores or 'all'} core{'s' if cores != 1 else ''})")


BENCH = "make bench"  # where an estimate came from (the table's wording)


def bench_speeds(results: Path) -> dict[str, float]:
    """{config: core-seconds per iteration} from `make bench` (results/bench/latest.json): its
    training-step rows without overrides (seconds x the replicas that ran side by side, one per
    core; evaluation rows are left out) and its RL iteration rows (one core). The step alone, no
    task sampling or meta-validation: a lower bound. For the runs of the queue not trained yet."""
    path = results / "bench" / "latest.json"
    if not path.exists():
        return {}
    bench = json.loads(path.read_text())
    speeds = {r["config"]: r["iteration_seconds"] for r in bench.get("rl_iterations", [])
              if r.get("config") and not r.get("overrides") and r.get("iteration_seconds")}
    speeds.update({r["config"]: r["seconds_per_iteration"] * int(r.get("replicas") or 1)
                   for r in bench.get("settings", [])
                   if r.get("config") and not r.get("overrides") and r.get("seconds_per_iteration")
                   and "tasks_per_second" not in r})
    return speeds


def estimated_speed(run: Run, results: Path, bench: dict[str, float],
                    queue: list[Run] | None = None) -> tuple[float, int | None, str] | None:
    """(seconds per iteration, cores, where from) for a run not measured yet, the first that
    applies: the same config's own run when another seed of it has trained on a recorded number
    of cores; its pilots (queued runs of the same config with settings of their own) that train as
    it does (`_trains_alike`), the median of their core-seconds (a pilot whose cores were not
    recorded counted on one, as the table does); the config's `make bench` row (core-seconds); the
    run of the config named by `like` (measured, else its bench row); that other seed's run on
    cores not recorded; None when there is nothing to go by. A run with settings of its own (a
    pilot) goes by another seed's run only."""
    sibling = dataclasses.replace(run, seed=None)
    sec, cores = seconds_per_iteration(sibling.run_dir(results)) if sibling != run else (None, None)
    if sec is not None and cores:
        return sec, cores, "the config's own run"
    if run.sets:
        return (sec, cores, "the config's own run") if sec is not None else None
    pilots = [seconds_per_iteration(p.run_dir(results)) for p in queue or ()
              if p.config == run.config and p.sets and _trains_alike(p, run)]
    pilots = [s * (c or 1) for s, c in pilots if s is not None]
    if pilots:
        return statistics.median(pilots), 1, "its pilots"
    if run.config in bench:
        return bench[run.config], 1, BENCH
    if run.like:
        like_sec, like_cores = seconds_per_iteration(Run(run.like).run_dir(results))
        if like_sec is not None:
            return like_sec, like_cores, f"like {run.like}"
        if run.like in bench:
            return bench[run.like], 1, f"like {run.like}, its {BENCH} row"
    if sec is not None:
        return sec, cores, "the config's own run"
    return None


# a pilot's settings that do not change what an iteration costs (validation is rare: measured
# seconds per iteration take the median of logged intervals)
COST_FREE_SETTINGS = ("train.val_every",)


def _trains_alike(pilot: Run, run: Run) -> bool:
    """Whether each of the pilot's settings (but COST_FREE_SETTINGS) is the value in run's config:
    the same network and training step, so the same cost per iteration."""
    raw = run.raw()
    for s in pilot.sets:
        key, _, value = s.partition("=")
        section, _, name = key.partition(".")
        if key not in COST_FREE_SETTINGS and (raw.get(section) or {}).get(name) != yaml.safe_load(value):
            return False
    return True


def status_rows(queue: list[Run], results: Path, running: dict | None = None,
                notes: dict | None = None) -> list[dict]:
    rows, full, bench = [], {}, bench_speeds(results)
    for run in queue:  # a run queued in stages: its hours are counted once, at its largest budget
        d = run.run_dir(results)
        full[d] = max(full.get(d, 0), run.budget())
    for run in queue:
        d = run.run_dir(results)
        done, budget = done_iterations(d), run.budget()
        sec, cores = seconds_per_iteration(d)
        guess = estimated_speed(run, results, bench, queue) if sec is None else None
        if guess is not None:
            sec, cores, _ = guess
        left = max(budget - done, 0)
        core_hours = (left * sec * (cores or 1) / 3600) if sec is not None else (0.0 if left == 0 else None)
        state = ("done" if done >= budget else "running" if running and run in running
                 else f"held: {run.hold}" if run.hold else "queued")
        if notes and run in notes:
            state = notes[run]
        rows.append({"run": run.name, "done": done, "budget": budget, "metric": latest_metric(d),
                     "seconds_per_iteration": sec, "cores": cores, "core_hours_left": core_hours,
                     "state": state, "stage": budget < full[d], "estimated_from": guess and guess[2]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["# The campaign: every run the paper needs, to its budget", "",
             "Generated by `make campaign` (`python -m reproduce.campaign`); do not edit by hand. "
             "Seconds per iteration: the median of the run's last logged intervals, on the cores it "
             "used then (one where older runs did not record it); core-hours left = iterations left x "
             "seconds per iteration x those cores (an estimate: the machine changes between sessions; ~ marks a run not "
             "trained yet, estimated as the total says). Queue order and why: README, The campaign.",
             "", "| # | run | iterations | latest | s / iteration | core-hours left | state |",
             "|---|---|---|---|---|---|---|"]
    total, estimated, unknown = 0.0, 0.0, 0
    for i, r in enumerate(rows, 1):
        cores = f"{r['cores']} core{'s' * (r['cores'] > 1)}" if r["cores"] else "cores not recorded"
        guess = r.get("estimated_from")
        sec = "-" if r["seconds_per_iteration"] is None else (
            f"{r['seconds_per_iteration']:.3g} ({cores})" if not guess
            else f"~{r['seconds_per_iteration']:.3g} (core-seconds; {BENCH}, the step alone)" if guess == BENCH
            else f"~{r['seconds_per_iteration']:.3g} ({cores}; {guess})")
        mark = "~" if guess else ""
        if r.get("stage"):  # a first stage: its hours are part of the same run's full budget below
            left = "not measured" if r["core_hours_left"] is None else f"{mark}{r['core_hours_left']:.1f}"
            left += " (first stage: counted in the full run)"
        elif r["core_hours_left"] is None:
            left, unknown = "not measured", unknown + 1
        else:
            left, total = f"{mark}{r['core_hours_left']:.1f}", total + r["core_hours_left"]
            estimated += r["core_hours_left"] if guess else 0.0
        lines.append(f"| {i} | {r['run']} | {r['done']} / {r['budget']} | {r['metric']} | {sec} | "
                     f"{left} | {r['state']} |")
    tail = (f" ({estimated:.1f} of them estimated, ~, for runs not trained yet: from another seed's run of "
            f"the same config, its pilots, a run named as like it, or the config's `make bench` row, which "
            f"times the step alone: a lower bound)" if estimated else "")
    tail += f" and {unknown} run(s) not measured yet" if unknown else ""
    lines += ["", f"**Total: {total:.1f} core-hours left{tail}.**", ""]
    return "\n".join(lines)


def write_table(queue: list[Run], results: Path, running=None, notes=None) -> str:
    text = table(status_rows(queue, results, running, notes))
    records.write_text(results / "campaign.md", text)  # an unchanged campaign leaves git clean
    return text


# ----------------------------------------------------------------------------- running it

# the MAML rows that Appendix C's context tables show (reproduce.appendix context), by report:
# when one of them moves, the campaign writes those tables again
CONTEXT_TABLE_MAML_ROWS = {("table1", "omniglot_5w1s_conv"), ("table1", "omniglot_5w5s_conv"),
                           ("rl", "point", "maml"), ("rl", "cheetah_dir", "maml")}


class Campaign:
    """The scheduler: `cores` workers at a time, stopped `report_minutes` before `hours` are up."""

    def __init__(self, queue: list[Run], results: Path, hours: float, cores: int, report_minutes: float,
                 python: str = sys.executable, cwd: Path = ROOT, logs: Path | None = None,
                 poll: float = 2.0, min_minutes: float = 5.0, log=print):
        self.queue, self.results, self.cores = queue, results, cores
        self.python, self.cwd, self.poll, self.log = python, cwd, poll, log
        self.logs = logs or (cwd / "logs" / "campaign")
        self.t0, self.hours = time.monotonic(), hours
        self.train_end = self.t0 + 3600 * hours - 60 * report_minutes
        self.min_seconds = 60 * min_minutes
        self.running: dict[Run, subprocess.Popen] = {}
        self.signalled: set[int] = set()  # worker PIDs asked to stop (once: a second signal aborts)
        self.notes: dict[Run, str] = {}
        self.stopping = False

    def _next(self) -> Run | None:
        for run in self.queue:
            if run.hold or run in self.running or run in self.notes:
                continue
            if done_iterations(run.run_dir(self.results)) < run.budget(self.cwd):
                return run
        return None

    def _start(self, run: Run) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / (run.name.replace("/", "_").replace(" ", "_") + ".log")
        with log_path.open("a") as out:
            out.write(f"\n== campaign: {' '.join(run.command(self.python, self.results))}\n")
            out.flush()
            self.running[run] = subprocess.Popen(run.command(self.python, self.results), cwd=self.cwd,
                                                 stdout=out, stderr=subprocess.STDOUT,
                                                 start_new_session=True, env=ONE_CORE_ENV)
        self.log(f"campaign: started {run.name} at {done_iterations(run.run_dir(self.results))} / "
                 f"{run.budget(self.cwd)} (pid {self.running[run].pid}, log {log_path})")
        if self.stopping:  # a stop that came while it was starting
            self._signal_workers()

    def _reap(self) -> None:
        for run, proc in list(self.running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del self.running[run]
            done = done_iterations(run.run_dir(self.results))
            budget = run.budget(self.cwd)
            if rc not in (0, 130) and not (self.stopping and rc < 0):
                tail = self._log_tail(run)  # not retried in this campaign; the table says why
                busy = "is in use by process" in tail
                self.notes[run] = f"{'skipped' if busy else f'failed (exit {rc})'}: {tail}"
                self.log(f"campaign: {run.name} {'skipped' if busy else f'failed with exit code {rc}'}: {tail}")
            else:
                if done < budget and not self.stopping:  # stopped by someone else: not restarted
                    self.notes[run] = f"stopped at {done} by a signal from outside the campaign"
                self.log(f"campaign: {run.name} stopped at {done} / {budget}")
            write_table(self.queue, self.results, self.running, self.notes)

    def _log_tail(self, run: Run) -> str:
        path = self.logs / (run.name.replace("/", "_").replace(" ", "_") + ".log")
        lines = [l for l in path.read_text().replace("\r", "\n").splitlines() if l.strip()] if path.exists() else []
        errors = [l for l in lines if l.startswith("error:")]
        return (errors or lines or ["no output"])[-1].strip()[:300].replace("|", "/")

    def stop(self, *_):
        """Ask every worker to checkpoint and exit (SIGTERM, once per worker: a second signal would
        stop it at once, losing its iterations since the last checkpoint); no new worker starts."""
        if not self.stopping:
            self.log("campaign: stopping the workers (each finishes its iteration and saves)")
        self.stopping = True
        self._signal_workers()

    def _signal_workers(self) -> None:
        for proc in list(self.running.values()):
            if proc.poll() is None and proc.pid not in self.signalled:
                self.signalled.add(proc.pid)
                proc.send_signal(signal.SIGTERM)

    def train(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            write_table(self.queue, self.results, self.running, self.notes)
            while True:
                self._reap()
                if not self.stopping and time.monotonic() >= self.train_end:
                    self.stop()
                if self.stopping:
                    self._signal_workers()  # one that started while the stop came in
                else:
                    while (not self.stopping and len(self.running) < self.cores
                           and self.train_end - time.monotonic() > self.min_seconds):
                        run = self._next()
                        if run is None:
                            break
                        self._start(run)
                if not self.running and (self.stopping or self._next() is None
                                         or self.train_end - time.monotonic() <= self.min_seconds):
                    break
                time.sleep(self.poll)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self._signal_workers()  # an exception here: leave no worker behind
            for proc in self.running.values():
                proc.wait()

    def moved(self) -> list[Run]:
        """The runs whose iterations differ from those their last successful report saw
        (results/campaign.json): a report that failed, or a campaign killed before its reports,
        is made up for by the next campaign. A Table 1 cell that table1.json already lists at its
        current iterations is not moved, even where campaign.json lags (a report that timed out
        and was then run by hand with the same command): table1 writes its JSON last. (Not so for
        the others: reproduce.rl and reproduce.sinusoid write tables and figures after their JSON,
        and an RL context run's table is written by reproduce.appendix after reproduce.rl.)"""
        reported, listed = _reported(self.results, self.queue), _listed(self.results, self.queue)
        return [r for r in self.queue if r.report
                and (r.run_dir(self.results) / "checkpoints" / "checkpoint").exists()  # else nothing to evaluate
                and (done := done_iterations(r.run_dir(self.results))) != reported.get(r.name, 0)
                and not (r.report[0] == "table1" and done == listed.get(r.name))]

    def report(self, threads: int) -> None:
        """Evaluate what moved: Table 1 cells in one call, each RL environment's methods in one,
        each appendix table in one, the sinusoid (its seed runs) in one."""
        moved = self.moved()
        jobs = []  # (command, the runs it reports)
        cells = [r for r in moved if r.report[0] == "table1"]
        if cells:
            names = ",".join(dict.fromkeys(r.report[1] for r in cells))  # a cell's stages share a run: once
            jobs.append((["reproduce.table1", "--eval-only", "--reuse-unchanged", "--cells", names], cells))
        for env in dict.fromkeys(r.report[1] for r in moved if r.report[0] == "rl"):
            runs = [r for r in moved if r.report[0] == "rl" and r.report[1] == env]
            jobs.append((["reproduce.rl", env, "--eval-only", "--methods", *dict.fromkeys(r.report[2] for r in runs)],
                         runs))
        sinusoid = [r for r in moved if r.report[0] == "sinusoid"]
        if sinusoid:  # (its seed runs: the report evaluates every method and every seed)
            jobs.append((["reproduce.sinusoid", "--eval-only"], sinusoid))
        for pilot_set in dict.fromkeys(r.report[1] for r in moved if r.report[0] == "rl_pilot"):
            jobs.append((["reproduce.rl_pilot", pilot_set], [r for r in moved if r.report == ("rl_pilot", pilot_set)]))
        appendix: dict[str, list] = {}
        deferred = set()  # RL context runs: reported once reproduce.appendix has succeeded after reproduce.rl
        for r in moved:
            if r.report[0] == "appendix":
                appendix.setdefault(r.report[1], []).append(r)
            if r.report[0] == "rl" and r.report[2] == "context":
                appendix.setdefault("context", []).append(r)  # after reproduce.rl has evaluated it
                deferred.add(r)
            if r.report[:3] in CONTEXT_TABLE_MAML_ROWS:  # the MAML rows beside the context vector's
                appendix.setdefault("context", [])
        for name, runs in appendix.items():
            # Tables 4 and 5's context runs were evaluated by reproduce.rl above: only Table 3's
            # (Omniglot, reported as ("appendix", "context")) are evaluated here
            extra = [] if name != "context" else ["--tables", "3"] \
                if any(r.report == ("appendix", "context") for r in runs) else ["--report-only"]
            jobs.append((["reproduce.appendix", name, *extra], runs))
        failed = set()
        for args, runs in jobs:
            cmd = [self.python, "-m", *args, "--threads", str(threads), "--quiet", "--results", str(self.results)]
            self.log(f"campaign: {' '.join(cmd[1:])}")
            try:  # the hours given, or at least 10 minutes for a report
                limit = max(self.t0 + 3600 * self.hours - time.monotonic(), 600)
                rc = subprocess.run(cmd, cwd=self.cwd, stdout=subprocess.DEVNULL, timeout=limit).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if rc != 0:
                self.log(f"campaign: the report ended with {rc}; the next campaign runs it again")
                failed.update(runs)
                continue
            runs = [r for r in runs if r not in failed and (r not in deferred or args[0] == "reproduce.appendix")]
            reported = _reported(self.results, self.queue)
            reported.update(evaluated(runs, self.results))
            records.write_json(self.results / "campaign.json", {"reported_iterations": dict(sorted(reported.items()))})


def evaluated(runs: list[Run], results: Path) -> dict:
    """{run name: iterations} of the runs a successful report evaluated: all it was given, except
    that a run with another seed counts only where its report's results list that seed at its
    iterations (the reports evaluate seeds beside the config's own run, and skip them when that
    run cannot be evaluated)."""
    out = {}
    for r in runs:
        done = done_iterations(r.run_dir(results))
        if r.seed is None or _seed_iterations(results, r) == done:
            out[r.name] = done
    return out


def _seed_iterations(results: Path, run: Run) -> int | None:
    """The iterations at which the results of `run`'s report list that seed run (None: not
    listed): results/table1.json, results/rl/<env>.json or results/sinusoid/summary.json."""
    kind = run.report[:1]
    if kind == ("table1",):
        return _table1_iterations(results).get((run.config, run.seed))
    if kind == ("rl",):
        path, method = results / "rl" / f"{run.report[1]}.json", run.report[2]
    elif kind == ("sinusoid",):
        path, method = results / "sinusoid" / "summary.json", Path(run.config).name
    else:
        return None
    try:
        rows = json.loads(path.read_text())["seeds"][method]
        return next((r.get("iterations") for r in rows if r.get("seed") == run.seed and "error" not in r), None)
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _table1_iterations(results: Path) -> dict:
    """{(config, seed or None for the config's own run): iterations} in results/table1.json."""
    try:
        t1 = {}
        for r in json.loads((results / "table1.json").read_text()):
            t1[r["config"], None] = r.get("iterations", 0)
            t1.update({(r["config"], s["seed"]): s.get("iterations") for s in r.get("other_seeds", [])})
        return t1
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return {}


def _reported(results: Path, queue: list[Run] | None = None) -> dict:
    """{run name: iterations} as of each run's last successful report: results/campaign.json, or
    for a run it does not list, the iterations its result file records (`_listed`)."""
    out = _listed(results, queue)
    path = results / "campaign.json"
    try:
        out.update(json.loads(path.read_text())["reported_iterations"] if path.exists() else {})
    except (json.JSONDecodeError, KeyError):
        pass
    return out


def _listed(results: Path, queue: list[Run] | None = None) -> dict:
    """{run name: iterations} as the result files record them: results/table1.json,
    results/rl/<env>.json, and results/sinusoid/summary.json for seed runs."""
    out = {}
    t1 = _table1_iterations(results)
    for run in queue or QUEUE:
        if run.seed is not None:
            if (done := _seed_iterations(results, run)) is not None:
                out[run.name] = done
        elif run.report[:1] == ("table1",) and (run.config, None) in t1:
            out[run.name] = t1[run.config, None]
        elif run.report[:1] == ("rl",):
            try:
                rl = json.loads((results / "rl" / f"{run.report[1]}.json").read_text())
                out[run.name] = rl["runs"][run.report[2]]["iterations"]
            except (OSError, json.JSONDecodeError, KeyError):
                pass
    return out


def _hold(lock_path: Path, exclusive: bool) -> int | None:
    """An flock on `lock_path`. Shared ("in use") waits while another process holds it exclusively
    (a cleaner, for the moment it takes to remove a snapshot); exclusive ("nobody uses it") returns
    None at once if it is taken. Whoever holds it exclusively deletes the lock file; a lock taken on
    a file deleted between opening and locking it would guard nothing, so it is taken again on the
    file now there."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def snapshot(root: Path = ROOT) -> Path:
    """A clean git worktree of HEAD in .campaign/ (reused when it exists), with data/ linked: what
    the workers run, so that editing this checkout cannot change them. The campaign holds a shared
    lock on its snapshot for as long as it runs; older snapshots are removed only when no campaign
    holds them."""
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                         check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "maml_tf",
                            "reproduce", "data_prep"], cwd=root, capture_output=True, text=True).stdout.strip()
    if dirty:
        print("campaign: uncommitted changes to the code are not part of the run (it runs the last "
              f"commit, {sha[:10]}):\n{dirty}", file=sys.stderr)
    base = root / ".campaign"
    base.mkdir(exist_ok=True)
    tree = base / sha[:12]
    _HELD.append(_hold(base / f"{tree.name}.lock", exclusive=False))  # held until the process exits
    # earlier snapshots (and their lock files) that no campaign uses any more
    for name in sorted({p.name.removesuffix(".lock") for p in base.iterdir()} - {tree.name}):
        lock = base / f"{name}.lock"
        fd = _hold(lock, exclusive=True)
        if fd is not None:
            old = base / name
            if old.is_dir():
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=root, capture_output=True)
                shutil.rmtree(old, ignore_errors=True)
            lock.unlink(missing_ok=True)   # while holding it: a later taker sees the file is gone
            os.close(fd)
    subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True)
    if not (tree / ".git").exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=root, check=True,
                       capture_output=True)
    link = tree / "data"
    if not link.exists():
        (root / "data").mkdir(exist_ok=True)
        link.symlink_to(root / "data")
    return tree


_HELD: list = []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.campaign", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--hours", type=float, default=2.5, help="wall-clock hours, reports included (default 2.5)")
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                   help="runs trained at once, one core each (default: every core)")
    p.add_argument("--report-minutes", type=float, default=15.0,
                   help="minutes kept at the end for evaluating what moved (default 15)")
    p.add_argument("--status", action="store_true", help="print the table and exit")
    p.add_argument("--results", type=Path, default=RESULTS, help="where run directories and tables are")
    p.add_argument("--here", action="store_true",
                   help="run the workers from this checkout instead of a snapshot of the last commit")
    args = p.parse_args(argv)
    if args.hours <= 0 or args.cores < 1 or args.report_minutes < 0:
        p.error("--hours must be > 0, --cores >= 1, --report-minutes >= 0")
    results = args.results.resolve()
    if args.status:
        print(write_table(QUEUE, results))
        return 0
    cwd = ROOT if args.here else snapshot()
    if not args.here:
        print(f"campaign: workers run the last commit, from {cwd}", file=sys.stderr)
    c = Campaign(QUEUE, results, args.hours, args.cores, args.report_minutes, cwd=cwd,
                 logs=ROOT / "logs" / "campaign", log=lambda m: print(m, file=sys.stderr, flush=True))
    c.train()
    if not args.here:  # the reports: the last commit now (commits made while the workers trained)
        fresh = snapshot()
        if fresh != cwd:
            print(f"campaign: the reports run the last commit, from {fresh}", file=sys.stderr)
        c.cwd = fresh
    c.report(threads=args.cores)
    print(write_table(QUEUE, results, notes=c.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
