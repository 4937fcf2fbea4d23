"""Tests of the data pipeline (data_prep.omniglot, data_prep.miniimagenet)."""
import functools
import hashlib
import http.server
import io
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from data_prep import miniimagenet, omniglot
from data_prep.common import DataError


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_omniglot_zip(top: str, alphabets=("Alpha", "Beta"), seed=0) -> bytes:
    """A small archive laid out like the real one: <top>/<alphabet>/character01/<id>_<nn>.png, 1-bit."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for a in alphabets:
            for k in range(1, 21):
                png = io.BytesIO()
                Image.fromarray(rng.random((105, 105)) > 0.1).convert("1").save(png, format="PNG")
                z.writestr(f"{top}/{a}/character01/0001_{k:02d}.png", png.getvalue())
    return buf.getvalue()


def _no_outputs(out_dir):
    return not out_dir.exists() or not any(out_dir.iterdir())


@pytest.fixture
def http_folder(tmp_path, monkeypatch):
    """(folder, base URL) of a folder served over http on 127.0.0.1 at a free port."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/", server
    server.shutdown()
    server.server_close()


# ----------------------------------------------------------------------------- Omniglot

def test_checksum_mismatch_stops_and_writes_nothing(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "images_background.zip").write_bytes(_fake_omniglot_zip("images_background"))
    with pytest.raises(DataError) as e:
        omniglot.prepare(src, out, log=lambda m: None)
    msg = str(e.value)
    assert "images_background.zip" in msg and "Checksum mismatch" in msg
    assert "68d2efa1b9178cc56df9314c21c6e718" in msg  # expected (original md5)
    assert _sha256((src / "images_background.zip").read_bytes()) in msg  # actual
    assert "--source" in msg
    assert _no_outputs(out)


