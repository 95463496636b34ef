"""Paired effects between arms with verdicts on the study's published effects (:mod:`fsfsl_utils.stats`:
one primary comparison, Holm over the rest), power and a seed plan, the verdicts in words."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import stats as kit_stats
from .records import (
    CONTROL_COMPARISONS,
    JUDGED_NOTE,
    PRIMARY,
    RECIPE_PREFIX,
    STUDY_COMPARISONS,
    by_step,
    image_groups,
    judged_arrays,
    judged_predictions,
    on_elpv,
    reference_class,
    scores,
    study_effect,
    study_images,
    target_class,
)
from .tables import arm_table, learning_curve, seed_ensembles


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
            if not computed(row, label):
                parts.append(f"{name} {row[f'{label} verdict']}")
                continue
            study = row.get(f"{label} study (pts)")
            study_text = "" if study is None or pd.isna(study) else f", the study {study:+.1f}"
            p_study = row.get(f"{label} p vs study")
            p_text = "" if p_study is None or pd.isna(p_study) else f", p vs study {format_p(p_study)}"
            parts.append(f"{name} {row[f'{label} effect (pts)']:+.1f} {row[f'{label} 95% interval']}{study_text}: "
                         f"{row[f'{label} verdict']}{p_text}")
        text = f"{ARM_NAMES.get(row['A'], row['A'])} vs {ARM_NAMES.get(row['B'], row['B'])}: {'; '.join(parts)}."
        lines.append(f"**Primary: {text}**" if row["role"] == "primary" else text)
    return lines


def format_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def computed(row: Mapping, label: str) -> bool:
    value = row.get(f"{label} effect (pts)")
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def effect_words(row: Mapping, label: str) -> str:
    """'+1.2 [-0.3, +2.7] (verdict)', or the reason it was not computed."""
    if not computed(row, label):
        return row[f"{label} verdict"]
    return f"{row[f'{label} effect (pts)']:+.1f} {row[f'{label} 95% interval']} ({row[f'{label} verdict']})"


BADGES = (("larger than the study's", "larger"), ("smaller than the study's", "smaller"),
          ("matches the study", "matches"), ("equivalent", "matches"), ("difference shown", "shown"),
          ("no difference shown", "unclear"), ("cannot tell", "unclear"), ("not computed", "unclear"))


def badge(verdict: str) -> str:
    """The colour class of a verdict's badge in report.html: larger, smaller, matches, shown or unclear."""
    return next((name for prefix, name in BADGES if str(verdict).startswith(prefix)), "unclear")


def arm_words(step: str) -> str:
    """An arm's name in words (``balanced augmentation (04)``), its step name when the kit has none."""
    return ARM_NAMES.get(step, step)


def paired_table(tests: pd.DataFrame, label: str) -> pd.DataFrame:
    """One score's half of :func:`paired_tests` (``label``: ``accuracy`` or ``<target> recall``), narrow
    enough to read without scrolling: the comparison in words, runs, effect, interval, the study's
    effect, both p-values, the verdict and what it was judged on."""
    rows = []
    for _, row in tests.iterrows():
        primary = row["role"] == "primary" and label != "accuracy"
        words = f"{arm_words(row['A'])} vs {arm_words(row['B'])}"
        rows.append({"comparison": words + (" (primary)" if primary else ""),
                     "runs": row["runs"], "effect (pts)": row[f"{label} effect (pts)"],
                     "95% interval": row[f"{label} 95% interval"], "study (pts)": row[f"{label} study (pts)"],
                     "p": row[f"{label} p"], "p vs study": row[f"{label} p vs study"],
                     "verdict": row[f"{label} verdict"], "judged on": row["judged on"]})
    return pd.DataFrame(rows)


