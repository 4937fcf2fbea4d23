"""Keep TensorFlow's start-up noise off a CPU machine's terminal.

TensorFlow prints, from C++, lines that say nothing to a user of this project: CUDA factories
registered twice, `cuInit` failing where there is no GPU, the XLA service starting, oneDNN and
CPU-instruction notices. Some of them come from absl before its logging is set up and ignore
TF_CPP_MIN_LOG_LEVEL. `install()` sends the C-level standard error (file descriptor 2) through a
filter thread that drops exactly those lines and passes every other line on at once; Python's own
`sys.stderr` keeps writing to the terminal directly, so the project's messages (and Python
tracebacks) never wait on the thread. MAML_TF_VERBOSE=1 turns the filter off.
"""
from __future__ import annotations

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


def install() -> None:
    global _installed
    if _installed or os.environ.get("MAML_TF_VERBOSE") or "pytest" in sys.modules:
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

    def pump() -> None:
        with os.fdopen(read, "rb", buffering=0) as src:
            pending = b""
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(l + b"\n" for l in lines if not NOISE.search(l.decode("utf-8", "replace")))
                if out:
                    os.write(real, out)
            if pending and not NOISE.search(pending.decode("utf-8", "replace")):
                os.write(real, pending)

    threading.Thread(target=pump, name="stderr-filter", daemon=True).start()
