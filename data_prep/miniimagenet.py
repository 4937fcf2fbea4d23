"""MiniImagenet (Ravi & Larochelle split) -> `<out>/{train,val,test}.npz`, 84x84 RGB uint8.

Usage:
    python -m data_prep.miniimagenet [--images DIR_OR_ARCHIVE] [--splits DIR]
                                     [--out data/miniimagenet] [--force] [--jpeg-quality Q]

Inputs: the split files `train.csv`, `val.csv`, `test.csv` (rows `filename,label`, e.g.
`n0153282900000005.jpg,n01532829`; sha256 checked against KNOWN_CSV_SHA256; default folder
`../shared/data/miniimagenet` next to the repository) and the ImageNet images they name, from:

* by default (no --images), the offline copy `../shared/data/miniimagenet/images.tar.xz` next to
  the repository (ARCHIVE_DEFAULT: `images/<file>` for all 60,000 files, 84x84 JPEG; provenance in
  SOURCE.md beside it), checked against ARCHIVE_SHA256 before it is read;
* or --images DIR: a folder, flat (DIR/<file>) or per class (DIR/<wnid>/<file>); files up to two
  levels down are found by name (so the official layout DIR/<split>/<wnid>/<file> works too);
* or --images ARCHIVE: a .tar, .tar.xz, .tar.gz, .tar.bz2 or .zip holding the files (at top level,
  under `images/`, or in any folders: members are found by file name). Archives are read as a
  stream, member by member, in memory; nothing is extracted to disk.

Per-class image count is read from the csv (600 for the real split). Every input problem (a
missing, truncated, corrupt or wrong archive, a missing or undecodable image) stops the run with
one DataError message before any output is moved into place: the splits are written to temp files
and renamed together only when all of them are complete.

Each output holds `images` uint8 [n_classes, n_per_class, 84, 84, 3], `classes` (wnids, in
order of first appearance in the csv), `filenames` [n_classes, n_per_class] and the metadata
used to decide whether an existing file is up to date (`format_version`, `csv_sha256`,
`jpeg_quality`). Network input: `load_split` -> float32 images / 255, no mean subtraction.

Official preprocessing (cbfinn/maml, `data/miniImagenet/proc_images.py`): every image is opened
with PIL, `im.resize((84, 84), resample=Image.LANCZOS)` and saved back over the same .jpg (PIL's
default JPEG quality, 75); then files are moved into <split>/<wnid>/ following the csv.
`data_generator.py` decodes them with `tf.image.decode_jpeg(channels=3)` and divides by 255.
So the official inputs had been JPEG-compressed a second time after resizing. By default we keep
the resized pixels exactly (convert("RGB"), then LANCZOS); `--jpeg-quality 75` adds the JPEG
round trip to mimic the official files (decoder details aside). Unlike Omniglot, the filter really
is LANCZOS here: ImageNet JPEGs open in mode RGB (or L/CMYK), never "1"/"P".
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import lzma
import os
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image

from data_prep.common import REPO_ROOT, DataError, atomic_write, sha256

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SIZE = 84
SPLITS_DEFAULT = REPO_ROOT.parent / "shared" / "data" / "miniimagenet"
ARCHIVE_DEFAULT = SPLITS_DEFAULT / "images.tar.xz"
# sha256 of the offline copy of the 60,000 images (shared/data/miniimagenet/SOURCE.md).
ARCHIVE_SHA256 = "781bcfd3b411f3fc3da8a7459ba93d2b7f789b19987f1431f44675de4df3739d"

# sha256 of the Ravi & Larochelle split files (twitter/meta-learning-lstm, data/miniImagenet/).
KNOWN_CSV_SHA256 = {
    "train": "498519cd8e49ce97ed26a4a3638966698ae41ab35e9c68538319fc9b46ba7d2f",
    "val": "5658a59921ca027ee76af92949869c5d6f41d77592ff3b18db325a9d10c893b9",
    "test": "2b7cfa78342995761a572a8158e539bc4e0a80f9bbd7d00c1e17a460fbbb93fa",
}


def read_split_csv(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(classes in order of first appearance, {wnid: [file names in csv order]}); equal counts checked."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise DataError(f"Cannot read split file {path} ({e}); " + _SPLITS_HINT) from e
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DataError(f"{path}: expected a header 'filename,label'.")
    files: dict[str, list[str]] = {}
    for row in rows[1:]:
        if row:
            files.setdefault(row[1].strip(), []).append(row[0].strip())
    counts = {len(v) for v in files.values()}
    if len(counts) != 1:
        raise DataError(f"{path}: classes have different image counts {sorted(counts)}; expected equal.")
    return list(files), files


def _index_images(images_dir: Path) -> dict[str, Path]:
    """{file name: path} for files in images_dir and up to two folder levels below it."""
    index: dict[str, Path] = {}
    base_depth = len(images_dir.parts)
    for root, dirs, names in os.walk(images_dir):
        dirs.sort()
        if len(Path(root).parts) - base_depth >= 2:
            dirs[:] = []
        for n in names:
            index.setdefault(n, Path(root) / n)
    return index


_SPLITS_HINT = ("MiniImagenet needs the Ravi & Larochelle split files train.csv, val.csv and test.csv "
                "(twitter/meta-learning-lstm, data/miniImagenet/): put them in "
                f"{SPLITS_DEFAULT} or pass --splits DIR (make data-miniimagenet MINIIMAGENET_SPLITS=DIR).")


def _how_to_provide(splits_dir: Path, need: Mapping[str, tuple[list, dict]], default: bool = True) -> str:
    sizes = ", ".join(f"{s}: {len(c)} classes x {len(f[c[0]])}" for s, (c, f) in need.items())
    return (f"Provide the ImageNet images named in the csv files of {splits_dir} ({sizes}; names "
            f"like n0153282900000005.jpg = <wnid><8-digit index>.jpg), either all in one folder or "
            f"in <folder>/<wnid>/, or in a .tar/.tar.xz/.tar.gz/.zip archive, and pass it as --images "
            f"DIR_OR_ARCHIVE (make data-miniimagenet MINIIMAGENET_IMAGES=DIR_OR_ARCHIVE)"
            + (f"; by default the offline copy {ARCHIVE_DEFAULT} is used when it is there." if default else "."))


def _is_default_archive(path: Path) -> bool:
    try:
        return ARCHIVE_DEFAULT.is_file() and path.samefile(ARCHIVE_DEFAULT)
    except OSError:
        return False


def _archive_hint(path: Path) -> str:
    if _is_default_archive(path):
        return (f"Replace it with a good copy of the offline archive (sha256 {ARCHIVE_SHA256}, see "
                f"{path.parent / 'SOURCE.md'}), or pass images of your own with --images DIR_OR_ARCHIVE "
                f"(make data-miniimagenet MINIIMAGENET_IMAGES=DIR_OR_ARCHIVE).")
    return ("Replace it with a complete archive (.tar, .tar.xz, .tar.gz, .zip) of the images, or pass "
            "the folder of images instead (make data-miniimagenet MINIIMAGENET_IMAGES=DIR_OR_ARCHIVE).")


def _verify_archive(path: Path, expected: str) -> None:
    got = sha256(path)
    if got != expected.lower():
        raise DataError(f"Checksum mismatch for {path} ({path.stat().st_size} bytes): expected sha256 "
                        f"{expected}, got {got}; the archive is truncated, corrupt or not the expected "
                        f"one. " + _archive_hint(path))


def _read_archive(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """{file name: bytes} of the archive members named in `wanted` (found by their base name at any
    depth; the first one of a name wins), read in one pass, in memory (nothing is extracted)."""
    found: dict[str, bytes] = {}
    try:
        if path.name.lower().endswith(".zip") or zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    name = info.filename.rsplit("/", 1)[-1]
                    if not info.is_dir() and name in wanted and name not in found:
                        found[name] = z.read(info)
        else:
            with tarfile.open(path, mode="r|*") as tar:  # a stream: members in archive order
                for member in tar:
                    name = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and name in wanted and name not in found:
                        found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, lzma.LZMAError, zlib.error,
            EOFError, OSError, ValueError) as e:
        raise DataError(f"Cannot read archive {path} ({type(e).__name__}: {e}): it is truncated, corrupt "
                        f"or not a tar or zip archive. " + _archive_hint(path)) from e
    return found


def _load_image(source: Path | bytes, jpeg_quality: int | None, where: str | None = None) -> np.ndarray:
    """One image (a file, or the bytes of an archive member) -> uint8 [84, 84, 3]."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im = im.convert("RGB").resize((SIZE, SIZE), resample=Image.LANCZOS)
    except Exception as e:  # PIL raises many types for corrupt data
        raise DataError(f"Cannot decode image {where or source} ({e}); replace it with a good copy.") from e
    if jpeg_quality is not None:  # mimic the official re-save as JPEG
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=jpeg_quality)
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def _existing_ok(path: Path, csv_sha: str, n_classes: int, n_per_class: int, jpeg_quality) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return (int(z["format_version"]) == FORMAT_VERSION and str(z["csv_sha256"]) == csv_sha
                    and int(z["jpeg_quality"]) == (-1 if jpeg_quality is None else jpeg_quality)
                    and z["images"].shape == (n_classes, n_per_class, SIZE, SIZE, 3))
    except Exception:
        return False


