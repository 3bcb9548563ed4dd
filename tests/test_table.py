"""Table 1 from a folder of fake runs, compared with golden files.

tests/fixtures/table/runs holds: baseline (2 seeds), vat_latent (2 seeds evaluated, 1 not), mixup_latent (trained,
never evaluated), none (1 seed) and vat_input_eps3 (a recipe that is not in the paper, 1 seed).
To accept a deliberate change of format: SEDAUG_UPDATE_GOLDEN=1 pytest tests/test_table.py, then read the diff.
"""

import csv
import dataclasses
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sedaug.data.desed import CLASSES
from sedaug.errors import UserError
from sedaug.recipe import load_recipe
from sedaug.table import NO_COMPARISON, build_table, per_class_rows
from sedaug.table_ci import Interval
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


def test_a_diverged_run_is_named_as_such_and_a_copy_in_progress_is_not_a_run(runs):
    vat = runs / "vat_latent"  # seeds 0 and 1 evaluated, seed 2 not
    (vat / "seed2" / "diverged.json").write_text(json.dumps({"epoch": 3, "step": 70, "message": "loss became nan"}))
    shutil.copytree(vat / "seed0", vat / ".seed3.copy")  # a sweep's copy of a search run, killed half-way
    copy = runs / "mixup_latent" / "seed1"
    shutil.copytree(runs / "mixup_latent" / "seed0", copy)
    with pytest.raises(UserError, match=f"mixup_latent seed 0 twice, {runs / 'mixup_latent' / 'seed0'} and {copy}: a "
                                        "row would count one run twice"):  # a copy counts once
        build_table(runs)
    mine = (copy / "recipe.yaml").read_text()
    (copy / "recipe.yaml").write_text(mine + "optim: {lr: 0.01}\n")  # other settings: another model, another row
    assert [r.recipe for r in build_table(runs).rows if r.recipe.startswith("mixup")] == [
        "mixup_latent [optim.lr=0.001]", "mixup_latent [optim.lr=0.01]"]
    (copy / "recipe.yaml").write_text(mine + "eval: {batch_size: 7}\n")  # the same model scored in other batches
    with pytest.raises(UserError, match="mixup_latent seed 0 twice"):
        build_table(runs)
    for other in ("data: {batch_size: 8}", "eval: {threshold: 0.3}"):  # what trains it, what scores it: other rows
        (copy / "recipe.yaml").write_text(mine + other + "\n")
        assert len([r for r in build_table(runs).rows if r.recipe.startswith("mixup_latent [")]) == 2, other
    (copy / "recipe.yaml").write_text(mine.replace("\nseed: 0\n", "\nseed: 1\n"))
    (copy / "diverged.json").write_text(json.dumps({"epoch": 1, "step": 5}))
    rows = {r.recipe: r for r in build_table(runs).rows}
    assert (rows["vat_latent"].n, rows["vat_latent"].not_evaluated) == (2, 1)
    assert rows["vat_latent"].note == "1 of 3 runs diverged"
    assert rows["mixup_latent"].note == "1 of 2 runs diverged; 1 of 2 runs not evaluated"
    csv_rows = {r["recipe"]: r for r in csv.DictReader(io.StringIO(render(build_table(runs), "csv")))}
    assert (csv_rows["mixup_latent"]["not_evaluated"], csv_rows["mixup_latent"]["diverged"]) == ("2", "1")


def test_runs_of_one_name_with_other_settings_are_rows_of_their_own(runs):
    """A short demo run and one's own full run of `baseline` below one folder are two models: never one mean."""
    from conftest import one_line_error, run

    seed1 = runs / "baseline" / "seed1"
    (seed1 / "recipe.yaml").write_text((seed1 / "recipe.yaml").read_text() + "optim: {epochs: 3}\n")
    rows = {r.recipe: r for r in build_table(runs).rows}
    short, full = rows["baseline [optim.epochs=3]"], rows["baseline [optim.epochs=200]"]
    assert "baseline" not in rows and (short.n, full.n) == (1, 1) and not short.note and not full.note
    assert (short.cells["macro"].mean, short.cells["macro"].std) == (0.4, None)  # seed1's alone
    assert full.cells["macro"].mean == json.loads((runs / "baseline" / "seed0" / "eval" / "results.json").read_text())[
        "macro"]
    assert list(rows).index("baseline [optim.epochs=3]") == list(rows).index("baseline [optim.epochs=200]") - 1 == 1
    assert not any(c.above_baseline for r in rows.values() for c in r.cells.values())  # no one baseline to be above
    per_class = [r.recipe for r in per_class_rows(runs)]
    assert per_class[1:3] == ["baseline [optim.epochs=3]", "baseline [optim.epochs=200]"]
    one_line_error(run("table", runs, "--ci", "95"), "the baseline runs train 2 settings (baseline [optim.epochs=3], "
                   "baseline [optim.epochs=200]): name the reference row with --compare ROW, or --no-compare")
    from sedaug.table import _reference

    evaluated = [dataclasses.replace(r, n=0) if r.recipe == "baseline [optim.epochs=3]" else r
                 for r in build_table(runs).rows]  # the short run still training, say: one reference left
    assert _reference(None, evaluated) == "baseline [optim.epochs=200]"
    # A split row is named by its name, or by a part of it that only it has.
    from sedaug.table import _said

    assert (_said(True), _said(None), _said([1e-3, False])) == ("true", "null", "[0.001, false]")  # as --set takes them
    both = build_table(runs).rows
    assert _reference("epochs=3]", both) == _reference("baseline [optim.epochs=3]", both) == \
        "baseline [optim.epochs=3]"
    with pytest.raises(UserError, match=r"^--compare baseline: 2 rows have that in their name \(baseline "
                                        r"\[optim.epochs=3\], baseline \[optim.epochs=200\]\): give a part"):
        _reference("baseline", both)
    for part in ("vat", " "):  # a part names a split row only: vat_latent is a row of its own name
        with pytest.raises(UserError, match=f"^--compare {part}: no evaluated row of that name"):
            _reference(part, both)
    with pytest.raises(UserError, match=r"^--compare none: no evaluated row of that name \(no row is evaluated\)$"):
        _reference("none", [dataclasses.replace(r, n=0) for r in both])  # not "(rows: none)", a row's name
    text = run("table", runs, "--format", "markdown").stdout
    assert "| baseline [optim.epochs=3] |" in text and "| baseline [optim.epochs=200] |" in text
    for args in ((), ("--per-class",)):  # the terminal's: the brackets are text, not rich markup
        text = run("table", runs, *args).stdout
        assert "baseline [optim.epochs=3]" in text and "baseline [optim.epochs=200]" in text, args
    # Values close enough to print alike stay apart; a section one run lacks is named by its keys.
    lr, kept = [0.0012345649, 0.0012345612], {p: p.read_text() for p in runs.glob("baseline/seed*/recipe.yaml")}
    for seed, value in zip((runs / "baseline" / "seed0", seed1), lr, strict=True):
        (seed / "recipe.yaml").write_text(load_recipe(seed / "recipe.yaml").model_copy(update={"optim": load_recipe(
            seed / "recipe.yaml").optim.model_copy(update={"lr": value, "epochs": 200})}).model_dump_json())
    assert [r.recipe for r in build_table(runs).rows if r.recipe.startswith("baseline")] == [
        f"baseline [optim.lr={v!r}]" for v in sorted(lr)]
    (seed1 / "recipe.yaml").write_text("name: baseline\nseed: 1\noptim: {epochs: 3}\n")  # no augmentation
    names = [r.recipe for r in build_table(runs).rows if r.recipe.startswith("baseline")]
    assert len(names) == 2 and "consistency.weight=" in names[0] and "{" not in "".join(names)
    for path, text in kept.items():
        path.write_text(text)
    # Many values differ: rows named by their folders, where those tell them apart; the note says what differs.
    (seed1 / "recipe.yaml").write_text((seed1 / "recipe.yaml").read_text().replace(
        "optim: {epochs: 3}", "optim: {epochs: 3, lr: 0.01, rampup_epochs: 1}\nmodel: {rnn_hidden: 64}"))
    shutil.move(seed1, runs / "demo" / "baseline" / "seed1")  # as `make demo` puts it below runs/, beside one's own
    rows = {r.recipe: r for r in build_table(runs).rows}
    assert rows["baseline [runs/demo]"].cells["macro"].mean == 0.4 and rows["baseline [runs]"].n == 1
    assert rows["baseline [runs]"].note == rows["baseline [runs/demo]"].note == (
        "settings differ from the other baseline rows at model.rnn_hidden, optim.lr, optim.epochs, optim.rampup_epochs")
    study = runs.parent / "study"  # a folder of links to runs kept elsewhere: rows named by the links
    study.mkdir()
    (study / "demo").symlink_to((runs / "demo").resolve())
    (study / "mine").symlink_to((runs / "baseline").resolve())
    assert sorted(r.recipe for r in build_table(study).rows) == ["baseline [study/demo]", "baseline [study]"]


