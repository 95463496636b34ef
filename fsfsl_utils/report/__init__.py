"""Report: everything 05 computes from run records (never retrains).

Tables per step beside the study's published numbers (mean over seeds, with the spread over seeds
and the validation-sampling interval side by side), paired effects between arms with verdicts on
the study's published effects (:mod:`fsfsl_utils.stats`: one primary comparison, Holm over the
rest), test-time augmentation on the study's balanced model, operating-point readings, a
plain-language conclusion generated from the numbers, and ``summary.md``.

Modules, each importing only those before it: ``records`` (reading records, what is compared),
``tables``, ``verdicts``, ``prose`` (conclusions in words), ``bottom_line`` (report.html's first screen:
three sentences and the caveat), ``files`` (summary.md and summary.json).
"""

from .bottom_line import (
    INDUSTRIAL_BAR,
    REFERENCE_RUNS,
    ReferenceRun,
    bottom_line,
    caveat,
    recipe_line,
    threshold_instead,
)
from .files import (
    analysis_dir,
    conclusions_markdown,
    format_cell,
    markdown_table,
    markdown_text,
    styled,
    write_summary,
)
from .prose import SMOKE_WARNING, conclusions, not_analysed, smoke_warning
from .records import (
    ALPHA,
    CONTROL_COMPARISONS,
    JUDGED_NOTE,
    MAX_CLASSES_SHOWN,
    PRIMARY,
    RECIPE_PREFIX,
    STUDY_COMPARISONS,
    TTA_STEP,
    by_step,
    class_roles_of,
    image_groups,
    judged_arrays,
    judged_predictions,
    on_elpv,
    pct,
    record_arrays,
    record_classes_shown,
    reference_class,
    same_split,
    scores,
    sensitivity_before_after,
    shared_views,
    shown_classes,
    study_effect,
    study_images,
    study_records,
    target_class,
    with_sensitivity,
)
from .tables import (
    INTERVALS_NOTE,
    OPERATING_NOTE,
    arm_table,
    best_step,
    chosen_operating_points,
    compare_runs,
    ensemble_record,
    kept_model_record,
    labels_needed_sentence,
    learning_curve,
    mean_interval,
    operating_points,
    records_table,
    seed_ensembles,
    step_table,
    study_comparison,
    tta_all,
    tta_step,
    tta_table,
)
from .verdicts import (
    ARM_NAMES,
    RECIPE_NOTE,
    SEED_PLAN_NOTE,
    arm_words,
    badge,
    computed,
    effect_words,
    format_p,
    last_epoch_effects,
    paired_effects,
    paired_table,
    paired_tests,
    recipe_steps,
    recipe_tables,
    seed_plan,
    verdict_lines,
    verdict_rows,
    verdict_rule,
)

__all__ = (
    "ALPHA", "ARM_NAMES", "REFERENCE_RUNS", "ReferenceRun", "arm_words", "badge", "bottom_line", "caveat",
    "INDUSTRIAL_BAR", "RECIPE_NOTE", "RECIPE_PREFIX", "recipe_line", "recipe_steps", "recipe_tables", "study_records",
    "format_cell",
    "markdown_table", "paired_table", "threshold_instead", "verdict_rows", "CONTROL_COMPARISONS",
    "INTERVALS_NOTE",
    "JUDGED_NOTE", "MAX_CLASSES_SHOWN",
    "OPERATING_NOTE", "PRIMARY", "SEED_PLAN_NOTE", "SMOKE_WARNING", "STUDY_COMPARISONS", "TTA_STEP",
    "analysis_dir", "arm_table", "best_step", "by_step", "chosen_operating_points", "class_roles_of",
    "compare_runs", "ensemble_record", "labels_needed_sentence", "learning_curve", "computed", "conclusions",
    "conclusions_markdown", "effect_words", "format_p", "image_groups", "judged_arrays", "judged_predictions",
    "kept_model_record", "last_epoch_effects", "markdown_text", "mean_interval", "not_analysed", "on_elpv",
    "operating_points", "paired_effects", "paired_tests", "pct", "record_arrays", "record_classes_shown",
    "records_table", "reference_class", "same_split", "scores", "seed_ensembles", "seed_plan",
    "sensitivity_before_after",
    "shared_views", "shown_classes", "smoke_warning", "step_table", "study_comparison", "study_effect",
    "study_images", "styled", "target_class", "tta_all", "tta_step", "tta_table", "verdict_lines",
    "verdict_rule", "with_sensitivity", "write_summary",
)
