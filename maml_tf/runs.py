"""The run directory, for the run loop (`maml_tf.loop`): its lock, the resume check and the
rollback of what a stopped process wrote after its checkpoint, sessions.jsonl (which commit trained
which iterations), the metrics log, and stopping on a signal with a checkpoint. Results files
derived from runs are `maml_tf.records`'s."""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import yaml

from maml_tf import records


class TrainingError(RuntimeError):
    """A run cannot go on (diverged, or its directory holds a different run); the message says what to do."""


# train.* keys that may change when a run is resumed: the budget and bookkeeping, and the step
# sizes and clipping that recover a diverged run (the change takes effect from the resumed
# iteration on and is recorded in sessions.jsonl)
RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "log_every", "xla", "distribute"}
RECOVERY_CHANGES = {"meta_lr", "inner_lr", "grad_clip", "max_kl"}
# (section, key) pairs that may change on resume and are recorded in sessions.jsonl: the recovery
# keys, and how the same function is computed: model.impl (nets.conv4) and train.task_chunk (the
# RL gradients summed over chunks of tasks, `maml.sum_over_tasks`)
RECORDED_CHANGES = {("train", k) for k in RECOVERY_CHANGES} | {("model", "impl"), ("train", "task_chunk")}
SILENT_CHANGES = {("train", k) for k in RESUMABLE_CHANGES}
# keys added after runs were saved without them: a missing key means this value (what those runs did)
ADDED_KEYS = {("model", "init"): "widened"}


# how many cores this process trains on (set by distribute.use_cpu_cores; recorded in sessions.jsonl)
CORES: int | None = None


class RunLock:
    """While held, no other process may train in `run_dir`: the second one is refused at once,
    with the first one's PID. An advisory lock on run_dir/.lock (flock), released by the kernel
    when the holder exits, however it exits (kill -9 included), so a stale lock cannot block a
    resume."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise TrainingError(
                f"{self.path.parent} is in use by process {holder}, which is training this run. Wait "
                f"for it to finish, or stop it (kill -TERM {holder}: it saves a checkpoint), then "
                f"resume; or train into another directory (--run-dir).") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


@contextlib.contextmanager
def claim(run_dir: str | Path):
    """Hold the run directory's lock while training in it; a directory that this call created
    and that holds no run yet (training failed before writing its config) is removed again."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        with RunLock(run_dir):
            yield
    except BaseException:
        if created and not (run_dir / "config.yaml").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def check_resume(run_dir: Path, cfg) -> dict:
    """Refuse to resume the run in `run_dir` with a config that changes anything but the budget
    and bookkeeping keys, the recovery keys (step sizes, clipping), how the model is computed
    (model.impl: the same function) and the evaluation, which does not touch training. Returns
    the recovery keys and model.impl where they change (sessions.jsonl records them):
    {"train.meta_lr": [old, new]}."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    old = yaml.safe_load(path.read_text())
    new = cfg.to_dict()
    changed = {}
    for section in set(old) | set(new):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in set(a) | set(b):
                if a.get(k, ADDED_KEYS.get((section, k))) == b.get(k, ADDED_KEYS.get((section, k))) \
                        or section == "eval" or (section, k) in SILENT_CHANGES:
                    continue
                if (section, k) in RECORDED_CHANGES:
                    changed[f"{section}.{k}"] = [a.get(k), b.get(k)]
                    continue
                raise TrainingError(
                    f"{run_dir} holds a run started with {section}.{k}={a.get(k)!r}, but this config "
                    f"has {b.get(k)!r}. Resume with the original config, or train into a new run "
                    f"directory (--run-dir), or delete {run_dir} to start over.")
        elif a != b and section not in ("notes", "eval"):
            raise TrainingError(f"{run_dir} holds a run with {section}={a!r}, this config has {b!r}; "
                                f"use a new --run-dir or delete {run_dir}.")
    return changed


def record_session(run_dir: Path, start: int, stop: int, changed: dict | None = None) -> None:
    """Append to run_dir/sessions.jsonl which code commit trains from iteration `start` toward
    `stop` (the session's budget; the next session's `from_iteration` says where it really
    stopped), where and when, and the recovery keys changed on resuming: a run resumed across
    sessions names every commit that trained it. Called once the session's first iteration is
    done, so a run that failed before training leaves no entry."""
    entry = {"commit": records.commit(), "from_iteration": start, "to_iteration": stop,
             "started": records.now(), "host": records.machine()["host"]}
    if changed:
        entry["changed"] = changed
    if CORES is not None:
        entry["cores"] = CORES
    path = run_dir / "sessions.jsonl"
    cut = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with path.open("a") as f:   # after a line cut by a kill, on a line of its own
        f.write(("\n" if cut else "") + json.dumps(entry) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl or sessions.jsonl ([] if it does not exist). A line cut by a
    kill (the process died mid-write) is skipped: the rest still counts."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def training_commits(run_dir: Path) -> list[str]:
    """The commits that trained the run (from sessions.jsonl; empty for runs older than it)."""
    seen = [r["commit"] for r in read_jsonl(run_dir / "sessions.jsonl") if "commit" in r]
    return list(dict.fromkeys(seen))


def rollback_metrics(run_dir: Path, step: int) -> None:
    """Drop the metrics.jsonl rows written after the checkpoint at `step` (by a process killed
    before its next checkpoint): the resumed run writes them again, so the log reads as an
    uninterrupted run's."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a line cut by the kill
    if len(keep) != len(lines):
        records.write_text(path, "".join(l + "\n" for l in keep))


