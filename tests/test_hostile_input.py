"""A hostile but fair user (issue 31): names that are script, balanced and tiny classes, a user's
folder beside an export, a bad reference run, a second job on a live run, SIGTERM, kill -9, odd
pixels and files in a checkpoint's place. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from fsfsl_utils import augment, data, experiment, report, results, run, session, train, watchdog
from fsfsl_utils.study import class_roles

IMG, SVG = "<img src=x onerror=alert(1)>", "<svg onload=alert(2)> a|b"  # class names (folder names)
TAGS = re.compile(r"<\s*(img|svg|script)\b", re.I)


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory):
    """Smoke trainings of 01 and 04 (seeds 0 and 1) on ELPV cells whose two classes, of equal size, are
    named like HTML; one record lacks a sensitivity analysis."""
    root = tmp_path_factory.mktemp("hostile")
    ds = data.load_elpv("study", limit_per_class=10, seed=3)
    for i, (image, label) in enumerate(zip(ds.images, ds.labels)):
        folder = root / "data" / (IMG, SVG)[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{IMG} {i}.png")
    store = experiment.DataStore()
    return [experiment.run_step(step, root / "runs", store=store, profile="smoke", seed=seed, source=str(root / "data"),
                                progress=False, analyse_images=(step, seed) != ("04_balanced_augment", 1)).record
            for step in ("01_baseline", "04_balanced_augment") for seed in (0, 1)]


def test_markdown_the_kit_writes_carries_no_tag_from_a_name(hostile_runs, tmp_path):
    """05's conclusions and summary.md: a renderer that lets HTML through (as JupyterLab does for a
    kernel's Markdown) finds no tag, and a '|' in a class name keeps every table's columns."""
    import mistune

    render = mistune.create_markdown(escape=False, plugins=["table"])
    text = report.conclusions_markdown(hostile_runs)
    assert not TAGS.search(text) and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert not TAGS.search(render(text))
    summary = report.write_summary(tmp_path, hostile_runs).read_text()
    assert not TAGS.search(summary) and not TAGS.search(render(summary))
    for block in re.findall(r"(?:^\|.*\|\n)+", summary, re.M):
        rows = block.strip().splitlines()
        cells = [len(re.findall(r"(?<!\\)\|", row)) for row in rows]
        assert len(set(cells)) == 1, rows[0]
    page = render(summary)
    assert page.count("<table>") >= 3 and "a|b" in page.replace("&lt;", "<").replace("&gt;", ">")


def test_two_classes_of_equal_size_have_two_roles(hostile_runs):
    """Balanced data: the target is the class last in order, the reference the first, the same in the
    records, the tables and augmentation's @majority; never 'X recall @ X'."""
    first = hostile_runs[0]
    assert first["train_counts_before_expansion"][IMG] == first["train_counts_before_expansion"][SVG]
    assert (first["target_class"], first["reference_class"]) == (SVG, IMG)
    assert report.target_class(first) == SVG and report.reference_class(first) == IMG
    legacy = {k: v for k, v in first.items() if k not in ("target_class", "reference_class", "target_class_requested")}
    assert report.class_roles_of(legacy) == (SVG, IMG)                 # records written before the rule was recorded
    cols = list(report.operating_points(hostile_runs).columns)
    assert all(c.startswith(f"{SVG} recall @ {IMG}") for c in cols), cols
    balanced = next(r for r in hostile_runs if r["step"] == "04_balanced_augment")
    assert balanced["train_counts"] == {IMG: 10, SVG: 20}               # @majority (x2) is the reference class


def test_one_rule_for_target_and_reference():
    assert class_roles(["a", "b"], {"a": 5, "b": 5}) == ("b", "a")
    assert class_roles(["a", "b", "c"], {"a": 9, "b": 3, "c": 3}) == ("c", "a")
    assert class_roles(["a", "b", "c"], {"a": 3, "b": 9, "c": 9}) == ("a", "b")
    assert class_roles(["defective", "normal"], {"defective": 9, "normal": 1}) == ("defective", "normal")
    assert class_roles(["a", "b"], {"a": 1, "b": 9}, target="b") == ("b", "a")
    with pytest.raises(ValueError, match="TARGET_CLASS 'c' is not a class"):
        class_roles(["a", "b"], {}, target="c")


