"""What the study *is*: its steps, the policies and controls each one runs, and its published numbers.

Plain data with no dependencies, so that the analysis (:mod:`fsfsl_utils.report`) reads it without
importing the training code. How a step *runs* lives in :mod:`fsfsl_utils.experiment`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

STEPS: dict[str, dict] = {
    "01_baseline": {"policy": "none", "title": "baseline"},
    "02_flip": {"policy": "flip", "title": "+ flips"},
    "03_full_augment": {"policy": "full", "title": "brightness + clarity, all classes"},
    "04_balanced_augment": {"policy": "balanced", "title": "same, defective class only"},
    # science controls: same engine, recorded like every other run
    "04_balanced_duplicate": {"policy": "balanced_duplicate", "title": "control: defective oversampled by copies"},
    "04_class_weighted": {"policy": "none", "class_weight": "balanced", "title": "control: class-weighted loss"},
}
STUDY_STEPS = ("01_baseline", "02_flip", "03_full_augment", "04_balanced_augment")
# The study's published numbers (ModelArts blog + docs); None = not published.
STUDY_RESULTS: dict[str, dict] = {
    "01_baseline": {"train": "754 / 358", "accuracy": 0.8606, "recall_normal": 0.973, "recall_defective": 0.629},
    "02_flip": {"train": "~2200 images", "accuracy": None, "recall_normal": None, "recall_defective": None},
    "03_full_augment": {"train": "2210 / 1174", "accuracy": 0.8631, "recall_normal": 0.976, "recall_defective": 0.625},
    "04_balanced_augment": {"train": "1508 / 1432", "accuracy": 0.8913, "recall_normal": 0.972,
                            "recall_defective": 0.713},
    "tta_vflip": {"accuracy": 0.8774, "recall_normal": 0.937, "recall_defective": 0.727},
    "tta_blur": {"accuracy": 0.88117, "recall_normal": 0.948, "recall_defective": 0.733},
}
# The seven other symmetries of a square (flips and quarter turns): training views and test-time views of the
# stronger recipe (notebook 06); here so that the analysis reads them without the image code.
DIHEDRAL_VIEWS = ("hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose")
# the exact test-time views each training-time augmentation (config train_aug) shows a model
TRAINING_VIEWS = {"paper": ("hflip",), "flip": ("hflip",), "dihedral": DIHEDRAL_VIEWS, "none": ()}
CONTROL_STEPS = ("04_balanced_duplicate", "04_class_weighted")

ELPV_TARGET, ELPV_REFERENCE = "defective", "normal"  # the study's classes: defect recall matters most


def class_roles(class_names: Sequence[str], counts: Mapping[str, int] | None = None,
                target: str | None = None) -> tuple[str, str]:
    """(target, reference): the class whose recall matters most, and the class held at a fixed recall
    when the target's is read off an ROC curve (and the one a balancing policy leaves largest).

    One rule, applied everywhere (augmentation's ``@majority`` / ``@minority``, every table, figure and
    widget): the target is ``target`` when named, else ELPV's ``defective``, else the smallest class
    by ``counts``, a tie going to the class *last* in class order; the reference is ``normal`` beside
    ELPV's ``defective``, else the largest other class, a tie going to the class *first* in order.
    The two always differ: on two classes of equal size the second is the target, the first the
    reference. ValueError when ``target`` is not a class or there are fewer than two classes."""
    names = list(class_names)
    if len(names) < 2:
        raise ValueError(f"need at least two classes for a target and a reference, got {names}")
    counts = counts or {}
    if target:
        if target not in names:
            raise ValueError(f"TARGET_CLASS {target!r} is not a class of this data; its classes: "
                             f"{', '.join(map(repr, names))}")
    elif ELPV_TARGET in names and ELPV_REFERENCE in names:
        target = ELPV_TARGET
    else:
        target = min(reversed(names), key=lambda c: counts.get(c, 0))  # min keeps the first of ties: the last class
    if target == ELPV_TARGET and ELPV_REFERENCE in names:
        return target, ELPV_REFERENCE
    return target, max((c for c in names if c != target), key=lambda c: counts.get(c, 0))