def resumed(run_dir: Path, cfg, start: int, changed: dict) -> None:
    """What both training loops do once the latest checkpoint (iteration `start`) is restored:
    drop what a stopped process wrote after it (metrics rows, a best from lost iterations), then
    write the run's config."""
    rollback_metrics(run_dir, start)
    forget_lost_best(run_dir, start, changed)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def all_finite(values) -> bool:
    """Whether every tensor of `values` is free of NaN and infinities."""
    import tensorflow as tf
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in values)


def forget_lost_best(run_dir: Path, start: int, changed: dict) -> None:
    """A best checkpoint recorded after the checkpoint a run resumes from belongs to iterations
    that were lost. A plain resume trains them again, identically, and finds the same best; a
    resume with changed step sizes (`changed`) takes another path, so that best is removed."""
    path = run_dir / "best.json"
    if not changed or not path.exists():
        return
    try:
        best = json.loads(path.read_text())
    except json.JSONDecodeError:
        best = {"step": start + 1}
    if best.get("step", 0) > start:
        path.unlink()
        shutil.rmtree(run_dir / "best", ignore_errors=True)


def is_better(value: float, best: dict | None, higher_is_better: bool) -> bool:
    """Whether a finite `value` beats the recorded best (a best that is not finite, from a run
    that diverged before this rule, is always beaten; a value that is not finite never wins)."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best["value"]):
        return True
    return value > best["value"] if higher_is_better else value < best["value"]


class Log:
    """Metrics to metrics.jsonl and TensorBoard, and a one-line progress display."""

    def __init__(self, run_dir: Path, quiet: bool):
        import tensorflow as tf  # here, not at the top: entry points answer --help without TensorFlow
        self.path = run_dir / "metrics.jsonl"
        self.writer = tf.summary.create_file_writer(str(run_dir / "tb"))
        self.quiet = quiet

    def write(self, step: int, values: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        import tensorflow as tf
        with self.writer.as_default(step=step):
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    tf.summary.scalar(k, v)

    def progress(self, text: str) -> None:
        """One progress line: rewritten in place on a terminal, one line each in a log file."""
        if not self.quiet:
            tty = sys.stderr.isatty()
            sys.stderr.write(f"\r{text}   " if tty else f"{text}\n")
            sys.stderr.flush()

    def done(self, text: str = "") -> None:
        if not self.quiet:
            sys.stderr.write(("\n" if sys.stderr.isatty() else "") + (f"{text}\n" if text else ""))


def announce(run_dir: Path, start: int, stop: int, budget: int, quiet: bool) -> None:
    """Say what this call of a training loop is about to do with the run."""
    if quiet:
        return
    if start >= stop:
        msg = f"{run_dir}: already trained to {start} iterations (budget {budget}); nothing to train"
    elif start:
        msg = f"{run_dir}: resuming at iteration {start}, training to {stop}"
    else:
        msg = f"{run_dir}: training to {stop} iterations"
    print(msg, file=sys.stderr, flush=True)


class StopRequest:
    """While active, SIGINT and SIGTERM ask the training loop to stop after the current iteration
    (the loop calls `checkpoint` after each iteration, which saves and raises KeyboardInterrupt). Nothing is
    raised asynchronously, so a signal cannot land inside a checkpoint write or a data-pipeline
    call; a second signal interrupts at once. Outside the main thread it does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {signum} (second)")
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def checkpoint(self, step: int, due: bool, save, log: Log, requested: bool | None = None) -> None:
        """End of an iteration: `save(step)` when a checkpoint is `due` or a stop was requested
        (`requested`: as the workers of a multi-worker run agreed, default this process's signal);
        after the save of a requested stop, raise KeyboardInterrupt (the run resumes from there)."""
        requested = self.requested if requested is None else requested
        if due or requested:
            save(step)
        if requested:
            log.done(f"interrupted: saved a checkpoint at iteration {step}")
            raise KeyboardInterrupt(f"signal {self.signum or 'on another worker'}")
