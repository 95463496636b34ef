"""Reading run records: grouped by step, arrays of a record, the target and reference classes, the
predictions a verdict may judge (none chosen on the judging images), what the report compares."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from .. import metrics
from ..study import STEPS, STUDY_RESULTS, class_roles

ALPHA = 0.05


STUDY_COMPARISONS = (("02_flip", "01_baseline"), ("03_full_augment", "01_baseline"),
                     ("04_balanced_augment", "03_full_augment"), ("04_balanced_augment", "01_baseline"))


CONTROL_COMPARISONS = (("04_balanced_augment", "04_balanced_duplicate"),
                       ("04_balanced_augment", "04_class_weighted"),
                       ("04_balanced_duplicate", "04_class_weighted"))


PRIMARY = ("04_balanced_augment", "01_baseline", "recall")  # the study's headline: balanced augmentation, defects


RECIPE_PREFIX = "06_"  # the steps of notebook 06 (the stronger recipe): shown in a section of their own


def study_records(records: Sequence[dict]) -> list[dict]:
    """The records of the study's notebooks 01-04, without notebook 06's (:data:`RECIPE_PREFIX`)."""
    return [r for r in records if not r["step"].startswith(RECIPE_PREFIX)]


TTA_STEP = "04_balanced_augment"  # the study's follow-up applied TTA to its balanced model


def by_step(records: Sequence[dict]) -> dict[str, list[dict]]:
    """Records grouped by step (seeds sorted), steps in the study's order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["step"]].append(r)
    order = {s: i for i, s in enumerate(STEPS)}
    return {k: sorted(v, key=lambda r: (r["split_seed"], r["seed"]))
            for k, v in sorted(groups.items(), key=lambda kv: order.get(kv[0], 99))}


def record_arrays(record: dict, view: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, logits) of a record; ``view`` = a TTA view mixed 0.5 / 0.5 with the original."""
    labels = np.asarray(record["predictions"]["labels"])
    logits = np.asarray(record["predictions"]["logits"], float)
    if view is not None:
        logits = 0.5 * logits + 0.5 * np.asarray(record["view_logits"][view], float)
    return labels, logits


def with_sensitivity(records: Sequence[dict]) -> list[dict]:
    """The records that carry a sensitivity analysis (a training run with ``analyse_images=False`` has none)."""
    return [r for r in records if isinstance(r.get("sensitivity"), dict) and r["sensitivity"]]


def sensitivity_before_after(records: Sequence[dict]) -> dict[str, dict]:
    """The records whose sensitivity 05 shows, by title: the baseline's first run ("before") and the
    balanced arm's ("after"), each only when it has a sensitivity analysis; when neither step has one,
    the first record that has."""
    analysed = by_step(with_sensitivity(records))
    out = {f"before: {step}, seed {analysed[step][0]['seed']}" if step == "01_baseline" else
           f"after: {step}, seed {analysed[step][0]['seed']}": analysed[step][0]
           for step in ("01_baseline", TTA_STEP) if step in analysed}
    if not out and analysed:
        step, recs = next(iter(analysed.items()))
        out[f"{step}, seed {recs[0]['seed']}"] = recs[0]
    return out


def same_split(records: Sequence[dict]) -> list[dict]:
    """The records evaluated on the first record's split (widgets compare images one to one)."""
    return [r for r in records if r["split_seed"] == records[0]["split_seed"]]


def scores(record: dict, view: str | None = None) -> dict[str, float]:
    """Flat scores of one record: accuracy, balanced accuracy, AUROC, recall and F1 per class."""
    labels, logits = record_arrays(record, view)
    m = metrics.evaluate(labels, logits, record["class_names"])
    out = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "auroc": m["auroc"]}
    for c, v in m["per_class"].items():
        out[f"recall_{c}"] = v["recall"]
        out[f"f1_{c}"] = v["f1"]
    out["recall_target"] = out[f"recall_{target_class(record)}"]
    out["recall_reference"] = out[f"recall_{reference_class(record)}"]
    out["f1_target"] = out[f"f1_{target_class(record)}"]
    return out


def on_elpv(record: dict) -> bool:
    """Whether the study's published numbers apply: the record was trained on ELPV (the default source,
    or a pack made from it: ``data_origin``)."""
    return record.get("data_origin", record.get("source", "elpv")) == "elpv"


def target_class(record: dict) -> str:
    """The class whose recall matters most: the one the record names (``TARGET_CLASS`` or the rule of
    :func:`fsfsl_utils.study.class_roles`: ``defective`` on ELPV, else the smallest training class)."""
    return class_roles_of(record)[0]


