"""One self-contained HTML page per run: verdicts first, then the evidence (Jinja2, autoescaped).

``write(results_dir, records)`` writes ``<results_dir>/report.html``: the conclusions with the rule
that decided them, the kit beside the study, every arm with its intervals, the paired effects,
any extra tables (e.g. test-time augmentation) and every figure of the run, inline (base64 PNG),
so the file opens offline and can be mailed. Every name and number placed in the page is escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

from . import report
from .io import atomic_write

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 1.5em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
.meta { color: #555; } .warning { background: #fff3cd; border: 1px solid #e0c060; padding: .6em; }
.bottom-line { font-size: 1.05em; background: #f3f7fb; border-left: 4px solid #4C72B0; padding: .4em 1em; }
.bottom-line li { margin: .4em 0; } .bottom-line a { font-size: .85em; }
.caveat { background: #fdecea; border: 1px solid #d9534f; padding: .6em 1em; }
.caveat table { font-size: .85em; }
.toc { columns: 3; font-size: .9em; } .toc li { margin: .1em 0; }
.rule { color: #444; font-size: .9em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .45em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.table-wrap { max-width: 100%; overflow-x: auto; } td { overflow-wrap: break-word; }
table.verdicts td { text-align: left; }
.badge { display: inline-block; border-radius: .8em; padding: .05em .6em; font-size: .85em; color: #fff; }
.badge.larger { background: #1f6fb2; } .badge.smaller { background: #c0392b; } .badge.matches { background: #2e8b57; }
.badge.shown { background: #7b4fa0; } .badge.unclear { background: #7f8c8d; }
.primary { font-weight: 600; }
figure { margin: 1em 0; break-inside: avoid; page-break-inside: avoid; } figure img { max-width: 100%; }
figcaption { color: #444; font-size: .9em; }
footer { margin-top: 2em; border-top: 1px solid #ccc; color: #555; font-size: .85em; }
@media print {
  body { max-width: none; margin: 0; font-size: 9pt; }
  .table-wrap { overflow: visible; } table { font-size: 7pt; width: 100%; table-layout: auto; }
  th, td { padding: .1em .25em; } h2 { break-after: avoid; page-break-after: avoid; }
  tr { break-inside: avoid; page-break-inside: avoid; } .toc { columns: 2; }
}
"""

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fsfsl run {{ run_name }}</title>
<style>{{ css }}</style></head><body>
<h1>fsfsl run {{ run_name }}</h1>
<p class="meta">{{ meta }}</p>
{% if warning %}<p class="warning">{{ warning }}</p>{% endif %}
{% if bottom_line %}<h2 id="bottom-line">Bottom line</h2>
<ol class="bottom-line">{% for text, anchor in bottom_line %}
<li>{{ text }} <a href="#{{ anchor }}">evidence</a></li>{% endfor %}</ol>{% endif %}
{% if caveat %}<div class="caveat" id="caveat"><p><strong>Caution.</strong> {{ caveat.text }}</p>
<table><tr><th>committed run of the kit</th><th>balanced augmentation vs baseline, defect recall (pts)</th>
<th>verdict</th></tr>
{% for ref in caveat.runs %}<tr><td>{{ ref.what }} (profile {{ ref.profile }}, benchmarks/{{ ref.folder }})</td>
<td>{{ "%+.1f"|format(ref.effect) }} [{{ "%+.1f"|format(ref.low) }}, {{ "%+.1f"|format(ref.high) }}]</td>
<td>{{ ref.verdict }}</td></tr>{% endfor %}
</table></div>{% endif %}
<nav><h2 id="contents">Contents</h2><ul class="toc">
{% if verdict_rows or conclusions %}<li><a href="#verdicts">Verdicts</a></li>{% endif %}{% for section in sections %}
<li><a href="#{{ section.id }}">{{ section.title }}</a></li>{% endfor %}
{% if notebooks %}<li><a href="#notebooks">Notebooks</a></li>{% endif %}
<li><a href="#provenance">Provenance</a></li></ul></nav>
{% if verdict_rows or conclusions %}<h2 id="verdicts">Verdicts</h2>
{% if verdict_rows %}<div class="table-wrap"><table class="verdicts"><tr><th>question</th>
{% for score in verdict_rows[0].scores %}<th>{{ score.name }} (pts, 95% interval)</th><th>verdict</th>{% endfor %}
</tr>
{% for row in verdict_rows %}<tr{% if row.primary %} class="primary"{% endif %}>
<td>{{ row.question }}{% if row.primary %} (primary){% endif %}</td>
{% for score in row.scores %}<td>{{ score.effect }}</td>
<td><span class="badge {{ score.badge }}">{{ score.verdict }}</span></td>{% endfor %}</tr>{% endfor %}
</table></div>{% endif %}
<ul>{% for line in conclusions %}<li>{{ line }}</li>{% endfor %}</ul>
<p class="rule">Rule: {{ rule }}</p>{% endif %}
{% for section in sections %}
<h2 id="{{ section.id }}">{{ section.title }}</h2>
{% if section.note %}<p class="rule">{{ section.note }}</p>{% endif %}
{% for table in section.tables %}<div class="table-wrap">{{ table }}</div>{% endfor %}
{% for fig in section.figures %}<figure><img alt="{{ fig.caption }}" src="data:image/png;base64,{{ fig.data }}">
<figcaption>{{ fig.caption }}</figcaption></figure>{% endfor %}
{% endfor %}
{% if notebooks %}<h2 id="notebooks">Notebooks</h2>
<p class="rule">The executed notebooks of this run, rendered (read-only); to drill into any image live, open the run
with <code>make explore RUN=&lt;folder&gt;</code>.</p>
<ul>{% for nb in notebooks %}<li><a href="{{ nb.href }}">{{ nb.name }}</a></li>{% endfor %}</ul>{% endif %}
<footer id="provenance"><p><strong>Provenance.</strong> {% for line in provenance %}{{ line }}<br>{% endfor %}
Written {{ written }} by fsfsl from {{ n_records }} run records.</p></footer>
</body></html>
"""

# Figures in the report's reading order: (name or name prefix, section id, caption). Charts of 01-03 that 05
# draws again for every arm (scores, confusion matrices) are left out when 05's are there.
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("05_scores", "study", "Accuracy and each class's recall per arm from 0: the mean over seeds, its 95% interval "
                           "over seeds (thick) and from the validation images (thin)."),
    ("05_confusion", "arms", "Confusion matrix of each arm's first seed: rows the true class, columns the predicted."),
    ("05_paired_differences", "paired-recall", "Each comparison's paired difference in the target class's recall: "
                                               "one dot per seed, the mean, its 95% interval (seeds and images) "
                                               "and the study's published effect (red cross)."),
    ("05_roc", "operating", "Validation ROC curve of each arm (first seed), the study's normal recalls marked: arms "
                            "that sit on one curve differ only in their threshold."),
    ("05_heat_maps", "looks", "Where the kept model looks (Grad-CAM): its most confident target-class cells and its "
                              "most confident mistakes, each beside its heat map."),
    ("05_flipped", "looks", "The validation images the primary comparison's two arms disagree on (same seed): "
                            "right in one arm, wrong in the other."),
    ("01_sensitivity", "sensitivity", "The baseline's recall per class in bins of brightness and clarity "
                                      "(the study's augmentations)."),
    ("04_sensitivity", "sensitivity", "The balanced arm's recall per class in the same bins."),
    ("04_", "sensitivity", "Recall per bin before (baseline) and after (balanced augmentation)."),
    ("01_samples", "data", "Training images of each class."),
    ("03_augmentations", "data", "What the study's augmentations (flip, brightness, clarity) do to a cell."),
    ("01_features", "data", "Brightness, clarity and contrast of the validation images per class."),
    ("01_wrong", "data", "The baseline's most confident mistakes on the validation images (name, true class, "
                         "prediction and its probability)."),
    ("01_sweep", "data", "The baseline's scores as one image property is pushed further (a sweep)."),
    ("06_learning_curves", "recipe", "Accuracy and target recall of the base and the final recipe against the "
                                     "number of labelled training images, with 95% intervals."),
    ("06_confident_errors", "recipe", "The final recipe's most confident errors: where a label may be wrong."),
)
DUPLICATES = {"01_scores": "05_scores", "02_scores": "05_scores", "03_scores": "05_scores",
              "01_confusion": "05_confusion"}
SECTION_TITLES = {"study": "The kit beside the study", "arms": "Every arm over seeds",
                  "paired-accuracy": "Paired effects: accuracy", "paired-recall": "Paired effects: target recall",
                  "operating": "Operating points", "seeds": "Seeds needed", "epochs": "Best epoch vs last epoch",
                  "looks": "Where the model looks, and where arms disagree", "sensitivity": "Sensitivity to brightness "
                  "and clarity", "data": "The data and the baseline's mistakes", "recipe": "The stronger recipe (06)",
                  "other": "Other figures"}


def write(results_dir: str | os.PathLike, records: Sequence[dict],
          extra: dict[str, pd.DataFrame] | None = None, run_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/report.html`` from the run's records and figures, written atomically, and a
    rendered (HTML) copy of each executed notebook of the run beside it (``notebooks-html/``).
    ``run_dir``: the run folder when the analysis is written elsewhere (:func:`report.analysis_dir`):
    its figures are shown too, those of ``results_dir`` winning."""
    results_dir = Path(results_dir)
    render_notebooks(Path(run_dir or results_dir), results_dir)
    page = render(results_dir, records, extra, run_dir)
    return atomic_write(results_dir / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))


