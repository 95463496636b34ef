"""One self-contained HTML page per run: verdicts first, then the evidence (Jinja2, autoescaped).

``write(results_dir, records)`` writes ``<results_dir>/report.html``: the conclusions with the rule
that decided them, the kit beside the study, every arm with its intervals, the paired effects,
any extra tables (e.g. test-time augmentation) and every figure of the run, inline (base64 PNG),
so the file opens offline and can be mailed. Every name and number placed in the page is escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

from . import report
from .io import atomic_write

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fsfsl run {{ run_name }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
.meta { color: #555; } .warning { background: #fff3cd; border: 1px solid #e0c060; padding: .6em; }
.verdicts li { margin: .35em 0; } .verdicts li:first-child { font-weight: 600; }
.rule { color: #444; font-size: .92em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.table-wrap { overflow-x: auto; max-width: 100%; }
td { overflow-wrap: break-word; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: .9em; }
</style></head><body>
<h1>fsfsl run {{ run_name }}</h1>
<p class="meta">{{ meta }}</p>
{% if warning %}<p class="warning">{{ warning }}</p>{% endif %}
<h2 id="verdicts">Verdicts</h2>
<ul class="verdicts">{% for line in conclusions %}<li>{{ line }}</li>{% endfor %}</ul>
<p class="rule">Rule: {{ rule }}</p>
{% for section in sections %}
<h2>{{ section.title }}</h2>
{% if section.note %}<p class="rule">{{ section.note }}</p>{% endif %}
<div class="table-wrap">{{ section.table }}</div>
{% endfor %}
{% if figures %}<h2>Figures</h2>
{% for fig in figures %}<figure><img alt="{{ fig.name }}" src="data:image/png;base64,{{ fig.data }}">
<figcaption>{{ fig.name }}</figcaption></figure>
{% endfor %}{% endif %}
{% if notebooks %}<h2>Notebooks</h2>
<p class="rule">The executed notebooks of this run (open them in JupyterLab to drill into any image):</p>
<ul>{% for nb in notebooks %}<li><a href="{{ nb.href }}">{{ nb.name }}</a></li>{% endfor %}</ul>{% endif %}
<p class="meta">Written {{ written }} by fsfsl from {{ n_records }} run records.</p>
</body></html>
"""


def write(results_dir: str | os.PathLike, records: Sequence[dict],
          extra: dict[str, pd.DataFrame] | None = None, run_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/report.html`` from the run's records and figures, written atomically.
    ``run_dir``: the run folder when the analysis is written elsewhere (:func:`report.analysis_dir`):
    its figures are shown too, those of ``results_dir`` winning."""
    results_dir = Path(results_dir)
    page = render(results_dir, records, extra, run_dir)
    return atomic_write(results_dir / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))


def render(results_dir: Path, records: Sequence[dict], extra: dict[str, pd.DataFrame] | None = None,
           run_dir: str | os.PathLike | None = None) -> str:
    """The page as a string (see :func:`write`)."""
    if not records:
        raise ValueError(f"no run records for a report in {results_dir}")
    first = records[0]
    seeds = max(len(v) for v in report.by_step(records).values())
    meta = (f"profile {first.get('profile', '?')}, backbone {first.get('backbone', '?')}, "
            f"up to {seeds} seed(s) per step, data {first.get('data_origin', first.get('source', '?'))} "
            f"({first.get('labels', '?')} labels)")
    warning = report.smoke_warning(records) or ""
    sections = [
        {"title": "The kit beside the study", "note": "", "table": _table(report.study_comparison(records))},
        {"title": "Every arm over seeds", "note": report.INTERVALS_NOTE, "table": _table(report.arm_table(records))},
        {"title": "Paired effects", "note": "Rule: " + report.verdict_rule(),
         "table": _table(report.paired_tests(records, report.STUDY_COMPARISONS + report.CONTROL_COMPARISONS))},
    ]
    sections += [{"title": title, "note": "", "table": _table(frame)} for title, frame in (extra or {}).items()]
    chosen = report.chosen_operating_points(records)
    if len(chosen):
        sections.append({"title": "Operating point chosen on the training part", "note": report.OPERATING_NOTE,
                         "table": _table(chosen)})
    sections.append({"title": "Defect recall at fixed normal recall", "table": _table(report.operating_points(records)),
                     "note": "Threshold chosen on the validation set itself: optimistic."})
    sections.append({"title": "Seeds needed", "note": report.SEED_PLAN_NOTE,
                     "table": _table(report.seed_plan(records))})
    last = report.last_epoch_effects(records, report.STUDY_COMPARISONS + report.CONTROL_COMPARISONS)
    if len(last):
        sections.append({"title": "Best epoch vs last epoch", "table": _table(last),
                         "note": "From the recorded metrics: these records kept per-image predictions of the best "
                                 "epoch only, chosen on the validation images (optimistic)."})
    pngs = {p.stem: p for folder in ([Path(run_dir)] if run_dir else []) + [results_dir]
            for p in sorted((folder / "figures").glob("*.png"))}
    figures = [{"name": name, "data": base64.b64encode(path.read_bytes()).decode("ascii")}
               for name, path in sorted(pngs.items())]
    run = Path(run_dir or results_dir)
    notebooks = [{"name": p.name, "href": Path(os.path.relpath(p, results_dir)).as_posix()}
                 for p in sorted((run / "notebooks").glob("*.ipynb"))]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        run_name=Path(run_dir or results_dir).name, meta=meta, warning=warning, conclusions=report.conclusions(records),
        rule=report.verdict_rule(), sections=sections, figures=figures, notebooks=notebooks, n_records=len(records),
        written=dt.datetime.now().isoformat(timespec="seconds"))


def _table(frame: pd.DataFrame) -> Markup:
    """A DataFrame as an HTML table, formatted as the notebooks show it (:func:`report.styled`: cells
    escaped, blanks for missing numbers, one decimal for points, text wrapped)."""
    return Markup(report.styled(frame).to_html())
