"""Tables per step and arm beside the study's published numbers (mean over seeds, the seed and image
intervals side by side), test-time augmentation, operating points, two runs compared."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .. import metrics
from .. import stats as kit_stats
from ..study import DIHEDRAL_VIEWS, STUDY_RESULTS, STUDY_STEPS, TRAINING_VIEWS
from .records import (
    PRIMARY,
    TTA_STEP,
    by_step,
    image_groups,
    on_elpv,
    pct,
    record_arrays,
    record_classes_shown,
    reference_class,
    scores,
    shared_views,
    target_class,
)

INTERVALS_NOTE = ("Intervals: 'seeds' = 95% t-interval of the mean over seeds (training randomness alone; zero width "
                  "when the seeds give the same model, as the probe does on un-augmented data); 'images' = 95% "
                  "interval for that proportion from the validation images alone, the cells of one solar module "
                  "counted as one cluster (they share their difficulty; a Wilson interval on data without modules).")


def records_table(records: Sequence[dict]) -> pd.DataFrame:
    """Where each record is and its headline numbers."""
    rows = [{"step": r["step"], "seed": r["seed"], "profile": r["profile"], "mode": r["mode"],
             "backbone": r["backbone"], "train": " / ".join(map(str, r["train_counts"].values())),
             "accuracy %": round(100 * r["metrics"]["accuracy"], 1), "wall s": round(r["wall_seconds"], 1),
             "record": r.get("_path", "")} for r in records]
    return pd.DataFrame(rows)


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


def column_name(key: str) -> str:
    """A score's column name in every table: ``accuracy %``, ``balanced accuracy %``, ``<class> recall %``,
    ``AUROC %``."""
    if key.startswith("recall_"):
        return f"{key.removeprefix('recall_')} recall %"
    return {"auroc": "AUROC %"}.get(key, key.replace("_", " ") + " %")


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
            row[column_name(k)] = f"{100 * r[k]:.1f}" + (f" ({'; '.join(parts)})" if parts else "")
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
                     "kit accuracy %": 100 * r["accuracy"], "study accuracy %": pct(study.get("accuracy")),
                     f"kit {ref} recall %": 100 * r["recall_reference"],
                     f"study {ref} recall %": pct(study.get("recall_normal")),
                     f"kit {tgt} recall %": 100 * r["recall_target"],
                     f"study {tgt} recall %": pct(study.get("recall_defective")),
                     f"kit {tgt} F1 %": 100 * r["f1_target"],
                     "kit AUROC %": 100 * r["auroc"], "seeds": int(r["seeds"])})
    return pd.DataFrame(rows).set_index("step").round(1)


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
                     f"{ref} recall %": 100 * np.mean([s["recall_reference"] for s in per_seed]),
                     f"{tgt} recall %": 100 * np.mean([s["recall_target"] for s in per_seed]),
                     "study accuracy %": pct(study.get("accuracy")),
                     f"study {tgt} recall %": pct(study.get("recall_defective"))})
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


def ensemble_record(records: Sequence[dict], step: str, views: Sequence[str] = (), split_seed: int = 0) -> dict:
    """The seeds of ``step`` (on split ``split_seed``) as one model, an arm of its own: each image's class
    probabilities averaged over the k seeds' models and, with ``views``, over each model's test-time
    views too (the image itself and, e.g., :data:`fsfsl_utils.augment.DIHEDRAL_VIEWS`). Returned as a
    record (its logits are the log of the mean probability), so every table and score takes it;
    ``seeds`` lists the members. ValueError when the step has no records there or a view is missing."""
    members = [r for r in by_step(records).get(step, []) if r["split_seed"] == split_seed]
    if not members:
        raise ValueError(f"no records of {step!r} on split {split_seed} to ensemble")
    labels = np.asarray(members[0]["predictions"]["labels"])
    probs = []
    for r in members:
        if not np.array_equal(np.asarray(r["predictions"]["labels"]), labels):
            raise ValueError(f"the records of {step!r} were not scored on the same images")
        missing = [v for v in views if v not in r.get("view_logits", {})]
        if missing:
            raise ValueError(f"{step} seed {r['seed']} has no logits of test-time view(s) {missing}")
        for logits in [r["predictions"]["logits"], *(r["view_logits"][v] for v in views)]:
            probs.append(metrics.softmax(np.asarray(logits, float)))
    log_mean = np.log(np.clip(np.mean(probs, axis=0), 1e-12, 1))
    first = members[0]
    return {**first, "step": f"{step} (ensemble of {len(members)})", "seed": 0, "seeds": [r["seed"] for r in members],
            "views": list(views), "predictions": {**first["predictions"], "logits": log_mean.tolist()},
            "view_logits": {}, "metrics": metrics.evaluate(labels, log_mean, first["class_names"])}


def seed_ensembles(records: Sequence[dict], step: str) -> list[dict]:
    """The seeds of ``step`` as one model (:func:`ensemble_record`): alone, then averaged over the views
    it trained on (flips: the mirror image), then over the eight symmetries of a square, each when the
    records kept those views' logits and it differs from the one before."""
    members = by_step(records).get(step, [])
    out = [ensemble_record(records, step)]
    trained = TRAINING_VIEWS.get(members[0]["config"].get("train_aug", "none"), ()) if members else ()
    for views in (trained, DIHEDRAL_VIEWS):
        if views and views != tuple(out[-1]["views"]) and \
                all(v in r.get("view_logits", {}) for r in members for v in views):
            out.append(ensemble_record(records, step, views=views))
    return out


def learning_curve(records: Sequence[dict], steps: Sequence[str]) -> pd.DataFrame:
    """One row per step of a learning curve (the same recipe on nested shares of the training labels):
    the share, the labelled training images of the target class, and the mean over seeds of accuracy
    and of the target class's recall with their 95% t-intervals over seeds (the images' variance is in
    the paired tables, not here)."""
    grouped = by_step(records)
    rows = []
    for step in steps:
        recs = grouped.get(step, [])
        if not recs:
            continue
        tgt = target_class(recs[0])
        row = {"step": step, "share of labels": recs[0].get("label_fraction", 1.0),
               f"{tgt} images labelled": recs[0]["train_counts"].get(tgt), "runs": len(recs)}
        for key, label in (("accuracy", "accuracy"), ("recall_target", f"{tgt} recall")):
            mean, low, high = mean_interval([scores(r)[key] for r in recs])
            row[f"{label} (%)"] = round(100 * mean, 1)
            row[f"{label} 95% interval"] = "" if low is None else f"[{100 * low:.1f}, {100 * high:.1f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def labels_needed_sentence(curve: pd.DataFrame) -> str:
    """A few-shot user's first question answered from a learning curve: how many labelled images of
    the target class gave which recall (each share's mean over seeds)."""
    if curve.empty:
        return "no learning-curve records yet"
    recall = next(c for c in curve.columns if c.endswith("recall (%)"))
    target = recall.removesuffix(" recall (%)")
    images = f"{target} images labelled"
    parts = [f"{int(r[images])} labelled {target} images gave {r[recall]:.1f}% {target} recall"
             for _, r in curve.iterrows()]
    return "; ".join(parts) + " (mean over seeds, on the study's validation images)"
