"""report.html: one self-contained page per run, verdicts first, everything escaped."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from fsfsl_utils import experiment, plots, report, report_html


def test_report_is_self_contained_verdicts_first_and_escaped(smoke_runs, tmp_path):
    recs = [run.record for run in smoke_runs]
    fig = plots.confusion_matrices(recs)
    plots.save(fig, tmp_path, "<img src=x onerror=alert(1)>")      # a hostile figure name
    plt.close(fig)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_baseline.ipynb").write_text("{}")
    path = report_html.write(tmp_path, recs)
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html"
    verdicts, arms, figures = (page.index(h) for h in (">Verdicts<", ">Every arm over seeds<", ">Figures<"))
    assert verdicts < arms < figures
    assert "Primary: 04_balanced_augment vs 01_baseline" in page and "Rule: " in page
    assert "Smoke profile" in page                                   # smoke numbers carry a warning
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert re.findall(r'src="([^"]{0,22})', page) == ["data:image/png;base64,"]  # images inline, nothing fetched
    assert "http://" not in page and "https://" not in page
    assert '<a href="notebooks/01_baseline.ipynb">01_baseline.ipynb</a>' in page   # the executed notebooks
    again = report_html.render(tmp_path / "analysis-2", recs, run_dir=tmp_path)   # a later analysis links up
    assert '<a href="../notebooks/01_baseline.ipynb">' in again
    assert ">NaN<" not in page and ">nan<" not in page               # unpublished numbers show blank


def test_report_tables_read_whole(smoke_runs, tmp_path):
    """Every section is there; no cell is cut ("...") or NaN; points carry one decimal; p two digits."""
    recs = [run.record for run in smoke_runs]
    page = report_html.render(tmp_path, recs)
    for title in ("Verdicts", "The kit beside the study", "Every arm over seeds", "Paired effects",
                  "Defect recall at fixed normal recall"):
        assert f">{title}<" in page
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert cells and not [c for c in cells if "..." in c or "NaN" in c or c.strip() == "nan"]
    long = [c for c in cells if re.fullmatch(r"-?\d+\.\d{2,}", c.strip())]
    assert all(abs(float(c)) < 1 for c in long)          # only p-values (two digits) carry more than one decimal


def test_styled_tables_round_blank_wrap_and_caption():
    frame = pd.DataFrame({"effect (pts)": [1.2345, np.nan], "accuracy p": [0.012345, 0.5],
                          "verdict": ["<b>rules out the study's effect</b>", ""]})
    page = report.styled(frame, "Rule: the rule").to_html()
    assert ">1.2<" in page and ">0.012<" in page and "nan" not in page.lower()
    assert "white-space: normal" in page and "<caption>Rule: the rule</caption>" in page
    assert "<b>rules" not in page and "&lt;b&gt;rules" in page                     # cells escaped


def test_a_finished_run_is_never_overwritten(tmp_path, capsys):
    """The second analysis of a run folder goes to a new analysis-<time> folder inside it."""
    assert report.analysis_dir(tmp_path) == tmp_path                               # first analysis: the run folder
    (tmp_path / "summary.md").write_text("the first analysis")
    second = report.analysis_dir(tmp_path)
    third = report.analysis_dir(tmp_path)
    assert second.parent == tmp_path and second.name.startswith("analysis-") and second != third
    assert "already holds an analysis" in capsys.readouterr().out
    assert (tmp_path / "summary.md").read_text() == "the first analysis"


def test_a_run_beside_a_reference_run(tmp_path, store):
    mine = [experiment.run_step("01_baseline", tmp_path / "a", store=store, profile="smoke", seed=0,
                                progress=False, analyse_images=False).record]
    ref = [experiment.run_step(step, tmp_path / "b", store=store, profile="smoke", seed=s, progress=False,
                               analyse_images=False).record for step in ("01_baseline", "02_flip") for s in (0, 1)]
    table = report.compare_runs(mine, ref)
    assert list(table.index) == ["01_baseline"] and table.loc["01_baseline", "seeds (reference)"] == 2
    acc = 100 * np.mean([r["metrics"]["accuracy"] for r in ref if r["step"] == "01_baseline"])
    assert table.loc["01_baseline", "accuracy % (reference)"] == pytest.approx(acc, abs=0.05)
    assert table.loc["01_baseline", "accuracy % difference"] == pytest.approx(
        100 * mine[0]["metrics"]["accuracy"] - acc, abs=0.1)
    with pytest.raises(ValueError, match="share no step"):
        report.compare_runs(mine, [r for r in ref if r["step"] == "02_flip"])
