"""The plain-language conclusions generated from the numbers, and what a run could not analyse."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..study import STEPS
from .records import (
    CONTROL_COMPARISONS,
    PRIMARY,
    STUDY_COMPARISONS,
    TTA_STEP,
    by_step,
    on_elpv,
    reference_class,
    same_split,
    target_class,
    with_sensitivity,
)
from .tables import step_table, tta_step, tta_table
from .verdicts import computed, effect_words, last_epoch_effects, paired_tests


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
        if computed(row, rec_col):
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
            out.append(f"{row['A']} vs {row['B']} ({note}): accuracy {effect_words(row, 'accuracy')}; {tgt} recall "
                       f"{effect_words(row, rec_col)}.")
    step = tta_step(records)
    if step in tab.index and any(r.get("view_logits") for r in by_step(records)[step]):
        tta = tta_table(records, step)
        parts = [f"{v} {tta.loc[v, 'accuracy %']:.1f}%" for v in tta.index if v != "none"]
        if parts:
            study = " (study: vflip 87.74%, blur 88.12% vs 89.13% without)" if elpv and step == TTA_STEP else ""
            out.append(f"Test-time augmentation on {step}: {', '.join(parts)} vs {tta.loc['none', 'accuracy %']:.1f}% "
                       f"without{study}.")
    return out + not_analysed(records)


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


SMOKE_WARNING = ("Smoke profile: a few images, tiny inputs, one epoch. These numbers only show that the pipeline "
                 "runs; they mean nothing about the study.")


def smoke_warning(records: Sequence[dict]) -> str | None:
    """:data:`SMOKE_WARNING` when any record comes from the smoke profile, else None."""
    return SMOKE_WARNING if any(r.get("profile") == "smoke" for r in records) else None
