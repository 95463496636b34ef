"""Report: everything 05 computes from run records (never retrains).

Tables per step beside the study's published numbers (mean over seeds, with the spread over seeds
and the validation-sampling interval side by side), paired effects between arms with verdicts on
the study's published effects (:mod:`fsfsl_utils.stats`: one primary comparison, Holm over the
rest), test-time augmentation on the study's balanced model, operating-point readings, a
plain-language conclusion generated from the numbers, and ``summary.md``.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from . import metrics
from . import stats as kit_stats
from .io import atomic_write, atomic_write_json
from .study import STEPS, STUDY_RESULTS, STUDY_STEPS, class_roles

ALPHA = 0.05
STUDY_COMPARISONS = (("02_flip", "01_baseline"), ("03_full_augment", "01_baseline"),
                     ("04_balanced_augment", "03_full_augment"), ("04_balanced_augment", "01_baseline"))
CONTROL_COMPARISONS = (("04_balanced_augment", "04_balanced_duplicate"),
                       ("04_balanced_augment", "04_class_weighted"),
                       ("04_balanced_duplicate", "04_class_weighted"))
PRIMARY = ("04_balanced_augment", "01_baseline", "recall")  # the study's headline: balanced augmentation, defects
TTA_STEP = "04_balanced_augment"  # the study's follow-up applied TTA to its balanced model
INTERVALS_NOTE = ("Intervals: 'seeds' = 95% t-interval of the mean over seeds (training randomness alone; zero width "
                  "when the seeds give the same model, as the probe does on un-augmented data); 'images' = 95% "
                  "interval for that proportion from the validation images alone, the cells of one solar module "
                  "counted as one cluster (they share their difficulty; a Wilson interval on data without modules).")


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


def records_table(records: Sequence[dict]) -> pd.DataFrame:
    """Where each record is and its headline numbers."""
    rows = [{"step": r["step"], "seed": r["seed"], "profile": r["profile"], "mode": r["mode"],
             "backbone": r["backbone"], "train": " / ".join(map(str, r["train_counts"].values())),
             "accuracy %": round(100 * r["metrics"]["accuracy"], 1), "wall s": round(r["wall_seconds"], 1),
             "record": r.get("_path", "")} for r in records]
    return pd.DataFrame(rows)


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


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """Mean and t-interval over seeds (no interval from a single value)."""
    v = np.asarray([x for x in values if x is not None], float)
    if len(v) == 0:
        return float("nan"), None, None
    if len(v) < 2:
        return float(v.mean()), None, None
    half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def step_table(records: Sequence[dict], view: str | None = None) -> pd.DataFrame:
    """One row per step: n seeds, train counts, mean (and 95% interval) of each score."""
    rows = []
    for step, recs in by_step(records).items():
        per_seed = [scores(r, view) for r in recs]
        row = {"step": step, "title": recs[0].get("title", step), "seeds": len(recs),
               "train": " / ".join(str(v) for v in recs[0]["train_counts"].values())}
        support = _supports(recs[0])
        groups = image_groups(recs[0])
        for key in per_seed[0]:
            mean, lo, hi = mean_interval([s[key] for s in per_seed])
            row[key] = mean
            row[f"{key}_lo"], row[f"{key}_hi"] = lo, hi
            n = support.get(key)
            if not n or mean != mean:
                ci = None
            elif groups is not None:
                ci = _clustered_interval(recs, key, groups, view)
            else:
                ci = metrics.wilson_interval(round(mean * n), n)
            row[f"{key}_img_lo"], row[f"{key}_img_hi"] = ci if ci else (None, None)
        rows.append(row)
    return pd.DataFrame(rows).set_index("step")


def _clustered_interval(recs: Sequence[dict], key: str, groups: Sequence[str], view: str | None,
                        confidence: float = 0.95) -> tuple[float, float] | None:
    """The 95% interval of a proportion (accuracy or a class's recall) from the validation images alone,
    the cells of one module counted as one cluster (:func:`fsfsl_utils.stats.variance_components` on
    the seeds' per-image correctness, its image part only)."""
    labels, _ = record_arrays(recs[0], view)
    if key == "accuracy":
        keep = np.ones(len(labels), bool)
    else:
        name = {"recall_target": target_class(recs[0]), "recall_reference": reference_class(recs[0])}.get(
            key, key.removeprefix("recall_"))
        keep = labels == recs[0]["class_names"].index(name)
    if keep.sum() < 2:
        return None
    correct = np.array([(record_arrays(r, view)[1].argmax(1) == labels)[keep] for r in recs], float)
    comp = kit_stats.variance_components(correct, np.asarray(groups)[keep])
    half = stats.t.ppf(0.5 + confidence / 2, comp["clusters"] - 1) * np.sqrt(comp["image_part"])
    return max(0.0, comp["grand"] - half), min(1.0, comp["grand"] + half)


def _supports(record: dict) -> dict[str, int]:
    """Validation images behind each proportion of :func:`scores` (for the image interval)."""
    labels = np.asarray(record["predictions"]["labels"])
    out = {"accuracy": len(labels)}
    for c, name in enumerate(record["class_names"]):
        out[f"recall_{name}"] = int((labels == c).sum())
    out["recall_target"] = out[f"recall_{target_class(record)}"]
    out["recall_reference"] = out[f"recall_{reference_class(record)}"]
    return out


def arm_table(records: Sequence[dict], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Per arm: mean over seeds (and splits) of each score in percent (AUROC x 100), with the 95%
    interval over seeds and, for proportions, the 95% interval from the validation images
    (:data:`INTERVALS_NOTE`). Default keys: accuracy, balanced accuracy, the recall of each class
    (:func:`record_classes_shown`: at most :data:`MAX_CLASSES_SHOWN`), AUROC."""
    keys = keys or ["accuracy", "balanced_accuracy"] + [f"recall_{c}" for c in record_classes_shown(records[0])] \
        + ["auroc"]
    tab = step_table(records)
    rows = {}
    for step, r in tab.iterrows():
        row = {"runs": int(r["seeds"]), "train": r["train"]}
        for k in keys:
            if k not in r:
                continue
            lo, hi = r[f"{k}_lo"], r[f"{k}_hi"]
            ilo, ihi = r.get(f"{k}_img_lo"), r.get(f"{k}_img_hi")
            parts = [] if lo is None or pd.isna(lo) else [f"seeds {100 * lo:.1f}-{100 * hi:.1f}"]
            parts += [] if ilo is None or pd.isna(ilo) else [f"images {100 * ilo:.1f}-{100 * ihi:.1f}"]
            row[k] = f"{100 * r[k]:.1f}" + (f" ({'; '.join(parts)})" if parts else "")
        rows[step] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("step")


def study_comparison(records: Sequence[dict]) -> pd.DataFrame:
    """The kit's numbers beside the study's published ones, in percent."""
    tab = step_table(records)
    ref, tgt = reference_class(records[0]), target_class(records[0])
    elpv = on_elpv(records[0])
    rows = []
    for step in tab.index:
        study = STUDY_RESULTS.get(step, {}) if elpv else {}
        r = tab.loc[step]
        rows.append({"step": step, "kit train": r["train"], "study train": study.get("train", ""),
                     "kit acc %": 100 * r["accuracy"], "study acc %": _pct(study.get("accuracy")),
                     f"kit rec {ref} %": 100 * r["recall_reference"],
                     f"study rec {ref} %": _pct(study.get("recall_normal")),
                     f"kit rec {tgt} %": 100 * r["recall_target"],
                     f"study rec {tgt} %": _pct(study.get("recall_defective")),
                     f"kit F1 {tgt} %": 100 * r["f1_target"],
                     "kit AUROC %": 100 * r["auroc"], "seeds": int(r["seeds"])})
    return pd.DataFrame(rows).set_index("step").round(1)


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
    from .data import elpv_module_groups

    groups = elpv_module_groups(record["predictions"]["names"])
    return None if all(g.startswith("image:") for g in groups) else groups


def study_images(key: str) -> int:
    """Validation images behind the study's number: all 1,111 for accuracy, the 357 defective for recall."""
    from .data import STUDY_VAL_COUNTS

    return sum(STUDY_VAL_COUNTS.values()) if key == "accuracy" else STUDY_VAL_COUNTS["defective"]


def paired_effects(records: Sequence[dict], a: str, b: str, key: str) -> dict | None:
    """Effect A - B on ``accuracy`` (all validation images) or ``recall`` (target-class images), paired by
    split, seed and image, from :func:`judged_predictions` (:func:`fsfsl_utils.stats.paired_effect`,
    images clustered by module on ELPV); several splits: the Nadeau-Bengio corrected t over the splits'
    mean differences (the first split's variance components describe one run). ``selection_free``
    says whether any record was judged on a chosen epoch. None when no pair exists."""
    groups = by_step(records)
    if a not in groups or b not in groups:
        return None
    other = {(r["split_seed"], r["seed"]): r for r in groups[b]}
    by_split: dict[int, list[tuple[dict, dict]]] = defaultdict(list)
    for ra in groups[a]:
        if (k := (ra["split_seed"], ra["seed"])) in other:
            by_split[ra["split_seed"]].append((ra, other[k]))
    if not by_split:
        return None
    first_a = next(iter(by_split.values()))[0][0]
    labels0 = np.asarray(first_a["predictions"]["labels"])
    n_images = int((labels0 == first_a["class_names"].index(target_class(first_a))).sum()) if key == "recall" \
        else len(labels0)
    if n_images < 2:
        what = f"{target_class(first_a)} image" if key == "recall" else "image"
        return {"not_computed": f"{n_images} validation {what}(s): a paired effect needs at least 2",
                "seeds": sum(len(v) for v in by_split.values()), "images": n_images}
    effects, free = [], True
    for pairs in by_split.values():
        ca, cb = [], []
        for ra, rb in pairs:
            if ra["predictions"]["names"] != rb["predictions"]["names"]:
                raise ValueError(f"{a} and {b} were evaluated on different validation images: not a paired comparison")
            labels, la = judged_arrays(ra)
            _, lb = judged_arrays(rb)
            free = free and judged_predictions(ra)[1] and judged_predictions(rb)[1]
            keep = labels == ra["class_names"].index(target_class(ra)) if key == "recall" else slice(None)
            ca.append(la.argmax(1)[keep] == labels[keep])
            cb.append(lb.argmax(1)[keep] == labels[keep])
        clusters = image_groups(pairs[0][0])
        if clusters is not None and key == "recall":
            clusters = list(np.asarray(clusters)[keep])
        effects.append(kit_stats.paired_effect(np.array(ca), np.array(cb), clusters))
    if len(effects) == 1:
        return {**effects[0], "splits": 1, "selection_free": free}
    n_train = sum((first_a.get("train_counts_before_expansion") or first_a["train_counts"]).values())
    n_test = len(labels0)  # the whole validation set, also for a recall (Nadeau and Bengio's n2)
    out = kit_stats.corrected_resampled_t([e["estimate"] for e in effects], n_train, n_test)
    return {**out, "seeds": sum(e["seeds"] for e in effects), "images": effects[0]["images"],
            "components": effects[0]["components"], "selection_free": free}


def paired_tests(records: Sequence[dict], pairs: Sequence[tuple[str, str]] = STUDY_COMPARISONS) -> pd.DataFrame:
    """Per pair (A vs B): the effect on accuracy and on the target class's recall, each with its 95%
    interval (seeds and images), the study's published effect, the p against 0 and against the
    study's effect (its one-run noise included), and the verdict of
    :data:`fsfsl_utils.stats.VERDICT_RULE`. The primary comparison (:data:`PRIMARY`) is tested alone;
    every other p is Holm-adjusted: against 0 over the table, against the study over the comparisons
    that have a study effect."""
    rows, zero_tests, study_tests = [], [], []
    elpv = bool(records) and on_elpv(records[0])
    for a, b in pairs:
        row: dict = {"A": a, "B": b}
        for key in ("accuracy", "recall"):
            effect = paired_effects(records, a, b, key)
            if effect is None:
                break
            study = study_effect(a, b, key) if elpv else None
            row.update({"runs": effect["seeds"], f"{key} effect": effect, f"{key} study": study})
            if "not_computed" in effect:
                continue
            primary = (a, b, key) == PRIMARY
            zero_tests.append(((len(rows), key), primary, effect["p_value"]))
            if study is not None and "components" in effect:
                versus = kit_stats.versus_study(effect, study, study_images(key))
                row[f"{key} versus"] = versus
                study_tests.append(((len(rows), key), primary, versus["p_value"]))
        else:
            rows.append(row)
    adjusted = {}
    for tests in (zero_tests, study_tests):
        secondary = [t for t in tests if not t[1]]
        holm = dict(zip([t[0] for t in secondary], kit_stats.holm([t[2] for t in secondary])))
        adjusted[id(tests)] = {t[0]: (t[2] if t[1] else float(holm[t[0]])) for t in tests}
    p_zero, p_study = adjusted[id(zero_tests)], adjusted[id(study_tests)]
    tgt = target_class(records[0]) if records else "target"
    out = []
    for i, row in enumerate(rows):
        line = {"A": row["A"], "B": row["B"],
                "role": "primary" if (row["A"], row["B"], "recall") == PRIMARY else "secondary", "runs": row["runs"]}
        for key, label in (("accuracy", "accuracy"), ("recall", f"{tgt} recall")):
            e, study = row[f"{key} effect"], row[f"{key} study"]
            line[f"{label} study (pts)"] = None if study is None else round(100 * study, 1)
            if "not_computed" in e:
                line.update({f"{label} effect (pts)": None, f"{label} 95% interval": "", f"{label} p": None,
                             f"{label} p vs study": None, f"{label} verdict": f"not computed: {e['not_computed']}"})
                continue
            line[f"{label} effect (pts)"] = round(100 * e["estimate"], 1)
            line[f"{label} 95% interval"] = f"[{100 * e['low']:+.1f}, {100 * e['high']:+.1f}]"
            line[f"{label} p"] = p_zero[(i, key)]
            ps = p_study.get((i, key))
            line[f"{label} p vs study"] = ps
            both_small = study is not None and abs(study) <= kit_stats.EQUIVALENCE_MARGIN and \
                kit_stats.equivalence(e["estimate"], e["se"], e["df"]) < kit_stats.ALPHA if "se" in e else False
            line[f"{label} verdict"] = kit_stats.verdict(e, study, ps, p_zero[(i, key)], both_small)
        line["judged on"] = "last epoch / final model" if all(
            row[f"{k} effect"].get("selection_free", True) for k in ("accuracy", "recall")) \
            else "best epoch (chosen on these images: optimistic)"
        out.append(line)
    return pd.DataFrame(out)


SEED_PLAN_NOTE = ("Power: the chance that a run with this many seeds shows an effect of the size observed (two-sided, "
                  "5%), from the variance components this run measured (seed shift, validation images clustered by "
                  "module). Telling the kit's effect from the study's adds the study's one-run noise, which more "
                  "seeds here cannot shrink: blank where no number of seeds reaches the power.")


def seed_plan(records: Sequence[dict], pairs: Sequence[tuple[str, str]] = STUDY_COMPARISONS + CONTROL_COMPARISONS,
              key: str = "recall", target: float = 0.8) -> pd.DataFrame:
    """Per comparison, from the variance components this run measured (:func:`fsfsl_utils.stats.power`):
    the chance that a run with this many seeds shows an effect of the size observed (from 0), the
    seeds a run needs for ``target`` power, and the same for telling the kit's effect from the study's
    (its one-run noise included). Blank where no number of seeds is enough (the images are too few)."""
    rows = []
    for a, b in pairs:
        e = paired_effects(records, a, b, key)
        if e is None or "components" not in e:
            continue
        comp, n, k = e["components"], e["images"], e["seeds"]
        row = {"A": a, "B": b, "seeds": k, "effect (pts)": round(100 * e["estimate"], 1),
               "power now": round(kit_stats.power(e["estimate"], comp, k, n), 2),
               f"seeds for {target:.0%} power": kit_stats.seeds_needed(e["estimate"], comp, n, target)}
        study = study_effect(a, b, key) if on_elpv(records[0]) else None
        if study is not None:
            extra, _ = kit_stats.study_run_variance(comp, study_images(key))
            gap = e["estimate"] - study
            row.update({"study (pts)": round(100 * study, 1),
                        "power to tell from the study's now": round(kit_stats.power(gap, comp, k, n, extra), 2),
                        f"seeds to tell from the study's ({target:.0%})":
                            kit_stats.seeds_needed(gap, comp, n, target, extra)})
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in [c for c in frame.columns if str(c).startswith("seeds ")]:
        frame[column] = frame[column].astype("Int64")  # whole seeds; blank where none is enough
    return frame


def last_epoch_effects(records: Sequence[dict], pairs: Sequence[tuple[str, str]] = STUDY_COMPARISONS
                       ) -> pd.DataFrame:
    """For fine-tuned records that keep only their best epoch's predictions: each pair's effect from the
    recorded last-epoch metrics (mean over paired seeds, points; no interval: per-image logits of the
    last epoch were not kept). Empty when no record needs it."""
    steps = by_step(records)
    rows = []
    for a, b in pairs:
        if a not in steps or b not in steps:
            continue
        other = {(r["split_seed"], r["seed"]): r for r in steps[b]}
        pairs_ab = [(ra, other[k]) for ra in steps[a] if (k := (ra["split_seed"], ra["seed"])) in other]
        if not pairs_ab or all(judged_predictions(r)[1] for pair in pairs_ab for r in pair) or \
                any(r.get("metrics_last_epoch") is None for pair in pairs_ab for r in pair):
            continue
        tgt = target_class(pairs_ab[0][0])

        def mean_effect(metrics_key: str, recall: bool, tgt: str = tgt, pairs_ab: list = pairs_ab) -> float:
            value = (lambda m: m["per_class"][tgt]["recall"]) if recall else (lambda m: m["accuracy"])  # noqa: E731
            return round(100 * float(np.mean([value(ra[metrics_key]) - value(rb[metrics_key])
                                              for ra, rb in pairs_ab])), 1)

        rows.append({"A": a, "B": b, "runs": len(pairs_ab),
                     "accuracy: best epoch (pts)": mean_effect("metrics", False),
                     "accuracy: last epoch (pts)": mean_effect("metrics_last_epoch", False),
                     f"{tgt} recall: best epoch (pts)": mean_effect("metrics", True),
                     f"{tgt} recall: last epoch (pts)": mean_effect("metrics_last_epoch", True)})
    return pd.DataFrame(rows)


def verdict_rule() -> str:
    """The decision rule, printed beside every table that uses it."""
    return kit_stats.VERDICT_RULE + f" Primary comparison: {PRIMARY[0]} vs {PRIMARY[1]}, defect recall (its p as " \
        "is). " + JUDGED_NOTE


def shared_views(recs: Sequence[dict]) -> list[str]:
    """The test-time views every record of ``recs`` kept logits of, in the order the records name them
    (the views themselves are defined in :data:`fsfsl_utils.augment.TEST_VIEWS`)."""
    return [v for v in recs[0].get("view_logits", {}) if all(v in r.get("view_logits", {}) for r in recs)]


def tta_table(records: Sequence[dict], step: str) -> pd.DataFrame:
    """Scores of ``step`` without and with each test-time view (logits 0.5 original + 0.5 view)."""
    recs = by_step(records)[step]
    views = shared_views(recs)
    ref, tgt = reference_class(recs[0]), target_class(recs[0])
    elpv = on_elpv(recs[0])
    rows = []
    for view in (None, *views):
        per_seed = [scores(r, view) for r in recs]
        study = (STUDY_RESULTS.get(f"tta_{view}", {}) if view else STUDY_RESULTS.get(step, {})) if elpv else {}
        rows.append({"view": view or "none", "accuracy %": 100 * np.mean([s["accuracy"] for s in per_seed]),
                     f"recall {ref} %": 100 * np.mean([s["recall_reference"] for s in per_seed]),
                     f"recall {tgt} %": 100 * np.mean([s["recall_target"] for s in per_seed]),
                     "study accuracy %": _pct(study.get("accuracy")),
                     f"study recall {tgt} %": _pct(study.get("recall_defective"))})
    return pd.DataFrame(rows).set_index("view").round(1)


def tta_all(records: Sequence[dict]) -> pd.DataFrame:
    """Every arm with and without each test-time view (mean over seeds, percent): the secondary TTA table."""
    rows = []
    for step, recs in by_step(records).items():
        views = shared_views(recs)
        tgt = target_class(recs[0])
        row = {"step": step, "runs": len(recs)}
        for view in (None, *views):
            per_seed = [scores(r, view) for r in recs]
            name = view or "none"
            row[f"accuracy {name}"] = round(100 * float(np.mean([s["accuracy"] for s in per_seed])), 1)
            row[f"{tgt} recall {name}"] = round(100 * float(np.mean([s["recall_target"] for s in per_seed])), 1)
        rows.append(row)
    return pd.DataFrame(rows).set_index("step")


def tta_step(records: Sequence[dict]) -> str:
    """The step TTA is read on: the study's balanced model when it ran, else the most accurate step."""
    return TTA_STEP if TTA_STEP in by_step(records) else best_step(records)


def best_step(records: Sequence[dict], candidates: Sequence[str] = STUDY_STEPS) -> str:
    tab = step_table(records)
    tab = tab.loc[[s for s in candidates if s in tab.index] or list(tab.index)]
    return str(tab["accuracy"].idxmax())


def operating_points(records: Sequence[dict], normal_recalls: Sequence[float] = (0.973, 0.95)) -> pd.DataFrame:
    """Defect recall at a fixed normal recall, read off each record's validation ROC curve (mean over seeds).
    The threshold is chosen on the validation set itself (optimistic)."""
    rows = []
    for step, recs in by_step(records).items():
        row = {"step": step}
        ref, tgt = reference_class(recs[0]), target_class(recs[0])
        i_ref, i_tgt = recs[0]["class_names"].index(ref), recs[0]["class_names"].index(tgt)
        for nr in normal_recalls:
            vals = [metrics.recall_at_fixed_recall(*record_arrays(r), nr, i_ref, i_tgt)["target_recall"]
                    for r in recs]
            row[f"{tgt} recall @ {ref} {100 * nr:.1f}%"] = 100 * float(np.mean(vals))
        rows.append(row)
    return pd.DataFrame(rows).set_index("step").round(1)


OPERATING_NOTE = ("Threshold on the target class's probability that meets the requirement on out-of-fold scores of "
                  "the training part (folds grouped by source image, each trained as the step was): no validation "
                  "image chose it; then read once on the validation images (intervals: the images, modules as "
                  "clusters). Beside it, the threshold read off the validation images themselves (optimistic). "
                  "The model kept of each step (its first seed) carries this operating point.")


def kept_model_record(records: Sequence[dict]) -> dict | None:
    """The record whose model was kept (``model``) for the primary arm, else the first with one."""
    kept = [r for r in records if r.get("model")]
    return next((r for r in kept if r["step"] == PRIMARY[0]), kept[0] if kept else None)


def chosen_operating_points(records: Sequence[dict]) -> pd.DataFrame:
    """Per step whose kept model has an operating point (:func:`fsfsl_utils.experiment.keep_model`): the
    requirement, the threshold chosen on the training part and what it gives on the validation images
    (both recalls with intervals, percent), beside the optimistic threshold read off the validation
    images. Empty when no record carries one."""
    rows = []
    for step, recs in by_step(records).items():
        rec = next((r for r in recs if r.get("operating_point")), None)
        if rec is None:
            continue
        point = rec["operating_point"]
        tgt, ref = target_class(rec), reference_class(rec)
        row = {"step": step, "seed": rec["seed"], "requirement": point["in_words"], "model": rec.get("model", "")}
        for label, reading in (("training part", point if "validation" in point else None),
                               ("validation (optimistic)", point["optimistic"])):
            if reading is None:
                row[f"threshold ({label})"] = None
                continue
            val = reading["validation"]
            row[f"threshold ({label})"] = round(reading["threshold"], 3)
            for name, key in ((tgt, "target_recall"), (ref, "reference_recall")):
                r = val[key]
                interval = "" if r["low"] is None else f" [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
                row[f"{name} recall at it ({label})"] = f"{100 * r['value']:.1f}{interval}"
        rows.append(row)
    return pd.DataFrame(rows)


def conclusions(records: Sequence[dict]) -> list[str]:
    """Sentences generated from the numbers, the primary comparison first: which study claims hold."""
    tab = step_table(records)
    tests = paired_tests(records, STUDY_COMPARISONS + CONTROL_COMPARISONS)
    seeds = int(tab["seeds"].max())
    profile = ", ".join(sorted({r["profile"] for r in records}))
    ref, tgt = reference_class(records[0]), target_class(records[0])
    elpv = on_elpv(records[0])
    out = []
    rec_col = f"{tgt} recall"
    primary = tests[tests["role"] == "primary"] if len(tests) else tests
    if len(primary):
        row = primary.iloc[0]
        study = f" The study reported {row[rec_col + ' study (pts)']:+.1f} points (one run)." if elpv else ""
        versus = "" if row.get(rec_col + " p vs study") is None or pd.isna(row.get(rec_col + " p vs study")) else \
            f" (p against the study's effect, its own noise included: {row[rec_col + ' p vs study']:.2f})"
        if _computed(row, rec_col):
            out.append(f"Primary: {PRIMARY[0]} vs {PRIMARY[1]}, {tgt} recall {row[rec_col + ' effect (pts)']:+.1f} "
                       f"points {row[rec_col + ' 95% interval']} over {int(row['runs'])} paired run(s).{study} "
                       f"Verdict: {row[rec_col + ' verdict']}{versus}.")
        else:
            out.append(f"Primary: {PRIMARY[0]} vs {PRIMARY[1]}, {tgt} recall: {row[rec_col + ' verdict']}.{study}")
        if row.get("judged on", "").startswith("best epoch"):
            last = last_epoch_effects(records, [PRIMARY[:2]])
            if len(last):
                out.append(f"These records hold only the best epoch's predictions, chosen on the validation images "
                           f"that judge them (optimistic); from the recorded last-epoch metrics the primary effect is "
                           f"{last.iloc[0][f'{tgt} recall: last epoch (pts)']:+.1f} points instead of "
                           f"{last.iloc[0][f'{tgt} recall: best epoch (pts)']:+.1f}.")
    out.append(f"Runs: {len(records)} records, up to {seeds} seed(s) per step, profile {profile}, "
               f"backbone {', '.join(sorted({r['backbone'] for r in records}))}.")
    if "01_baseline" in tab.index:
        b = tab.loc["01_baseline"]
        study = lambda text: f" (study {text})" if elpv else ""  # noqa: E731
        out.append(f"Baseline: accuracy {100 * b['accuracy']:.1f}%{study('86.06%')}, {tgt} recall "
                   f"{100 * b['recall_target']:.1f}%{study('62.9%')}, {ref} recall "
                   f"{100 * b['recall_reference']:.1f}%{study('97.3%')}.")
    claims = {("03_full_augment", "01_baseline"): "augmenting every class (the study: no gain)",
              ("04_balanced_augment", "03_full_augment"): "augmenting only the defective class vs every class",
              ("04_balanced_augment", "01_baseline"): "augmenting only the defective class (the study's headline)",
              ("04_balanced_augment", "04_balanced_duplicate"): "new images, or just the new class ratio? plain "
                                                                "copies give the same ratio",
              ("04_balanced_augment", "04_class_weighted"): "a class-weighted loss changes the ratio with no new "
                                                            "images"}
    for _, row in tests.iterrows():
        note = claims.get((row["A"], row["B"]))
        if note:
            out.append(f"{row['A']} vs {row['B']} ({note}): accuracy {_effect_words(row, 'accuracy')}; {tgt} recall "
                       f"{_effect_words(row, rec_col)}.")
    step = tta_step(records)
    if step in tab.index and any(r.get("view_logits") for r in by_step(records)[step]):
        tta = tta_table(records, step)
        parts = [f"{v} {tta.loc[v, 'accuracy %']:.1f}%" for v in tta.index if v != "none"]
        if parts:
            study = " (study: vflip 87.74%, blur 88.12% vs 89.13% without)" if elpv and step == TTA_STEP else ""
            out.append(f"Test-time augmentation on {step}: {', '.join(parts)} vs {tta.loc['none', 'accuracy %']:.1f}% "
                       f"without{study}.")
    return out + not_analysed(records)


ARM_NAMES = {"01_baseline": "baseline (01)", "02_flip": "flips (02)", "03_full_augment": "every class augmented (03)",
             "04_balanced_augment": "balanced augmentation (04)", "04_balanced_duplicate": "plain copies (04 control)",
             "04_class_weighted": "class-weighted loss (04 control)"}


def verdict_lines(records: Sequence[dict], pairs: Sequence[tuple[str, str]] = STUDY_COMPARISONS + CONTROL_COMPARISONS
                  ) -> list[str]:
    """One Markdown line per comparison, the primary first and in bold: each effect with its interval,
    the study's effect where it published one, and the verdict of :func:`verdict_rule` (the README's
    findings are these lines, recomputed by a test from the committed records)."""
    tests = paired_tests(records, pairs)
    if not len(tests):
        return []
    tgt = target_class(records[0])
    rec = f"{tgt} recall"
    lines = []
    for _, row in sorted(tests.iterrows(), key=lambda item: item[1]["role"] != "primary"):
        parts = []
        for label, name in (("accuracy", "accuracy"), (rec, "defect recall" if tgt == "defective" else rec)):
            if not _computed(row, label):
                parts.append(f"{name} {row[f'{label} verdict']}")
                continue
            study = row.get(f"{label} study (pts)")
            study_text = "" if study is None or pd.isna(study) else f", the study {study:+.1f}"
            p_study = row.get(f"{label} p vs study")
            p_text = "" if p_study is None or pd.isna(p_study) else f", p vs study {_p_text(p_study)}"
            parts.append(f"{name} {row[f'{label} effect (pts)']:+.1f} {row[f'{label} 95% interval']}{study_text}: "
                         f"{row[f'{label} verdict']}{p_text}")
        text = f"{ARM_NAMES.get(row['A'], row['A'])} vs {ARM_NAMES.get(row['B'], row['B'])}: {'; '.join(parts)}."
        lines.append(f"**Primary: {text}**" if row["role"] == "primary" else text)
    return lines


def _p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def not_analysed(records: Sequence[dict]) -> list[str]:
    """What an analysis of ``records`` leaves out and why, in words (05 works on whatever records exist)."""
    present = by_step(records)
    missing = [s for s in STEPS if s not in present]
    left = [f"{a} vs {b}" for a, b in STUDY_COMPARISONS + CONTROL_COMPARISONS if a not in present or b not in present]
    out = []
    if missing:
        out.append(f"Not analysed: no records of {', '.join(missing)}; the comparisons that need them "
                   f"({', '.join(left) or 'none'}) are left out.")
    if len(same_split(records)) < 2:
        out.append("Not shown: the run comparison needs two records of one split; this analysis has one.")
    bare = [Path(r.get("_path", r["step"])).name for r in records if r not in with_sensitivity(records)]
    if bare:
        out.append(f"Not in the sensitivity views: {', '.join(bare)} (trained without a sensitivity analysis).")
    return out


def _computed(row: Mapping, label: str) -> bool:
    value = row.get(f"{label} effect (pts)")
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _effect_words(row: Mapping, label: str) -> str:
    """'+1.2 [-0.3, +2.7] (verdict)', or the reason it was not computed."""
    if not _computed(row, label):
        return row[f"{label} verdict"]
    return f"{row[f'{label} effect (pts)']:+.1f} {row[f'{label} 95% interval']} ({row[f'{label} verdict']})"


SMOKE_WARNING = ("Smoke profile: a few images, tiny inputs, one epoch. These numbers only show that the pipeline "
                 "runs; they mean nothing about the study.")


def smoke_warning(records: Sequence[dict]) -> str | None:
    """:data:`SMOKE_WARNING` when any record comes from the smoke profile, else None."""
    return SMOKE_WARNING if any(r.get("profile") == "smoke" for r in records) else None


def analysis_dir(results_dir: str | os.PathLike) -> Path:
    """Where an analysis of ``results_dir`` writes its summary, report and figures: the folder itself
    the first time; once it holds an analysis (``summary.md``), a new ``analysis-<time>`` folder
    inside it, so that a finished run's analysis is never overwritten."""
    results_dir = Path(results_dir)
    if not (results_dir / "summary.md").exists():
        return results_dir
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(100):
        folder = results_dir / (f"analysis-{stamp}" if k == 0 else f"analysis-{stamp}-{k + 1}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        print(f"note: {results_dir} already holds an analysis (summary.md): this one goes to {folder}")
        return folder
    raise FileExistsError(f"could not create a new analysis folder in {results_dir}")


def compare_runs(records: Sequence[dict], reference: Sequence[dict], names: tuple[str, str] = ("this run",
                                                                                                "reference")
                 ) -> pd.DataFrame:
    """Per step present in both: accuracy and target-class recall (mean over seeds, percent) of this run
    and of a reference run (e.g. the README's), and the difference. Different images or seeds make
    this a description, not a paired test."""
    mine, ref = step_table(records), step_table(reference)
    tgt = target_class(records[0])
    rows = []
    for step in [s for s in mine.index if s in ref.index]:
        row = {"step": step, f"seeds ({names[0]})": int(mine.loc[step, "seeds"]),
               f"seeds ({names[1]})": int(ref.loc[step, "seeds"])}
        for key, label in (("accuracy", "accuracy %"), ("recall_target", f"{tgt} recall %")):
            a, b = 100 * mine.loc[step, key], 100 * ref.loc[step, key]
            row.update({f"{label} ({names[0]})": a, f"{label} ({names[1]})": b, f"{label} difference": a - b})
        rows.append(row)
    if not rows:
        raise ValueError("the two runs share no step: nothing to compare")
    return pd.DataFrame(rows).set_index("step").round(1)


def styled(frame: pd.DataFrame, note: str | None = None) -> pd.io.formats.style.Styler:
    """A table as a notebook shows it: points and percents with one decimal, p-values with two
    significant digits, blanks where there is no number, text (verdicts) wrapped, never cut, and
    ``note`` (the decision rule, what the intervals are) as the caption beside it."""
    p_columns = [c for c in frame.columns if str(c) == "p" or str(c).endswith(" p")]
    sty = frame.style.format(precision=1, na_rep="", thousands=",", escape="html")
    if p_columns:
        sty = sty.format("{:.2g}", subset=p_columns, na_rep="", escape="html")
    sty = sty.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    sty = sty.set_properties(**{"white-space": "normal", "max-width": "26em", "text-align": "right"})
    sty = sty.set_table_styles([{"selector": "th", "props": "white-space: normal; max-width: 12em;"},
                                {"selector": "caption", "props": "caption-side: bottom; text-align: left; "
                                 "font-size: 0.85em; white-space: normal; max-width: 80em;"}])
    return sty.set_caption(html.escape(note)) if note else sty


_MARKDOWN_SPECIAL = re.compile(r"([\\`\[\]|*_])")


def markdown_text(text: object) -> str:
    """``text`` as literal Markdown: ``<``, ``>`` and ``&`` become HTML entities, so no tag or script in a
    class or file name reaches a renderer that lets HTML through (JupyterLab, GitHub), and Markdown's
    own punctuation (backslash, backquote, brackets, ``|``, ``*``, ``_``) is backslash-escaped, so a name
    cannot make a link, split a table's columns or start emphasis. Line breaks become spaces."""
    one_line = " ".join(str(text).splitlines())
    return html.escape(_MARKDOWN_SPECIAL.sub(r"\\\1", one_line), quote=False)


def conclusions_markdown(records: Sequence[dict]) -> str:
    """:func:`conclusions` as a Markdown list, the smoke warning (if any) above it: 05's first output.
    Every line is escaped (:func:`markdown_text`): names from the data show as text."""
    warning = smoke_warning(records)
    return "\n".join(([f"**{markdown_text(warning)}**", ""] if warning else [])
                     + ["- " + markdown_text(line) for line in conclusions(records)])


def write_summary(results_dir: str | os.PathLike, records: Sequence[dict], extra: dict[str, pd.DataFrame] | None = None
                  ) -> Path:
    """``<results_dir>/summary.md`` (tables + conclusions) and ``summary.json``, written atomically."""
    results_dir = Path(results_dir)
    sections = {"Kit vs study": study_comparison(records),
                "Every arm: mean over seeds, percent (intervals: seeds; images)": arm_table(records),
                "Paired effects (study's comparisons and controls)":
                    paired_tests(records, STUDY_COMPARISONS + CONTROL_COMPARISONS),
                "Defect recall at fixed normal recall (threshold chosen on the validation set: optimistic)":
                    operating_points(records),
                "Seeds needed (power from this run's variance components)": seed_plan(records)}
    chosen = chosen_operating_points(records)
    if len(chosen):
        sections["Operating point chosen on the training part"] = chosen
    last = last_epoch_effects(records, STUDY_COMPARISONS + CONTROL_COMPARISONS)
    if len(last):
        sections["Best epoch vs last epoch (from the recorded metrics)"] = last
    sections.update(extra or {})
    notes = {"Every arm: mean over seeds, percent (intervals: seeds; images)": INTERVALS_NOTE,
             "Paired effects (study's comparisons and controls)": "Rule: " + verdict_rule(),
             "Seeds needed (power from this run's variance components)": SEED_PLAN_NOTE,
             "Operating point chosen on the training part": OPERATING_NOTE}
    warning = smoke_warning(records)
    lines = ["# fsfsl run summary", "", f"Results folder: {markdown_text(results_dir)}", ""] + \
        ([f"**{markdown_text(warning)}**", ""] if warning else []) + ["## Conclusions", ""]
    lines += [f"- {markdown_text(c)}" for c in conclusions(records)] + [""]
    for title, frame in sections.items():
        lines += [f"## {markdown_text(title)}", ""] + ([markdown_text(notes[title]), ""] if title in notes else []) \
            + [_markdown(frame), ""]
    text = "\n".join(lines)
    path = atomic_write(results_dir / "summary.md", lambda tmp: tmp.write_text(text))
    tables = {k: _records(v) for k, v in sections.items()}
    atomic_write_json(results_dir / "summary.json", tables | {"conclusions": conclusions(records),
                                                          "decision_rule": verdict_rule(), "intervals": INTERVALS_NOTE})
    return path


def _records(frame: pd.DataFrame) -> list[dict]:
    frame = frame.reset_index() if frame.index.name else frame
    return [{k: (None if v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _markdown(frame: pd.DataFrame) -> str:
    frame = frame.reset_index() if frame.index.name else frame
    cols = [markdown_text(c) for c in frame.columns]
    fmt = lambda v: "" if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else (  # noqa: E731
        f"{v:.4g}" if isinstance(v, float) else markdown_text(v))
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(rows)


def _pct(v: float | None) -> float:
    return float("nan") if v is None else 100 * v
