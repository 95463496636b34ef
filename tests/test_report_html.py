"""report.html: one self-contained page per run, verdicts first, everything escaped."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from fsfsl_utils import experiment, plots, report, report_html


def test_report_is_self_contained_verdicts_first_and_escaped(smoke_runs, tmp_path):
    import nbformat

    recs = [run.record for run in smoke_runs]
    fig = plots.confusion_matrices(recs)
    plots.save(fig, tmp_path, "<img src=x onerror=alert(1)>")      # a hostile figure name
    plt.close(fig)
    (tmp_path / "notebooks").mkdir()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)", outputs=[
        nbformat.v4.new_output("stream", text="<img src=x onerror=alert(1)>")])])
    nbformat.write(notebook, tmp_path / "notebooks" / "01_baseline.ipynb")
    (tmp_path / "notebooks" / "02_flip.ipynb").write_text("{}")          # unreadable: linked as it is
    with pytest.warns(UserWarning, match="could not render"):
        path = report_html.write(tmp_path, recs)
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html"
    order = [page.index(h) for h in (">Bottom line<", ">Contents<", ">Verdicts<", ">Every arm over seeds<",
                                     ">Other figures<")]
    assert order == sorted(order)
    assert "balanced augmentation (04) vs baseline (01) (primary)" in page and "Rule: " in page
    assert page.count("(primary)") == 2                                # the verdict row and the recall table
    assert "Smoke profile" in page                                   # smoke numbers carry a warning
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert re.findall(r'src="([^"]{0,22})', page) == ["data:image/png;base64,"]  # images inline, nothing fetched
    assert "http://" not in page and "https://" not in page
    assert '<a href="notebooks-html/01_baseline.html">01_baseline.html</a>' in page   # rendered, read-only
    assert '<a href="notebooks/02_flip.ipynb">02_flip.ipynb</a>' in page
    rendered = (tmp_path / "notebooks-html" / "01_baseline.html").read_text()
    assert "<img src=x" not in rendered and "<script" not in rendered
    again = report_html.render(tmp_path / "analysis-2", recs, run_dir=tmp_path)   # a later analysis links up
    assert '<a href="../notebooks/01_baseline.ipynb">' in again
    assert ">NaN<" not in page and ">nan<" not in page               # unpublished numbers show blank
    assert "Kit commit: " in page and "torch " in page               # provenance in the footer


def test_report_tables_read_whole(smoke_runs, tmp_path):
    """Every section is there; no cell is cut ("...") or NaN; points carry one decimal; p as 1.00 / < 0.001."""
    recs = [run.record for run in smoke_runs]
    page = report_html.render(tmp_path, recs)
    for title in ("Bottom line", "Verdicts", "The kit beside the study", "Every arm over seeds",
                  "Paired effects: accuracy", "Paired effects: defective recall", "Operating points", "Provenance"):
        assert f">{title}<" in page or f">{title}</a>" in page, title
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert cells and not [c for c in cells if "..." in c or "NaN" in c or c.strip() == "nan"]
    long = [c for c in cells if re.fullmatch(r"-?\d+\.\d{2,}", c.strip())]
    assert all(abs(float(c)) <= 1 for c in long)     # only p-values, powers and thresholds carry more decimals
    assert not re.search(r'<th[^>]*class="row_heading[^"]*"[^>]*>\d+</th>', page)   # no 0-6 row numbers


def test_styled_tables_round_blank_wrap_and_caption():
    frame = pd.DataFrame({"effect (pts)": [1.2345, np.nan, 87.0], "accuracy p": [0.012345, 1.0, 0.0002],
                          "verdict": ["<b>rules out the study's effect</b>", "", "x"]})
    page = report.styled(frame, "Rule: the rule").to_html()
    assert ">1.2<" in page and ">87.0<" in page and "nan" not in page.lower()
    assert ">0.01<" in page and ">1.00<" in page and ">&lt; 0.001<" in page
    assert "white-space: normal" in page and "<caption>Rule: the rule</caption>" in page
    assert "<b>rules" not in page and "&lt;b&gt;rules" in page                     # cells escaped
    assert 'class="row_heading' not in page                                        # no 0, 1, 2 index
    summary = report.markdown_table(frame)
    assert "| 87.0 |" in summary and "| 1.00 |" in summary and "87 |" not in summary.replace("87.0", "")


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


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("ref", report.REFERENCE_RUNS, ids=lambda r: r.profile)
def test_the_committed_runs_the_caveat_quotes_are_their_records(ref):
    """The caveat's numbers are recomputed from each committed run's records (no number typed in by hand)."""
    recs = experiment.load_records_for_analysis(BENCHMARKS / ref.folder)
    row = report.paired_tests(recs, [report.PRIMARY[:2]]).iloc[0]
    assert row["defective recall effect (pts)"] == ref.effect
    assert row["defective recall 95% interval"] == f"[{ref.low:+.1f}, {ref.high:+.1f}]"
    assert row["defective recall verdict"] == ref.verdict
    assert ref.learns == (recs[0]["mode"] != "probe") and recs[0]["profile"] == ref.profile


def test_bottom_line_and_caveat_of_the_frozen_run_and_a_learned_one():
    frozen = experiment.load_records_for_analysis(BENCHMARKS / "cpu-run-2026-12-04")
    lines = report.bottom_line(frozen)
    assert [anchor for _, anchor in lines] == ["study", "verdicts", "operating"]
    assert "62.9% to 71.3%" in lines[0][0] and "+8.9 points [+3.8, +13.9] (matches the study)" in lines[1][0]
    moved = report.threshold_instead(frozen)
    # the baseline with its threshold moved to the balanced arm's normal recall catches as many defects
    assert moved["seeds"] == 5 and abs(moved["gap"]) < 0.02 and moved["threshold"] < 0.5
    assert lines[2][0].startswith("What to do: lower the baseline's threshold instead of augmenting")
    assert f"{100 * moved['b_target_moved']:.1f}%" in lines[2][0]
    text, runs = report.caveat(frozen)
    assert "frozen" in text and "+2.3 [-1.0, +5.6] (cannot tell)" in text and runs == list(report.REFERENCE_RUNS)
    learned = experiment.load_records_for_analysis(BENCHMARKS / "cpu-finetune-run-2026-12-04")
    assert report.caveat(learned) is None                     # agrees with the committed runs that learn
    other = [dict(r, data_origin="folder:/x", source="/x") for r in learned]
    assert report.caveat(other) is None and "The question:" in report.bottom_line(other)[0][0]
    footer = " ".join(report_html.provenance(other))
    assert "labels from its class folders" in footer and "study labels" not in footer and "GPU none" in footer


def test_threshold_instead_reads_the_baseline_at_the_balanced_arms_normal_recall():
    """Built by hand: the baseline keeps every normal image and misses both defects; the balanced arm keeps 3 of
    4 normal images and catches one defect; the baseline, its threshold moved to keep 3 of 4 normal images too,
    catches both."""
    def record(step, logits):
        return {"step": step, "seed": 0, "split_seed": 0, "class_names": ["normal", "defective"],
                "target_class": "defective", "reference_class": "normal", "source": "elpv", "data_origin": "elpv",
                "predictions": {"labels": [0, 0, 0, 0, 1, 1], "logits": [[0, x] for x in logits]}}
    recs = [record("01_baseline", [-3, -2, -1, -0.5, -0.2, -0.1]),
            record("04_balanced_augment", [-3, -2, 1, -1, 2, -0.5])]
    moved = report.threshold_instead(recs)
    assert moved["a_reference"] == 0.75 and moved["a_target"] == 0.5 and moved["b_target"] == 0.0
    assert moved["b_target_moved"] == 1.0 and moved["gap"] == -0.5


def test_a_folder_of_notebook_06_alone_reports_its_ladder(smoke_runs, tmp_path):
    """06's records (here smoke records renamed as its base and one rung) get their own section, the
    bottom line says how far the best arm is from the 95% bar, and no empty study section is shown."""
    names = {"01_baseline": "06_0_base", "04_balanced_augment": "06_1_blocks"}
    recs = [dict(run.record, step=names[run.record["step"]]) for run in smoke_runs]
    tables = report.recipe_tables(recs)
    assert list(tables) == ["06: every arm over seeds", "06: what each ingredient buys, accuracy",
                            "06: what each ingredient buys, defective recall"]
    assert tables["06: what each ingredient buys, accuracy"]["comparison"].tolist() == ["06_1_blocks vs 06_0_base"]
    text, anchor = report.recipe_line(recs)
    best = report.step_table(recs)["accuracy"].idxmax()
    assert anchor == "recipe" and f"its best arm, {best}," in text and "short of the 95%" in text
    page = report_html.render(tmp_path, recs)
    assert ">The stronger recipe (06)<" in page and ">Verdicts<" not in page and ">Every arm over seeds<" not in page
    assert "The stronger recipe (notebook 06): its best arm" in page
    assert report.study_records(recs) == [] and report.recipe_line(report.study_records(recs) or recs[:0]) is None
