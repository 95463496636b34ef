"""The report's first screen: three plain sentences (what the study claimed, what this run finds,
what to do) and, when this run's model was frozen or its headline verdict differs from the kit's
committed runs where the network learns, a caveat with those runs' numbers beside it.

"What to do" compares the headline arm with simply moving the baseline's threshold: at the same
reference-class recall, read off the baseline's own validation ROC curve, how many of the target
class would the baseline catch? When that is within the kit's equivalence margin of the balanced
arm's, the augmentation did the job of a threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import metrics
from .. import stats as kit_stats
from ..study import STUDY_RESULTS
from .records import PRIMARY, by_step, on_elpv, record_arrays, reference_class, target_class
from .tables import step_table
from .verdicts import ARM_NAMES, computed, paired_tests, recipe_steps

MODE_WORDS = {"probe": "a frozen backbone with a logistic-regression head",
              "top": "the backbone's top block(s) fine-tuned over cached activations",
              "finetune": "the whole network fine-tuned"}


@dataclass(frozen=True)
class ReferenceRun:
    """A committed run of the kit (``benchmarks/<folder>``): its headline effect on defect recall (the
    primary comparison, points, 95% interval) and verdict. ``tests/test_report_html.py`` recomputes
    each from its records."""

    profile: str
    what: str
    folder: str
    effect: float
    low: float
    high: float
    verdict: str
    learns: bool


REFERENCE_RUNS: tuple[ReferenceRun, ...] = (
    ReferenceRun("cpu", "frozen probe (CPU, 2026-12-04)", "cpu-run-2026-12-04", 8.9, 3.8, 13.9,
                 "matches the study", False),
    ReferenceRun("cpu-finetune", "top block fine-tuned (CPU, 2026-12-04)", "cpu-finetune-run-2026-12-04",
                 2.3, -1.0, 5.6, "cannot tell", True),
    ReferenceRun("paper", "whole network fine-tuned (H200, 2026-11-28, best epoch)", "paper-run-2026-11-28",
                 4.0, -1.3, 9.2, "cannot tell", True),
)


def primary_row(records: Sequence[dict]) -> dict | None:
    """The primary comparison's row of :func:`paired_tests`, None when the run lacks one of its arms."""
    tests = paired_tests(records, [PRIMARY[:2]])
    return None if not len(tests) else tests.iloc[0].to_dict()


def caveat(records: Sequence[dict]) -> tuple[str, list[ReferenceRun]] | None:
    """A warning for the first screen, with the committed runs to show beside it: when this run's
    model was frozen, or (on ELPV) its headline verdict differs from a committed run where the network
    learns. None otherwise (and on other data than ELPV, where the committed runs say nothing)."""
    if not records or not on_elpv(records[0]):
        return None
    learned = [r for r in REFERENCE_RUNS if r.learns]
    frozen = any(r.get("mode") == "probe" for r in records)
    row = primary_row(records)
    tgt = target_class(records[0])
    verdict = row.get(f"{tgt} recall verdict") if row else None
    differs = verdict is not None and any(verdict != r.verdict for r in learned)
    if frozen:
        shown = " and ".join(f"{r.effect:+.1f} [{r.low:+.1f}, {r.high:+.1f}] ({r.verdict})" for r in learned)
        return ("This run's backbone was frozen: only a linear head learned, so augmentation can only re-weight a "
                f"fixed feature space. In the kit's committed runs where the network learns, the headline effect on "
                f"defect recall is {shown} points (below). Do not decide from this run alone: rerun with a profile "
                "that learns (make reproduce PROFILE=cpu-finetune, or paper on a GPU).", list(REFERENCE_RUNS))
    if differs:
        return (f"This run's headline verdict ({verdict}) differs from a committed run of the kit where the network "
                "learns (below): one run of a few seeds is not the last word.", list(REFERENCE_RUNS))
    return None


def threshold_instead(records: Sequence[dict], a: str = PRIMARY[0], b: str = PRIMARY[1]) -> dict | None:
    """Arm ``a`` against arm ``b`` with ``b``'s threshold moved to ``a``'s reference-class recall, per
    seed of one split (read off ``b``'s validation ROC curve: optimistic). Returns the means over seeds:
    ``a_target`` and ``a_reference`` (recalls of ``a`` at its own threshold), ``b_target`` (``b``'s at
    its own), ``b_target_moved`` (``b``'s at ``a``'s reference recall), ``threshold`` (``b``'s moved
    threshold on the target probability), ``gap`` (``a_target`` - ``b_target_moved``) and ``seeds``;
    None without both arms."""
    steps = by_step(records)
    if a not in steps or b not in steps:
        return None
    pairs = {(r["split_seed"], r["seed"]): r for r in steps[b]}
    rows = []
    for ra in steps[a]:
        rb = pairs.get((ra["split_seed"], ra["seed"]))
        if rb is None:
            continue
        names = ra["class_names"]
        i_ref, i_tgt = names.index(reference_class(ra)), names.index(target_class(ra))
        la, xa = record_arrays(ra)
        lb, xb = record_arrays(rb)
        pa = xa.argmax(1)
        a_ref = float(np.mean(pa[la == i_ref] == i_ref))
        a_tgt = float(np.mean(pa[la == i_tgt] == i_tgt))
        b_tgt = float(np.mean(xb.argmax(1)[lb == i_tgt] == i_tgt))
        moved = metrics.recall_at_fixed_recall(lb, xb, a_ref, i_ref, i_tgt)
        rows.append((a_tgt, a_ref, b_tgt, moved["target_recall"], 1 / (1 + np.exp(-moved["threshold"]))))
    if not rows:
        return None
    m = np.mean(np.asarray(rows, float), axis=0)
    return {"a_target": m[0], "a_reference": m[1], "b_target": m[2], "b_target_moved": m[3], "threshold": m[4],
            "gap": m[0] - m[3], "seeds": len(rows)}


