"""Small helpers shared by the dataset preparation scripts.

Nothing here has side effects at import time.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]


class DataError(Exception):
    """A dataset input or output problem. The message says what to do about it."""


def file_digest(path: str | os.PathLike, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (algo: any hashlib name, e.g. 'sha256', 'md5')."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def md5(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temp file next to `path` for binary writing; move it onto `path` only on success.

    The temp file lives in the same folder so that os.replace is atomic. If the body raises,
    the temp file is deleted and `path` is left as it was (absent or the old version).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; give the output ordinary permissions
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