def render_notebooks(run: Path, out: Path) -> list[Path]:
    """A read-only HTML copy of each executed notebook in ``run/notebooks`` (nbconvert's ``basic``
    template: no script, nothing fetched), in ``out/notebooks-html``; those already rendered are kept,
    one that cannot be read is left out with a warning (the report then links the notebook itself)."""
    from nbconvert import HTMLExporter

    written = []
    exporter = HTMLExporter(template_name="basic")
    for source in sorted((run / "notebooks").glob("*.ipynb")):
        target = out / "notebooks-html" / (source.stem + ".html")
        if not target.exists():
            try:
                body, _ = exporter.from_filename(str(source))
            except Exception as err:  # nbformat and nbconvert raise many kinds; the report goes on without it
                warnings.warn(f"could not render {source} as HTML ({type(err).__name__}: {err}); the report links "
                              "the notebook itself", stacklevel=2)
                continue
            page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(source.name)}"
                    f"</title><style>body{{font-family:system-ui,sans-serif;max-width:1180px;margin:1em auto}}"
                    f"img{{max-width:100%}}</style></head><body>{body}</body></html>")
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, lambda tmp, page=page: tmp.write_text(page, encoding="utf-8"))
        written.append(target)
    return written


def notebook_links(run: Path, results_dir: Path) -> list[dict]:
    """Per executed notebook of the run: its rendered copy in ``results_dir/notebooks-html`` when there
    is one, else the notebook itself; hrefs relative to ``results_dir``."""
    out = []
    for source in sorted((run / "notebooks").glob("*.ipynb")):
        rendered = results_dir / "notebooks-html" / (source.stem + ".html")
        target = rendered if rendered.exists() else source
        out.append({"name": target.name, "href": Path(os.path.relpath(target, results_dir)).as_posix()})
    return out


