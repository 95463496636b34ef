"""The findings page's tables (docs/findings.md, the README's details) are what the kit computes from the records.

Issue 16 committed the 30 records of the paper-profile rerun (per-image logits) so that anyone can
recompute the table; this test does, through the functions notebook 05 uses (``report.arm_table``,
``report.verdict_lines``, ``report.last_epoch_effects``), and compares every number and verdict the
findings page prints for that run (and the README its summary). A changed record, a hand-edited cell or a change in
how 05 computes a number fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fsfsl_utils import report, results

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "paper-run-2026-11-28"
SECTION = "## Fine-tuned, the study's recipe"
FINDINGS = ROOT / "docs" / "findings.md"  # the README's findings page
ROWS = {"01 baseline": "01_baseline", "02 flip": "02_flip", "03 full augment": "03_full_augment",
        "04 balanced augment": "04_balanced_augment", "04 control: plain copies": "04_balanced_duplicate",
        "04 control: class-weighted loss": "04_class_weighted"}


def readme_section(title: str) -> str:
    """A section of the findings page (docs/findings.md), from its title to the next title."""
    text = FINDINGS.read_text()
    start = text.index(title)
    ends = [e for e in (text.find("\n### ", start + len(title)), text.find("\n## ", start + len(title))) if e > 0]
    return text[start:min(ends) if ends else len(text)]


def table_rows(section: str) -> dict[str, list[str]]:
    """First cell -> the other cells, for the rows of the section's first table."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        separator = all(c and set(c) <= set("-:") for c in cells)
        if line.startswith("| ") and len(cells) > 1 and not separator:
            rows[cells[0]] = cells[1:]
    return rows


def interval_text(effect: float, interval: str) -> str:
    return f"{effect:+.1f} {interval}"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    recs = results.load_records(RUN)
    assert len(recs) == 30  # six arms x five seeds
    return recs


def test_the_arms_table_is_recomputed_from_the_committed_records(records):
    rows = table_rows(readme_section(SECTION))
    arms = report.arm_table(records)
    for label, step in ROWS.items():
        train, accuracy, normal, defective = rows[label][:4]
        assert train == arms.loc[step, "train"], label
        assert accuracy == arms.loc[step, "accuracy %"], label
        assert normal == arms.loc[step, "normal recall %"].split(" (")[0], label
        assert defective == arms.loc[step, "defective recall %"], label
    tta = report.tta_table(records, "04_balanced_augment")
    accuracy, normal, defective = rows["04 + TTA vertical flip / blur"][1:4]
    for cell, column in ((accuracy, "accuracy %"), (normal, "normal recall %"), (defective, "defective recall %")):
        assert cell == " / ".join(f"{tta.loc[view, column]:.1f}" for view in ("vflip", "blur")), column


def test_every_verdict_line_is_recomputed_from_the_committed_records(records):
    """The README's verdict bullets for the run are exactly report.verdict_lines of its records."""
    section = " ".join(readme_section(SECTION).split())
    lines = report.verdict_lines(records)
    assert len(lines) == 7 and lines[0].startswith("**Primary: balanced augmentation (04) vs baseline (01)")
    for line in lines:
        assert f"- {line}" in section, line


def test_the_last_epoch_effects_and_the_side_by_side_row(records):
    last = report.last_epoch_effects(records).set_index(["A", "B"])
    section = " ".join(readme_section(SECTION).split())
    primary = last.loc[("04_balanced_augment", "01_baseline")]
    vs03 = last.loc[("04_balanced_augment", "03_full_augment")]
    best, final = "defective recall: best epoch (pts)", "defective recall: last epoch (pts)"
    assert (f"the primary effect is {primary[final]:+.1f} points instead of {primary[best]:+.1f}, and 04 vs 03 "
            f"defect recall {vs03[final]:+.1f} instead of {vs03[best]:+.1f}") in section
    row = report.paired_tests(records).set_index(["A", "B"]).loc[("04_balanced_augment", "01_baseline")]
    effect = interval_text(row["defective recall effect (pts)"], row["defective recall 95% interval"])
    side = table_rows(readme_section("## What freezing hides"))["`paper` (H200)"]
    arms = report.arm_table(records)
    first = {step: [re.match(r"[\d.]+", arms.loc[step, key]).group() for key in ("accuracy %", "defective recall %")]
             for step in ("01_baseline", "04_balanced_augment")}
    assert side[1:5] == [" / ".join(first["01_baseline"]), " / ".join(first["04_balanced_augment"]), effect,
                         row["defective recall verdict"]]