def test_the_checkpoint_the_runs_were_evaluated_at_is_in_the_caption_or_each_rows_note(runs):
    def evaluated_at(name, pattern="*/seed*"):
        for path in runs.glob(f"{pattern}/eval/results.json"):
            results = json.loads(path.read_text())
            path.write_text(json.dumps({**results, "checkpoint": {"name": name, "epoch": 1}}))

    evaluated_at("best")
    table = build_table(runs)
    assert table.checkpoint == "best" and render(table, "markdown").splitlines()[-1].startswith(
        "_split eval at best.pt; mean ± std")
    evaluated_at("last", "baseline/seed*")  # rows at other checkpoints compare other things
    table = build_table(runs)
    notes = {r.recipe: r.note for r in table.rows if r.n}
    assert table.checkpoint is None and "at best.pt" not in render(table, "markdown").splitlines()[-1]
    assert notes == {"none": "at best.pt", "baseline": "at last.pt", "vat_latent": "1 of 3 runs not evaluated; at best.pt",
                     "vat_input_eps3": "at best.pt"}
    evaluated_at("best", "baseline/seed0")  # seeds at both: the CSV's column says so
    rows = {r["recipe"]: r["checkpoint"] for r in csv.DictReader(render(build_table(runs), "csv").splitlines())}
    assert rows == {"none": "best", "baseline": "best, last", "vat_latent": "best", "mixup_latent": "",
                    "vat_input_eps3": "best"}


