"""Repository hygiene: committed notebooks carry no outputs and exactly one parameters cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def committed_notebooks() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True)
    return [ROOT / p for p in out.stdout.split()] if out.returncode == 0 else sorted(ROOT.glob("notebooks/*.ipynb"))


def notebook_problems(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count")):
            problems.append(f"{path.name}: cell {i} has outputs or an execution count")
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"{path.name}: {len(tagged)} cells tagged 'parameters', need exactly 1")
    return problems


def test_checker_catches_outputs(tmp_path):
    bad = {"cells": [{"cell_type": "code", "metadata": {}, "source": "1", "outputs": [{"x": 1}],
                      "execution_count": 3}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "bad.ipynb").write_text(json.dumps(bad))
    problems = notebook_problems(tmp_path / "bad.ipynb")
    assert any("outputs" in p for p in problems) and any("0 cells tagged" in p for p in problems)


@pytest.mark.parametrize("path", committed_notebooks(), ids=lambda p: p.name)
def test_committed_notebooks_are_clean(path):
    assert notebook_problems(path) == []


def test_gitattributes_runs_nbstripout():
    assert "*.ipynb filter=nbstripout" in (ROOT / ".gitattributes").read_text()


def test_package_tests_notebooks_and_benchmarks_are_ruff_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "fsfsl_utils", "tests", "notebooks", "benchmarks"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_notebooks_define_no_functions_and_call_the_package():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        code = "\n".join(c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                         for c in nb["cells"] if c["cell_type"] == "code")
        assert "def " not in code and "class " not in code and "lambda" not in code, path.name
        assert "from fsfsl_utils import" in code, path.name
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path.name


def test_the_analysis_reads_the_study_without_the_training_code():
    """``report`` (tables, verdicts) and ``study`` (what the study is) import no torch: reading
    records needs no deep-learning stack."""
    code = "import sys, fsfsl_utils.report, fsfsl_utils.study; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
