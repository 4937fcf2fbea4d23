"""Keep TensorFlow's start-up noise off a CPU machine's terminal.

TensorFlow prints, from C++, lines that say nothing to a user of this project: CUDA factories
registered twice, `cuInit` failing where there is no GPU, the XLA service starting, oneDNN and
CPU-instruction notices. Some of them come from absl before its logging is set up and ignore
TF_CPP_MIN_LOG_LEVEL. `install()` sends the C-level standard error (file descriptor 2) through a
filter thread that drops exactly those lines and passes every other line on at once; Python's own
`sys.stderr` keeps writing to the terminal directly, so the project's messages (and Python
tracebacks) never wait on the thread. At exit, descriptor 2 is given back and the filter passes on
what is still in its pipe; only a hard abort (a C++ fatal error) can cut its last lines, which
MAML_TF_VERBOSE=1 (the filter off) shows.
"""
from __future__ import annotations

import atexit
import io
import os
import re
import sys
import threading

NOISE = re.compile("|".join([
    r"Unable to register cu(FFT|DNN|BLAS) factory",
    r"failed call to cuInit",
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"XLA service 0x[0-9a-f]+ initialized for platform",
    r"StreamExecutor device \(\d+\): Host",
    r"Compiled cluster using XLA!",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions: .*rebuild TensorFlow",
    r"computation placer already registered",
]))

_installed = False
_restore = None


def uninstall() -> None:
    """Back to TensorFlow's full output (an entry point's --verbose): from now on, every line."""
    global _restore
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    if _restore is not None:
        _restore()
        _restore = None


def install() -> None:
    global _installed
    if _installed or os.environ.get("MAML_TF_VERBOSE") or "pytest" in sys.modules or sys.stderr is None:
        return
    _installed = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's own INFO lines
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
    except OSError:
        return
    # Python's messages go straight to the real standard error, line-buffered
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(real), "wb", buffering=0), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True, write_through=True)

    def forward(data: bytes) -> None:
        try:
            os.write(real, data)
        except OSError:
            pass  # the real standard error is gone (a closed pipe): keep draining, never block TensorFlow

    def pump() -> None:
        with os.fdopen(read, "rb", buffering=0) as src:
            pending = b""
            while True:
                try:
                    chunk = src.read(65536)
                except OSError:
                    break
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(l + b"\n" for l in lines if not NOISE.search(l.decode("utf-8", "replace")))
                if out:
                    forward(out)
            if pending and not NOISE.search(pending.decode("utf-8", "replace")):
                forward(pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        """At exit: give file descriptor 2 back to the real standard error, so that the filter sees
        the end of its pipe and passes on every line still in it before the process ends."""
        try:
            sys.stderr.flush()
            os.dup2(real, 2)
        except (OSError, ValueError):
            return
        thread.join(timeout=2.0)

    atexit.register(restore)
    global _restore
    _restore = restore