def test_an_evaluated_folder_without_recipe_yaml_is_named_not_silently_dropped(runs):
    from typer.testing import CliRunner

    from sedaug.cli import app

    orphan = runs / "baseline" / "seed1"
    (orphan / "recipe.yaml").unlink()
    result = CliRunner().invoke(app, ["table", str(runs), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ("note: left out 1 evaluated folder without a recipe.yaml to name its row: "
                             f"{orphan}\n")
    assert result.stdout.startswith("recipe,") and "note:" not in result.stdout
    (runs / "vat_latent" / "seed2" / "recipe.yaml").unlink()  # not evaluated: not a table's concern
    assert CliRunner().invoke(app, ["table", str(runs), "--format", "csv"]).stderr == result.stderr


def test_linked_run_folders_are_rows_too_and_a_folder_walked_twice_counts_once(runs, tmp_path):
    """A study's folder of links to runs kept elsewhere (glob's ** did not follow them: the rows were silently
    missing), a link back up the tree (a cycle), and a run reached both directly and through a link."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "baseline").symlink_to((runs / "baseline").resolve())
    (study / "mine").symlink_to((runs / "vat_latent").resolve())
    (study / "baseline" / "seed1" / "up").symlink_to(study)  # a cycle, walked once
    (study / "again").symlink_to((runs / "baseline" / "seed0").resolve())  # baseline/seed0 twice: counted once
    (study / ".old").symlink_to(study / "mine")  # listed before mine, but hidden: not walked, mine still is
    rows = {r.recipe: r for r in build_table(study).rows}
    whole = {r.recipe: r for r in build_table(runs).rows}
    assert set(rows) == {"baseline", "vat_latent"} and rows["baseline"].n == whole["baseline"].n
    assert [(c.mean, c.std) for c in rows["vat_latent"].cells.values()] == \
        [(c.mean, c.std) for c in whole["vat_latent"].cells.values()]


def test_outputs_in_a_runs_own_files_are_refused_and_left_as_they_were(runs):
    from conftest import checksums, one_line_error, run

    seed = runs / "baseline" / "seed0"
    (seed / "checkpoints").mkdir()  # a trained run's
    before = checksums(runs)
    for option, path in (("--out", seed / "recipe.yaml"), ("--out", seed / "eval" / "results.json"),
                         ("--plot", seed / "train_curves.png")):
        one_line_error(run("table", runs, option, path, "--format", "csv"),
                       f"{option} {path} is in run {seed.resolve()}'s own files, which the table would overwrite")
    assert checksums(runs) == before
    assert run("table", runs, "--out", runs / "table.csv", "--format", "csv").exit_code == 0  # beside the runs: fine
    (runs / "features.json").write_text("{}")  # a project's own file of that name is no feature store
    assert run("table", runs, "--out", runs / "table.csv", "--format", "csv").exit_code == 0
    # Other files are kept: a recipe, a recording, a label TSV, a README, a figure of one's own.
    for name in ("none.yaml", "take.wav", "public.tsv", "README.md"):
        (runs / name).write_bytes(b"mine")
        one_line_error(run("table", runs, "--out", runs / name), f"--out {runs / name} exists and is not a table")
        assert (runs / name).read_bytes() == b"mine"
    # ... and one's own tables, which begin much as sedaug's do
    for name, text in (("notes.md", "| recipe | paper F1 | my notes |\n"), ("paper.txt", "Table 1 of Perera et al.\n"),
                       ("paper.csv", "recipe,paper_macro\nbaseline,0.41\n")):
        (runs / name).write_text(text)
        one_line_error(run("table", runs, "--out", runs / name), f"--out {runs / name} exists and is not a table")
        assert (runs / name).read_text() == text
    (runs / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n mine")
    one_line_error(run("table", runs, "--plot", runs / "figure.png"), "exists and is not a figure `sedaug table` drew")
    one_line_error(run("table", runs, "--plot", runs / "take.wav"), "a figure is .png, .pdf or .svg (no suffix: PNG)")
    one_line_error(run("table", runs, "--out", runs / "t.png"), f"--out {runs / 't.png'}: --out writes the table as "
                                                                "text (.md, .tex, .csv); --plot t.png draws it")
    assert not (runs / "t.png").exists()
    one_line_error(run("table", runs, "--out", runs / "t.md", "--plot", runs / "t.md"), "give each its own file")
    one_line_error(run("table", runs, "--out", runs / "t.csv", "--format", "latex"),  # the suffix and --format disagree
                   f"--out {runs / 't.csv'} is a .csv file, and --format latex writes no .csv: name the file .tex, or "
                   "leave out --format")
    one_line_error(run("table", runs, "--out", runs / "t.md", "--format", "rich"),
                   "and --format rich writes no .md: give the file another suffix (.txt, say), or leave out --format")
    assert not (runs / "t.csv").exists() and not (runs / "t.md").exists()
    for _ in range(2):  # its own outputs, of any format and name, are written again
        assert run("table", runs, "--plot", runs / "t.pdf").exit_code == 0 and (runs / "t.pdf").read_bytes()[:4] == b"%PDF"
        assert run("table", runs, "--plot", runs / "t.png").exit_code == 0
        for fmt in ("markdown", "latex", "csv", "rich"):
            assert run("table", runs, "--out", runs / "table1.txt", "--format", fmt).exit_code == 0, fmt
            assert run("table", runs, "--per-class", "--out", runs / "table1.txt", "--format", fmt).exit_code == 0
    for fmt in ("markdown", "latex", "csv"):  # a user's notes below a table make the file theirs (they were lost)
        for per_class in ([], ["--per-class"]):
            assert run("table", runs, *per_class, "--out", runs / "notes.txt", "--format", fmt).exit_code == 0
            with (runs / "notes.txt").open("a") as f:
                f.write("\nMy notes on the table.\n")
            mine = (runs / "notes.txt").read_text()
            one_line_error(run("table", runs, *per_class, "--out", runs / "notes.txt", "--format", fmt),
                           "is not a table `sedaug table` wrote")
            assert (runs / "notes.txt").read_text() == mine
            (runs / "notes.txt").unlink()


def test_an_evaluation_older_than_the_runs_training_is_noted(runs):
    seed = runs / "vat_latent" / "seed0"
    rows = [{"epoch": e, "valid_f1": f} for e, f in ((1, 0.2), (2, 0.5), (3, 0.5), (4, 0.1))]
    (seed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (seed / "checkpoints").mkdir()
    torch.save({"state": {"epoch": 4}}, seed / "checkpoints" / "last.pt")

    def note(name: str, epoch: int) -> str:
        results = json.loads((seed / "eval" / "results.json").read_text())
        results["checkpoint"] = {"name": name, "epoch": epoch}
        (seed / "eval" / "results.json").write_text(json.dumps(results))
        return {r.recipe: r for r in build_table(runs).rows}["vat_latent"].note

    stale = "1 of 2 evaluations out of date (a run trained since, or an ensemble's member gone): evaluate again"
    assert stale not in note("last", 4) and stale in note("last", 3)  # --resume trained epoch 4 since
    assert stale not in note("best", 2) and stale in note("best", 3)  # train keeps the first best epoch
    other = runs / "vat_latent" / "seed1" / "eval" / "results.json"
    other.write_text(json.dumps({**json.loads(other.read_text()), "checkpoint": {"name": "best", "epoch": 2}}))
    assert "seeds evaluated at different checkpoints (best, last)" in note("last", 4)

    # An ensemble of it: stale when a member's checkpoint is, or when a member is gone.
    ensemble = runs / "vat_latent" / "ensemble"
    (ensemble / "eval").mkdir(parents=True)
    (ensemble / "recipe.yaml").write_text((seed / "recipe.yaml").read_text().replace("name: vat_latent",
                                                                                     "name: vat_latent_ensemble"))

    def ensemble_note(member: Path, epoch: int) -> str:
        results = json.loads((seed / "eval" / "results.json").read_text())
        results.update(checkpoint={"name": "last", "epoch": None},
                       members=[{"run": str(member.resolve()), "seed": 0, "epoch": epoch}])
        (ensemble / "eval" / "results.json").write_text(json.dumps(results))
        return {r.recipe: r for r in build_table(runs).rows}["vat_latent_ensemble"].note

    assert ensemble_note(seed, 4) == "one ensemble of 1 seed; at last.pt"  # n is 1: the note says of how many
    assert "1 of 1 evaluations out of date" in ensemble_note(seed, 3)
    assert "1 of 1 evaluations out of date" in ensemble_note(runs / "vat_latent" / "seed9", 4)  # set aside since
    moved = Path("/elsewhere/runs/vat_latent/seed0")  # where the runs were when evaluated: moved since, together
    assert "out of date" not in ensemble_note(moved, 4) and "1 of 1 evaluations out of date" in ensemble_note(moved, 3)
    # Another run trained where a member was (a sweep's new winner on that seed), at the same epochs: out of date.
    recipe = (seed / "recipe.yaml").read_text()
    (seed / "recipe.yaml").write_text(recipe + "optim:\n  lr: 0.002\n")
    assert "1 of 1 evaluations out of date" in ensemble_note(seed, 4)
    (seed / "recipe.yaml").write_text(recipe)
    # The paper's rows average single models: an ensemble (of a recipe with its paper_row) is none of them.
    (ensemble / "recipe.yaml").write_text((ensemble / "recipe.yaml").read_text() + "paper_row: 8\n")
    row = {r.recipe: r for r in build_table(runs, paper=True).rows}["vat_latent_ensemble"]
    assert row.paper_row is None and row.cells["macro"].paper is None


def test_a_run_not_evaluated_because_it_is_training_now_says_so(runs):
    from sedaug.rundir import RunDir

    def notes() -> dict[str, str]:
        return {r.recipe: r.note for r in build_table(runs).rows}

    assert notes()["mixup_latent"] == "not evaluated" and notes()["vat_latent"] == "1 of 3 runs not evaluated"
    with RunDir(runs / "mixup_latent" / "seed0").lock(), RunDir(runs / "vat_latent" / "seed2").lock():  # as train's
        assert notes()["mixup_latent"] == "not evaluated (1 training now)"
        assert notes()["vat_latent"] == "1 of 3 runs not evaluated (1 training now)"
    with RunDir(runs / "mixup_latent" / "seed0").reading():  # an evaluation reading it: no training
        assert notes()["mixup_latent"] == "not evaluated"


def test_unfinished_runs_and_seeds_trained_on_other_stores_are_noted(runs):
    seeds = runs / "vat_latent" / "seed0", runs / "vat_latent" / "seed1"
    epochs = load_recipe(seeds[0] / "recipe.yaml").optim.epochs
    for seed in seeds:
        (seed / "checkpoints").mkdir()
        (seed / "metrics.jsonl").write_text(json.dumps({"epoch": epochs, "valid_f1": 0.5}) + "\n")

    def note() -> str:
        return {r.recipe: r for r in build_table(runs).rows}["vat_latent"].note

    assert "fewer epochs" not in note() and "feature stores" not in note()
    (seeds[1] / "metrics.jsonl").write_text(json.dumps({"epoch": 3, "valid_f1": 0.5}) + "\n")  # interrupted
    assert ("1 of 2 evaluated runs trained fewer epochs than their recipe's (interrupted, or still training): train "
            "--resume, then evaluate") in note()
    for seed, manifest in zip(seeds, ("a", "b"), strict=True):
        (seed / "env.json").write_text(json.dumps({"features": {"manifest_hash": manifest}}))
    assert "seeds trained on different feature stores" in note()
    with (seeds[1] / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 4, "valid')  # cut by a full disk, say: one line that names it (it was a traceback)
    with pytest.raises(UserError, match=f"^{re.escape(str(seeds[1] / 'metrics.jsonl'))} line 2: not a metrics row "):
        note()


def test_runs_scored_on_different_sets_are_refused(runs):
    def scored_on(path: Path, n_clips: int) -> None:
        results = json.loads(path.read_text())
        path.write_text(json.dumps({**results, "n_clips": n_clips, "n_events": 30, "duration_hours": 1 / 30}))

    for path in runs.rglob("results.json"):
        scored_on(path, 12)
    assert build_table(runs).rows
    scored_on(runs / "none" / "seed0" / "eval" / "results.json", 100)  # evaluated on another store
    with pytest.raises(UserError, match="none/seed0: scored on another eval set than .* \\(100 clips, 30 events, "
                                        "0.0333 h against 12 clips, 30 events, 0.0333 h\\)"):
        build_table(runs)
    # Where results.json names its clips (a hash), the same counts of other clips are another set too.
    for path in runs.rglob("results.json"):
        scored_on(path, 12)
        results = json.loads(path.read_text())
        path.write_text(json.dumps({**results, "clips_sha256": "a" * 64}))
    assert build_table(runs).rows
    path = runs / "none" / "seed0" / "eval" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "clips_sha256": "b" * 64}))
    with pytest.raises(UserError, match="none/seed0: scored on another eval set .*other clips of the same counts"):
        build_table(runs)
    # The same clips' names with other labels (a store rebuilt since): the counts tell.
    path.write_text(json.dumps({**json.loads(path.read_text()), "clips_sha256": "a" * 64, "n_events": 31}))
    with pytest.raises(UserError, match="none/seed0: scored on another eval set .*31 events"):
        build_table(runs)


def test_out_without_format_takes_the_files_suffix_and_never_writes_escape_codes(runs, tmp_path):
    from conftest import run

    for name, fmt in (("t.md", "markdown"), ("t.tex", "latex"), ("t.csv", "csv"), ("t.txt", "markdown")):
        assert run("table", runs, "--out", tmp_path / name).exit_code == 0
        assert (tmp_path / name).read_text() == render(build_table(runs), fmt), name
    assert run("table", runs, "--out", tmp_path / "t.ansi", "--format", "rich").exit_code == 0  # asked for: kept
    assert "\x1b[" in (tmp_path / "t.ansi").read_text()
    for option in ("--out", "--plot"):  # a trailing slash names a folder, which Path would forget
        result = run("table", runs, option, f"{tmp_path}/new/")
        assert result.exit_code == 1 and result.output == f"error: {option} {tmp_path}/new/ is a folder: give a file name\n"
    assert not (tmp_path / "new").exists()
    marked = tmp_path / "a[/]b [red]c[bold].md"  # a path is text to rich, not markup (it raised, or lost [bold])
    result = run("table", runs, "--out", marked)
    assert result.exit_code == 0 and f"wrote {marked} (" in result.output and marked.is_file(), result.output


def test_a_searched_value_in_brackets_is_shown_in_the_sweep_view():
    from rich.console import Console

    from sedaug.sweep.view import RecipeCounts, SweepView

    view = SweepView(None, {"vat_latent": 3})
    view.recipes["vat_latent"] = RecipeCounts(best=0.5, best_params={"data.features": "/data/[fold 1]/features"})
    console = Console(file=io.StringIO(), width=200)
    console.print(view.render())  # text, not markup (it showed "features=/data//features")
    assert "features=/data/[fold 1]/features" in console.file.getvalue()


def test_the_legend_speaks_of_underlines_only_where_a_row_is_compared_with(runs):
    assert "underlined: above the baseline row" in render(build_table(runs), "markdown")
    shutil.rmtree(runs / "baseline")
    assert "underlined" not in render(build_table(runs), "markdown")


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


def test_plot_of_a_table_without_intervals(runs, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from sedaug.evaluation.plots import plot_table

    plot_table(build_table(runs, paper=True), tmp_path / "t.png")  # seeds' std, a row not evaluated, one seed
    assert (tmp_path / "t.png").stat().st_size > 10_000
    titles, suptitle = [], Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, text, **kw: titles.append(text) or suptitle(self, text, **kw))
    plot_table(dataclasses.replace(build_table(runs), checkpoint="last"), tmp_path / "t.png")
    assert titles == ["runs on eval at last.pt"]  # which checkpoint the figure shows, as the table's caption says


@pytest.mark.parametrize("metrics", [("macro",), ("macro", "psds_ct", "psds")])
def test_the_table_figure_holds_its_legend_and_row_names(ci_runs, metrics):
    """One metric with --ci cut the legend at both edges (a 640 px figure, three columns of long entries), and a row
    named by many settings squashed its panels: the figure is as wide as its labels, long names wrapped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from sedaug.evaluation.plots import table_figure

    table = build_table(ci_runs, metrics=metrics, ci=95, resamples=100)
    name = "none [optim.epochs=3, optim.lr=0.0012345, consistency.weight=2.5, model.rnn_hidden=64, data.batch_size=12]"
    for rows in (table.rows, [dataclasses.replace(table.rows[0], recipe=name), *table.rows[1:]]):
        fig = table_figure(dataclasses.replace(table, rows=rows))
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        inside = fig.bbox.padded(1)  # a pixel's rounding
        texts = [fig.legends[0], *(label for ax in fig.axes for label in ax.get_yticklabels())]
        for text in texts:
            box = text.get_window_extent(renderer)
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0, (text, box, fig.bbox)
        panels = [ax.get_window_extent(renderer) for ax in fig.axes]
        assert min(p.width for p in panels) > 150  # pixels of scores each, not squashed by the row names


def test_rich_styles(runs):
    table = rich_table(build_table(runs))
    macro = {c.header: c for c in table.columns}["macro"]
    styles = [str(cell.style) for cell in macro._cells]
    assert styles == ["", "", "bold underline", "", "underline"]


def test_rich_text_render(runs):
    text = render(build_table(runs), "rich")
    assert "vat_latent" in text and "not evaluated" in text and "\x1b[1;4m0.415 ± 0.007" in text


def test_a_narrow_terminal_gets_whole_names_and_numbers(runs, ci_runs):
    """Rich would cut every column of a table wider than the terminal to `…`: there the factors are left out (and
    said), each interval and p-value goes below its value, and the per-class grids turn a column per recipe."""
    import io

    from rich.console import Console

    from sedaug.table import per_class_rows
    from sedaug.table_render import print_per_class, print_table

    def shown(print_, *args, width):
        console = Console(file=io.StringIO(), width=width)
        print_(*args, console=console)
        return console.file.getvalue()

    wide, narrow = (shown(print_table, build_table(runs), width=w) for w in (300, 80))
    assert "augmentation" in wide and "0.415 ± 0.007" in wide and "narrow terminal" not in wide
    assert "augmentation" not in narrow.split("narrow terminal")[0] and "…" not in narrow
    assert all(name in narrow for name in ("vat_latent", "vat_input_eps3", "0.415 ± 0.007", "not evaluated"))
    narrow = shown(print_table, build_table(ci_runs, ci=95, resamples=100), width=80)
    assert "…" not in narrow and "macro −" in narrow and "│    p < 0.02 │" in narrow  # the p-value below
    assert max(map(len, narrow.splitlines())) <= 80
    rows = per_class_rows(ci_runs)
    narrow, wide = (shown(print_per_class, rows, "eval", width=w) for w in (80, 300))
    assert "│ Electric shaver toothbrush │" in narrow and "…" not in narrow
    assert "┃ recipe" in wide and "│ baseline" in wide


def test_row_names_are_escaped_in_markdown_and_latex(runs):
    """A row named by its folder may hold what markdown or LaTeX reads as syntax: a `|` split the markdown row in
    two, a `$` broke the LaTeX."""
    table = build_table(runs)
    name = "x|y*z* p&q%_$~^{}\\#`"
    odd = dataclasses.replace(table, rows=[dataclasses.replace(table.rows[0], recipe=name, note=name)])
    markdown = render(odd, "markdown").splitlines()[2]
    assert markdown.startswith(r"| x\|y\*z\* p&q%_$~^{}\\#\` | ") and markdown.endswith(r" | x\|y\*z\* p&q%_$~^{}\\#\` |")
    assert markdown.count(" | ") == render(table, "markdown").splitlines()[2].count(" | ")
    latex = next(line for line in render(odd, "latex").splitlines() if line.startswith("x"))
    tex = r"x\textbar{}y*z* p\&q\%\_\$\textasciitilde{}\textasciicircum{}\{\}\textbackslash{}\#`"
    assert latex.startswith(f"{tex} & ") and latex.endswith(f" & {tex} \\\\")


def test_unknown_metric(runs):
    with pytest.raises(UserError, match="unknown metric 'f1'.*macro, micro, psds, psds_ct"):
        build_table(runs, metrics=("macro", "f1"))
    from conftest import one_line_error, run

    for given in ("", ","):  # "" was the default metrics, silently
        one_line_error(run("table", runs, "--metrics", given), "no metric given: choose from macro, micro")


def test_empty_or_missing_runs_dir(tmp_path):
    with pytest.raises(UserError, match="no runs found"):
        build_table(tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        build_table(tmp_path / "nope")


def test_a_sweep_without_final_runs_says_so_and_where_its_trials_are(tmp_path):
    """Every setting of its rows diverged (or the search is not over): `table OUT` said "no runs found (no
    recipe.yaml below it)" beside the trials' recipe.yaml files, and `table OUT/final` "no such folder"."""
    out = tmp_path / "sweep"
    (out / "search" / "none" / "a1b2c3d4" / "seed100").mkdir(parents=True)
    (out / "sweep.yaml").write_text("recipes: []\n")
    hint = f"(see its selection.tsv; `sedaug table {out / 'search'}` shows its search trials)"
    with pytest.raises(UserError) as e:
        build_table(out)
    assert str(e.value) == f"{out}: a sweep with no final run yet {hint}"
    with pytest.raises(UserError) as e:
        build_table(out / "final")
    assert str(e.value) == f"{out / 'final'}: no such folder: the sweep {out} has no final run yet {hint}"


def test_other_split_is_not_evaluated(runs):
    from conftest import run

    table = build_table(runs, split="validation")
    assert all(r.n == 0 and r.note == "not evaluated" for r in table.rows)
    for args in ((), ("--per-class",)):  # ... and the command says how to fill the table
        assert run("table", runs, "--split", "validation", *args).stderr == (
            f"note: no run below {runs} is evaluated on validation: `sedaug evaluate RUN_DIR... --split validation` "
            "scores them\n")
    assert run("table", runs).stderr == ""


def test_unknown_format(runs):
    with pytest.raises(UserError, match="unknown table format"):
        render(build_table(runs), "html")


# ---------------------------------------------------------------------------------------------- --paper


PAPER = {  # docs/architecture.md "Table 1" (the English paper's nine rows) and the French version's extra row
    "none": (0.291, 0.500), "baseline": (0.381, 0.552), "noise_input": (0.397, 0.534), "noise_latent": (0.388, 0.565),
    "adversarial_latent": (0.374, 0.559), "vat_input_mt": (0.311, 0.461), "vat_input": (0.358, 0.539),
    "vat_latent": (0.362, 0.542), "mixup_latent": (0.351, 0.507), "vat_input_unlabeled": (0.337, 0.540),
}
RECIPES = Path(__file__).parents[1] / "recipes"


def write_run(runs: Path, recipe_file: Path, seed: int, results: dict | None, name: str | None = None) -> Path:
    from sedaug.recipe import dump_recipe, load_recipe

    recipe = load_recipe(recipe_file)
    recipe = recipe.model_copy(update={"seed": seed, **({"name": name, "paper_row": None} if name else {})})
    run = runs / recipe.name / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(dump_recipe(recipe))
    if results is not None:
        (run / "eval").mkdir()
        (run / "eval" / "results.json").write_text(json.dumps(results))
    return run


def test_a_metric_missing_in_some_runs_says_how_many_its_cell_averages(tmp_path):
    runs = tmp_path / "runs"
    for seed, psds in ((0, 0.4), (1, None), (2, 0.5)):  # null: not computable for that run
        write_run(runs, RECIPES / "baseline.yaml", seed, {"macro": 0.3 + seed / 100, "psds_ct": psds})
    [row] = build_table(runs).rows
    assert row.n == 3 and row.cells["psds_ct"].mean == pytest.approx(0.45) and row.note == "psds_ct of 2 of 3 runs"


def test_paper_lists_exactly_the_papers_values_for_the_table1_recipes(tmp_path):
    runs = tmp_path / "runs"
    for name in PAPER:
        write_run(runs, RECIPES / f"{name}.yaml", 0, {"macro": 0.35, "psds": 0.45, "psds_ct": 0.5})
    write_run(runs, RECIPES / "none.yaml", 0, {"macro": 0.3, "psds": 0.35, "psds_ct": 0.4}, name="mine")  # not a row of the paper
    table = build_table(runs, metrics=("macro", "psds_ct", "psds"), paper=True)
    got = {r.recipe: (r.cells["macro"].paper, r.cells["psds_ct"].paper) for r in table.rows if r.paper_row}
    assert got == PAPER
    assert [r.recipe for r in table.rows][:10] == list(PAPER)  # the paper's order
    assert all(r.cells["psds"].paper is None for r in table.rows)  # the paper's psds column is psds_ct
    mine = next(r for r in table.rows if r.recipe == "mine")
    assert mine.paper_row is None and mine.cells["macro"].paper is None
    text = render(table, "csv").splitlines()
    header = text[0].split(",")
    baseline = dict(zip(header, next(line for line in text if line.startswith("baseline,")).split(","), strict=True))
    assert (baseline["macro_paper"], baseline["psds_ct_paper"]) == ("0.381", "0.552")
    assert float(baseline["macro_paper_diff"]) == pytest.approx(0.35 - 0.381)
    assert "0.381 (-0.031)" in render(table, "markdown")
    # Seeds that name different paper rows (paper_row changed on a resume, say): no paper value, and a note.
    seed1 = write_run(runs, RECIPES / "baseline.yaml", 1, {"macro": 0.36, "psds": 0.45, "psds_ct": 0.5})
    (seed1 / "recipe.yaml").write_text((seed1 / "recipe.yaml").read_text().replace("paper_row: 2", "paper_row: 3"))
    row = {r.recipe: r for r in build_table(runs, paper=True).rows}["baseline"]
    assert (row.n, row.paper_row, row.cells["macro"].paper) == (2, None, None)
    assert row.note == "seeds name paper rows 2 and 3: no paper value"
    # A seed trained before recipes had paper_row names none: the row's is the others'.
    (seed1 / "recipe.yaml").write_text((seed1 / "recipe.yaml").read_text().replace("paper_row: 3\n", ""))
    row = {r.recipe: r for r in build_table(runs, paper=True).rows}["baseline"]
    assert (row.paper_row, row.cells["macro"].paper, row.note) == (2, 0.381, "")


def test_every_paper_recipe_names_its_row():
    from sedaug.paper import PAPER_TABLE1
    from sedaug.recipe import load_recipe

    rows = {}
    for path in sorted(RECIPES.glob("**/*.yaml")):
        recipe = load_recipe(path)
        if recipe.paper_row is not None:
            rows[recipe.name] = recipe.paper_row
            assert PAPER_TABLE1[recipe.paper_row].recipe == recipe.name
    assert sorted(rows.values()) == list(range(1, 11)) and set(rows) == set(PAPER)  # audio/ recipes have none
    assert {k: (v.macro, v.psds) for k, v in ((r.recipe, r) for r in PAPER_TABLE1.values())} == PAPER


@pytest.mark.parametrize("value", ["0", "11", "true", "'3'"])
def test_paper_row_is_validated(tmp_path, value):
    from sedaug.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text((RECIPES / "none.yaml").read_text().replace("paper_row: 1", f"paper_row: {value}"))
    with pytest.raises(UserError, match="paper_row"):
        load_recipe(path)


# ---------------------------------------------------------------------------------------------- --ci, --compare


@pytest.fixture(scope="module")
def ci_runs(tmp_path_factory) -> Path:
    """Runs written by evaluate's own writer from made-up scores on 24 clips: baseline (2 seeds), none (the very
    same scores as baseline: an identical row) and vat_latent (1 seed, scores equal to the ground truth)."""
    from test_bootstrap import synthetic_eval

    from sedaug.evaluation.results import evaluate_scores, write_evaluation

    root = tmp_path_factory.mktemp("ci")
    clips, durations, gt, strong = synthetic_eval(n_clips=24, seed=4)
    features = root / "features" / "eval"
    features.mkdir(parents=True)
    pd.DataFrame({"filename": clips, "duration": durations}).to_csv(features / "clips.tsv", sep="\t", index=False)
    gt.to_csv(features / "events.tsv", sep="\t", index=False)
    perfect = np.zeros_like(strong)
    for name, on, off, label in gt.itertuples(index=False):
        perfect[clips.index(name), int(on / 0.06375):int(np.ceil(off / 0.06375)), CLASSES.index(label)] = 1.0
    rng = np.random.default_rng(0)
    noisy = [np.clip(strong + rng.normal(0, 0.05, strong.shape), 0, 1) for _ in range(2)]
    for name, seed, scores in (("baseline", 0, noisy[0]), ("baseline", 1, noisy[1]), ("none", 0, noisy[0]),
                               ("none", 1, noisy[1]), ("vat_latent", 0, perfect)):
        run = write_run(root / "runs", RECIPES / f"{name}.yaml", seed, None)
        evaluation = evaluate_scores(scores, clips, durations, gt)
        evaluation.results["features"] = str(root / "features")
        write_evaluation(evaluation, run / "eval")
    return root / "runs"


def test_ci_intervals_and_the_paired_test(ci_runs):
    table = build_table(ci_runs, metrics=("macro", "psds_ct", "psds"), ci=95, resamples=300, bootstrap_seed=1)
    rows = {r.recipe: r for r in table.rows}
    assert table.bootstrap.reference == "baseline" and table.bootstrap.resamples == 300
    # Recomputed from the score files, every metric equals what evaluate wrote: no "scores differ" note.
    assert all(r.note == "" for r in table.rows), [r.note for r in table.rows]
    for m in table.metrics:
        base, same, best = rows["baseline"].cells[m], rows["none"].cells[m], rows["vat_latent"].cells[m]
        assert base.interval.low <= base.mean <= base.interval.high and base.interval.low < base.interval.high
        assert base.difference is None  # the reference row
        # Identical rows: a difference of 0 in every resample.
        assert (same.difference.value, same.difference.low, same.difference.high, same.difference.p) == (0, 0, 0, 1)
        assert not same.marked and same.interval == base.interval
        # The ground truth itself as scores: better than the baseline in every resample.
        assert best.difference.low > 0 and best.difference.p == 0 and best.marked
    # F1 of the ground truth itself is 1 on any clips: an interval of one point.
    assert rows["vat_latent"].cells["macro"].mean == 1.0
    assert rows["vat_latent"].cells["macro"].interval == Interval(1.0, 1.0)
    again = build_table(ci_runs, metrics=("macro",), ci=95, resamples=300, bootstrap_seed=1)
    other = build_table(ci_runs, metrics=("macro",), ci=95, resamples=300, bootstrap_seed=2)
    interval = {r.recipe: r.cells["macro"].interval for r in again.rows}
    assert interval["baseline"] == rows["baseline"].cells["macro"].interval  # the seed repeats the resamples
    assert {r.recipe: r.cells["macro"].interval for r in other.rows} != interval


def test_ci_of_the_threshold_free_psds(ci_runs):
    metrics = ("psds1", "psds2", "psds1_filtered", "psds2_filtered")
    table = build_table(ci_runs, metrics=metrics, ci=95, resamples=100)
    rows = {r.recipe: r for r in table.rows}
    assert all(r.note == "" for r in table.rows), [r.note for r in table.rows]  # equal to results.json's
    for m in metrics:
        base, same = rows["baseline"].cells[m], rows["none"].cells[m]
        assert base.interval.low <= base.mean <= base.interval.high and same.difference.p == 1.0
        assert rows["vat_latent"].cells[m].difference.value > 0


def test_ci_in_the_text_formats(ci_runs):
    table = build_table(ci_runs, metrics=("macro",), ci=90, resamples=200, compare=NO_COMPARISON)
    import csv

    rows = list(csv.DictReader(render(table, "csv").splitlines()))
    header = list(rows[0])
    assert header[-7:] == ["ci_level", "resamples", "bootstrap_seed", "reference", "split", "checkpoint", "note"]
    assert "macro_diff" not in header
    assert {(r["ci_level"], r["resamples"], r["bootstrap_seed"], r["reference"]) for r in rows} == {("90", "200", "0", "")}
    assert all(float(r["macro_low"]) <= float(r["macro_mean"]) <= float(r["macro_high"]) for r in rows)
    compared = build_table(ci_runs, metrics=("macro",), ci=95, resamples=200, compare="vat_latent")
    markdown = render(compared, "markdown")
    assert "| macro − vat_latent |" in markdown and "95% bootstrap interval" in markdown and "p < 0.01" in markdown
    latex = render(compared, "latex")
    assert r"macro $-$ vat\_latent" in latex and "p $<$ 0.01" in latex
    assert "macro − vat_latent" in render(compared, "rich")
    # A p of 0 is below the test's resolution: the CSV says so as the text formats do, not 0.0.
    p_values = {r["recipe"]: r["macro_p"] for r in csv.DictReader(render(compared, "csv").splitlines())}
    assert "<0.01" in p_values.values() and "0.0" not in p_values.values()
    assert r"\underline{" in render(build_table(ci_runs, metrics=("macro",), ci=95, resamples=200), "latex")


def test_with_a_reference_row_only_the_rows_above_it_by_their_interval_are_underlined(ci_runs):
    def marks(table) -> dict[str, bool]:
        return {r.recipe: r.cells["macro"].marked for r in table.rows}

    # Without --ci: above the baseline row's mean; with it: above the reference row, the interval above 0.
    assert marks(build_table(ci_runs, metrics=("macro",))) == {"baseline": False, "none": False, "vat_latent": True}
    assert marks(build_table(ci_runs, metrics=("macro",), ci=95, resamples=200)) == {
        "baseline": False, "none": False, "vat_latent": True}
    # Against the best row, the others are significantly below it: no mark, nor for the reference row itself, which
    # is above the baseline row.
    below = build_table(ci_runs, metrics=("macro",), ci=95, resamples=200, compare="vat_latent")
    assert all(r.cells["macro"].difference.high < 0 for r in below.rows if r.recipe != "vat_latent")
    assert marks(below) == {"baseline": False, "none": False, "vat_latent": False}
    assert "<u>" not in render(below, "markdown") and r"\underline{" not in render(below, "latex")
    assert "underlined: above the vat_latent row, the difference's interval above 0" in render(below, "markdown")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ci": 120}, "--ci 120: expected a confidence level"),
    ({"ci": 95, "resamples": 10}, "--resamples 10"),
    ({"ci": 95, "compare": "mixup"}, r"--compare mixup: no evaluated row of that name \(evaluated rows: none, baseline, "
                                      r"vat_latent\)"),
    ({"compare": "baseline"}, "--compare needs --ci"),
])
def test_ci_refuses_bad_options(ci_runs, kwargs, message):
    with pytest.raises(UserError, match=message):
        build_table(ci_runs, **kwargs)


def test_ci_needs_the_score_files_and_the_same_clips(ci_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(ci_runs, runs)
    stale = runs / "none" / "seed1" / "eval" / "results.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "macro": 0.123}))
    table = build_table(runs, metrics=("macro",), ci=95, resamples=100)
    assert "seed1: scores differ from results.json (macro)" in {r.recipe: r for r in table.rows}["none"].note
    scores = sorted((runs / "baseline" / "seed0" / "eval" / "scores").glob("*.tsv"))
    lines = scores[1].read_text().splitlines()
    scores[1].write_text("\n".join(lines[:-1]) + "\n")  # a frame short
    with pytest.raises(UserError, match=r"clip01\.tsv: 62 frames where its clip has 63: run `sedaug evaluate`"):
        build_table(runs, metrics=("macro",), ci=95, resamples=100)
    scores[1].write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(UserError, match=r"clip01\.tsv: unreadable"):
        build_table(runs, metrics=("macro",), ci=95, resamples=100)
    scores[0].unlink()
    with pytest.raises(UserError, match=r"clip00\.tsv: missing: run `sedaug evaluate`"):
        build_table(runs, metrics=("macro",), ci=95, resamples=100)
    shutil.rmtree(runs / "baseline")
    clips = Path(json.loads(stale.read_text())["features"]) / "eval" / "clips.tsv"
    other = tmp_path / "other" / "eval"
    other.mkdir(parents=True)
    pd.read_csv(clips, sep="\t").iloc[:-1].to_csv(other / "clips.tsv", sep="\t", index=False)
    shutil.copy(clips.parent / "events.tsv", other / "events.tsv")
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "features": str(other.parent)}))
    with pytest.raises(UserError, match="scored on other eval clips"):
        build_table(runs, metrics=("macro",), ci=95, resamples=100)