def verdict_rows(tests: pd.DataFrame) -> list[dict]:
    """One row per question for report.html's verdicts, the primary first: the comparison in words and,
    per score, its effect with interval, the verdict and its badge."""
    tgt = next((c.removesuffix(" verdict") for c in tests.columns
                if c.endswith(" recall verdict")), "target recall") if len(tests) else ""
    out = []
    for _, row in sorted(tests.iterrows(), key=lambda item: item[1]["role"] != "primary"):
        scores = []
        for label in ("accuracy", tgt):
            effect = (f"{row[f'{label} effect (pts)']:+.1f} {row[f'{label} 95% interval']}"
                      if computed(row, label) else "")
            scores.append({"name": label, "effect": effect, "verdict": row[f"{label} verdict"],
                           "badge": badge(row[f"{label} verdict"])})
        out.append({"question": f"{arm_words(row['A'])} vs {arm_words(row['B'])}", "primary": row["role"] == "primary",
                    "scores": scores, "judged_on": row["judged on"]})
    return out


RECIPE_NOTE = ("Notebook 06's ladder: each arm is the one before it plus one ingredient (what it buys), and the final "
               "recipe against the base; paired on the same validation images by the rule under the verdicts. The "
               "ingredients were kept by their effects on these same images, so the final recipe's scores here are "
               "optimistic.")


def recipe_steps(records: Sequence[dict]) -> tuple[list[str], str | None, dict[str, list[str]]]:
    """Notebook 06's steps among ``records``: the ladder in order (``06_0_base``, ``06_1_...``), the final
    step (None when it has not run) and the learning curves' steps by recipe (``base``, ``final``), the
    share of 1 being the ladder's base or the final step."""
    steps = sorted({r["step"] for r in records if r["step"].startswith(RECIPE_PREFIX)})
    ladder = sorted((s for s in steps if s.split("_")[1].isdigit()), key=lambda s: int(s.split("_")[1]))
    final = "06_final" if "06_final" in steps else None
    curves: dict[str, list[str]] = {}
    for name, whole in (("base", ladder[0] if ladder else None), ("final", final)):
        parts = sorted((s for s in steps if s.startswith(f"06_curve_{name}_")), key=lambda s: float(s.split("_")[-1]))
        if parts:
            curves[name] = parts + ([whole] if whole else [])
    return ladder, final, curves


def recipe_tables(records: Sequence[dict]) -> dict[str, pd.DataFrame]:
    """What 05 and report.html show of notebook 06 when it has run: its arms, what each ingredient buys
    (accuracy and target recall, each arm against the one before and the final recipe against the
    base), the final recipe's seed ensemble alone and over its training views and the eight symmetries, and
    the learning curves. Empty when 06 has not run."""
    ladder, final, curves = recipe_steps(records)
    if not ladder and not final:
        return {}
    mine = [r for r in records if r["step"] in set(ladder) | {final}]
    out = {"06: every arm over seeds": arm_table(mine)}
    # two families, as 06 adjusts them: each arm against the one before (what 06 keeps ingredients by),
    # then the final recipe against the base on its own
    families = [list(zip(ladder[1:], ladder)), [(final, ladder[0])] if final and ladder else []]
    tests = pd.concat([paired_tests(records, f) for f in families if f] or [pd.DataFrame()], ignore_index=True)
    if len(tests):
        tgt = target_class(mine[0])
        out["06: what each ingredient buys, accuracy"] = paired_table(tests, "accuracy")
        out[f"06: what each ingredient buys, {tgt} recall"] = paired_table(tests, f"{tgt} recall")
    if final:
        finals = [r for r in records if r["step"] == final]
        ensembles = seed_ensembles(finals, final)
        tgt, ref = target_class(finals[0]), reference_class(finals[0])
        out["06: the final recipe's seeds as one model"] = pd.DataFrame([
            {"model": e["step"], "test-time views": ", ".join(e["views"]) or "none", "accuracy %": 100 * s["accuracy"],
             f"{tgt} recall %": 100 * s["recall_target"], f"{ref} recall %": 100 * s["recall_reference"],
             "AUROC %": 100 * s["auroc"]} for e in ensembles for s in [scores(e)]])
    for name, steps in curves.items():
        out[f"06: learning curve of the {name} recipe"] = learning_curve(records, steps)
    return out