def bottom_line(records: Sequence[dict]) -> list[tuple[str, str]]:
    """Three sentences a manager can read, each with the anchor of its evidence in report.html: what
    the study claimed (or, on other data, the question), what this run finds, what to do."""
    if not records:
        return []
    tgt, ref = target_class(records[0]), reference_class(records[0])
    a_words, b_words = ARM_NAMES.get(PRIMARY[0], PRIMARY[0]), ARM_NAMES.get(PRIMARY[1], PRIMARY[1])
    if on_elpv(records[0]):
        base, bal = STUDY_RESULTS[PRIMARY[1]], STUDY_RESULTS[PRIMARY[0]]
        claim = (f"The study claimed that augmenting only the defective class lifts defect recall from "
                 f"{100 * base['recall_defective']:.1f}% to {100 * bal['recall_defective']:.1f}% and accuracy from "
                 f"{100 * base['accuracy']:.1f}% to {100 * bal['accuracy']:.1f}% (one run).")
    else:
        claim = (f"The question: does augmenting only the {tgt} class catch more of it than the baseline, "
                 f"without losing accuracy?")
    out = [(claim, "study")]
    row = primary_row(records)
    if row is None or not computed(row, f"{tgt} recall"):
        out.append(("This run cannot answer it: it lacks the baseline or the balanced arm (see what was not "
                    "analysed, below the verdicts).", "verdicts"))
        return out
    modes = sorted({MODE_WORDS.get(r.get("mode"), str(r.get("mode"))) for r in records})
    acc = (f"accuracy {row['accuracy effect (pts)']:+.1f} points {row['accuracy 95% interval']}"
           if computed(row, "accuracy") else "accuracy not computed")
    out.append((f"This run ({' and '.join(modes)}, {int(row['runs'])} paired run(s)) finds {a_words} vs {b_words}: "
                f"{tgt} recall {row[f'{tgt} recall effect (pts)']:+.1f} points {row[f'{tgt} recall 95% interval']} "
                f"({row[f'{tgt} recall verdict']}), {acc}.", "verdicts"))
    moved = threshold_instead(records)
    if moved is not None:
        margin = 100 * kit_stats.EQUIVALENCE_MARGIN
        where = (f"at the {ref} recall of {a_words} ({100 * moved['a_reference']:.1f}%), the baseline's own scores "
                 f"catch {100 * moved['b_target_moved']:.1f}% of the {tgt} images against its "
                 f"{100 * moved['a_target']:.1f}% (threshold {moved['threshold']:.2f} on the {tgt} probability; read "
                 f"on the validation images, mean of {moved['seeds']} seed(s): check it on new images)")
        if moved["gap"] < margin:
            verb = "lower" if moved["threshold"] < 0.5 else "raise"
            out.append((f"What to do: {verb} the baseline's threshold instead of augmenting: {where}.", "operating"))
        else:
            out.append((f"What to do: keep the augmentation, which buys {100 * moved['gap']:.1f} points of {tgt} "
                        f"recall even at equal {ref} recall: {where}; then set its threshold on the training part "
                        f"(operating points, below).", "operating"))
    return out


INDUSTRIAL_BAR = 0.95  # the accuracy the study's user needed (the study reached it later, unpublished)


def recipe_line(records: Sequence[dict]) -> tuple[str, str] | None:
    """A sentence on notebook 06 when it ran: its best arm's accuracy and target recall (mean over seeds)
    against the industrial bar, with the anchor of its section; None without 06's records."""
    ladder, final, _ = recipe_steps(records)
    steps = ladder + ([final] if final else [])
    if not steps:
        return None
    table = step_table([r for r in records if r["step"] in steps])
    best = str(table["accuracy"].idxmax())
    row = table.loc[best]
    tgt = target_class(next(r for r in records if r["step"] == best))
    gap = 100 * (INDUSTRIAL_BAR - row["accuracy"])
    where = f"{gap:.1f} points short of" if gap > 0 else "at or above"
    return (f"The stronger recipe (notebook 06): its best arm, {best}, reaches {100 * row['accuracy']:.1f}% accuracy "
            f"and {100 * row['recall_target']:.1f}% {tgt} recall (mean of {int(row['seeds'])} seed(s); picked on these "
            f"images, so optimistic), {where} the {100 * INDUSTRIAL_BAR:.0f}% the study's user needed.", "recipe")