# The CPU runs whose records are committed beside the paper run: (README section, folder, row of
# "What freezing hides").
CPU_RUNS = [("## Top block fine-tuned", ROOT / "benchmarks" / "cpu-finetune-run-2026-12-04", "`cpu-finetune`"),
            ("## Frozen backbone", ROOT / "benchmarks" / "cpu-run-2026-12-04", "`cpu`")]


@pytest.mark.parametrize("title, folder, side_row", CPU_RUNS)
def test_a_cpu_runs_table_verdicts_and_side_row_are_recomputed(title, folder, side_row):
    """Table cells (accuracy and defect recall with both intervals, normal recall, AUROC), every verdict
    line and the "What freezing hides" row of a CPU profile's committed run."""
    recs = results.load_records(folder)
    assert len(recs) == 30
    section = readme_section(title)
    rows = table_rows(section)
    arms = report.arm_table(recs)
    for label, step in ROWS.items():
        train, accuracy, normal, defective, auroc = rows[label][:5]
        assert [train, accuracy, defective] == [arms.loc[step, k]
                                                for k in ("train", "accuracy %", "defective recall %")]
        assert normal == arms.loc[step, "normal recall %"].split(" (")[0]
        assert auroc == arms.loc[step, "AUROC %"].split(" (")[0], label
    flat = " ".join(section.split())
    for line in report.verdict_lines(recs):
        assert f"- {line}" in flat, line
    row = report.paired_tests(recs).set_index(["A", "B"]).loc[("04_balanced_augment", "01_baseline")]
    effect = interval_text(row["defective recall effect (pts)"], row["defective recall 95% interval"])
    first = {step: [re.match(r"[\d.]+", arms.loc[step, key]).group() for key in ("accuracy %", "defective recall %")]
             for step in ("01_baseline", "04_balanced_augment")}
    side = table_rows(readme_section("## What freezing hides"))[side_row]
    assert side[1:5] == [" / ".join(first["01_baseline"]), " / ".join(first["04_balanced_augment"]), effect,
                         row["defective recall verdict"]]


def test_the_frozen_runs_operating_point_is_recomputed():
    """The baseline's kept model: the threshold chosen on the training part and what it gives on the
    validation images, beside the optimistic one, as the README quotes them."""
    recs = results.load_records(ROOT / "benchmarks" / "cpu-run-2026-12-04")
    row = report.chosen_operating_points(recs).set_index("step").loc["01_baseline"]
    caught, kept = row["defective recall at it (training part)"], row["normal recall at it (training part)"]
    section = " ".join(readme_section("## Frozen backbone").split())
    assert (f"catches {caught.split(' [')[0]}% of the defective validation cells [{caught.split('[')[1]} and keeps "
            f"{kept.split(' [')[0]}% of the normal ones [{kept.split('[')[1]}") in section
    promised = [row[f"{c} recall at it (validation (optimistic))"].split(" [")[0] for c in ("defective", "normal")]
    assert f"promises {promised[0]}% / {promised[1]}%" in section


@pytest.mark.parametrize("profile, label", [("cpu", "`cpu` (frozen probe)"),
                                            ("cpu-finetune", "`cpu-finetune` (top block)")])
def test_the_grouped_split_table_is_recomputed(benchmark_script, profile, label):
    """Random against grouped split: each cell from the committed records (benchmarks/modules.py)."""
    modules = benchmark_script("modules")
    bench = ROOT / "benchmarks"
    cells = []
    for folder in (bench / f"{profile}-run-2026-12-04", bench / "grouped-split-2026-12-04" / profile):
        summary = modules.split_summary(results.load_records(folder))
        cells.append(" / ".join(f"{summary[k]['mean']:.1f} [{summary[k]['interval'][0]:.1f}, "
                                f"{summary[k]['interval'][1]:.1f}]" for k in ("accuracy", "defect recall")))
    assert table_rows(readme_section("## Modules: what a random split flatters"))[label] == cells


