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


def test_the_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    modules = {p.name for p in (ROOT / "fsfsl_utils").rglob("*.py")} - {"__init__.py"}
    assert [m for m in sorted(modules) if f"`{m}`" not in doc] == []
    import re
    named = set(re.findall(r"`([a-z_]+\.py)`", doc)) - {"bench.py", "paper_rerun.py", "same_records.py"}
    assert named - modules == set()


def test_no_module_level_mutable_state():
    """No ``global`` statements and no private module-level containers: what is kept between calls
    has an owner (Settings, DataStore, Dataset), constants are UPPER_CASE tables."""
    import ast

    found = []
    for path in sorted((ROOT / "fsfsl_utils").rglob("*.py")):
        tree = ast.parse(path.read_text())
        found += [f"{path.name}:{n.lineno} global" for n in ast.walk(tree) if isinstance(n, ast.Global)]
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) and node.value is not None else []
            value = getattr(node, "value", None)
            container = isinstance(value, (ast.Dict, ast.List, ast.Set)) or (
                isinstance(value, ast.Call) and getattr(value.func, "id", "") in ("dict", "list", "set"))
            for t in targets:
                if isinstance(t, ast.Name) and container and not t.id.isupper():
                    found.append(f"{path.name}:{node.lineno} {t.id}")
    assert found == []


def test_one_step_for_every_loop_two_calls_from_the_notebook_that_trains():
    """Notebook 01 calls ``train.fit``; ``fit`` calls the loops (fine-tuning, top blocks; the packed
    network through the fine-tuning's own loop), and each loop's body calls the one ``TrainStep``,
    whose body is forward, loss, ``backward()``, ``opt.step()``: the code a reader finds is the code
    that runs, on a CPU and on a GPU (where the same step is captured as a CUDA graph)."""
    import ast
    import inspect

    from fsfsl_utils import train
    from fsfsl_utils.train import loop, packed, step, top

    nb = json.loads((ROOT / "notebooks" / "01_baseline.ipynb").read_text())
    assert any("train.fit(" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    fit = inspect.getsource(train.fit)
    assert "finetune(" in fit and "fit_top(" in fit

    def code_calls(fn: object) -> set[str]:
        tree = ast.parse(inspect.getsource(fn).lstrip() if not inspect.isclass(fn) else inspect.getsource(fn))
        return {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}

    for fn in (loop.Alone.__init__, packed.Packed.__init__, top.fit_top):  # one training, a packed one, top
        calls = code_calls(fn)
        assert any(c.endswith("TrainStep") for c in calls), fn.__qualname__      # builds the one step ...
    for fn in (loop.train_epochs, loop.finetune_turns, packed.finetune_packed, top.fit_top):
        assert not any(c.endswith((".backward", "opt.step")) for c in code_calls(fn)), fn.__name__  # ... no other
    assert "trainee.step" in code_calls(loop.train_epochs)      # the one loop: a training alone and a packed one
    assert "loop.train_epochs" in code_calls(packed.finetune_packed)
    assert "train_epochs" in code_calls(loop.finetune_turns)
    step_calls = code_calls(step.TrainStep._forward_backward)
    assert {"self.opt.step"} <= step_calls and any(c.endswith(".backward") for c in step_calls)


# Bottom to top: a module imports only modules earlier in this list (docs/architecture.md draws it).
LAYERS = (
    # foundation: no kit imports
    "io", "progress", "study", "metrics", "stats", "watchdog",
    # data, models and what a training is made of
    "models", "data.dataset", "data.images", "data.pack", "data.sources", "data.splits", "data.tree_export",
    "data.cli", "data", "data.__main__", "augment", "features", "config", "profiles", "recipe", "sensitivity",
    # training (a subpackage; its modules in their own order, the package's surface last)
    "train.common", "train.optim", "train.checkpoint", "train.step", "train.evaluate", "train.probe", "train.loop",
    "train.top", "train.packed", "train.dispatch", "train",
    # using a trained model
    "deploy.operating", "deploy.bundle", "deploy.cam", "deploy.exporting", "deploy",
    # the study: records, one step end to end, where trainings run, a notebook's session
    "results", "experiment", "runner", "session",
    # analysis, figures, widgets, and the command lines
    "report.records", "report.tables", "report.verdicts", "report.prose", "report.bottom_line", "report.files",
    "report",
    "report_html", "plots", "explore", "widgets", "predict", "export", "job_parameters", "job_lock", "job_notebooks",
    "run", "explore_run",
)


def kit_imports(path: Path) -> set[str]:
    """The kit's modules that ``path`` imports anywhere (module level or inside a function), by name
    relative to the package (``train.loop``; a subpackage by its own name)."""
    import ast

    package = ROOT / "fsfsl_utils"
    parts = list(path.relative_to(package).with_suffix("").parts)
    here = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    is_module = lambda name: name and ((package / name.replace(".", "/")).with_suffix(".py").is_file()  # noqa: E731
                                       or (package / name.replace(".", "/")).is_dir())
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
            elif (node.module or "").startswith("fsfsl_utils"):
                base = []
            else:
                continue
            module = (node.module or "").removeprefix("fsfsl_utils").lstrip(".") if not node.level else node.module
            target = ".".join(base + ([module] if module else []))
            if module and is_module(target):  # "from . import x" imports x, not the package it is in
                found.add(target)
            elif module and node.level:
                found.add(f"missing:{target}")  # a relative import of nothing: it fails when it runs
            found |= {name for name in (f"{target}.{a.name}".lstrip(".") for a in node.names) if is_module(name)}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("fsfsl_utils.") for a in node.names
                      if a.name.startswith("fsfsl_utils.") and is_module(a.name.removeprefix("fsfsl_utils."))}
    return found