def test_corrupt_archive_with_accepted_checksum_writes_nothing(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    good = _fake_omniglot_zip("images_background")
    bad = b"PK\x03\x04 this is not really a zip"
    (src / "images_background.zip").write_bytes(good)
    (src / "images_evaluation.zip").write_bytes(bad)
    table = {"images_background.zip": [("sha256", _sha256(good))],
             "images_evaluation.zip": [("sha256", _sha256(bad))]}
    out.mkdir()
    with pytest.raises(DataError, match="not a readable zip"):
        omniglot.prepare(src, out, checksums=table, log=lambda m: None)
    assert _no_outputs(out)  # no npz, no leftover temp file


def test_omniglot_local_copy(omniglot_npz):
    with np.load(omniglot_npz) as z:
        images, archive, alphabet = z["images"], z["archive"], z["alphabet"]
        assert images.shape == (1623, 20, 28, 28) and images.dtype == np.uint8
        assert z["images_lanczos"].shape == images.shape
        assert z["drawing"].shape == (1623, 20)
    assert set(np.unique(images)) == {0, 255}  # official 28x28 images are still 1-bit
    assert (archive == "images_background").sum() == 964
    assert (archive == "images_evaluation").sum() == 659
    assert len(set(alphabet[archive == "images_background"])) == 30
    assert len(set(alphabet[archive == "images_evaluation"])) == 20
    x, alph, char = omniglot.load_omniglot(omniglot_npz)
    assert x.dtype == np.float32 and x.shape == (1623, 20, 28, 28)
    assert set(np.unique(x)) == {0.0, 1.0} and 0.02 < x.mean() < 0.2  # ink (1) is the minority
    assert alph.shape == char.shape == (1623,)
    y, _, _ = omniglot.load_omniglot(omniglot_npz, variant="lanczos")
    assert 0.0 <= y.min() and y.max() <= 1.0 and len(np.unique(y)) > 2

    # First drawing: the official call (LANCZOS on the mode "1" image) is a NEAREST resize.
    with zipfile.ZipFile(omniglot.LOCAL_DEFAULT / "images_background.zip") as zf:
        first = sorted(n for n in zf.namelist() if n.endswith(".png"))[0]
        im = Image.open(io.BytesIO(zf.read(first)))
    assert im.mode == "1"
    nearest = np.asarray(im.resize((28, 28), Image.NEAREST).convert("L"))
    np.testing.assert_array_equal(images[0, 0], nearest)

    # A second run is a no-op.
    before = omniglot_npz.stat().st_mtime_ns
    omniglot.prepare(omniglot.LOCAL_DEFAULT, omniglot_npz.parent, log=lambda m: None)
    assert omniglot_npz.stat().st_mtime_ns == before


def test_fetch_by_url_verifies(http_folder, tmp_path):
    folder, url, _ = http_folder
    data = _fake_omniglot_zip("images_background")
    (folder / "images_background.zip").write_bytes(data)
    dest = tmp_path / "dl"

    paths = omniglot.fetch(url, dest, checksums={"images_background.zip": [("sha256", _sha256(data))]})
    assert paths["images_background.zip"].read_bytes() == data

    dest2 = tmp_path / "dl2"
    md5 = hashlib.md5(data).hexdigest()
    assert omniglot.fetch(url, dest2, checksums={"images_background.zip": [("md5", md5)]})

    dest3 = tmp_path / "dl3"
    with pytest.raises(DataError, match="Checksum mismatch"):
        omniglot.fetch(url, dest3, checksums={"images_background.zip": [("sha256", "0" * 64)]})
    assert _no_outputs(dest3)

    with pytest.raises(DataError, match="Could not download"):
        omniglot.fetch(url, dest3, checksums={"images_evaluation.zip": [("sha256", "0" * 64)]})  # 404


def _serve_fake_omniglot(folder) -> dict:
    """Both small Omniglot-like archives in the served folder; their checksum table."""
    table = {}
    for name, seed in zip(omniglot.ARCHIVES, (1, 2)):
        data = _fake_omniglot_zip(name[:-4], seed=seed)
        (folder / name).write_bytes(data)
        table[name] = [("sha256", _sha256(data))]
    return table


def test_prepare_by_url_small_archives(http_folder, tmp_path):
    folder, url, server = http_folder
    table = _serve_fake_omniglot(folder)
    out = tmp_path / "out"
    path = omniglot.prepare(url, out, checksums=table, log=lambda m: None)
    with np.load(path) as z:
        assert z["images"].shape == (4, 20, 28, 28)
        assert list(z["archive"]) == ["images_background"] * 2 + ["images_evaluation"] * 2
        assert list(z["alphabet"]) == ["Alpha", "Beta", "Alpha", "Beta"]
    assert sorted(p.name for p in out.iterdir()) == [omniglot.OUT_NAME]  # download dir cleaned up
    before = path.stat().st_mtime_ns
    server.shutdown()  # up to date: must not even try to download
    omniglot.prepare(url, out, checksums=table, log=lambda m: None)
    assert path.stat().st_mtime_ns == before


def test_prepare_cleans_what_a_killed_run_left_and_leaves_no_empty_folder(http_folder, tmp_path):
    folder, url, _ = http_folder
    table = _serve_fake_omniglot(folder)
    # a failed download (wrong checksum) into a new folder leaves no folder behind, and the
    # message names the URL, not a temp file that no longer exists
    bad = {name: [("sha256", "0" * 64)] for name in table}
    with pytest.raises(DataError) as err:
        omniglot.prepare(url, tmp_path / "new", checksums=bad, log=lambda m: None)
    assert not (tmp_path / "new").exists()
    assert url in str(err.value) and ".download" not in str(err.value)
    # leftovers of a killed run (a .part output, a download folder) are removed by the next one
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{omniglot.OUT_NAME}.abc123.part").write_bytes(b"half")
    (out / ".omniglot-download-xyz").mkdir()
    omniglot.prepare(url, out, checksums=table, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == [omniglot.OUT_NAME]


# ------------------------------------------------------------------------- MiniImagenet

WNIDS = {"train": ["n03000003", "n01000001", "n02000002"],  # deliberately not sorted
         "val": ["n05000005", "n04000004", "n06000006"],
         "test": ["n09000009", "n07000007", "n08000008"]}
PER_CLASS = 4


@pytest.fixture
def mini_raw(tmp_path):
    """Synthetic raw folder: train and test flat, val in <wnid>/ subfolders; csv files alongside."""
    rng = np.random.default_rng(0)
    images, splits = tmp_path / "raw", tmp_path / "splits"
    images.mkdir()
    splits.mkdir()
    for split, wnids in WNIDS.items():
        rows = ["filename,label"]
        for wnid in wnids:
            folder = images / wnid if split == "val" else images
            folder.mkdir(exist_ok=True)
            for k in range(PER_CLASS):
                name = f"{wnid}{k:08d}.jpg"
                h, w = rng.integers(40, 130, size=2)
                arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                im = Image.fromarray(arr) if k else Image.fromarray(arr[..., 0])  # one grey image per class
                im.save(folder / name, format="JPEG")
                rows.append(f"{name},{wnid}")
        (splits / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return images, splits


def test_miniimagenet_pipeline(mini_raw, tmp_path):
    images, splits = mini_raw
    out = tmp_path / "out"
    paths = miniimagenet.prepare(images, splits, out, checksums=None, log=lambda m: None)
    for split in miniimagenet.SPLITS:
        with np.load(paths[split]) as z:
            assert z["images"].shape == (3, PER_CLASS, 84, 84, 3) and z["images"].dtype == np.uint8
            assert list(z["classes"]) == WNIDS[split]
            raw = z["images"]
        x, classes = miniimagenet.load_split(paths[split])
        assert x.dtype == np.float32 and x.shape == raw.shape and 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_array_equal(x, raw.astype(np.float32) / 255)
    # pixel check: val class 0 image 1 (in a <wnid>/ subfolder) and a grey one (image 0)
    wnid = WNIDS["val"][0]
    raw, _ = miniimagenet.load_split(paths["val"], raw=True)
    for k in (0, 1):
        with Image.open(images / wnid / f"{wnid}{k:08d}.jpg") as im:
            expected = np.asarray(im.convert("RGB").resize((84, 84), Image.LANCZOS))
        np.testing.assert_array_equal(raw[0, k], expected)

    mtimes = {s: p.stat().st_mtime_ns for s, p in paths.items()}
    miniimagenet.prepare(images, splits, out, checksums=None, log=lambda m: None)
    assert {s: p.stat().st_mtime_ns for s, p in paths.items()} == mtimes
    miniimagenet.prepare(None, splits, out, checksums=None, log=lambda m: None)  # up to date: images not needed


def test_miniimagenet_missing_image(mini_raw, tmp_path):
    images, splits = mini_raw
    gone = f"{WNIDS['test'][1]}{2:08d}.jpg"
    (images / gone).unlink()
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        miniimagenet.prepare(images, splits, out, checksums=None, log=lambda m: None)
    msg = str(e.value)
    assert f"1 of {3 * 3 * PER_CLASS} images missing" in msg and gone in msg
    assert "--images" in msg and "MINIIMAGENET_IMAGES" in msg and "<wnid>" in msg
    assert _no_outputs(out)


def test_miniimagenet_csv_checksum(mini_raw, tmp_path):
    images, splits = mini_raw
    with pytest.raises(DataError, match="Checksum mismatch"):
        miniimagenet.prepare(images, splits, tmp_path / "out", log=lambda m: None)  # default: real table
    assert _no_outputs(tmp_path / "out")


def test_miniimagenet_real_split_files():
    d = miniimagenet.SPLITS_DEFAULT
    if not (d / "train.csv").is_file():
        pytest.skip(f"split files not found in {d}")
    for split, n_classes in zip(miniimagenet.SPLITS, (64, 16, 20)):
        assert miniimagenet.sha256(d / f"{split}.csv") == miniimagenet.KNOWN_CSV_SHA256[split]
        classes, files = miniimagenet.read_split_csv(d / f"{split}.csv")
        assert len(classes) == n_classes and all(len(files[c]) == 600 for c in classes)


# ---------------------------------------------------- MiniImagenet from an archive (issue 20)

def _mini_archive(images_dir, path, top="images/", drop=(), replace=None):
    """An archive of every image of `images_dir` (flat or in <wnid>/) as `<top><file>`, like the
    offline copy (tar, sorted by name); .zip, .tar, .tar.gz or .tar.xz by the suffix of `path`.
    `drop`: file names left out; `replace`: {file name: bytes} stored instead of the file."""
    import tarfile

    files = sorted((f for f in images_dir.rglob("*.jpg") if f.name not in drop), key=lambda f: f.name)
    data = {f.name: (replace or {}).get(f.name, None) or f.read_bytes() for f in files}
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as z:
            for name, b in data.items():
                z.writestr(top + name, b)
        return path
    mode = {".xz": "w:xz", ".gz": "w:gz", ".tar": "w"}[path.suffix]
    with tarfile.open(path, mode) as tar:
        if top:
            info = tarfile.TarInfo(top.rstrip("/"))
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, b in data.items():
            info = tarfile.TarInfo(top + name)
            info.size = len(b)
            tar.addfile(info, io.BytesIO(b))
    return path


def _npz_contents(out):
    result = {}
    for split in miniimagenet.SPLITS:
        with np.load(out / f"{split}.npz") as z:
            result[split] = {k: z[k] for k in z.files}
    return result


def _assert_same_npz(a, b):
    assert a.keys() == b.keys()
    for split in a:
        assert a[split].keys() == b[split].keys()
        for k in a[split]:
            np.testing.assert_array_equal(a[split][k], b[split][k], err_msg=f"{split}:{k}")


def _quiet(msg):
    pass


@pytest.fixture
def mini_from_folder(mini_raw, tmp_path):
    """(images, splits, contents of the npz files made from the folder)."""
    images, splits = mini_raw
    out = tmp_path / "from_folder"
    miniimagenet.prepare(images, splits, out, checksums=None, log=_quiet)
    return images, splits, _npz_contents(out)


@pytest.mark.parametrize("name,top", [("images.tar.xz", "images/"), ("mine.tar.gz", ""),
                                      ("mine.tar", "images/"), ("mine.zip", "")])
def test_miniimagenet_archive_same_output_as_folder(mini_from_folder, tmp_path, name, top):
    images, splits, expected = mini_from_folder
    archive = _mini_archive(images, tmp_path / name, top=top)
    out = tmp_path / "new" / "out"
    miniimagenet.prepare(archive, splits, out, checksums=None, log=_quiet,
                         archive_sha256=_sha256(archive.read_bytes()))
    _assert_same_npz(_npz_contents(out), expected)
    assert sorted(p.name for p in out.iterdir()) == ["test.npz", "train.npz", "val.npz"]  # no temp files
    mtimes = [p.stat().st_mtime_ns for p in sorted(out.iterdir())]
    archive.unlink()  # up to date: the archive is not needed
    miniimagenet.prepare(archive, splits, out, checksums=None, log=_quiet)
    assert [p.stat().st_mtime_ns for p in sorted(out.iterdir())] == mtimes


@pytest.fixture
def offline_copy(mini_from_folder, tmp_path, monkeypatch):
    """A small offline copy at a stand-in for ../shared/data/miniimagenet/images.tar.xz, with its
    sha256 as the known one; returns (archive, splits, expected npz contents)."""
    images, splits, expected = mini_from_folder
    (tmp_path / "shared").mkdir()
    archive = _mini_archive(images, tmp_path / "shared" / "images.tar.xz")
    monkeypatch.setattr(miniimagenet, "ARCHIVE_DEFAULT", archive)
    monkeypatch.setattr(miniimagenet, "ARCHIVE_SHA256", _sha256(archive.read_bytes()))
    return archive, splits, expected


def _run_main(args, capsys):
    code = miniimagenet.main(args)
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def test_miniimagenet_default_is_the_offline_copy(offline_copy, tmp_path, capsys):
    archive, splits, expected = offline_copy
    out = tmp_path / "data" / "miniimagenet"
    code, err, stdout = _run_main(["--splits", str(splits), "--out", str(out), "--no-verify-splits"], capsys)
    assert code == 0 and err == ""
    assert f"{archive}: sha256 verified" in stdout
    _assert_same_npz(_npz_contents(out), expected)
    # Named explicitly, the offline copy is checked against the known checksum too.
    code, err, stdout = _run_main(["--images", str(archive), "--splits", str(splits), "--out",
                                   str(tmp_path / "again"), "--no-verify-splits"], capsys)
    assert code == 0 and f"{archive}: sha256 verified" in stdout


def _assert_one_error_line(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "wrong"])
def test_miniimagenet_bad_offline_copy_refused(offline_copy, tmp_path, capsys, damage):
    archive, splits, _ = offline_copy
    data = archive.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "corrupt":
        data = data[:2000] + bytes(b ^ 0xFF for b in data[2000:2100]) + data[2100:]
    else:
        data = _fake_omniglot_zip("images_background")  # a readable archive, but not of these images
    archive.write_bytes(data)
    out = tmp_path / "data" / "miniimagenet"
    code, err, _ = _run_main(["--splits", str(splits), "--out", str(out), "--no-verify-splits"], capsys)
    _assert_one_error_line(code, err, f"Checksum mismatch for {archive}", miniimagenet.ARCHIVE_SHA256,
                           _sha256(data), "MINIIMAGENET_IMAGES=")
    assert not (tmp_path / "data").exists()  # no output folder, no temp file


def test_miniimagenet_no_images_at_all(offline_copy, tmp_path, capsys, monkeypatch):
    _, splits, _ = offline_copy
    absent = tmp_path / "nowhere" / "images.tar.xz"
    monkeypatch.setattr(miniimagenet, "ARCHIVE_DEFAULT", absent)
    out = tmp_path / "data" / "miniimagenet"
    code, err, _ = _run_main(["--splits", str(splits), "--out", str(out), "--no-verify-splits"], capsys)
    _assert_one_error_line(code, err, f"the offline copy {absent} is not there", "MINIIMAGENET_IMAGES=")
    code, err, _ = _run_main(["--images", str(tmp_path / "mine.tar"), "--splits", str(splits), "--out", str(out),
                           "--no-verify-splits"], capsys)
    _assert_one_error_line(code, err, f"Images {tmp_path / 'mine.tar'} not found", "MINIIMAGENET_IMAGES=")
    code, err, _ = _run_main(["--splits", str(tmp_path / "nosplits"), "--out", str(out)], capsys)
    _assert_one_error_line(code, err, str(tmp_path / "nosplits" / "train.csv"), "MINIIMAGENET_SPLITS=")
    assert not (tmp_path / "data").exists()


def test_miniimagenet_archive_checksum_given(mini_raw, tmp_path):
    images, splits = mini_raw
    archive = _mini_archive(images, tmp_path / "mine.tar.xz")
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        miniimagenet.prepare(archive, splits, out, checksums=None, log=_quiet, archive_sha256="0" * 64)
    assert f"Checksum mismatch for {archive}" in str(e.value) and _sha256(archive.read_bytes()) in str(e.value)
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not_an_archive"])
def test_miniimagenet_own_bad_archive_refused(mini_raw, tmp_path, damage):
    """An archive of one's own has no known checksum: reading it must catch the damage."""
    images, splits = mini_raw
    archive = _mini_archive(images, tmp_path / "mine.tar.xz")
    data = archive.read_bytes()
    data = {"truncated": data[: len(data) * 2 // 3],
            "corrupt": data[:3000] + bytes(200) + data[3200:],
            "not_an_archive": b"just some text\n" * 100}[damage]
    archive.write_bytes(data)
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        miniimagenet.prepare(archive, splits, out, checksums=None, log=_quiet)
    msg = str(e.value)
    assert str(archive) in msg and "MINIIMAGENET_IMAGES=" in msg and "\n" not in msg
    assert ("Cannot read archive" in msg) or ("images missing from" in msg and "truncated" in msg)
    assert not out.exists()


def test_miniimagenet_archive_missing_and_undecodable_images(mini_raw, tmp_path):
    images, splits = mini_raw
    gone = f"{WNIDS['val'][2]}{3:08d}.jpg"
    archive = _mini_archive(images, tmp_path / "mine.tar.gz", drop={gone})
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        miniimagenet.prepare(archive, splits, out, checksums=None, log=_quiet)
    assert f"1 of {3 * 3 * PER_CLASS} images missing from {archive}" in str(e.value) and gone in str(e.value)
    assert not out.exists()

    # A member that is not an image, in the last split written: the splits already decoded are
    # not moved into place either, and an existing output folder is left as it was.
    bad = f"{WNIDS['test'][2]}{1:08d}.jpg"
    archive = _mini_archive(images, tmp_path / "mine.zip", replace={bad: b"not a jpeg"})
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError) as e:
        miniimagenet.prepare(archive, splits, out, checksums=None, log=_quiet)
    assert f"Cannot decode image {bad} in {archive}" in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_miniimagenet_real_offline_archive():
    """The offline copy, when present: its checksum is the one in the code, and its first members
    have the layout `images/<file>` with file names of the split files (reads only the start)."""
    import tarfile

    path = miniimagenet.ARCHIVE_DEFAULT
    if not path.is_file():
        pytest.skip(f"offline MiniImagenet archive not found at {path}")
    assert miniimagenet.sha256(path) == miniimagenet.ARCHIVE_SHA256
    names = set()
    for split in miniimagenet.SPLITS:
        _, files = miniimagenet.read_split_csv(miniimagenet.SPLITS_DEFAULT / f"{split}.csv")
        names.update(f for fs in files.values() for f in fs)
    with tarfile.open(path, "r|xz") as tar:
        for k, member in zip(range(20), (m for m in tar if m.isfile())):
            top, name = member.name.split("/")
            assert top == "images" and name in names
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as im:
                assert im.size == (84, 84) and im.mode == "RGB"
