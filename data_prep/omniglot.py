"""Omniglot -> one compact file `<out>/omniglot28.npz` (28x28, all 1623 characters x 20 drawings).

Usage:
    python -m data_prep.omniglot [--source DIR_OR_URL_BASE] [--out data/omniglot] [--force]

Inputs are the two archives `images_background.zip` and `images_evaluation.zip` of
brendenlake/omniglot, taken from a local folder (default: `../shared/data/omniglot` next to the
repository, when it exists) or downloaded from a URL base (default
https://github.com/brendenlake/omniglot/raw/master/python/). Each archive is checked against
KNOWN_CHECKSUMS before use: the md5 of the original archive or the sha256 of the offline re-zipped
copy (same content, see shared/data/omniglot/SOURCE.md).

What the official code fed the network (cbfinn/maml, read for this module)
---------------------------------------------------------------------------
* `data/omniglot_resized/resize_images.py` opens every PNG with PIL and calls
  `im.resize((28, 28), resample=Image.LANCZOS)` on the image *as opened*, then saves it as PNG.
* The Omniglot PNGs are 105x105, 1-bit, so PIL opens them in mode "1". `Image.resize` on a mode
  "1" (or "P") image silently replaces the requested filter by NEAREST; this rule is in every PIL /
  Pillow version (PIL 1.1.x `Image.resize`: `if self.mode in ("1", "P"): resample = NEAREST`, still
  there in Pillow 11.3). So the official "LANCZOS" 28x28 images are really nearest-neighbour
  subsamples: still 1-bit, no grey levels. Checked here with Pillow 11.3: on these files
  resize(LANCZOS) == resize(NEAREST) bit for bit, and both equal `src[r][:, r]` with
  `r = floor((i + 0.5) * 105 / 28)`, i = 0..27 (pixel-centre sampling, used by Pillow since 3.4,
  python-pillow/Pillow PR #2022, 2016; a pre-3.4 Pillow would have sampled `floor(i * 3.75)`,
  half a source pixel off; the MAML code dates from 2017, so we assume the centred rule).
* `data_generator.py` (`make_data_tensor`) reads the saved files with `tf.image.decode_png` (a 1-bit
  grey PNG decodes to uint8 0 or 255, checked with TF 2.18), then `tf.cast(..., tf.float32) / 255.0`
  and `1.0 - image` (invert: ink becomes 1, paper 0). `utils.get_images` only lists the files.
  So the official network input is exactly binary: {0.0, 1.0}, ink = 1.

What this file stores
---------------------
* `images`  uint8 [C, 20, 28, 28]: the official 28x28 pixels as decoded from the resized PNG
  (0 = ink, 255 = paper), i.e. PIL `resize((28, 28), LANCZOS)` on the mode "1" image, which is
  NEAREST. Network input, exactly as the official pipeline: `1 - x.astype(float32) / 255`
  (see `load_omniglot`), values in {0, 1}.
* `images_lanczos` uint8 [C, 20, 28, 28]: what the paper's words describe (convert to "L" first,
  then a real LANCZOS resize; grey levels). Same conversion; only for ablations, not the default.
* `alphabet`, `character`, `archive` (str [C]) and `drawing` (str [C, 20], file names), C = 1623,
  sorted by (archive: background then evaluation, alphabet, character, drawing file name).
  Background = 964 characters (30 alphabets), evaluation = 659 (20 alphabets).
* `format_version`, `source_archives`, `source_sha256`, `source_md5`: used to decide whether an
  existing output is up to date (then the script does nothing).

Note: the official code merged both archives into one folder and shuffled the character folders
with `random.seed(1)` after `os.listdir` (file-system order), so its exact split cannot be
reproduced; the meta-train/val/test split is done by the training code from the sorted order here.
"""
from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from data_prep.common import REPO_ROOT, DataError, atomic_write, file_digest

FORMAT_VERSION = 1
URL_BASE = "https://github.com/brendenlake/omniglot/raw/master/python/"
LOCAL_DEFAULT = REPO_ROOT.parent / "shared" / "data" / "omniglot"
OUT_NAME = "omniglot28.npz"
ARCHIVES = ("images_background.zip", "images_evaluation.zip")
DRAWINGS_PER_CHARACTER = 20
SIZE = 28