def test_imports_only_go_down_the_layers():
    """Every module has a place in LAYERS and imports only modules below it: no import cycle, no
    import of a higher layer (e.g. the training loop reaching into the study, a notebook's session
    imported by what it runs)."""
    package = ROOT / "fsfsl_utils"
    modules = {".".join(p.relative_to(package).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py") if p.relative_to(package).parts != ("__init__.py",)}
    assert sorted(set(modules) - set(LAYERS)) == [], "place new modules in LAYERS"
    assert sorted(set(LAYERS) - set(modules)) == []
    found = {name: kit_imports(path) for name, path in modules.items()}
    missing = [f"{name}: {dep}" for name, deps in sorted(found.items()) for dep in deps if dep.startswith("missing:")]
    assert missing == []
    upward = [f"{name} imports {dep}" for name, deps in sorted(found.items())
              for dep in sorted(deps) if dep != name and LAYERS.index(dep) > LAYERS.index(name)]
    assert upward == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check above would catch a cycle: an import of session from inside a function of experiment."""
    probe = ROOT / "fsfsl_utils" / "experiment.py"
    found = kit_imports(probe)
    assert "train" in found and "session" not in found
    fake = ROOT / "fsfsl_utils" / "_layer_probe.py"
    try:
        fake.write_text("def f():\n"
                        "    from . import session\n    from .train import loop\n    import fsfsl_utils.run\n"
                        "    from .nothing import x\n")
        assert kit_imports(fake) == {"session", "train", "train.loop", "run", "missing:nothing"}
    finally:
        fake.unlink()


def test_tests_use_public_names():
    """Tests reach the kit through its public names (no ``module._private``), so a refactoring that keeps
    the public surface keeps the tests."""
    import re

    modules = {p.stem for p in (ROOT / "fsfsl_utils").rglob("*.py")} | {"sens", "train_step", "train_loop"}
    private = re.compile(r"\b(" + "|".join(sorted(modules)) + r")\._[a-zA-Z]\w*")
    found = [f"{p.name}:{i} {m.group(0)}" for p in sorted((ROOT / "tests").glob("test_*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) for m in private.finditer(line)]
    assert found == []


def test_no_module_is_over_about_400_lines():
    """One module per job: a module that grows past about 400 lines is doing several (split it as train/,
    data/ and report/ were split)."""
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "fsfsl_utils").rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 450} == {}
