"""Table 1 from a folder of fake runs, compared with golden files.

tests/fixtures/table/runs holds: baseline (2 seeds), vat_latent (2 seeds evaluated, 1 not), mixup_latent (trained,
never evaluated), none (1 seed) and vat_input_eps3 (a recipe that is not in the paper, 1 seed).
To accept a deliberate change of format: SEDAUG_UPDATE_GOLDEN=1 pytest tests/test_table.py, then read the diff.
"""

import os
import shutil
from pathlib import Path

import pytest

from sedaug.errors import UserError
from sedaug.table import build_table
from sedaug.table_render import render, rich_table

FIXTURES = Path(__file__).parent / "fixtures" / "table"
RUNS = FIXTURES / "runs"


def check_golden(text: str, name: str) -> None:
    path = FIXTURES / name
    if os.environ.get("SEDAUG_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """The fixture runs, copied (the runs dir is printed in the LaTeX header: make it the same everywhere)."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(RUNS, tmp_path / "runs")
    return Path("runs")


def test_markdown_golden(runs):
    check_golden(render(build_table(runs), "markdown"), "table.md")


def test_latex_golden(runs):
    check_golden(render(build_table(runs, metrics=("macro", "psds_ct", "psds")), "latex"), "table.tex")


def test_csv_golden(runs):
    check_golden(render(build_table(runs), "csv"), "table.csv")


def test_rows_means_and_flags(runs):
    table = build_table(runs, metrics=("macro", "psds_ct", "psds"))
    # Table 1's order for the paper's recipes, then the others alphabetically.
    assert [r.recipe for r in table.rows] == ["none", "baseline", "vat_latent", "mixup_latent", "vat_input_eps3"]
    rows = {r.recipe: r for r in table.rows}
    base, vat = rows["baseline"].cells, rows["vat_latent"].cells
    # baseline macro: seeds 0.380 and 0.400 -> mean 0.390, sample std sqrt(2 x 0.01^2 / 1) = 0.01414
    assert base["macro"].mean == pytest.approx(0.39) and base["macro"].std == pytest.approx(0.0141421356)
    assert rows["none"].cells["macro"].std is None  # one seed: no std
    assert (rows["vat_latent"].n, rows["vat_latent"].not_evaluated) == (2, 1)
    assert rows["mixup_latent"].n == 0 and rows["mixup_latent"].note == "not evaluated"
    assert rows["mixup_latent"].cells["macro"].mean is None
    # Bold = best of the column; underlined = above the baseline row (ties are both bold, and not "above").
    assert vat["macro"].best and vat["macro"].above_baseline
    assert rows["vat_input_eps3"].cells["macro"].above_baseline and not rows["vat_input_eps3"].cells["macro"].best
    assert base["psds"].best and vat["psds"].best and not vat["psds"].above_baseline
    assert not base["macro"].above_baseline and not rows["none"].cells["macro"].above_baseline
    # The factors of each row.
    vat_row = rows["vat_latent"]
    assert (vat_row.augmentation, vat_row.location, vat_row.regularization, vat_row.consistency) == (
        "vat", "cnn, rnn", "l2", "all")
    assert (rows["none"].location, rows["none"].consistency) == ("—", "—")


def test_rich_styles(runs):
    table = rich_table(build_table(runs))
    macro = {c.header: c for c in table.columns}["macro"]
    styles = [str(cell.style) for cell in macro._cells]
    assert styles == ["", "", "bold underline", "", "underline"]


def test_rich_text_render(runs):
    text = render(build_table(runs), "rich")
    assert "vat_latent" in text and "not evaluated" in text and "\x1b[1;4m0.415 ± 0.007" in text


def test_unknown_metric(runs):
    with pytest.raises(UserError, match="unknown metric 'f1'.*macro, micro, psds, psds_ct"):
        build_table(runs, metrics=("macro", "f1"))


def test_empty_or_missing_runs_dir(tmp_path):
    with pytest.raises(UserError, match="no runs found"):
        build_table(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        build_table(tmp_path / "nope")


def test_other_split_is_not_evaluated(runs):
    table = build_table(runs, split="validation")
    assert all(r.n == 0 and r.note == "not evaluated" for r in table.rows)


def test_unknown_format(runs):
    with pytest.raises(UserError, match="unknown table format"):
        render(build_table(runs), "html")