def _new_dirs(path: Path) -> list[Path]:
    """The folders that creating `path` as a folder would create, deepest first."""
    new, p = [], path.absolute()
    while not p.exists() and p != p.parent:
        new.append(p)
        p = p.parent
    return new


def prepare(images: str | Path | None = None, splits: str | Path | None = None,
            out: str | Path = "data/miniimagenet", checksums: Mapping[str, str] | None = KNOWN_CSV_SHA256,
            force: bool = False, jpeg_quality: int | None = None, log: Callable[[str], None] = print,
            archive_sha256: str | None = None) -> dict[str, Path]:
    """Write `<out>/<split>.npz` for each split; skip splits already up to date.

    `images`: a folder or an archive of the images; None: the offline copy ARCHIVE_DEFAULT, checked
    against ARCHIVE_SHA256. `archive_sha256`: the sha256 an archive given as `images` must have
    (None: not checked, unless it is the offline copy). `checksums`: {split: sha256 of its csv};
    None skips the check (custom or test splits). Every input problem raises DataError before any
    output is moved into place; on failure no temp file and no newly created folder is left.
    """
    splits_dir = Path(splits) if splits is not None else SPLITS_DEFAULT
    out = Path(out)
    parsed, csv_sha, todo = {}, {}, []
    for s in SPLITS:
        path = splits_dir / f"{s}.csv"
        if not path.is_file():
            raise DataError(f"Split file {path} not found. " + _SPLITS_HINT)
        csv_sha[s] = sha256(path)
        if checksums is not None and csv_sha[s] != checksums[s]:
            raise DataError(f"Checksum mismatch for {path}: expected sha256 {checksums[s]}, got {csv_sha[s]}. "
                            f"Use the Ravi & Larochelle files (twitter/meta-learning-lstm, data/miniImagenet/).")
        parsed[s] = read_split_csv(path)
        classes, files = parsed[s]
        if not force and _existing_ok(out / f"{s}.npz", csv_sha[s], len(classes), len(files[classes[0]]), jpeg_quality):
            log(f"{out / f'{s}.npz'} is up to date; nothing to do.")
        else:
            todo.append(s)
    if not todo:
        return {s: out / f"{s}.npz" for s in SPLITS}

    need = {s: parsed[s] for s in todo}
    if images is None:
        if not ARCHIVE_DEFAULT.is_file():
            raise DataError(f"No images given (--images) and the offline copy {ARCHIVE_DEFAULT} is not "
                            f"there. " + _how_to_provide(splits_dir, need, default=False))
        images = ARCHIVE_DEFAULT
    images = Path(images)
    wanted = {f for s in todo for fs in parsed[s][1].values() for f in fs}
    if images.is_dir():
        index: Mapping[str, Path | bytes] = _index_images(images)
    elif images.is_file():
        expected = archive_sha256 or (ARCHIVE_SHA256 if _is_default_archive(images) else None)
        if expected is not None:
            _verify_archive(images, expected)
            log(f"{images}: sha256 verified")
        t0 = time.perf_counter()
        log(f"reading {images} (in memory, nothing extracted)")
        index = _read_archive(images, wanted)
        log(f"read {len(index)} of the {len(wanted)} images needed in {time.perf_counter() - t0:.0f} s")
    else:
        raise DataError(f"Images {images} not found (neither a folder nor an archive). "
                        + _how_to_provide(splits_dir, need))
    in_archive = not images.is_dir()
    missing = [f"{c}/{f}" for s in todo for c, fs in parsed[s][1].items() for f in fs if f not in index]
    if missing:
        total = sum(len(fs) for s in todo for fs in parsed[s][1].values())
        incomplete = " (the archive is incomplete, truncated or not of these images)" if in_archive else ""
        raise DataError(f"{len(missing)} of {total} images missing from {images}{incomplete} (e.g. "
                        f"{', '.join(missing[:3])}). " + _how_to_provide(splits_dir, need))

    new_dirs = _new_dirs(out)
    try:
        # Each split goes to a temp file next to its output; all of them are moved into place
        # together when the stack closes without error, and all deleted otherwise.
        with contextlib.ExitStack() as pending:
            for s in todo:
                classes, files = parsed[s]
                n = len(files[classes[0]])
                arr = np.empty((len(classes), n, SIZE, SIZE, 3), np.uint8)
                for i, c in enumerate(classes):
                    for j, f in enumerate(files[c]):
                        arr[i, j] = _load_image(index[f], jpeg_quality, f"{f} in {images}" if in_archive else None)
                    log(f"{s}: class {i + 1}/{len(classes)} {c}")
                fh = pending.enter_context(atomic_write(out / f"{s}.npz"))
                np.savez(fh, images=arr, classes=np.array(classes), filenames=np.array([files[c] for c in classes]),
                         format_version=np.int64(FORMAT_VERSION), csv_sha256=np.array(csv_sha[s]),
                         jpeg_quality=np.int64(-1 if jpeg_quality is None else jpeg_quality))
                log(f"{s}: images {arr.shape} uint8 ready")
                del arr
    except BaseException:
        for d in new_dirs:  # remove the folders this run created, if empty
            try:
                d.rmdir()
            except OSError:
                break
        raise
    for s in todo:
        log(f"wrote {out / f'{s}.npz'}")
    return {s: out / f"{s}.npz" for s in SPLITS}


