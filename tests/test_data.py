"""Data module: counts, determinism, stratification, ImageFolder round trip, bad input."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fsfsl_utils import data


def test_elpv_loads_the_whole_set():
    ds = data.load_elpv("threshold")
    assert ds.images.shape == (2624, 300, 300) and ds.images.dtype == np.uint8
    assert ds.counts() == {"normal": 1508 + 295, "defective": 106 + 715}
    assert set(ds.meta["cell_type"]) == {"mono", "poly"}
    assert (ds.meta["cell_type"] == "mono").sum() == 1074


def test_label_policies(elpv):
    assert elpv.counts() == {"normal": 1508, "defective": 715}
    four = data.load_elpv("four_level", limit_per_class=5)
    assert four.class_names == ["p0", "p33", "p67", "p100"]
    assert four.counts() == dict.fromkeys(four.class_names, 5)
    with pytest.raises(ValueError, match="unknown label policy 'fuzzy'.*study, threshold, four_level, soft"):
        data.load_elpv("fuzzy")


def test_study_split_counts_exact(study):
    train, val = study
    assert train.counts() == data.STUDY_TRAIN_COUNTS
    assert val.counts() == data.STUDY_VAL_COUNTS
    assert set(train.meta["split"]) == {"train"} and set(val.meta["split"]) == {"val"}


def test_split_deterministic_and_seed_dependent(elpv, study):
    train0, _ = study
    again, _ = data.split(elpv, seed=0)
    other, _ = data.split(elpv, seed=1)
    assert again.names == train0.names
    assert np.array_equal(again.images, train0.images)
    assert other.names != train0.names
    assert other.counts() == train0.counts()


def test_no_image_in_both_parts_by_content(study):
    train, val = study
    digest = lambda a: {hashlib.blake2b(x.tobytes(), digest_size=16).hexdigest() for x in a}  # noqa: E731
    assert not digest(train.images) & digest(val.images)
    assert not set(train.names) & set(val.names)


def test_split_stratified_by_cell_type(elpv, study):
    train, val = study
    for c in range(2):
        for kind in ("mono", "poly"):
            total = ((elpv.labels == c) & (elpv.meta["cell_type"] == kind)).sum()
            n_tr = ((train.labels == c) & (train.meta["cell_type"] == kind)).sum()
            # proportional allocation: within one image of half the stratum
            assert abs(n_tr - total * train.counts()[elpv.class_names[c]] / elpv.counts()[elpv.class_names[c]]) < 1


def test_split_fraction_validated(elpv):
    for bad in (0, 1, -0.2, 1.5):
        with pytest.raises(ValueError, match="train_fraction must be in \\(0, 1\\)"):
            data.split(elpv, train_fraction=bad)


def _write_tree(root, spec, size=(40, 30), mode="L"):
    rng = np.random.default_rng(0)
    for rel, n in spec.items():
        folder = root / rel
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = size[::-1] + ((3,) if mode == "RGB" else ())
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"img{i}.png")


def test_imagefolder_flat_and_presplit(tmp_path):
    _write_tree(tmp_path / "flat", {"ok": 4, "crack": 3, "finger": 2}, mode="RGB")
    ds = data.load_imagefolder(tmp_path / "flat", size=32)
    assert ds.class_names == ["crack", "finger", "ok"]
    assert ds.images.shape == (9, 32, 32, 3)
    assert ds.counts() == {"crack": 3, "finger": 2, "ok": 4}
    _write_tree(tmp_path / "pre", {"train/a": 3, "train/b": 2, "val/a": 2, "val/b": 2})
    ds = data.load_imagefolder(tmp_path / "pre", size=16)
    assert ds.images.shape == (9, 16, 16)
    train, val = data.split(ds)
    assert len(train) == 5 and len(val) == 4
    assert all(n.startswith("train/") for n in train.names)


def test_export_then_load_round_trip(tmp_path, small):
    out = data.export(tmp_path / "tree", datasets=small)
    manifest = pd.read_csv(out / "manifest.csv")
    assert set(manifest.columns) >= {"file", "source", "split", "label", "probability", "cell_type"}
    loaded = data.load_imagefolder(out, size=300)
    train, val = data.split(loaded)
    for orig, back in ((small[0], train), (small[1], val)):
        key = {n: i for i, n in enumerate(orig.names)}
        order = [key[n.split("/")[-1]] for n in back.names]
        assert np.array_equal(back.images, orig.images[order])
        assert [back.class_names[x] for x in back.labels] == [orig.class_names[x] for x in orig.labels[order]]


def test_export_cli_layout_and_refusal(tmp_path):
    out = tmp_path / "elpv"
    cmd = [sys.executable, "-m", "fsfsl_utils.data", "export", str(out), "--seed", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list((out / "train" / "normal").glob("*.png"))) == 754
    assert len(list((out / "train" / "defective").glob("*.png"))) == 358
    assert len(list((out / "val" / "defective").glob("*.png"))) == 357
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        data.load_imagefolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="is empty"):
        data.load_imagefolder(tmp_path / "empty")
    _write_tree(tmp_path / "one", {"ok": 2})
    with pytest.raises(data.DataError, match="only one class"):
        data.load_imagefolder(tmp_path / "one")
    _write_tree(tmp_path / "hole", {"ok": 2})
    (tmp_path / "hole" / "bad").mkdir()
    with pytest.raises(data.DataError, match="hole/bad has no images"):
        data.load_imagefolder(tmp_path / "hole")
    _write_tree(tmp_path / "trunc", {"ok": 2, "bad": 2})
    png = (tmp_path / "trunc" / "bad" / "img1.png")
    png.write_bytes(png.read_bytes()[:40])
    with pytest.raises(data.DataError, match="cannot read image .*img1.png"):
        data.load_imagefolder(tmp_path / "trunc")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        data.export(tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_pack_is_lossless_portable_and_refuses_damage(tmp_path, monkeypatch):
    """A pack loads bit for bit as the data it was made from, through the same API, and a truncated
    or altered pack is refused whole with an error naming the file. Encoded on several threads, it
    holds the same files in the same order as encoded on one."""
    import zipfile

    from fsfsl_utils import experiment

    ds = data.load_elpv("study", limit_per_class=12, seed=2)
    path = data.write_pack(ds, tmp_path / "sub.fsfslpack", origin="elpv", labels="study", progress=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    serial = data.write_pack(ds, tmp_path / "serial.fsfslpack", origin="elpv", labels="study", progress=False)
    with zipfile.ZipFile(path) as a, zipfile.ZipFile(serial) as b:
        assert a.namelist() == b.namelist() and all(a.read(n) == b.read(n) for n in a.namelist())
    back = data.load_pack(path)
    assert np.array_equal(back.images, ds.images) and back.images.dtype == np.uint8
    pd.testing.assert_frame_equal(back.meta, ds.meta)
    assert back.class_names == ds.class_names
    assert data.source_origin(path) == "elpv"
    train, val = experiment.load_split(str(path), "study", split_seed=0)
    assert len(train) + len(val) == len(ds)
    with pytest.raises(data.DataError, match="holds 'study' labels"):
        data.load_source(path, "four_level")
    raw = path.read_bytes()
    (tmp_path / "cut.fsfslpack").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataError, match="cut.fsfslpack"):
        data.load_pack(tmp_path / "cut.fsfslpack")
    altered = bytearray(raw)
    first = raw.index(b"RIFF")           # the first WebP image: flip one byte in its data
    altered[first + 200] ^= 0xFF
    (tmp_path / "bad.fsfslpack").write_bytes(bytes(altered))
    with pytest.raises(data.DataError, match="bad.fsfslpack.*damaged"):
        data.load_pack(tmp_path / "bad.fsfslpack")


def test_pack_command_line(tmp_path, capsys):
    assert data.main(["pack", str(tmp_path / "x.zip")]) == 2
    assert ".fsfslpack" in capsys.readouterr().err


def test_export_never_writes_outside_or_deletes_what_it_did_not_write(tmp_path, small, monkeypatch):
    train, val = small
    evil = [data.Dataset(ds.images, ds.meta, ["../../escaped", "defective"]) for ds in (train, val)]
    with pytest.raises(data.DataError, match="class name '../../escaped'"):
        data.export(tmp_path / "a" / "b", datasets=evil)
    assert not (tmp_path / "escaped").exists()
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "thesis.txt").write_text("precious")
    with pytest.raises(data.DataError, match="not an earlier export"):
        data.export(keep, datasets=small, force=True)
    assert (keep / "thesis.txt").read_text() == "precious"
    monkeypatch.chdir(keep)
    with pytest.raises(data.DataError, match="current folder"):
        data.export(".", datasets=small, force=True)
    with pytest.raises(data.DataError, match="current folder"):
        data.export("..", datasets=small, force=True)
    out = data.export(tmp_path / "tree", datasets=small)
    assert data.export(out, datasets=small, force=True) == out      # an earlier export may be replaced


def test_force_recognises_an_export_by_the_kits_marker_not_by_a_manifest(tmp_path, small):
    """A user's folder that merely holds a file named manifest.csv is not an export: --force refuses it
    and deletes nothing. An export with a file added beside it, or whose manifest was edited, is refused too."""
    mine = tmp_path / "mine"
    (mine / "train").mkdir(parents=True)
    (mine / "manifest.csv").write_text("my,own,table\n")
    (mine / "train" / "notes.txt").write_text("precious")
    with pytest.raises(data.DataError, match="not an earlier export"):
        data.export(mine, datasets=small, force=True)
    assert (mine / "train" / "notes.txt").read_text() == "precious"
    (mine / data.EXPORT_MARKER).write_text('{"format": "fsfsl-export/1", "manifest_sha256": "0"}')  # forged
    with pytest.raises(data.DataError, match="does not match"):
        data.export(mine, datasets=small, force=True)
    out = data.export(tmp_path / "tree", datasets=small)
    (out / "thesis.txt").write_text("precious")
    with pytest.raises(data.DataError, match="thesis.txt"):
        data.export(out, datasets=small, force=True)
    (out / "thesis.txt").unlink()
    assert data.export(out, datasets=small, force=True) == out
    assert data.main(["export", str(mine), "--force"]) == 2
    assert (mine / "train" / "notes.txt").read_text() == "precious"


def test_export_keeps_images_that_share_a_stem(tmp_path):
    """x.png and x.jpg (and X.bmp) in one class: every image gets its own file, and each manifest row
    points at the file that holds its pixels."""
    for cname in ("a", "b"):
        (tmp_path / "src" / cname).mkdir(parents=True)
        for k in range(2):
            for shade, suffix in ((10, ".png"), (20, ".jpg"), (30, ".bmp")):
                name = f"{'X' if suffix == '.bmp' else 'x'}{k}{suffix}"
                Image.fromarray(np.full((16, 16), shade + k + (cname == "b"), np.uint8)).save(
                    tmp_path / "src" / cname / name, quality=100)
    ds = data.load_imagefolder(tmp_path / "src", size=16)
    assert len(ds) == 12
    out = data.export(tmp_path / "out", datasets=data.split(ds, seed=0))
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 12 and manifest["file"].nunique() == 12
    assert len(list(out.rglob("*.png"))) == 12
    for _, row in manifest.iterrows():
        want = ds.images[ds.names.index(row["source"])]
        assert np.array_equal(np.asarray(Image.open(out / row["file"])), want), row["file"]


def test_export_checks_the_validation_class_names_too(tmp_path, small):
    train, val = small
    evil = data.Dataset(val.images, val.meta, ["../../X", "defective"])
    with pytest.raises(data.DataError, match="class name '../../X'"):
        data.export(tmp_path / "a" / "b", datasets=(train, evil))
    assert not (tmp_path / "X").exists() and not any(tmp_path.rglob("X"))


def test_high_bit_depth_and_float_images_are_scaled_not_clipped(tmp_path):
    """16-bit PNG, 12-bit data in a 16-bit TIFF and a float TIFF load as full-range 8-bit ramps
    (a plain convert("L") made them almost all white or all black); macOS ._ files are skipped."""
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    for cname, (array, suffix) in {"a16": ((ramp * 65535).astype(np.uint16), ".png"),
                                   "b12": ((ramp * 4095).astype(np.uint16), ".tif"),
                                   "cfloat": (ramp.astype(np.float32), ".tif")}.items():
        (tmp_path / cname).mkdir()
        Image.fromarray(array).save(tmp_path / cname / f"x{suffix}")
        (tmp_path / cname / f"._x{suffix}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    ds = data.load_imagefolder(tmp_path, size=64)
    assert len(ds) == 3 and ds.images.ndim == 3
    for im, name in zip(ds.images, ds.names):
        assert im[:, 0].max() <= 3 and im[:, -1].min() >= 250, name      # black to white, left to right
        assert 0.45 < im.mean() / 255 < 0.55, name


def test_symlinked_class_folder_warns_and_export_follows_the_umask(tmp_path, small):
    for cname in ("a",):
        (tmp_path / "tree" / cname).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "tree" / cname / "x.png")
    (tmp_path / "tree" / "b").symlink_to(tmp_path / "tree" / "a")
    with pytest.warns(UserWarning, match="are the same folder"):
        data.load_imagefolder(tmp_path / "tree", size=8)
    out = data.export(tmp_path / "exported", datasets=small)
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_large_photos_decode_one_at_a_time_at_a_reduced_scale(tmp_path):
    """40 photos of 12 MP (4000 x 3000 JPEG) load at 300 px while the process grows by far less than
    one decoded photo set would take (40 x 36 MB = 1.4 GB; the old loader peaked at 2.0 GB): each
    file is decoded alone, a JPEG at 1/8 scale (``Image.draft``)."""
    photo = tmp_path / "photo.jpg"
    Image.linear_gradient("L").resize((4000, 3000)).convert("RGB").save(photo, quality=90)
    for c in ("a", "b"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(20):
            (tmp_path / "photos" / c / f"{i}.jpg").hardlink_to(photo)
    code = ("import resource, sys\nfrom fsfsl_utils import data\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "ds = data.load_imagefolder(sys.argv[1], 300)\n"
            "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
            "print(ds.images.shape, ds.images.dtype, grown // 1024)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "photos")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    grown_mib = int(done.stdout.split()[-1])
    assert "(40, 300, 300, 3) uint8" in done.stdout, done.stdout
    assert grown_mib < 150, f"loading grew the process by {grown_mib} MiB"


def test_a_decompression_bomb_is_refused_with_the_file_name(tmp_path, monkeypatch):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("L", (40, 40), 128).save(tmp_path / c / "x.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)      # 1,600 pixels: over Pillow's warning limit
    with pytest.raises(data.DataError, match=r"a/x.png is too large to decode safely"):
        data.load_imagefolder(tmp_path, 32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)       # over twice the limit: Pillow's error
    with pytest.raises(data.DataError, match=r"a/x.png is too large to decode safely"):
        data.load_imagefolder(tmp_path, 32)


def test_a_grouped_split_keeps_every_module_on_one_side(elpv):
    """SPLIT_KIND grouped: no module (60 consecutive cells of one type, data.elpv_module_groups) on both
    sides, the class counts within 1% of the study's, seeded; refused for data without modules."""
    groups = data.elpv_module_groups(elpv.names)
    assert 40 <= len(set(groups)) <= 50                              # the data set: "44 different modules"
    train, val = data.split(elpv, seed=0, kind="grouped")
    assert not set(data.elpv_module_groups(train.names)) & set(data.elpv_module_groups(val.names))
    for cname, want in data.STUDY_TRAIN_COUNTS.items():
        assert abs(train.counts()[cname] - want) <= 0.01 * want, train.counts()
    again, _ = data.split(elpv, seed=0, kind="grouped")
    other, _ = data.split(elpv, seed=1, kind="grouped")
    assert again.names == train.names and other.names != train.names
    plain = data.Dataset(elpv.images[:40], elpv.meta.iloc[:40].assign(name=[f"x{i}" for i in range(40)],
                                                                        source=[f"x{i}" for i in range(40)]),
                         elpv.class_names)
    with pytest.raises(data.DataError, match="only ELPV cells"):
        data.split(plain, kind="grouped")
    with pytest.raises(ValueError, match="split kind"):
        data.split(elpv, kind="modules")