def test_the_readmes_first_screen_holds_the_finding_and_the_commands():
    """A newcomer learns in the README's first 60 lines what the kit is, what it found and the two commands;
    the numbers there are the committed runs' (report.REFERENCE_RUNS, recomputed in test_report_html) and the
    threshold readings of report.threshold_instead."""
    first = "\n".join((ROOT / "README.md").read_text().splitlines()[:60])
    assert "make reproduce" in first and "make test" in first and "What it found" in first
    assert "[Your own images](#your-own-images)" in first
    for ref in report.REFERENCE_RUNS:
        assert f"**{ref.effect:+.1f} [{ref.low:+.1f}, {ref.high:+.1f}]**" in first, ref.profile
    flat = " ".join(first.split())
    frozen, top = (report.threshold_instead(results.load_records(ROOT / "benchmarks" / folder))
                   for folder in ("cpu-run-2026-12-04", "cpu-finetune-run-2026-12-04"))
    assert (f"{100 * frozen['b_target_moved']:.1f}% of the defects against the balanced model's "
            f"{100 * frozen['a_target']:.1f}% (frozen), {100 * top['b_target_moved']:.1f}% against "
            f"{100 * top['a_target']:.1f}% (top block)") in flat
    strong = results.load_records(STRONG / "ladder-c")                  # the five-seed ladder
    best = max(report.step_table(strong)["accuracy"])
    kept = report.chosen_operating_points([r for r in strong if r["step"] == "06_final"]).iloc[0]
    assert f"{100 * best:.1f}% at best" in flat
    normal = float(kept["normal recall at it (training part)"].split()[0])
    assert f"keeps only {normal:.0f}% of the normal cells" in flat


def test_every_relative_link_of_the_readme_and_docs_resolves():
    """Links between the README and its docs pages point at files that exist, and #anchors at headings."""
    def anchors(path: Path) -> set[str]:
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{page.name}: {target}")
    assert broken == []


# Notebook 06's measured runs on the CPU (docs/findings.md, "The stronger recipe"): (section, folder).
STRONG = ROOT / "benchmarks" / "cpu-strong-2026-12-05"
STRONG_RUNS = [("### Ladder C (five seeds): blocks, 300 px, longer schedule, unsure cells", STRONG / "ladder-c"),
               ("### Ladder A: blocks, symmetries, smoothing, weight average, balanced sampler", STRONG / "ladder-a"),
               ("### Ladder B: blocks, 300 px, unsure cells, longer schedule", STRONG / "ladder-b"),
               ("### Ladder D (five seeds): EfficientNet-Lite2", STRONG / "ladder-d"),
               ("### Ladder E (five seeds, cold cache)", STRONG / "ladder-e")]


def recipe_lines(records: list[dict]) -> list[str]:
    """What each ingredient buys, one line per comparison, as the findings page prints it."""
    tables = report.recipe_tables(records)
    acc = tables["06: what each ingredient buys, accuracy"]
    rec = tables["06: what each ingredient buys, defective recall"]
    return [f"{a['comparison']}: accuracy {a['effect (pts)']:+.1f} {a['95% interval']} ({a['verdict']}); defect "
            f"recall {r['effect (pts)']:+.1f} {r['95% interval']} ({r['verdict']})"
            for (_, a), (_, r) in zip(acc.iterrows(), rec.iterrows())]


def strong_section(title: str) -> str:
    text = FINDINGS.read_text()
    start = text.index(title)
    ends = [e for e in (text.find("\n### ", start + len(title)), text.find("\n## ", start + len(title))) if e > 0]
    return text[start:min(ends) if ends else len(text)]


@pytest.mark.parametrize("title, folder", STRONG_RUNS, ids=[t.split(":")[0][4:] for t, _ in STRONG_RUNS])
def test_the_stronger_recipes_ladders_are_recomputed(title, folder):
    """Each arm's row (accuracy and defect recall with both intervals, normal recall, AUROC) and each line of
    what an ingredient buys, from the committed records of notebook 06's runs."""
    recs = results.load_records(folder)
    section = strong_section(title)
    rows = table_rows(section)
    arms = report.recipe_tables(recs)["06: every arm over seeds"]
    for step in arms.index:
        accuracy, defective, normal, auroc = rows[f"`{step}`"][:4]
        assert [accuracy, defective] == [arms.loc[step, "accuracy %"], arms.loc[step, "defective recall %"]], step
        assert [normal, auroc] == [arms.loc[step, k].split(" (")[0] for k in ("normal recall %", "AUROC %")], step
    flat = " ".join(section.split())
    for line in recipe_lines(recs):
        assert f"- {line}" in flat, line


