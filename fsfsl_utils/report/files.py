"""What 05 writes: ``summary.md`` (Markdown escaped for renderers) and ``summary.json``, styled tables."""

from __future__ import annotations

import datetime as dt
import html
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_write, atomic_write_json
from .bottom_line import bottom_line, caveat
from .prose import conclusions, smoke_warning
from .records import CONTROL_COMPARISONS, STUDY_COMPARISONS, study_records
from .tables import (
    INTERVALS_NOTE,
    OPERATING_NOTE,
    arm_table,
    chosen_operating_points,
    operating_points,
    study_comparison,
)
from .verdicts import (
    SEED_PLAN_NOTE,
    format_p,
    last_epoch_effects,
    paired_tests,
    recipe_tables,
    seed_plan,
    verdict_rule,
)


def analysis_dir(results_dir: str | os.PathLike, output_dir: str | os.PathLike = "") -> Path:
    """Where an analysis of ``results_dir`` writes its summary, report and figures: ``output_dir`` when
    given (a read-only look at a finished run, :mod:`fsfsl_utils.explore_run`), else the folder itself
    the first time; once the chosen folder holds an analysis (``summary.md``), a new
    ``analysis-<time>`` folder inside it, so that a finished run's analysis is never overwritten."""
    results_dir = Path(output_dir or results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
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


def is_p_column(column: object) -> bool:
    """A p-value column: ``p``, ``... p`` or ``... p vs study``."""
    name = str(column)
    return name in ("p", "p vs study") or name.endswith((" p", " p vs study"))


def format_cell(column: object, value: object) -> str:
    """One table cell as every table of the kit prints it: blank where there is no number, p-values as
    ``0.04`` / ``1.00`` / ``< 0.001``, thresholds and powers with three / two decimals, other numbers
    (points and percents) with one decimal, whole counts as integers."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if abs(int(value)) >= 10_000 else str(int(value))
    if isinstance(value, (float, np.floating)):
        name = str(column)
        if is_p_column(column):
            return format_p(float(value))
        if "threshold" in name:
            return f"{value:.3f}"
        if "power" in name:
            return f"{value:.2f}"
        return f"{value:.1f}"
    return str(value)


def styled(frame: pd.DataFrame, note: str | None = None) -> pd.io.formats.style.Styler:
    """A table as a notebook and report.html show it: cells by :func:`format_cell` (one decimal for
    points and percents, p-values as ``1.00`` or ``< 0.001``), escaped, no row numbers when the rows
    have no names, text (verdicts) wrapped, never cut, and ``note`` (the decision rule, what the
    intervals are) as the caption beside it."""
    if frame.index.name:  # a named index (``step``) is a column like any other: one header row
        frame = frame.reset_index()
    sty = frame.style
    for column in frame.columns:
        sty = sty.format(lambda v, c=column: html.escape(format_cell(c, v)), subset=[column])
    sty = sty.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    if isinstance(frame.index, pd.RangeIndex):
        sty = sty.hide(axis="index")
    sty = sty.set_properties(**{"white-space": "normal", "max-width": "26em", "text-align": "right"})
    text = [c for c in frame.columns if frame[c].dtype == object or isinstance(frame[c].dtype, pd.StringDtype)]
    if text:
        sty = sty.set_properties(subset=text, **{"text-align": "left"})
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
    """The bottom line (:func:`bottom_line`, numbered) and :func:`conclusions` as a Markdown list, the
    smoke warning and the caveat (if any) above them: 05's first output. Every line is escaped
    (:func:`markdown_text`): names from the data show as text."""
    return "\n".join(_head_lines(records) + ["- " + markdown_text(line) for line in conclusions(records)])


def _head_lines(records: Sequence[dict]) -> list[str]:
    """The warning, the caveat and the numbered bottom line, in Markdown."""
    warning, found = smoke_warning(records), caveat(records)
    lines = [f"**{markdown_text(text)}**" for text in (warning, found[0] if found else None) if text]
    lines += [f"{i}. {markdown_text(text)}" for i, (text, _) in enumerate(bottom_line(records), 1)]
    return lines + [""] if lines else []


def write_summary(results_dir: str | os.PathLike, records: Sequence[dict], extra: dict[str, pd.DataFrame] | None = None
                  ) -> Path:
    """``<results_dir>/summary.md`` (tables + conclusions) and ``summary.json``, written atomically: the
    study's sections from the records of 01-04, notebook 06's tables (:func:`recipe_tables`) when it ran."""
    results_dir = Path(results_dir)
    everything, records = records, study_records(records)
    sections = {}
    if records:
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
    sections.update(recipe_tables(everything))
    sections.update(extra or {})
    notes = {"Every arm: mean over seeds, percent (intervals: seeds; images)": INTERVALS_NOTE,
             "Paired effects (study's comparisons and controls)": "Rule: " + verdict_rule(),
             "Seeds needed (power from this run's variance components)": SEED_PLAN_NOTE,
             "Operating point chosen on the training part": OPERATING_NOTE}
    lines = ["# fsfsl run summary", "", f"Results folder: {markdown_text(results_dir)}", ""] + \
        ["## Bottom line", ""] + _head_lines(records) + ["## Conclusions", ""]
    found = conclusions(records) if records else []
    lines += [f"- {markdown_text(c)}" for c in found] + [""]
    for title, frame in sections.items():
        lines += [f"## {markdown_text(title)}", ""] + ([markdown_text(notes[title]), ""] if title in notes else []) \
            + [markdown_table(frame), ""]
    text = "\n".join(lines)
    path = atomic_write(results_dir / "summary.md", lambda tmp: tmp.write_text(text))
    tables = {k: _records(v) for k, v in sections.items()}
    atomic_write_json(results_dir / "summary.json", tables | {"conclusions": found,
                                                          "decision_rule": verdict_rule(), "intervals": INTERVALS_NOTE})
    return path


def _records(frame: pd.DataFrame) -> list[dict]:
    frame = frame.reset_index() if frame.index.name else frame
    return [{k: (None if v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def markdown_table(frame: pd.DataFrame) -> str:
    """A table as Markdown for summary.md: cells by :func:`format_cell`, escaped (:func:`markdown_text`)."""
    frame = frame.reset_index() if frame.index.name else frame
    cols = [markdown_text(c) for c in frame.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(markdown_text(format_cell(c, v)) for c, v in zip(frame.columns, r)) + " |"
             for r in frame.itertuples(index=False)]
    return "\n".join(rows)

