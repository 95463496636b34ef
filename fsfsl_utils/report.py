"""Report: everything 05 computes from run records (never retrains).

Tables per step (mean and 95% interval over seeds) beside the study's published numbers,
paired tests between steps, test-time augmentation, fixed-operating-point readings, a
plain-language conclusion generated from the numbers, and ``summary.md``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from . import metrics
from .experiment import STEPS, STUDY_RESULTS, STUDY_STEPS
from .results import atomic_write, atomic_write_json

ALPHA = 0.05
STUDY_COMPARISONS = (("02_flip", "01_baseline"), ("03_full_augment", "01_baseline"),
                     ("04_balanced_augment", "03_full_augment"), ("04_balanced_augment", "01_baseline"))
CONTROL_COMPARISONS = (("04_balanced_augment", "04_balanced_duplicate"),
                       ("04_balanced_augment", "04_class_weighted"),
                       ("04_balanced_duplicate", "04_class_weighted"))


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


def same_split(records: Sequence[dict]) -> list[dict]:
    """The records evaluated on the first record's split (widgets compare images one to one)."""
    return [r for r in records if r["split_seed"] == records[0]["split_seed"]]


def records_table(records: Sequence[dict]) -> pd.DataFrame:
    """Where each record is and its headline numbers."""
    rows = [{"step": r["step"], "seed": r["seed"], "profile": r["profile"], "mode": r["mode"],
             "backbone": r["backbone"], "train": " / ".join(map(str, r["train_counts"].values())),
             "accuracy": round(r["metrics"]["accuracy"], 4), "wall s": round(r["wall_seconds"], 1),
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
    """Whether the study's published numbers apply: the record was trained on ELPV (the default source)."""
    return record.get("source", "elpv") == "elpv"


def target_class(record: dict) -> str:
    """The class whose recall matters most: ``defective`` on ELPV, else the smallest training class."""
    return _class_by_role(record, "defective", min)


def reference_class(record: dict) -> str:
    """The class held at a fixed recall: ``normal`` on ELPV, else the largest training class."""
    return _class_by_role(record, "normal", max)


def _class_by_role(record: dict, elpv_name: str, pick: Callable) -> str:
    names = record["class_names"]
    if elpv_name in names:
        return elpv_name
    counts = record.get("train_counts_before_expansion") or record.get("train_counts") or {}
    return pick(names, key=lambda c: counts.get(c, 0))


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
        for key in per_seed[0]:
            mean, lo, hi = mean_interval([s[key] for s in per_seed])
            row[key] = mean
            row[f"{key}_lo"], row[f"{key}_hi"] = lo, hi
        rows.append(row)
    return pd.DataFrame(rows).set_index("step")


def arm_table(records: Sequence[dict], keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Per arm: mean and 95% interval over seeds (and splits) of each score, in percent (AUROC x 100).
    Default keys: accuracy, balanced accuracy, the recall of every class, AUROC."""
    keys = keys or ["accuracy", "balanced_accuracy"] + [f"recall_{c}" for c in records[0]["class_names"]] + ["auroc"]
    tab = step_table(records)
    rows = {}
    for step, r in tab.iterrows():
        row = {"runs": int(r["seeds"]), "train": r["train"]}
        for k in keys:
            if k not in r:
                continue
            lo, hi = r[f"{k}_lo"], r[f"{k}_hi"]
            row[k] = f"{100 * r[k]:.1f}" + ("" if lo is None or pd.isna(lo) else f" [{100 * lo:.1f}, {100 * hi:.1f}]")
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
                     "kit AUROC": r["auroc"], "seeds": int(r["seeds"])})
    return pd.DataFrame(rows).set_index("step").round(2)


def paired_tests(records: Sequence[dict], pairs: Sequence[tuple[str, str]] = STUDY_COMPARISONS) -> pd.DataFrame:
    """Per pair (A vs B): exact McNemar per seed on the same validation images, on all images and on the
    defective images alone, the paired differences across seeds, and a plain-language verdict."""
    groups = by_step(records)
    rows = []
    for a, b in pairs:
        if a not in groups or b not in groups:
            continue
        rb = {(r["split_seed"], r["seed"]): r for r in groups[b]}
        matched = [(ra, rb[k]) for ra in groups[a] if (k := (ra["split_seed"], ra["seed"])) in rb]
        if not matched:
            continue
        acc_p, def_p, d_acc, d_def = [], [], [], []
        for ra, rb_ in matched:
            la, lga = record_arrays(ra)
            lb, lgb = record_arrays(rb_)
            if ra["predictions"]["names"] != rb_["predictions"]["names"]:
                raise ValueError(f"{a} and {b} were evaluated on different validation images: not a paired test")
            acc_p.append(metrics.mcnemar(la, lga, lgb)["p_value"])
            d = la == ra["class_names"].index(target_class(ra))
            def_p.append(metrics.mcnemar(la[d], lga[d], lgb[d])["p_value"])
            sa, sb = scores(ra), scores(rb_)
            d_acc.append(sa["accuracy"] - sb["accuracy"])
            d_def.append(sa["recall_target"] - sb["recall_target"])
        tgt = target_class(groups[a][0])
        rows.append({"A": a, "B": b, "pairs": len(matched),
                     "d accuracy (pts)": 100 * float(np.mean(d_acc)),
                     "d accuracy 95% CI over seeds": _ci_text(d_acc),
                     "McNemar p (accuracy)": _p_summary(acc_p),
                     f"d recall {tgt} (pts)": 100 * float(np.nanmean(d_def)),
                     f"d recall {tgt} 95% CI over seeds": _ci_text(d_def),
                     f"McNemar p ({tgt})": _p_summary(def_p),
                     "verdict": verdict(a, b, d_acc, acc_p, d_def, def_p, f"{tgt} recall")})
    return pd.DataFrame(rows)


def verdict(a: str, b: str, d_acc: Sequence[float], p_acc: Sequence[float], d_def: Sequence[float],
            p_def: Sequence[float], target: str = "defect recall") -> str:
    """Plain words. A difference counts as shown when McNemar p < 0.05 in at least half of the seeds and
    the per-seed differences all point the same way; otherwise 'no evidence of a difference'."""
    parts = []
    for what, d, p in (("accuracy", d_acc, p_acc), (target.replace("defective recall", "defect recall"), d_def, p_def)):
        d = np.asarray(d, float)
        significant = np.mean(np.asarray(p) < ALPHA) >= 0.5
        consistent = (d > 0).all() or (d < 0).all()
        if significant and consistent:
            parts.append(f"{what}: {a} is {'higher' if d.mean() > 0 else 'lower'} than {b} "
                         f"by {100 * abs(d.mean()):.1f} points")
        else:
            parts.append(f"{what}: no evidence of a difference ({100 * d.mean():+.1f} points)")
    return "; ".join(parts)


def tta_table(records: Sequence[dict], step: str) -> pd.DataFrame:
    """Scores of ``step`` without and with each test-time view (logits 0.5 original + 0.5 view)."""
    recs = by_step(records)[step]
    views = [v for v in ("vflip", "blur") if all(v in r.get("view_logits", {}) for r in recs)]
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
    return pd.DataFrame(rows).set_index("view").round(2)


def best_step(records: Sequence[dict], candidates: Sequence[str] = STUDY_STEPS) -> str:
    tab = step_table(records)
    tab = tab.loc[[s for s in candidates if s in tab.index]]
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
    return pd.DataFrame(rows).set_index("step").round(2)


def conclusions(records: Sequence[dict]) -> list[str]:
    """Sentences generated from the numbers: what the kit confirms of the study, and what it does not."""
    tab = step_table(records)
    tests = paired_tests(records, STUDY_COMPARISONS + CONTROL_COMPARISONS)
    out = []
    seeds = int(tab["seeds"].max())
    profile = {r["profile"] for r in records}
    out.append(f"Runs: {len(records)} records, {seeds} seed(s) per step, profile {', '.join(sorted(profile))}, "
               f"backbone {', '.join(sorted({r['backbone'] for r in records}))}.")
    if "01_baseline" in tab.index:
        b = tab.loc["01_baseline"]
        ref, tgt = reference_class(records[0]), target_class(records[0])
        elpv = on_elpv(records[0])
        study = lambda text: f" (study {text})" if elpv else ""  # noqa: E731
        out.append(f"Baseline: accuracy {100 * b['accuracy']:.1f}%{study('86.06%')}, {tgt} recall "
                   f"{100 * b['recall_target']:.1f}%{study('62.9%')}, {ref} recall "
                   f"{100 * b['recall_reference']:.1f}%{study('97.3%')}.")
    claims = {("03_full_augment", "01_baseline"): "the study saw no gain from augmenting every class",
              ("04_balanced_augment", "01_baseline"): "the study reported +8.4 points of defect recall from "
                                                      "augmenting only the defective class",
              ("04_balanced_augment", "04_balanced_duplicate"): "new images or just the new class ratio? plain "
                                                                "copies give the same ratio",
              ("04_balanced_augment", "04_class_weighted"): "a class-weighted loss changes the ratio with no new "
                                                            "images"}
    for _, row in tests.iterrows():
        note = claims.get((row["A"], row["B"]))
        if note:
            out.append(f"{row['A']} vs {row['B']} ({note}): {row['verdict']}.")
    if "04_balanced_augment" in tab.index and "01_baseline" in tab.index and on_elpv(records[0]):
        t = tests[(tests["A"] == "04_balanced_augment") & (tests["B"] == "01_baseline")]
        if len(t):
            confirmed = "higher" in t.iloc[0]["verdict"].split(";")[1]
            out.append("Study claim 'balanced augmentation raises defect recall': "
                       + ("confirmed by the kit." if confirmed else "not confirmed by the kit on these runs."))
    return out


def write_summary(results_dir: str | os.PathLike, records: Sequence[dict], extra: dict[str, pd.DataFrame] | None = None
                  ) -> Path:
    """``<results_dir>/summary.md`` (tables + conclusions) and ``summary.json``, written atomically."""
    results_dir = Path(results_dir)
    sections = {"Kit vs study": study_comparison(records),
                "Every arm: mean [95% interval over seeds], percent": arm_table(records),
                "Paired tests (study's comparisons and controls)":
                    paired_tests(records, STUDY_COMPARISONS + CONTROL_COMPARISONS),
                "Defect recall at fixed normal recall (threshold chosen on the validation set: optimistic)": operating_points(records)}
    sections.update(extra or {})
    lines = ["# fsfsl run summary", "", f"Results folder: `{results_dir}`", ""]
    for title, frame in sections.items():
        lines += [f"## {title}", "", _markdown(frame), ""]
    lines += ["## Conclusions", ""] + [f"- {c}" for c in conclusions(records)] + [""]
    text = "\n".join(lines)
    path = atomic_write(results_dir / "summary.md", lambda tmp: tmp.write_text(text))
    tables = {k: _records(v) for k, v in sections.items()}
    atomic_write_json(results_dir / "summary.json", tables | {"conclusions": conclusions(records)})
    return path


def _records(frame: pd.DataFrame) -> list[dict]:
    frame = frame.reset_index() if frame.index.name else frame
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _markdown(frame: pd.DataFrame) -> str:
    frame = frame.reset_index() if frame.index.name else frame
    cols = [str(c) for c in frame.columns]
    fmt = lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else (  # noqa: E731
        f"{v:.4g}" if isinstance(v, float) else str(v))
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in frame.itertuples(index=False)]
    return "\n".join(rows)


def _pct(v: float | None) -> float:
    return float("nan") if v is None else 100 * v


def _ci_text(values: Sequence[float]) -> str:
    mean, lo, hi = mean_interval(values)
    return "n/a (1 seed)" if lo is None else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _p_summary(ps: Sequence[float]) -> str:
    ps = np.asarray(ps)
    if len(ps) == 1:
        return f"{ps[0]:.3g}"
    return f"median {np.median(ps):.3g}; {int((ps < ALPHA).sum())}/{len(ps)} below {ALPHA}"