def test_a_named_target_is_what_balancing_grows(small):
    """--target-class on balanced data: the named class gets the minority's copies."""
    train_part, _ = small
    flipped = data.Dataset(train_part.images, train_part.meta, ["defect_free", "cracked"])  # no ELPV names
    sizes = flipped.counts()
    assert sizes["defect_free"] == sizes["cracked"]
    tie = augment.expand(flipped, "balanced", seed=0).counts()           # the tie rule: the last class is the target
    assert tie == {"defect_free": 2 * sizes["defect_free"], "cracked": 4 * sizes["cracked"]}
    named = augment.expand(flipped, "balanced", seed=0, target_class="defect_free").counts()
    assert named == {"defect_free": 4 * sizes["defect_free"], "cracked": 2 * sizes["cracked"]}


def crafted(step, seed, labels, correct, names=("ok", "crack")):
    logits = np.where(np.asarray(correct)[:, None], np.eye(2)[labels], 1 - np.eye(2)[labels]).astype(float)
    return {"step": step, "seed": seed, "split_seed": 0, "class_names": list(names), "profile": "cpu",
            "backbone": "x", "created": f"2026-12-04T00:00:0{seed}", "train_counts": {"ok": 8, "crack": 2},
            "predictions": {"names": [f"i{k}" for k in range(len(labels))], "labels": list(map(int, labels)),
                            "logits": logits.tolist()}}


def test_a_tiny_class_leaves_its_statistics_out_and_says_why(tmp_path):
    """One validation image of the target class: its recall effects are 'not computed', with the reason;
    accuracy is still compared; the conclusions and summary.md are written."""
    labels = np.array([0] * 8 + [1])
    recs = [crafted(step, s, labels, np.random.default_rng(s + len(step)).random(9) > 0.3)
            for step in ("01_baseline", "04_balanced_augment") for s in (0, 1)]
    row = report.paired_tests(recs).iloc[0]
    assert row["crack recall verdict"].startswith("not computed: 1 validation crack image(s)")
    assert row["crack recall effect (pts)"] is None and row["accuracy effect (pts)"] is not None
    lines = report.conclusions(recs)
    assert "crack recall: not computed" in lines[0]
    assert report.write_summary(tmp_path, recs).is_file()


def test_an_analysis_of_some_steps_says_what_it_leaves_out(hostile_runs):
    only_01 = [r for r in hostile_runs if r["step"] == "01_baseline"][:1]
    lines = report.conclusions(only_01)
    assert any(line.startswith("Not analysed: no records of 02_flip") for line in lines)
    assert any("run comparison needs two records" in line for line in lines)
    assert any("Not in the sensitivity views: " in line for line in report.conclusions(hostile_runs))
    assert len(report.with_sensitivity(hostile_runs)) == 3
    assert list(report.sensitivity_before_after(hostile_runs)) == ["before: 01_baseline, seed 0",
                                                                   "after: 04_balanced_augment, seed 0"]


def test_records_of_another_schema_are_skipped_naming_the_file(hostile_runs, tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    record = {k: v for k, v in hostile_runs[0].items() if k != "_path"}
    (folder / "01_baseline-seed0.json").write_text(json.dumps(record))
    (folder / "01_baseline-seed1.json").write_text(json.dumps({**record, "seed": 1, "schema": 2}))
    with pytest.warns(UserWarning, match=r"01_baseline-seed1.json.*schema 2: this kit reads schema 1"):
        found = results.load_records(tmp_path)
    assert [r["seed"] for r in found] == [0]


# ------------------------------------------------------------------ the main job
def _tiny_folder(root: Path, sizes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for cname, n in sizes.items():
        (root / cname).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(root / cname / f"{cname}{i}.png")
    return root


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/missing"], "parameter DATA: image folder {tmp}/missing does not exist"),
    (["--data", "{tmp}/mine", "--target-class", "scratch"], "TARGET_CLASS 'scratch' is not a class"),
    (["-p", "REFERENCE_DIR={tmp}/mine"], "parameter REFERENCE_DIR: {tmp}/mine holds no run records"),
])
def test_bad_data_target_or_reference_stop_before_anything_is_created(args, message, tmp_path, capsys):
    _tiny_folder(tmp_path / "mine", {"ok": 2, "crack": 2})
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert run.main(["--profile", "smoke", "--out", str(tmp_path / "runs"), *args]) == 2
    assert message.replace("{tmp}", str(tmp_path)) in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_resume_applies_changes_to_the_notebooks_left_and_says_so(tmp_path, capsys):
    earlier = {"parameters": {"01_baseline": {"PROFILE": "smoke", "SWEEP_IMAGES": 0, "SEEDS": 1},
                              "02_flip": {"PROFILE": "smoke", "SEEDS": 1},
                              "05_analysis": {"PROGRESS": False}},
               "completed": ["01_baseline"]}
    steps = dict(run.resumed_steps(earlier, {"SEEDS": 2, "REFERENCE_DIR": ""}))
    assert steps["01_baseline"]["SEEDS"] == 1 and steps["02_flip"]["SEEDS"] == 2
    assert steps["05_analysis"]["REFERENCE_DIR"] == ""
    assert "resume: 02_flip runs with SEEDS=2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="SWEEP_IMAGES: no notebook left to run"):
        run.resumed_steps(earlier, {"SWEEP_IMAGES": 5})
    with pytest.raises(ValueError, match="parameter REFERENCE_DIR"):
        run.resumed_steps(earlier, {"REFERENCE_DIR": str(tmp_path)})
    assert run.main(["--out", str(tmp_path), "--resume", "--profile", "cpu"]) == 2
    assert "--profile cannot change it" in capsys.readouterr().err