def load_split(path: str | Path, raw: bool = False):
    """(images, classes): float32 images / 255 [n_classes, n, 84, 84, 3] (uint8 as stored if raw).

    Memory: the train split is ~0.8 GB as uint8 and ~3.3 GB as float32; use raw=True and convert
    per batch (x.astype(np.float32) / 255) when that matters.
    """
    with np.load(path, allow_pickle=False) as z:
        x, classes = z["images"], z["classes"]
    return (x if raw else x.astype(np.float32) / np.float32(255.0)), classes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.miniimagenet", description=__doc__.split("\n")[0])
    p.add_argument("--images", default=None,
                   help="folder of the ImageNet images (flat or <wnid>/ subfolders), or an archive of them "
                        f"(.tar, .tar.xz, .tar.gz, .zip); default: the offline copy {ARCHIVE_DEFAULT}")
    p.add_argument("--splits", default=None, help=f"folder of train/val/test.csv (default: {SPLITS_DEFAULT})")
    p.add_argument("--out", default="data/miniimagenet", help="output folder (default: data/miniimagenet)")
    p.add_argument("--force", action="store_true", help="rebuild even if outputs are up to date")
    p.add_argument("--jpeg-quality", type=int, default=None,
                   help="re-encode each 84x84 image as JPEG at this quality, as the official files were (75)")
    p.add_argument("--no-verify-splits", action="store_true", help="accept csv files with other checksums")
    args = p.parse_args(argv)
    try:
        prepare(args.images, args.splits, args.out, checksums=None if args.no_verify_splits else KNOWN_CSV_SHA256,
                force=args.force, jpeg_quality=args.jpeg_quality)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