def figure_sections(pngs: dict[str, Path]) -> dict[str, list[dict]]:
    """The run's figures by report section, in reading order, each with its caption (:data:`FIGURES`);
    duplicates of 05's charts left out; a figure the list does not know goes to ``other``."""
    out: dict[str, list[dict]] = {}
    placed = set()
    for prefix, section, caption in FIGURES:
        for name in sorted(n for n in pngs if (n == prefix or n.startswith(prefix)) and n not in placed):
            if prefix == "04_" and not name.endswith("_before_after"):
                continue
            placed.add(name)
            feature = name.removeprefix("04_").removesuffix("_before_after")
            text = caption if prefix != "04_" else f"{feature.capitalize()}: {caption[0].lower()}{caption[1:]}"
            out.setdefault(section, []).append({"caption": text, "data": _png(pngs[name])})
    for name in sorted(set(pngs) - placed):
        if DUPLICATES.get(name) not in pngs:
            out.setdefault("other", []).append({"caption": name.replace("_", " "), "data": _png(pngs[name])})
    return out


def provenance(records: Sequence[dict]) -> list[str]:
    """Footer lines from the records: commits and package versions, when the trainings ran, on what,
    and the data."""
    def values(get) -> str:
        return ", ".join(sorted({str(v) for r in records if (v := get(r)) not in (None, "")})) or "not recorded"

    created = sorted(r.get("created", "") for r in records if r.get("created"))
    labels = (f"{values(lambda r: r.get('labels'))} labels" if all(report.on_elpv(r) for r in records)
              else "labels from its class folders")
    versions = sorted({k for r in records for k in (r.get("versions") or {}) if k != "commit"})
    return [f"Kit commit: {values(lambda r: (r.get('versions') or {}).get('commit'))}.",
            "Packages: " + "; ".join(f"{k} {values(lambda r, k=k: (r.get('versions') or {}).get(k))}"
                                     for k in versions) + ".",
            f"Trainings ran from {created[0][:19] if created else '?'} to {created[-1][:19] if created else '?'} on "
            f"{values(lambda r: (r.get('ran_on') or {}).get('node'))} (device {values(lambda r: r.get('device'))}, "
            f"GPU {values(lambda r: (r.get('ran_on') or {}).get('gpu') or 'none')}).",
            f"Data: {values(lambda r: r.get('data_origin', r.get('source')))} ({labels}, "
            f"{values(lambda r: r.get('split_kind'))} split, split seed(s) "
            f"{values(lambda r: r.get('split_seed'))})."]