# The one table of accepted archive checksums: (algorithm, hex digest, what it identifies).
# An archive is accepted if ANY entry for its name matches.
KNOWN_CHECKSUMS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "images_background.zip": (
        ("md5", "68d2efa1b9178cc56df9314c21c6e718", "original archive (public URL)"),
        ("sha256", "8d3b0087d462ff4fd7fcfdcec8b96ef87758cc2a0a09f8eb6cf90e4a909049e9",
         "offline re-zipped copy"),
    ),
    "images_evaluation.zip": (
        ("md5", "6b91aef0f799c5bb55b94e3f2daec811", "original archive (public URL)"),
        ("sha256", "077e703a0f6c17a203123bad6dbd83461e7bdd4c89d4d1c0f10b0bd43c271916",
         "offline re-zipped copy"),
    ),
}

Checksums = Mapping[str, Sequence[tuple]]


def default_source() -> str:
    return str(LOCAL_DEFAULT) if LOCAL_DEFAULT.is_dir() else URL_BASE


def _is_url(source: str) -> bool:
    return str(source).startswith(("http://", "https://", "file://"))


def _fix_hint(name: str) -> str:
    return (f"Re-download {name} from {URL_BASE}{name}, or point --source "
            f"(make variable OMNIGLOT_SOURCE) at a folder holding a good copy.")


def verify(path: Path, name: str, checksums: Checksums = KNOWN_CHECKSUMS,
           shown: str | None = None) -> dict[str, str]:
    """Check `path` (the archive `name`) against the table; return its {'md5', 'sha256'} digests.
    `shown` is what the error message names instead of `path` (a download's URL, not its temp file)."""
    if name not in checksums:
        raise DataError(f"No known checksum for {name}; add it to the checksum table.")
    digests = {algo: file_digest(path, algo) for algo in {"md5", "sha256"} | {e[0] for e in checksums[name]}}
    if any(digests[e[0]] == e[1].lower() for e in checksums[name]):
        return digests
    expected = " or ".join(f"{e[0]} {e[1]}" + (f" ({e[2]})" if len(e) > 2 else "") for e in checksums[name])
    actual = ", ".join(f"{a} {digests[a]}" for a in sorted({e[0] for e in checksums[name]}))
    raise DataError(f"Checksum mismatch for {name} ({shown or path}): expected {expected}; got {actual}. "
                    + _fix_hint(name))


