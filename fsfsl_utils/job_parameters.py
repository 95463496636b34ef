"""The main job's parameters: the notebooks and what they declare, ``-p`` pairs, training settings
gathered into ``CONFIG``, and every check made before a kernel starts (errors name the parameter)."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
from collections.abc import Sequence
from pathlib import Path

from . import profiles, results, session
from .experiment import project_root

NOTEBOOKS = ("01_baseline", "02_flip", "03_full_augment", "04_balanced_augment", "05_analysis")  # the default job
RECIPE_NOTEBOOK = "06_stronger_recipe"  # the stronger recipe: run with --recipe (before 05) or named in --notebooks
ALL_NOTEBOOKS = (*NOTEBOOKS, RECIPE_NOTEBOOK)


# the notebook parameters that Settings.from_parameters takes: each one's name in lower case
SETTINGS_PARAMETERS = {name.upper(): name for name in inspect.signature(session.Settings.from_parameters).parameters
                       if name not in ("labels", "results_dir")}


def notebook_dir() -> Path:
    return project_root() / "notebooks"


def notebook_parameters(name: str) -> dict[str, dict]:
    """The parameters a notebook declares (papermill's inspection of its tagged cell)."""
    import papermill

    return papermill.inspect_notebook(str(notebook_dir() / f"{name}.ipynb"))


def parse_params(pairs: Sequence[str]) -> dict[str, object]:
    """``NAME=VALUE`` pairs; values are Python literals when they parse as one, else strings. A parameter
    the notebooks declare as text keeps the text as given (``-p LEARNING_CURVE=0.5,1`` is ``"0.5,1"``,
    not a tuple; ``-p TARGET_CLASS=1`` is ``"1"``)."""
    text = text_parameters()
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"parameter {pair!r} must look like NAME=VALUE")
        key, value = pair.split("=", 1)
        key = key.strip()
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
        if key in text and not isinstance(params[key], str):
            params[key] = value
    return params


def text_parameters() -> set[str]:
    """The parameters some notebook declares as ``str``."""
    return {name for nb in ALL_NOTEBOOKS for name, info in notebook_parameters(nb).items()
            if info["inferred_type_name"] == "str"}


def training_config(params: dict[str, object], config_file: str | None = None) -> dict[str, object]:
    """``params`` with every training setting gathered into ``CONFIG`` (the notebooks' dict of
    :class:`~fsfsl_utils.config.TrainConfig` fields): first the JSON object in ``config_file``, then
    ``-p CONFIG={...}``, then ``-p name=value`` for each field named in lower case (``-p
    weight_decay=1e-4``). ValueError names the file or the parameter."""
    params = dict(params)
    config: dict[str, object] = {}
    if config_file:
        path = Path(config_file).expanduser()
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"--config {path}: not a readable JSON file ({err})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {path}: must hold a JSON object of training parameters, "
                             f"e.g. {{\"weight_decay\": 0.0001}}")
        config.update(loaded)
    if "CONFIG" in params:
        config.update(session.check_config_parameter(params.pop("CONFIG")))
    for key in [k for k in params if k.islower()]:
        config[key] = params.pop(key)
    session.check_config_parameter(config)
    if config:
        params["CONFIG"] = config
    return params


def check_data(params: dict) -> None:
    """DATA, TARGET_CLASS and REFERENCE_DIR point at something usable, checked before any kernel starts
    (nothing is decoded: folder names and a pack's header only); ValueError names the parameter."""
    from . import data
    from .study import class_roles

    source = str(params.get("DATA", "elpv"))
    try:
        names = data.class_names_of(source, "study")
    except (FileNotFoundError, data.DataError, OSError) as err:
        raise ValueError(f"parameter DATA: {err} (give 'elpv', a .fsfslpack file or an ImageFolder folder)") from None
    if params.get("TARGET_CLASS"):
        class_roles(names, target=str(params["TARGET_CLASS"]))
    if "REQUIREMENT" in params:
        from .deploy.operating import parse_requirement

        parse_requirement(str(params["REQUIREMENT"]))
    kind = params.get("SPLIT_KIND", "random")
    if kind not in data.SPLIT_KINDS:
        raise ValueError(f"parameter SPLIT_KIND must be one of {', '.join(data.SPLIT_KINDS)}, got {kind!r}")
    if kind == "grouped" and data.source_origin(source) != "elpv":
        raise ValueError("parameter SPLIT_KIND: a grouped split needs each image's module, which only ELPV cells "
                         "carry (DATA elpv or a pack of it)")
    reference = str(params.get("REFERENCE_DIR") or "")
    if reference:
        folder = Path(reference).expanduser()
        try:
            found = results.load_records(folder) if (folder / "records").is_dir() else []
        except (OSError, ValueError) as err:
            raise ValueError(f"parameter REFERENCE_DIR: {folder} cannot be read ({err})") from None
        if not found:
            raise ValueError(f"parameter REFERENCE_DIR: {folder} holds no run records (records/*.json); give the "
                             "folder of an earlier run, e.g. runs/<timestamp>")


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds


# the run-level parameters (training parameters are checked by TrainConfig)
RANGES = {"SEEDS": (1, 1000), "SPLITS": (1, 100), "SEED": (0, MAX_SEED), "SPLIT_SEED": (0, MAX_SEED),
          "THRESHOLD_FOLDS": (0, 20),
          "LIMIT_PER_CLASS": (1, 10**9), "SWEEP_IMAGES": (0, 10**6)}


def check_parameter(name: str, value: object, type_name: str) -> None:
    """A notebook parameter has the type its cell declares and lies in its range; ValueError names it."""
    types = {"int": int, "str": str, "bool": bool, "float": (int, float), "dict": dict}
    optional = type_name.startswith("Optional[") and type_name.endswith("]")
    kinds = [type_name[9:-1], "None"] if optional else [t.strip() for t in type_name.split("|")]
    if value is None and "None" in kinds:
        return
    want = types.get(kinds[0]) if len([k for k in kinds if k != "None"]) == 1 else None
    if want is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
        raise ValueError(f"parameter {name} must be {' or '.join(kinds)}, got {value!r}")
    if name in RANGES:
        lo, hi = RANGES[name]
        if not lo <= value <= hi:
            raise ValueError(f"parameter {name} must lie in [{lo}, {hi}], got {value!r}")


def check_backend(backend: str, address: str) -> None:
    """BACKEND names a runner, and a given RAY_ADDRESS answers (before any kernel starts)."""
    from . import runner

    try:
        runner.check_backend(backend)
    except ValueError as err:
        raise ValueError(f"parameter {err}") from None
    if backend == "ray" and address:
        try:
            runner.check_reachable(address, timeout_s=3.0)
        except ConnectionError as err:
            raise ValueError(str(err)) from None


def check_training_settings(params: dict) -> None:
    """The training config the notebooks will resolve, checked now by :class:`~fsfsl_utils.config.TrainConfig`
    (a negative EPOCHS, an input size too small for the backbone fail here, not deep inside a kernel)."""
    names = ("BACKBONE", "INPUT_SIZE", "EPOCHS")  # None: the profile's value
    config = session.check_config_parameter(params.get("CONFIG"))
    try:
        profiles.resolve(str(params.get("PROFILE", "auto")),
                         **{**{n.lower(): params.get(n) for n in names}, **config})
    except ValueError as err:
        named = next((n for n in names if n.lower() in str(err)), None) \
            or next((f"CONFIG {k}" for k in config if k in str(err)), None)
        raise ValueError(f"parameter {named}: {err}" if named else str(err)) from None


def with_config_overrides(params: dict, given: dict, declared: dict) -> dict:
    """A notebook's parameters, with ``--backbone``, ``--epochs`` and ``--input-size`` put into its
    ``CONFIG`` when it has no parameter of their own (notebook 06), so that no option is dropped."""
    moved = {name.lower(): given[name] for name in ("BACKBONE", "EPOCHS", "INPUT_SIZE")
             if name not in declared and given.get(name) is not None}
    if moved and "CONFIG" in declared:
        params = {**params, "CONFIG": {**moved, **(params.get("CONFIG") or {})}}
    return params


def own_data_notes(args: argparse.Namespace) -> list[str]:
    """What a user running the kit on their own images should know before it starts: a frozen profile
    only shows that the pipeline runs (docs/findings.md, "What freezing hides"), and which class the kit
    takes as the target when ``--target-class`` does not name one."""
    if args.data == "elpv":
        return []
    from . import data
    from .study import class_roles

    notes = []
    if profiles.resolve(args.profile)["config"].mode == "probe":
        notes.append(f"profile {args.profile} freezes the backbone (only a linear head learns): it shows that the "
                     "pipeline runs on these images, but its verdicts can mislead decisions; for decisions use "
                     "--profile cpu-finetune (CPU) or --profile paper (GPU)")
    if not args.target_class:
        names = data.class_names_of(args.data, "study")
        counts = data.class_counts_of(args.data)
        target = class_roles(names, counts)[0] if counts else None
        notes.append((f"the target class (whose recall matters most) is {target!r}, the smallest class; "
                      if target else "the target class (whose recall matters most) is the smallest class; ")
                     + "name it with --target-class NAME")
    return notes
