"""What the study *is*: its steps, the policies and controls each one runs, and its published numbers.

Plain data with no dependencies, so that the analysis (:mod:`fsfsl_utils.report`) reads it without
importing the training code. How a step *runs* lives in :mod:`fsfsl_utils.experiment`.
"""

from __future__ import annotations

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
CONTROL_STEPS = ("04_balanced_duplicate", "04_class_weighted")