def _download(url: str, dest: Path, name: str, checksums: Checksums) -> dict[str, str]:
    """Stream `url` to a temp file next to `dest`, verify it, then move it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.download")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
            while block := resp.read(1 << 20):
                f.write(block)
        digests = verify(tmp, name, checksums, shown=url)
        tmp.replace(dest)
        return digests
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"Could not download {url}: {e}. If this machine is offline, fetch the "
                        f"archive elsewhere and pass --source DIR (make variable OMNIGLOT_SOURCE).") from e
    finally:
        tmp.unlink(missing_ok=True)


def fetch(source: str | Path, dest_dir: str | Path | None = None,
          checksums: Checksums = KNOWN_CHECKSUMS) -> dict[str, Path]:
    """Return {archive name: verified local path} for every archive named in `checksums`.

    `source` is a folder (archives are verified in place, nothing is copied) or a URL base
    (archives are downloaded into `dest_dir`; a verified copy already there is reused).
    Raises DataError if an archive is missing, unreachable or fails its checksum.
    """
    paths, _ = _fetch(source, dest_dir, checksums)
    return paths


def _fetch(source, dest_dir, checksums):
    paths, digests = {}, {}
    for name in checksums:
        if _is_url(str(source)):
            if dest_dir is None:
                raise DataError("fetch from a URL needs a dest_dir to download into.")
            dest = Path(dest_dir) / name
            try:  # reuse an earlier good download
                digests[name] = verify(dest, name, checksums) if dest.is_file() else None
            except DataError:
                digests[name] = None
            if digests[name] is None:
                digests[name] = _download(str(source).rstrip("/") + "/" + name, dest, name, checksums)
        else:
            dest = Path(source) / name
            if not dest.is_file():
                raise DataError(f"{name} not found in {source}. Put images_background.zip and "
                                f"images_evaluation.zip there, or pass --source DIR_OR_URL "
                                f"(make variable OMNIGLOT_SOURCE); default URL: {URL_BASE}")
            digests[name] = verify(dest, name, checksums)
        paths[name] = dest
    return paths, digests


def _read_archive(path: Path, name: str) -> list[tuple[str, str, list[tuple[str, bytes]]]]:
    """[(alphabet, character, [(drawing file name, png bytes)] sorted)], sorted by alphabet, character."""
    top = name[:-len(".zip")]
    chars: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                parts = info.filename.split("/")
                if info.is_dir() or len(parts) != 4 or parts[0] != top or not parts[3].endswith(".png"):
                    continue
                chars.setdefault((parts[1], parts[2]), []).append((parts[3], z.read(info)))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise DataError(f"{path} is not a readable zip archive ({e}). " + _fix_hint(name)) from e
    if not chars:
        raise DataError(f"No <alphabet>/<character>/<file>.png under {top}/ in {path}. " + _fix_hint(name))
    out = []
    for (alphabet, character), files in sorted(chars.items()):
        if len(files) != DRAWINGS_PER_CHARACTER:
            raise DataError(f"{path}: {alphabet}/{character} has {len(files)} drawings, expected "
                            f"{DRAWINGS_PER_CHARACTER}. " + _fix_hint(name))
        out.append((alphabet, character, sorted(files)))
    return out


def _resize_pair(png: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(official, lanczos) 28x28 uint8 versions of one drawing; see the module docstring."""
    try:
        im = Image.open(io.BytesIO(png))
        im.load()
    except Exception as e:  # PIL raises many types for corrupt data
        raise DataError(f"Cannot decode {where} ({e}). " + _fix_hint(where.split(":")[0])) from e
    if im.mode not in ("1", "L"):
        raise DataError(f"{where} has mode {im.mode}, expected 1-bit ('1') or grey ('L').")
    # Exactly the official call: resize on the image as opened. On mode "1" PIL uses NEAREST.
    official = np.asarray(im.resize((SIZE, SIZE), resample=Image.LANCZOS).convert("L"), dtype=np.uint8)
    lanczos = np.asarray(im.convert("L").resize((SIZE, SIZE), resample=Image.LANCZOS), dtype=np.uint8)
    return official, lanczos


def build(archive_paths: Mapping[str, Path], out_path: Path, digests: Mapping[str, Mapping[str, str]],
          log: Callable[[str], None] = print) -> Path:
    """Decode, resize and write the npz atomically (no file is left behind on failure)."""
    records = []  # (archive, alphabet, character, files)
    for name in ARCHIVES:
        chars = _read_archive(Path(archive_paths[name]), name)
        log(f"{name}: {len({a for a, _, _ in chars})} alphabets, {len(chars)} characters")
        records += [(name[:-4], a, c, files) for a, c, files in chars]
    n = len(records)
    images = np.empty((n, DRAWINGS_PER_CHARACTER, SIZE, SIZE), np.uint8)
    images_lanczos = np.empty_like(images)
    for i, (arch, alphabet, character, files) in enumerate(records):
        for j, (fname, png) in enumerate(files):
            images[i, j], images_lanczos[i, j] = _resize_pair(png, f"{arch}.zip:{alphabet}/{character}/{fname}")
        if (i + 1) % 200 == 0:
            log(f"  resized {i + 1}/{n} characters")
    names = list(ARCHIVES)
    with atomic_write(out_path) as f:
        np.savez_compressed(
            f, images=images, images_lanczos=images_lanczos,
            alphabet=np.array([r[1] for r in records]), character=np.array([r[2] for r in records]),
            archive=np.array([r[0] for r in records]),
            drawing=np.array([[fn for fn, _ in r[3]] for r in records]),
            format_version=np.int64(FORMAT_VERSION), source_archives=np.array(names),
            source_sha256=np.array([digests[k]["sha256"] for k in names]),
            source_md5=np.array([digests[k]["md5"] for k in names]))
    log(f"wrote {out_path}: images {images.shape} uint8")
    return out_path