def render(results_dir: Path, records: Sequence[dict], extra: dict[str, pd.DataFrame] | None = None,
           run_dir: str | os.PathLike | None = None) -> str:
    """The page as a string (see :func:`write`)."""
    if not records:
        raise ValueError(f"no run records for a report in {results_dir}")
    first = records[0]
    seeds = max(len(v) for v in report.by_step(records).values())
    meta = ((f"profile {first.get('profile', '?')}, backbone {first.get('backbone', '?')}, "
            f"up to {seeds} seed(s) per step, data {first.get('data_origin', first.get('source', '?'))} ")
            + (f"({first.get('labels', '?')} labels)" if report.on_elpv(first) else "(labels from its class folders)"))
    pngs = {p.stem: p for folder in ([Path(run_dir)] if run_dir else []) + [results_dir]
            for p in sorted((folder / "figures").glob("*.png"))}
    figures = figure_sections(pngs)
    study = report.study_records(records)  # notebook 06's records get a section of their own
    tests = report.paired_tests(study, report.STUDY_COMPARISONS + report.CONTROL_COMPARISONS)
    tgt = f"{report.target_class(first)} recall"
    tables: dict[str, tuple[str, list]] = {}
    if study:
        tables |= {
            "study": ("", [report.study_comparison(study)]),
            "arms": (report.INTERVALS_NOTE, [report.arm_table(study)]),
            "paired-accuracy": ("Verdicts by the rule printed under the verdicts; p: against no effect, Holm-adjusted "
                                "but the primary's.", [report.paired_table(tests, "accuracy")] if len(tests) else []),
            "paired-recall": ("", [report.paired_table(tests, tgt)] if len(tests) else []),
        }
    recipe = report.recipe_tables(records)
    for i, frame in enumerate((extra or {}).values()):
        tables[f"extra-{i}"] = ("", [frame])
    if study:
        chosen = report.chosen_operating_points(study)
        tables["operating"] = (report.OPERATING_NOTE + " Below it: the target recall at fixed normal recalls, "
                               "thresholds chosen on the validation set itself (optimistic).",
                               ([chosen] if len(chosen) else []) + [report.operating_points(study)])
        tables["seeds"] = (report.SEED_PLAN_NOTE, [report.seed_plan(study)])
        last = report.last_epoch_effects(study, report.STUDY_COMPARISONS + report.CONTROL_COMPARISONS)
        if len(last):
            tables["epochs"] = ("From the recorded metrics: these records kept per-image predictions of the best "
                                "epoch only, chosen on the validation images (optimistic).", [last])
    if recipe:
        tables["recipe"] = (report.RECIPE_NOTE, list(recipe.values()))
    titles = dict(SECTION_TITLES) | {f"extra-{i}": title for i, title in enumerate(extra or {})} \
        | {"paired-recall": f"Paired effects: {tgt}"}
    order = ["study", "arms", "paired-accuracy", "paired-recall"] + [f"extra-{i}" for i in range(len(extra or {}))] \
        + ["operating", "seeds", "epochs", "looks", "sensitivity", "data", "recipe", "other"]
    sections = []
    for sid in order:
        note, frames = tables.get(sid, ("", []))
        if not frames and not figures.get(sid):
            continue
        sections.append({"id": sid, "title": titles[sid], "note": note, "tables": [_table(f) for f in frames],
                         "figures": figures.get(sid, [])})
    run = Path(run_dir or results_dir)
    notebooks = notebook_links(run, results_dir)
    found = report.caveat(study)
    caveat = {"text": found[0], "runs": found[1]} if found else None
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        css=Markup(CSS), run_name=run.name, meta=meta, warning=report.smoke_warning(records) or "",
        bottom_line=report.bottom_line(study) + ([line] if (line := report.recipe_line(records)) else []),
        caveat=caveat, verdict_rows=report.verdict_rows(tests),
        conclusions=[line for line in report.conclusions(study) if not line.startswith("Primary:")] if study else [],
        rule=report.verdict_rule(), sections=sections, notebooks=notebooks, provenance=provenance(records),
        n_records=len(records), written=dt.datetime.now().isoformat(timespec="seconds"))


def _png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _table(frame: pd.DataFrame) -> Markup:
    """A DataFrame as an HTML table, formatted as the notebooks show it (:func:`report.styled`: cells
    escaped, blanks for missing numbers, one decimal for points, text wrapped)."""
    return Markup(report.styled(frame).to_html())