def test_cli_ci_plot_and_per_class(ci_runs, tmp_path):
    from typer.testing import CliRunner

    from sedaug.cli import app

    plot = tmp_path / "table.png"
    result = CliRunner().invoke(app, ["table", str(ci_runs), "--ci", "95", "--resamples", "200", "--paper",
                                      "--plot", str(plot), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert plot.stat().st_size > 10_000 and "macro − baseline" in result.output and "0.381 (" in result.output
    result = CliRunner().invoke(app, ["table", str(ci_runs), "--per-class", "--format", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "recipe,class,n,f1,psds1" and len(lines) == 1 + 3 * len(CLASSES)
    baseline = [json.loads((ci_runs / "baseline" / f"seed{s}" / "eval" / "results.json").read_text()) for s in (0, 1)]
    dog = next(line.split(",") for line in lines if line.startswith("baseline,Dog,"))
    f1 = [r["per_class"]["Dog"]["f1"] for r in baseline]
    assert dog[2] == "2" and (dog[3] == "" if None in f1 else float(dog[3]) == pytest.approx(sum(f1) / 2))
    for other in (["--ci", "95"], ["--metrics", "psds1"]):  # --metrics was silently ignored
        result = CliRunner().invoke(app, ["table", str(ci_runs), "--per-class", *other])
        assert result.exit_code == 1 and result.output == ("error: --per-class prints the per-class view alone (F1 and "
                                                           "PSDS1): leave out --metrics, --ci, --compare, --paper and "
                                                           "--plot\n")


def test_compare_names_any_row_none_included_and_no_compare_turns_the_test_off(ci_runs, tmp_path):
    from typer.testing import CliRunner

    from sedaug.cli import app

    def table(*args: str) -> list[dict]:
        result = CliRunner().invoke(app, ["table", str(ci_runs), "--ci", "95", "--resamples", "100", "--format", "csv",
                                          "--out", str(tmp_path / "t.csv"), *args])
        assert result.exit_code == 0, result.output
        return list(csv.DictReader((tmp_path / "t.csv").read_text().splitlines()))

    assert {r["reference"] for r in table()} == {"baseline"}
    rows = table("--compare", "none")  # the `none` row: Table 1's first
    assert {r["reference"] for r in rows} == {"none"} and "macro_diff" in rows[0]
    rows = table("--no-compare")
    assert {r["reference"] for r in rows} == {""} and "macro_diff" not in rows[0]
    # Progress bars stay off stdout: the table alone, ready for a pipe.
    piped = CliRunner().invoke(app, ["table", str(ci_runs), "--ci", "95", "--resamples", "100", "--format", "csv"])
    assert piped.exit_code == 0 and piped.stdout.startswith("recipe,") and len(piped.stdout.splitlines()) == 1 + 3
    result = CliRunner().invoke(app, ["table", str(ci_runs), "--ci", "95", "--no-compare", "--compare", "none"])
    assert result.exit_code == 1 and result.output == "error: --no-compare and --compare none exclude each other\n"
    result = CliRunner().invoke(app, ["table", str(ci_runs), "--no-compare"])
    assert result.exit_code == 1 and result.output.startswith("error: --no-compare goes with --ci LEVEL")
    result = CliRunner().invoke(app, ["table", str(ci_runs), "--ci", "95", "--compare", ""])  # was --no-compare
    assert result.exit_code == 1 and result.output == "error: --compare \"\": give a row's name (or --no-compare)\n"
    for option in ("--resamples", "--bootstrap-seed"):  # ignored without --ci, as --compare would be: refused
        for extra in ((), ("--per-class",)):
            result = CliRunner().invoke(app, ["table", str(ci_runs), option, "200", *extra])
            assert result.exit_code == 1 and result.output == \
                f"error: {option} goes with --ci LEVEL (without it there is no bootstrap)\n"


def test_ci_in_worker_processes_equals_in_process(ci_runs):
    one = build_table(ci_runs, metrics=("macro", "psds_ct"), ci=95, resamples=100, workers=1)
    two = build_table(ci_runs, metrics=("macro", "psds_ct"), ci=95, resamples=100, workers=2)
    assert one == two


@pytest.mark.parametrize("results, why", [
    ({}, "no macro"), ({"macro": "0.3", "psds_ct": 0.5}, 'macro is "0.3"'), ({"macro": True, "psds_ct": 0.5}, "macro is true"),
    ({"macro": 0.3, "psds_ct": 1e308}, "psds_ct is 1e+308"), ([0.3], "a JSON list"),
])
def test_table_refuses_results_that_are_not_scores(tmp_path, results, why):
    from typer.testing import CliRunner

    from sedaug.cli import app

    write_run(tmp_path / "runs", RECIPES / "none.yaml", 0, {"macro": 0.3, "psds_ct": 0.5})
    bad = write_run(tmp_path / "runs", RECIPES / "baseline.yaml", 0, results) / "eval" / "results.json"
    result = CliRunner().invoke(app, ["table", str(tmp_path / "runs"), "--out", str(tmp_path / "t.md")])
    assert result.exit_code == 1 and not (tmp_path / "t.md").exists()
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {bad}: ") and why in result.output