def reference_class(record: dict) -> str:
    """The class held at a fixed recall: ``normal`` on ELPV, else the largest other training class."""
    return class_roles_of(record)[1]


def class_roles_of(record: dict) -> tuple[str, str]:
    """(target, reference) of a record: as recorded when it names them, else by
    :func:`fsfsl_utils.study.class_roles` on its training counts (records before the rule was recorded)."""
    names = record["class_names"]
    if record.get("target_class") in names and record.get("reference_class") in names:
        return record["target_class"], record["reference_class"]
    counts = record.get("train_counts_before_expansion") or record.get("train_counts") or {}
    return class_roles(names, counts, record.get("target_class_requested"))


MAX_CLASSES_SHOWN = 10  # figures and default tables name at most this many classes


def shown_classes(class_names: Sequence[str], counts: Mapping[str, int] | None = None,
                  first: Sequence[str] = (), limit: int = MAX_CLASSES_SHOWN) -> list[str]:
    """The classes a figure or table names: all of them when there are at most ``limit``, else
    ``first`` (e.g. the target and reference classes) and then the largest by ``counts``, in the
    classes' own order. A study of 1,000 classes then draws in seconds, not minutes."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    names = list(class_names)
    if len(names) <= limit:
        return names
    counts = counts or {}
    largest = sorted(names, key=lambda c: -counts.get(c, 0))  # stable: ties keep the classes' order
    keep = set(list(dict.fromkeys([c for c in first if c in names] + largest))[:limit])
    return [c for c in names if c in keep]


def record_classes_shown(record: dict) -> list[str]:
    """:func:`shown_classes` of a record: its target and reference classes, then the largest
    validation classes."""
    labels = np.asarray(record["predictions"]["labels"])
    counts = {c: int((labels == i).sum()) for i, c in enumerate(record["class_names"])}
    return shown_classes(record["class_names"], counts, (target_class(record), reference_class(record)))


def study_effect(a: str, b: str, key: str) -> float | None:
    """The study's published difference A - B (fraction) of ``accuracy`` or ``recall`` (defective), if any."""
    name = {"accuracy": "accuracy", "recall": "recall_defective"}[key]
    va, vb = STUDY_RESULTS.get(a, {}).get(name), STUDY_RESULTS.get(b, {}).get(name)
    return None if va is None or vb is None else va - vb


JUDGED_NOTE = ("Verdicts are computed from predictions no choice touched: the last epoch's, or the final model "
               "of a profile that chooses nothing on the validation images. A fine-tuned record that only holds "
               "its best epoch's predictions (chosen on these images) is judged on them, labelled optimistic.")


def judged_predictions(record: dict) -> tuple[dict, bool]:
    """The predictions a verdict is computed from, and whether they are free of any choice made on the
    validation images: ``predictions_last_epoch`` when the record has them; else ``predictions``,
    which are choice-free unless the record is a fine-tuning whose best epoch was kept
    (``metrics_last_epoch`` beside them: the committed paper run of 2026-11-28)."""
    if record.get("predictions_last_epoch"):
        return record["predictions_last_epoch"], True
    return record["predictions"], record.get("metrics_last_epoch") is None


def judged_arrays(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(labels, logits) of :func:`judged_predictions`."""
    preds, _ = judged_predictions(record)
    return np.asarray(preds["labels"]), np.asarray(preds["logits"], float)


def image_groups(record: dict) -> list[str] | None:
    """The module of each validation image of an ELPV record (:func:`fsfsl_utils.data.elpv_module_groups`:
    cells of one module share their difficulty, so they count as one cluster); None for other data."""
    if not on_elpv(record):
        return None
    from ..data import elpv_module_groups

    groups = elpv_module_groups(record["predictions"]["names"])
    return None if all(g.startswith("image:") for g in groups) else groups


def study_images(key: str) -> int:
    """Validation images behind the study's number: all 1,111 for accuracy, the 357 defective for recall."""
    from ..data import STUDY_VAL_COUNTS

    return sum(STUDY_VAL_COUNTS.values()) if key == "accuracy" else STUDY_VAL_COUNTS["defective"]


def shared_views(recs: Sequence[dict]) -> list[str]:
    """The test-time views every record of ``recs`` kept logits of, in the order the records name them
    (the views themselves are defined in :data:`fsfsl_utils.augment.TEST_VIEWS`)."""
    return [v for v in recs[0].get("view_logits", {}) if all(v in r.get("view_logits", {}) for r in recs)]

def pct(v: float | None) -> float:
    return float("nan") if v is None else 100 * v
