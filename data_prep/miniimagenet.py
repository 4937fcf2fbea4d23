"""MiniImagenet (Ravi & Larochelle split) -> `<out>/{train,val,test}.npz`, 84x84 RGB uint8.

Usage:
    python -m data_prep.miniimagenet --images DIR [--splits /work/shared/data/miniimagenet]
                                     [--out data/miniimagenet] [--force] [--jpeg-quality Q]

Inputs: the split files `train.csv`, `val.csv`, `test.csv` (rows `filename,label`, e.g.
`n0153282900000005.jpg,n01532829`; sha256 checked against KNOWN_CSV_SHA256) and a folder of the
ImageNet images they name. The folder may be flat (DIR/<file>) or per class (DIR/<wnid>/<file>);
files up to two levels down are found by name (so the official layout DIR/<split>/<wnid>/<file>
works too). Per-class image count is read from the csv (600 for the real split).

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
import csv
import io
import os
import sys
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image

from data_prep.common import REPO_ROOT, DataError, atomic_write, sha256

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SIZE = 84
SPLITS_DEFAULT = REPO_ROOT.parent / "shared" / "data" / "miniimagenet"

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
        raise DataError(f"Cannot read split file {path} ({e}); pass --splits DIR holding "
                        f"train.csv, val.csv and test.csv.") from e
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


def _how_to_provide(splits_dir: Path, need: Mapping[str, tuple[list, dict]]) -> str:
    sizes = ", ".join(f"{s}: {len(c)} classes x {len(f[c[0]])}" for s, (c, f) in need.items())
    return (f"Provide the ImageNet images named in the csv files of {splits_dir} ({sizes}; names "
            f"like n0153282900000005.jpg = <wnid><8-digit index>.jpg), either all in one folder or "
            f"in <folder>/<wnid>/, and pass that folder as --images DIR "
            f"(make data-miniimagenet MINIIMAGENET_IMAGES=DIR).")


def _load_image(path: Path, jpeg_quality: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((SIZE, SIZE), resample=Image.LANCZOS)
    except Exception as e:  # PIL raises many types for corrupt data
        raise DataError(f"Cannot decode image {path} ({e}); replace it with a good copy.") from e
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


def prepare(images: str | Path | None, splits: str | Path | None = None, out: str | Path = "data/miniimagenet",
            checksums: Mapping[str, str] | None = KNOWN_CSV_SHA256, force: bool = False,
            jpeg_quality: int | None = None, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Write `<out>/<split>.npz` for each split; skip splits already up to date.

    `checksums`: {split: sha256 of its csv}; None skips the check (custom or test splits).
    All missing images are reported (DataError) before anything is written.
    """
    splits_dir = Path(splits) if splits is not None else SPLITS_DEFAULT
    out = Path(out)
    parsed, csv_sha, todo = {}, {}, []
    for s in SPLITS:
        path = splits_dir / f"{s}.csv"
        if not path.is_file():
            raise DataError(f"Split file {path} not found; pass --splits DIR holding train.csv, val.csv, test.csv.")
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
    if images is None or not Path(images).is_dir():
        what = "No image folder given (--images)" if images is None else f"Image folder {images} not found"
        raise DataError(f"{what}. " + _how_to_provide(splits_dir, need))
    index = _index_images(Path(images))
    missing = [f"{c}/{f}" for s in todo for c, fs in parsed[s][1].items() for f in fs if f not in index]
    if missing:
        total = sum(len(fs) for s in todo for fs in parsed[s][1].values())
        raise DataError(f"{len(missing)} of {total} images missing from {images} (e.g. "
                        f"{', '.join(missing[:3])}). " + _how_to_provide(splits_dir, need))

    for s in todo:
        classes, files = parsed[s]
        n = len(files[classes[0]])
        arr = np.empty((len(classes), n, SIZE, SIZE, 3), np.uint8)
        for i, c in enumerate(classes):
            for j, f in enumerate(files[c]):
                arr[i, j] = _load_image(index[f], jpeg_quality)
            log(f"{s}: class {i + 1}/{len(classes)} {c}")
        with atomic_write(out / f"{s}.npz") as fh:
            np.savez(fh, images=arr, classes=np.array(classes), filenames=np.array([files[c] for c in classes]),
                     format_version=np.int64(FORMAT_VERSION), csv_sha256=np.array(csv_sha[s]),
                     jpeg_quality=np.int64(-1 if jpeg_quality is None else jpeg_quality))
        log(f"wrote {out / f'{s}.npz'}: images {arr.shape} uint8")
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
    p.add_argument("--images", default=None, help="folder of the raw ImageNet images (flat or <wnid>/ subfolders)")
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
