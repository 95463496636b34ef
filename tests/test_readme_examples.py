"""Every main-job command the README and its docs pages show is accepted as written: each ``make reproduce ...`` line
is turned into its command by ``make -n`` and each ``python -m fsfsl_utils.run ...`` line taken as it
is, then run with ``--dry-run`` (arguments, data, profile and parameters checked, the notebooks and
their parameters printed, nothing created). Placeholders (``/path/to/root``) become a real folder.
The ``--help`` example runs for real in ``tests/test_hostile_input.py``."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsfsl_utils import data, run

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The main-job lines of the bash blocks of the README and its docs pages (comments dropped; lines with
    shell variables, which only a cluster script can fill, left out)."""
    found = []
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.strip().startswith(("make reproduce", "python -m fsfsl_utils.run")) and "$" not in line:
                found.append(shlex.join(shlex.split(line, comments=True)))
    return found


def test_the_readme_shows_main_job_commands():
    assert len(readme_commands()) >= 5


def main_job_args(command: str) -> list[str]:
    """The arguments ``python -m fsfsl_utils.run`` gets from a README line (``make -n`` for make)."""
    words = shlex.split(command)
    if words[0] == "make":
        shown = subprocess.run(["make", "-n", "-s", *words[1:]], cwd=ROOT, capture_output=True, text=True, check=True)
        line = next(x for x in shown.stdout.splitlines() if "-m fsfsl_utils.run" in x)
        words = shlex.split(line)
    return words[words.index("fsfsl_utils.run") + 1:]


@pytest.mark.parametrize("command", readme_commands())
def test_a_readme_command_is_accepted_as_written(command, tmp_path, capsys):
    mine = tmp_path / "root"
    for cname in ("ok", "crack"):
        (mine / cname).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(mine / cname / f"{i}.png")
    pack = tmp_path / "elpv-study.fsfslpack"
    data.write_pack(data.load_imagefolder(mine, size=16), pack, progress=False)
    args = [a.replace("/path/to/root", str(mine)).replace("data/elpv-study.fsfslpack", str(pack))
            for a in main_job_args(command)]
    out = tmp_path / "runs"
    if "--resume" in args:                                 # an unfinished run for it to continue
        (out / "20261204-000000").mkdir(parents=True)
        (out / "20261204-000000" / "run.json").write_text(json.dumps(
            {"status": "running", "completed": [], "parameters": {"01_baseline": {"PROFILE": "smoke"}}}))
    assert run.main([*args, "--out", str(out), "--dry-run"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "dry run: would write" in printed and "[1/" in printed
    assert not (out.exists() and [p for p in out.iterdir() if p.name != "20261204-000000"])


def test_own_data_with_a_frozen_profile_says_what_it_cannot_decide(tmp_path, capsys):
    """--data with the default CPU profile (frozen) recommends one that learns, and names the target class it
    guessed; --target-class silences that guess."""
    mine = tmp_path / "root"
    for cname, n in (("ok", 4), ("crack", 2)):
        (mine / cname).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(mine / cname / f"{i}.png")
    args = ["--profile", "cpu", "--data", str(mine), "--out", str(tmp_path / "runs"), "--dry-run"]
    assert run.main(args) == 0
    err = capsys.readouterr().err
    assert "profile cpu freezes the backbone" in err and "--profile cpu-finetune" in err
    assert "the target class (whose recall matters most) is 'crack', the smallest class" in err
    assert run.main([*args, "--target-class", "ok"]) == 0
    err = capsys.readouterr().err
    assert "smallest class" not in err and "freezes the backbone" in err
    assert data.class_counts_of(mine) == {"crack": 2, "ok": 4} and data.class_counts_of("elpv") is None


def test_epochs_and_input_size_reach_notebook_06_through_its_config(tmp_path, capsys):
    """06 has no EPOCHS or INPUT_SIZE parameter: --epochs and --input-size go into its CONFIG, not lost; a
    setting given with -p wins."""
    args = ["--profile", "cpu-strong", "--recipe", "--notebooks", "06_stronger_recipe", "--epochs", "3",
            "--input-size", "128", "--out", str(tmp_path), "--dry-run"]
    assert run.main(args) == 0
    assert "CONFIG={'epochs': 3, 'input_size': 128}" in capsys.readouterr().out
    assert run.main([*args, "-p", "epochs=5"]) == 0
    assert "CONFIG={'epochs': 5, 'input_size': 128}" in capsys.readouterr().out
