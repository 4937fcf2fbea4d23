"""Results files (everything under results/ that is not a run directory): the provenance every
number records (code commit, machine, time), atomic writes, and the rule that a re-run which
changes no result leaves the file as it was. The run directory itself is `maml_tf.runs`'s."""
from __future__ import annotations

import datetime
import functools
import json
import math
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def commit() -> str:
    """The code commit, with '+dirty' when tracked code differs from it. Read once per process
    (entry points read it as they start), so it names the code that ran, not what was committed
    while it ran."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "maml_tf",
                                "reproduce", "data_prep"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    import tensorflow as tf
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "gpus": len(tf.config.list_physical_devices("GPU")), "python": platform.python_version(),
            "tensorflow": tf.__version__, "platform": platform.platform()}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically (a temp file, then rename): an interrupted write loses nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_bytes(path: str | Path, data: bytes) -> bool:
    """Write a file atomically (a temp file, then rename), unless it already holds `data` (an
    unchanged table or figure leaves git clean, and its file untouched); whether it wrote."""
    path = Path(path)
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def write_text(path: str | Path, text: str) -> bool:
    """`write_bytes` of a text (UTF-8); whether it wrote."""
    return write_bytes(path, text.encode("utf-8"))


def write_figure(fig, path: str | Path, dpi: int = 110) -> bool:
    """`write_bytes` of a matplotlib figure as PNG; whether it wrote."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return write_bytes(path, buf.getvalue())


# provenance (which commit evaluated a result, when, where) and what is derived from the results
# with noise of its own: the findings' text, and the returns of the step sizes a baseline's tuning
# rejected (some of them diverge, and a diverging rollout amplifies float rounding)
PROVENANCE_KEYS = ("commit", "written", "machine", "wall_time_s", "host", "findings", "alpha_search")


def _same(a, b, ignore) -> bool:
    """Equal apart from the `ignore` keys and float noise: relative 1e-4 (evaluation runs are
    repeatable to float32 rounding), 1e-2 for values beyond 1e3 (a diverging curve amplifies the
    rounding), NaN equal to NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - set(ignore)
        return all(k in a and k in b and _same(a[k], b[k], ignore) for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, ignore) for x, y in zip(a, b))
    if isinstance(a, int) and isinstance(b, int):  # iterations, steps, counts: exactly
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        rel = 1e-2 if min(abs(a), abs(b)) > 1e3 else 1e-4
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)
    return a == b


def same_data(old, new, ignore=PROVENANCE_KEYS) -> bool:
    """Whether two results records (dicts, lists) hold the same results, apart from provenance
    and float noise (see same_results)."""
    return _same(old, json.loads(json.dumps(new)), ignore)


def same_results(path: str | Path, data, ignore=PROVENANCE_KEYS) -> bool:
    """Whether the JSON at `path` holds the same results as `data`, apart from provenance (which
    commit evaluated it, when, where) and float noise: a re-run that changes no result then
    leaves the tracked files as they were."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return same_data(old, data, ignore)


def write_table(json_path: str | Path, data, md_path: str | Path, text: str) -> None:
    """Write a results record and its markdown table: the JSON only when a result changed (so its
    provenance stays otherwise), the markdown whenever its text differs (the generator's words may
    change alone)."""
    if not same_results(json_path, data):
        write_json(json_path, data)
    write_text(md_path, text)