def _existing_ok(out_path: Path, checksums: Checksums, digests=None) -> bool:
    """True if out_path is a complete file of this format, built from accepted (or the given) archives."""
    if not out_path.is_file():
        return False
    try:
        with np.load(out_path, allow_pickle=False) as z:
            if int(z["format_version"]) != FORMAT_VERSION or z["images"].shape[1:] != (DRAWINGS_PER_CHARACTER, SIZE, SIZE):
                return False
            recorded = {str(k): {"sha256": str(s), "md5": str(m)} for k, s, m in
                        zip(z["source_archives"], z["source_sha256"], z["source_md5"])}
    except Exception:
        return False
    if set(recorded) != set(ARCHIVES):
        return False
    if digests is not None:
        return all(recorded[k]["sha256"] == digests[k]["sha256"] for k in ARCHIVES)
    return all(any(recorded[k].get(e[0]) == e[1].lower() for e in checksums.get(k, ())) for k in ARCHIVES)


def _clean_leftovers(out_path: Path) -> None:
    """Remove what a killed earlier run left next to the output: a half-written
    `.omniglot28.npz.*.part` and `.omniglot-download-*` folders."""
    folder = out_path.parent
    if not folder.is_dir():
        return
    for p in folder.glob(f".{out_path.name}.*.part"):
        p.unlink(missing_ok=True)
    for p in folder.glob(".omniglot-download-*"):
        shutil.rmtree(p, ignore_errors=True)


def prepare(source: str | Path | None = None, out: str | Path = "data/omniglot",
            checksums: Checksums = KNOWN_CHECKSUMS, force: bool = False,
            log: Callable[[str], None] = print) -> Path:
    """Make `<out>/omniglot28.npz` from `source` (folder or URL base); do nothing if it is up to date."""
    source = str(source) if source is not None else default_source()
    out_path = Path(out) / OUT_NAME
    _clean_leftovers(out_path)
    if _is_url(source):
        if not force and _existing_ok(out_path, checksums):
            log(f"{out_path} is up to date (built from verified archives); nothing to do.")
            return out_path
        created = not out_path.parent.exists()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".omniglot-download-") as tmp:
                log(f"downloading archives from {source}")
                paths, digests = _fetch(source, tmp, checksums)
                return build(paths, out_path, digests, log)
        except BaseException:
            if created and not any(out_path.parent.iterdir()):  # leave no empty folder behind
                out_path.parent.rmdir()
            raise
    paths, digests = _fetch(source, None, checksums)
    if not force and _existing_ok(out_path, checksums, digests):
        log(f"{out_path} is up to date with the archives in {source}; nothing to do.")
        return out_path
    return build(paths, out_path, digests, log)


def load_omniglot(path: str | Path, variant: str = "official"):
    """Load the npz as the network sees it: (float32 [C, 20, 28, 28] in [0, 1], alphabet, character).

    variant "official": the pipeline of the official code (binary, ink = 1.0);
    variant "lanczos": a real grey-level LANCZOS resize (ablation). Both: 1 - uint8 / 255 in float32,
    the same arithmetic as the official `1.0 - tf.cast(x, tf.float32) / 255.0`.
    """
    key = {"official": "images", "lanczos": "images_lanczos"}[variant]
    with np.load(path, allow_pickle=False) as z:
        x, alphabet, character = z[key], z["alphabet"], z["character"]
    return np.float32(1.0) - x.astype(np.float32) / np.float32(255.0), alphabet, character


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.omniglot", description=__doc__.split("\n")[0])
    p.add_argument("--source", default=None,
                   help=f"folder holding the two archives, or URL base (default: {LOCAL_DEFAULT} if it exists, else {URL_BASE})")
    p.add_argument("--out", default="data/omniglot", help="output folder (default: data/omniglot)")
    p.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    args = p.parse_args(argv)
    try:
        prepare(args.source, args.out, force=args.force)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
