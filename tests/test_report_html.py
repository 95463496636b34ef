"""report.html: one self-contained page per run, verdicts first, everything escaped."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt

from fsfsl_utils import experiment, plots, report_html


def test_report_is_self_contained_verdicts_first_and_escaped(tmp_path):
    recs = [experiment.run_step(step, profile="smoke", seed=0, results_dir=tmp_path, progress=False,
                                analyse_images=False).record for step in ("01_baseline", "04_balanced_augment")]
    fig = plots.confusion_matrices(recs)
    plots.save(fig, tmp_path, "<img src=x onerror=alert(1)>")      # a hostile figure name
    plt.close(fig)
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
    assert ">NaN<" not in page                                       # unpublished numbers show as a dash