@pytest.mark.parametrize("ladder", ["ladder-c", "ladder-a"])
def test_the_final_recipes_ensemble_operating_point_and_learning_curve_are_recomputed(ladder):
    """A ladder's final recipe: its seeds as one model (alone, with the mirror image, with the eight
    symmetries), the operating point chosen on the training part, and the learning curve, as the findings
    page quotes them."""
    recs = results.load_records(STRONG / ladder)
    flat = " ".join(FINDINGS.read_text().split())
    tables = report.recipe_tables(recs)
    plain, mirror, views = tables["06: the final recipe's seeds as one model"].to_dict("records")
    assert (f"reach {plain['accuracy %']:.1f}% accuracy, {plain['defective recall %']:.1f}% defect recall and "
            f"{plain['normal recall %']:.1f}% normal recall (AUROC {plain['AUROC %']:.1f})") in flat
    assert mirror["test-time views"] == "hflip" and (
        f"{mirror['accuracy %']:.1f}% accuracy, {mirror['defective recall %']:.1f}% defect recall, "
        f"{mirror['normal recall %']:.1f}% normal recall (AUROC {mirror['AUROC %']:.1f})") in flat
    assert (f"{views['accuracy %']:.1f}% accuracy, {views['defective recall %']:.1f}% defect recall, "
            f"{views['normal recall %']:.1f}% normal recall (AUROC {views['AUROC %']:.1f}") in flat
    point = report.chosen_operating_points([r for r in recs if r["step"] == "06_final"]).iloc[0]
    caught, kept = point["defective recall at it (training part)"], point["normal recall at it (training part)"]
    assert f"({point['threshold (training part)']:.3f} on the defective probability" in flat
    assert (f"catches {caught.replace(' [', '% [')} of the defective validation cells and keeps "
            f"{kept.replace(' [', '% [')} of the normal ones") in flat
    rows = [(int(r["defective images labelled"]), r["defective recall (%)"])
            for r in tables["06: learning curve of the final recipe"].to_dict("records")]
    said = [f"{rows[0][0]} labelled defective cells gave {rows[0][1]:.1f}% defect recall"]
    said += [f"{n} gave {recall:.1f}%" for n, recall in rows[1:]]
    assert ", ".join(said) in flat


# The final recipe (and its best arm) trained again on splits that chose nothing (benchmarks/recipe_holdout.py).
HOLDOUTS = [("holdout-split1", "random split 1", ["06_final"]),
            ("holdout-grouped0", "grouped by module", ["06_final", "06_4_soft_labels"])]


def test_the_recipe_on_images_that_chose_nothing_is_recomputed():
    """Each arm's row and each paired line of the findings' holdout section, from the committed records."""
    section = strong_section("### On images that chose nothing")
    rows, flat, seen = table_rows(section), " ".join(section.split()), 0
    for folder, words, steps in HOLDOUTS:
        recs = results.load_records(STRONG / "ladder-c" / folder)
        arms = report.arm_table(recs)
        for step in ["06_0_base", *steps]:
            if step not in arms.index:
                continue
            accuracy, defective, normal = rows[f"`{step}`, {words}"]
            assert [accuracy, defective] == [arms.loc[step, "accuracy %"], arms.loc[step, "defective recall %"]]
            assert normal == arms.loc[step, "normal recall %"].split(" (")[0]
            seen += 1
        for step in (s for s in steps if s in arms.index):
            tests = report.paired_tests(recs, [(step, "06_0_base")])
            acc, rec = (report.paired_table(tests, label).iloc[0] for label in ("accuracy", "defective recall"))
            assert (f"- {step} vs 06_0_base, {words}: accuracy {acc['effect (pts)']:+.1f} {acc['95% interval']} "
                    f"({acc['verdict']}); defect recall {rec['effect (pts)']:+.1f} {rec['95% interval']} "
                    f"({rec['verdict']})") in flat
    assert seen == len([k for k in rows if k.startswith("`")])   # no row the records do not back


def test_the_blocks_table_is_recomputed(benchmark_script):
    """The cost/accuracy table of trained blocks and its choice, from the committed records of
    benchmarks/blocks_table.py."""
    blocks = benchmark_script("blocks_table")
    counts = [0, 1, 2, 3, 5]
    table, _, chosen = blocks.table(results.load_records(STRONG / "blocks"), counts)
    section = strong_section("### How many blocks `top` mode trains")
    rows = table_rows(section)
    for row in table.to_dict("records"):
        assert rows[str(row["trained blocks"])] == [row["accuracy %"], row["defective recall %"],
                                                    f"{row['training s per seed']:.1f}"]
    assert chosen == 1 and "So one block" in section