def test_a_live_run_is_not_taken_over(tmp_path, capsys):
    """A run folder held by a live job (its lock's pid and start time) is refused, naming the job; a lock
    left by a dead job is taken over."""
    folder = tmp_path / "20261204-000000"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"status": "running", "parameters": {}, "completed": []}))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": os.uname().nodename, "started": "2026-12-04T00:00:00",
                "process_created": psutil.Process(holder.pid).create_time()}
        (folder / run.LOCK_NAME).write_text(json.dumps(lock))
        assert run.main(["--out", str(tmp_path), "--resume"]) == 2
        assert f"is being run by another job: pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    run.take_lock(folder)                                              # the holder is dead: taken over
    assert json.loads((folder / run.LOCK_NAME).read_text())["pid"] == os.getpid()
    run.release_lock(folder)
    assert not (folder / run.LOCK_NAME).exists()


def _job(tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fsfsl_utils.run", "--profile", "smoke", "--out", str(tmp_path),
                             "--notebooks", "01_baseline,02_flip", "-p", "SWEEP_IMAGES=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def _wait_for_kernel(job: subprocess.Popen) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        kids = [c for c in psutil.Process(job.pid).children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
        if any("ipykernel" in " ".join(c.cmdline()) for c in kids):
            time.sleep(2)
            return
        time.sleep(0.3)
    raise AssertionError("no kernel started")


@pytest.mark.parametrize("sig, code, status", [(signal.SIGTERM, 143, "stopped"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_ends_the_job_in_one_line_and_marks_the_run(sig, code, status, tmp_path):
    """SIGTERM (a scheduler) and SIGINT (Ctrl-C) mid-notebook: one line on stderr (the kernel's own
    traceback goes to kernels.log), run.json says how the run ended, no lock is left, --resume works."""
    job = _job(tmp_path)
    _wait_for_kernel(job)
    job.send_signal(sig)
    _, err = job.communicate(timeout=120)
    assert job.returncode == code
    assert len(err.strip().splitlines()) == 1 and err.startswith(status), err
    folder = next(p for p in tmp_path.iterdir() if (p / "run.json").exists())
    assert json.loads((folder / "run.json").read_text())["status"] == status
    assert not (folder / run.LOCK_NAME).exists()
    for notebook in (folder / "notebooks").glob("*.ipynb"):           # where it stopped, as whole JSON
        json.loads(notebook.read_text())


@pytest.mark.parametrize("sig, kind", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, run.Terminated)])
def test_a_stop_that_python_swallowed_still_stops_the_job(sig, kind, monkeypatch):
    """A Ctrl-C that lands in a ``__del__`` is printed and ignored by Python (a job finished with 0 after
    one, once in CI): the job still stops at the next notebook, with the status of the signal."""
    swallowed: list = []
    monkeypatch.setattr(sys, "unraisablehook", swallowed.append)       # where Python puts what it ignores
    stop = run.StopRequest()
    stop.check()                                                        # no signal yet: nothing happens

    class Collected:
        def __del__(self) -> None:
            stop.handler(sig, None)

    Collected()                                                         # "Exception ignored in ...": swallowed
    assert [type(u.exc_value) for u in swallowed] == [kind]
    with pytest.raises(kind) as caught:
        stop.check()
    assert (caught.type is run.Terminated) == (sig == signal.SIGTERM)


def test_what_a_ctrl_c_leaves_behind_goes_to_kernels_log(tmp_path, capfd):
    """Ctrl-C mid-cell leaves nbclient's "Kernel died" and an unfinished asyncio task whose error is
    logged when it is collected ("Task exception was never retrieved"): both go to kernels.log, the
    terminal keeps the job's one line (the signal test saw 8 lines once in 40 runs)."""
    import asyncio
    import logging

    from fsfsl_utils import job_notebooks

    async def dies() -> None:
        raise RuntimeError("Kernel died")

    with job_notebooks.library_messages_to(tmp_path / "kernels.log"):
        loop = asyncio.new_event_loop()
        task = loop.create_task(dies())
        loop.run_until_complete(asyncio.sleep(0))                       # it ran and failed; nobody asks
        loop.close()
        del task
        logging.getLogger("traitlets").error("Kernel died while waiting for execute reply.")
    assert capfd.readouterr().err == ""
    logged = (tmp_path / "kernels.log").read_text()
    assert "Task exception was never retrieved" in logged and "Kernel died while waiting" in logged
    assert logging.getLogger("asyncio").propagate and logging.getLogger("traitlets").propagate  # put back


def test_a_killed_job_takes_its_helpers_with_it(tmp_path):
    """kill -9 of a job: the watchdog ends the processes it started (here: two sleepers in their own
    sessions, as kernels and Ray's processes are), which outlive the job without it."""
    script = tmp_path / "job.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "from fsfsl_utils import watchdog\n"
        "if sys.argv[1] == 'guarded':\n"
        "    watchdog.start()\n"
        "kids = [subprocess.Popen(['sleep', '120'], start_new_session=True) for _ in range(2)]\n"
        "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
        "time.sleep(120)\n")
    def alive(kids: list[psutil.Process]) -> list[psutil.Process]:
        return [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]

    survivors = {}
    for mode in ("bare", "guarded"):
        job = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
        kids = [psutil.Process(int(p)) for p in job.stdout.readline().split()]
        time.sleep(2.5)                                                 # the watchdog has seen them
        job.kill()
        job.wait()
        deadline = time.time() + (3 if mode == "bare" else watchdog.GRACE_S + 5)
        while time.time() < deadline and (mode == "bare" or alive(kids)):
            time.sleep(0.5)
        survivors[mode] = alive(kids)
        for k in survivors[mode]:
            k.kill()
    assert len(survivors["bare"]) == 2 and survivors["guarded"] == []


def test_a_notebook_cut_off_by_a_full_disk_is_not_left_as_invalid_json(tmp_path, monkeypatch, capsys):
    import papermill

    def disk_full(source, target, **kwargs):
        Path(target).write_text('{"cells": [')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(papermill, "execute_notebook", disk_full)
    assert run.main(["--profile", "smoke", "--out", str(tmp_path), "--notebooks", "01_baseline"]) == 1
    folder = next(tmp_path.iterdir())
    assert not list((folder / "notebooks").rglob("*.ipynb"))
    assert "could not be written whole" in capsys.readouterr().err


def test_the_help_example_runs(tmp_path, capsys):
    """--help names '--notebooks 01_baseline,05_analysis': it runs, and 05 says what it left out."""
    subprocess.run([sys.executable, "-m", "fsfsl_utils.run", "--help"], check=True, capture_output=True)
    assert run.main(["--profile", "smoke", "--out", str(tmp_path), "--notebooks", "01_baseline,05_analysis",
                     "-p", "SWEEP_IMAGES=0", "-p", "LIMIT_PER_CLASS=8"]) == 0
    out = capsys.readouterr().out
    assert "Not analysed: no records of 02_flip" in out
    folder = next(tmp_path.iterdir())
    assert (folder / "summary.md").is_file() and (folder / "report.html").is_file()


# ------------------------------------------------------------------ files
def test_high_bit_colour_is_refused_and_an_inf_pixel_does_not_blacken_a_float_image(tmp_path):
    import struct
    import zlib

    def png16(path: Path, arr: np.ndarray) -> None:     # Pillow cannot write 16-bit colour: PNG by hand
        h, w, c = arr.shape
        raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
        chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
        header = struct.pack(">IIBBBBB", w, h, 16, {2: 4, 3: 2}[c], 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                         + chunk(b"IEND", b""))

    ramp = np.tile(np.linspace(0, 1, 32), (32, 1))
    twelve = (ramp * 4095).astype(np.uint16)
    for name, pixels in (("rgb12.png", np.stack([twelve] * 3, -1)),
                         ("la12.png", np.stack([twelve, np.full_like(twelve, 65535)], -1))):
        tree = tmp_path / name.split(".")[0]
        (tree / "a").mkdir(parents=True)
        (tree / "b").mkdir()
        png16(tree / "a" / name, pixels)
        png16(tree / "b" / "full.png", np.stack([(ramp * 65535).astype(np.uint16)] * 3, -1))
        with pytest.raises(data.DataError, match=f"{name} has 16 bits per colour channel"):
            data.load_imagefolder(tree, size=32)
        (tree / "a" / name).unlink()
        png16(tree / "a" / "full.png", np.stack([(ramp * 65535).astype(np.uint16)] * 3, -1))
        assert data.load_imagefolder(tree, size=32).images.max() >= 250     # 16 bits used: the high byte is right
    floats = ramp.astype(np.float32) * 1000
    floats[0, 0], floats[0, 1] = np.inf, np.nan
    for cname in ("x", "y"):
        (tmp_path / "float" / cname).mkdir(parents=True)
        Image.fromarray(floats).save(tmp_path / "float" / cname / "inf.tif")
    gray = data.load_imagefolder(tmp_path / "float", size=32).images[0]
    assert gray[5, -1] >= 250 and gray[5, 0] <= 3 and 0.4 < gray.mean() / 255 < 0.6


def test_phone_photos_load_as_shown_and_macos_metadata_is_no_class(tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 loads upright; a __MACOSX folder is skipped."""
    for cname in ("a", "b"):
        (tmp_path / cname).mkdir()
        tall = np.zeros((40, 20, 3), np.uint8)
        tall[:10] = 255                                                # white band at the top, as shown
        stored = Image.fromarray(np.rot90(tall, 1).copy())            # stored rotated: 20 x 40, band on the left
        exif = Image.Exif()
        exif[0x0112] = 6                                               # "rotate 90 degrees clockwise to show"
        stored.save(tmp_path / cname / "phone.jpg", exif=exif, quality=95)
    (tmp_path / "__MACOSX" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "__MACOSX" / "a" / "._phone.png")
    assert data.class_names_of(tmp_path) == ["a", "b"]
    ds = data.load_imagefolder(tmp_path, size=40)
    assert ds.class_names == ["a", "b"]
    image = ds.images[0].astype(float).mean(-1) if ds.images.ndim == 4 else ds.images[0].astype(float)
    assert image[:8].mean() > 200 and image[-8:].mean() < 50          # the band is at the top


def test_a_file_in_a_checkpoints_place_is_named_and_a_flipped_bit_is_caught(tmp_path):
    path = tmp_path / "last.pt"
    for junk in ({}, [1, 2], torch.zeros(3), {"model": {}}):
        torch.save(junk, path)
        with pytest.raises(train.TrainingError, match="last.pt is not a checkpoint of this kit"):
            train.load_checkpoint(path, "cpu", [])
    state = {"model": {"w": torch.arange(4.0)}, "optimizer": {"state": {0: {"exp_avg": torch.ones(64)}}},
             "epoch": 3, "best_acc": 0.5, "history": [], "config": {}}
    writer = train.CheckpointWriter()
    writer.save(state, path)
    writer.close()
    notes: list[str] = []
    assert train.load_checkpoint(path, "cpu", notes)["epoch"] == 3 and notes == []
    raw = bytearray(path.read_bytes())
    ones = bytes(torch.ones(64).numpy().tobytes())
    at = raw.index(ones) + 100                                        # a bit in the optimiser's moments
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="do not match the checksum"):
        assert train.load_checkpoint(path, "cpu", notes) is None
    assert any("damaged" in n for n in notes)


def test_an_unwritable_cache_warns_once(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    code = ("import numpy as np\nfrom fsfsl_utils import features\n"
            "x = np.random.default_rng(0).integers(0, 255, (2, 48, 48), dtype=np.uint8)\n"
            "for k in range(4):\n    features.extract(x + k, size=48, progress=False)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FSFSL_CACHE": str(tmp_path / "file")})
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("UserWarning: the feature cache") == 1



def test_settings_check_the_target_class_and_split_kind(tmp_path):
    _tiny_folder(tmp_path / "mine", {"ok": 4, "crack": 4})
    settings = session.Settings.from_parameters(profile="smoke", data=str(tmp_path / "mine"), target_class="ok",
                                                   results_dir=str(tmp_path / "r"), progress=False)
    spec = next(settings.specs("04_balanced_augment"))
    assert spec.target_class == "ok" and spec.split_kind == "random"
    with pytest.raises(ValueError, match="TARGET_CLASS 'scratch' is not a class"):
        session.Settings.from_parameters(profile="smoke", data=str(tmp_path / "mine"), target_class="scratch",
                                            results_dir=str(tmp_path / "r"), progress=False)
    with pytest.raises(ValueError, match="SPLIT_KIND must be one of random, grouped"):
        session.Settings.from_parameters(profile="smoke", split_kind="modules", results_dir=str(tmp_path / "r"),
                                            progress=False)
    assert run.main(["--profile", "smoke", "--data", str(tmp_path / "mine"), "--out", str(tmp_path / "runs"),
                     "-p", "SPLIT_KIND=grouped"]) == 2
    assert not (tmp_path / "runs").exists()
