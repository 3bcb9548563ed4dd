"""`sedaug sweep` (sedaug/sweep/): the sweep file's errors, model selection, and one real sweep on a local Ray with
the tiny CRNN: a trial's worker killed mid-run is retried and resumes from last.pt, the driver killed by kill -9
continues with --resume without redoing a finished trial, the winner is trained on the seeds and evaluated on eval.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from sedaug.errors import UserError
from sedaug.sweep import in_search, selected_settings
from sedaug.sweep.plan import dry_run, settings
from sedaug.sweep.select import TrialRecord, budget_short, winners, write_selection
from sedaug.sweep.spec import Space, grid_settings, load_sweep
from sedaug.sweep.trial import search_dir, setting_id, trial_lock

REPO = Path(__file__).parents[1]
TINY = {"model.cnn_filters": [4, 8], "model.cnn_pooling": [[4, 4], [1, 32]], "model.rnn_hidden": 8,
        "model.init": "pytorch"}


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------------------- the sweep file


def test_the_shipped_sweeps_validate():
    demo = load_sweep(REPO / "sweeps" / "demo.yaml")
    assert set(demo.bases) == {"none", "noise_latent"}
    full = load_sweep(REPO / "sweeps" / "table1.yaml")
    assert {p.stem for p in (REPO / "recipes").glob("*.yaml")} == set(full.bases)
    assert len(full.sweep.seeds) == 3 and full.sweep.select.split == "synthetic_valid"
    assert full.sweep.trial_seed not in full.sweep.seeds  # the winner's curse (docs/sweeps.md)
    assert all(full.spaces[name] for name in full.bases if name != "none")  # every other row searches something
    audio = load_sweep(REPO / "sweeps" / "audio.yaml")  # Table 2: every audio recipe, each searching its strength
    assert {p.stem for p in (REPO / "recipes" / "audio").glob("*.yaml")} == set(audio.bases)
    assert all(audio.spaces[name] for name in audio.bases)


def test_a_bad_sweep_file_is_one_path_message_line_per_problem_all_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write(tmp_path / "bad.yaml", """\
        recipes:
          - recipe: recipes/vat_input.yaml
            search:
              augmentation.epsilon: {grid: [0.1, -0.5]}
              augmentation.xi: {grid: [1.0e-6, 0.000001]}
              augmentation.sigma: {grid: [0.1]}
              optim.epochs: {grid: [2, 3]}
              optim.max_steps_per_epoch: {grid: [2, 2.5]}
              seed: {grid: [1, 2]}
          - recipe: recipes/missing.yaml
          - recipe: recipes/none.yaml
            search:
              optim.lr: {grid: []}
              consistency.weigth: {grid: [1.0, 2.0]}
              consistency.weight: {loguniform: [1.0]}
          - recipe: recipes/noise_latent.yaml
            search:
              augmentation.sigma: {grid: [0.2, "0.2"]}
              data.features: {grid: [data/f, ./data/f]}
        search:
          optim.lr: {uniform: [1.0e-4, 1.0e-2]}
        seeds: [0, 0]
        max_concurrent_trials: two
        colour: blue
        seed: 3
        early_stopping: {type: asha, grace: 2}
        """)
    with pytest.raises(UserError) as e:
        load_sweep(path)
    lines = str(e.value).splitlines()
    at = f"{path}: recipes[0].search"
    assert lines == [
        # the schema: unknown keys, wrong types
        f"{path}: recipes[0].search.augmentation.xi: grid lists 1e-06 twice: each value is one setting, list it once",
        f"{path}: recipes[2].search.optim.lr.grid: List should have at least 1 item after validation, not 0",
        f"{path}: recipes[2].search.consistency.weight.loguniform[1]: expected 2 values, got 1",
        f"{path}: seeds: a seed is listed twice",
        f"{path}: max_concurrent_trials: two is not an integer",
        f"{path}: early_stopping.grace: not a key of early_stopping (did you mean grace_epochs?)",
        f"{path}: colour: not a key of a sweep file",
        f"{path}: seed: not a key of a sweep file (did you mean seeds?)",
        # each searched key and value against the base recipe (the top-level search applies to every recipe)
        f"{path}: search.optim.lr (for vat_input, recipes[0]): uniform is sampled: the grid algorithm takes "
        "{grid: [...]} (or use random/optuna)",  # the sweep-wide search's key, named there
        f"{at}.augmentation.epsilon: -0.5 for vat_input: Input should be greater than 0",
        f"{at}.augmentation.sigma: not a key of recipe vat_input",
        f"{at}.optim.epochs: a row's trials all run its one optim.epochs (early stopping and selection count to it): "
        "set it, and let early_stopping cut the poor settings short",
        f"{at}.optim.max_steps_per_epoch: 2.5 for vat_input: 2.5 is not an integer",
        f"{at}.seed: the sweep's `seeds` and `search_seed` set it",
        f"{path}: recipes[1].recipe: recipes/missing.yaml: cannot read recipe (No such file or directory) (a relative "
        f"path is read from the working directory, {REPO})",
        # an entry with a bad searched key still has its other keys checked
        f"{path}: recipes[2].search.consistency.weigth: not a key of recipe none (did you mean consistency.weight?)",
        f"{path}: search.optim.lr (for noise_latent, recipes[3]): uniform is sampled: the grid algorithm takes "
        "{grid: [...]} (or use random/optuna)",
        f"{path}: recipes[3].search.augmentation.sigma: '0.2' for noise_latent: '0.2' is quoted text, not a number: "
        "leave out the quotes",
        # two spellings of one path are the same value to the recipe: the same setting, trained twice
        f"{path}: recipes[3].search.data.features: 'data/f' and './data/f' are one value for noise_latent "
        '("data/f"): list it once',
    ]


def test_a_typo_in_a_search_space_is_named_with_the_key_meant_and_a_sweep_file_is_no_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write(tmp_path / "s.yaml", """\
        recipes:
          - recipe: recipes/none.yaml
            search:
              optim.lr: {gird: [1.0e-3]}
          - recipe: sweeps/demo.yaml
        """)
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert str(e.value).splitlines() == [
        f"{path}: recipes[0].search.optim.lr.gird: not a key of a search space (did you mean grid?)",
        f"{path}: recipes[1].recipe: sweeps/demo.yaml is a sweep file, not a recipe (recipes/*.yaml are)"]


def test_sampled_spaces_need_a_sampling_algorithm_and_bounds_the_recipe_accepts(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write(tmp_path / "s.yaml", """\
        recipes:
          - recipe: recipes/vat_latent.yaml
            search:
              augmentation.epsilon: {loguniform: [0.0, 1.0]}
          - recipe: recipes/vat_input.yaml
            search:
              augmentation.xi: {uniform: [-1.0, 1.0]}
              consistency.weight: {grid: [1.0, 2.0]}
        algorithm: {type: optuna}
        """)
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert str(e.value).splitlines() == [
        f"{path}: recipes[0].search.augmentation.epsilon: loguniform [0.0, 1.0]: bounds must be positive",
        f"{path}: algorithm: trials: optuna needs a trial budget per recipe",
        f"{path}: recipes[1].search.augmentation.xi: -1.0 for vat_input: Input should be greater than 0",
    ]
    path = write(tmp_path / "s2.yaml", path.read_text().replace("{type: optuna}", "{type: optuna, trials: 4}"))
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert f"{path}: recipes[1].search.consistency.weight: optuna samples: use {{choice: [...]}} instead of grid" in (
        str(e.value).splitlines())


def test_a_bad_set_override_is_blamed_on_set_not_on_the_file(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    with pytest.raises(UserError) as e:
        load_sweep(REPO / "sweeps" / "demo.yaml", ["max_concurent_trials=1", "optim.epoch=1", "seeds=[0, 0]",
                                                    "optimm.lr=1"])
    assert str(e.value).splitlines() == [
        "--set seeds: a seed is listed twice",
        "--set max_concurent_trials: not a key of a sweep file (nor a recipe section)",
        "--set optimm.lr: optimm: not a key of a sweep file (nor a recipe section)",
        "--set optim.epoch: not a key of recipe none (did you mean optim.epochs?)",
        "--set optim.epoch: not a key of recipe noise_latent (did you mean optim.epochs?)",
    ]
    # What a --set value breaks beyond its own key is blamed on it too, once.
    demo = REPO / "sweeps" / "demo.yaml"
    for items, lines in (
        (["optim.lr=0.01"], ["--set optim.lr: none searches it (sweeps/demo.yaml: recipes[0].search.optim.lr): a fixed "
                             "value would replace every searched one; leave it out of --set"]),
        (["seed=3"], ["--set seed: the sweep's `seeds` and `search_seed` set it"]),
        (["name=foo"], ["--set name: every recipe of the sweep would be named 'foo' (names are the rows)"]),
        (["model.cnn_filters=[4]"], ["--set model.cnn_filters: model: cnn_filters has 1 blocks but cnn_pooling has 2"]),
    ):
        with pytest.raises(UserError) as e:
            load_sweep(Path("sweeps/demo.yaml"), items)
        assert str(e.value).splitlines() == lines, items
    # A check across keys failing at a key --set did not give names the --set keys too.
    reverb = write(tmp_path / "reverb.yaml", f"recipes: [{{recipe: {REPO / 'recipes' / 'audio' / 'reverb_latent.yaml'}}}]"
                   "\nseeds: [1]\n")
    with pytest.raises(UserError) as e:
        load_sweep(reverb, ["model.cnn_filters=[4, 8]", "model.cnn_pooling=[[4, 4], [1, 32]]"])
    assert str(e.value).endswith("augmentation.locations: cnn4 is the output of block 4, and the model has 2 blocks "
                                 "(model.cnn_pooling) (with --set model.cnn_filters, model.cnn_pooling)")
    # A --set value wins over a recipe entry's own set, as over the sweep-wide one.
    own = write(tmp_path / "own.yaml", demo.read_text().replace("      optim.lr: {grid: [1.0e-3, 3.0e-3]}\n",
                                                                "      optim.lr: {grid: [1.0e-3, 3.0e-3]}\n"
                                                                "    set: {optim.epochs: 2}\n"))
    assert load_sweep(own).epochs == {"none": 2, "noise_latent": 3}
    assert load_sweep(own, ["optim.epochs=1"]).epochs == {"none": 1, "noise_latent": 1}


def test_set_overrides_reach_recipes_and_the_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = load_sweep(REPO / "sweeps" / "demo.yaml", ["optim.epochs=1", "max_concurrent_trials=1",
                                                        "data.features=elsewhere"])
    assert loaded.epochs == {"none": 1, "noise_latent": 1}
    assert loaded.sweep.max_concurrent_trials == 1
    assert loaded.bases["none"]["data"]["features"] == str(REPO / "elsewhere")  # absolute: trials run elsewhere
    assert [s["optim.lr"] for s in grid_settings(loaded.spaces["none"])] == [1e-3, 3e-3]


def test_random_search_draws_each_rows_own_settings_whatever_rows_surround_it(tmp_path, monkeypatch):
    pytest.importorskip("ray.tune")
    monkeypatch.chdir(REPO)

    def draws(rows: list[str], seed: int = 0) -> dict[str, list[dict]]:
        listed = "".join(f"\n  - recipe: recipes/{row}.yaml" for row in rows)
        path = write(tmp_path / "r.yaml", f"""\
recipes:{listed}
search:
  consistency.weight: {{uniform: [0.5, 4.0]}}
  optim.lr: {{choice: [1.0e-3, 3.0e-3]}}
algorithm: {{type: random, trials: 5, seed: {seed}}}
""")
        loaded = load_sweep(path)
        return {row: settings(loaded, row) for row in rows}

    three = draws(["baseline", "noise_latent", "vat_latent"])
    assert three == draws(["baseline", "noise_latent", "vat_latent"])  # --resume finds the same trials
    assert draws(["vat_latent", "noise_latent"]) == {row: three[row] for row in ("vat_latent", "noise_latent")}
    assert three["noise_latent"] != three["vat_latent"]  # each row draws its own
    assert draws(["noise_latent"], seed=1)["noise_latent"] != three["noise_latent"]
    for row in three.values():
        assert len(row) == 5
        assert all(0.5 <= s["consistency.weight"] <= 4.0 and s["optim.lr"] in (1e-3, 3e-3) for s in row)
        assert all(type(s["consistency.weight"]) is float for s in row)  # plain numbers for YAML and JSON


def test_a_cuda_only_step_setting_in_a_cpu_sweep_is_refused_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(UserError) as e:
        load_sweep(REPO / "sweeps" / "demo.yaml", ["optim.precision=tf32"])
    lines = str(e.value).splitlines()
    assert lines == [f"{REPO / 'sweeps' / 'demo.yaml'}: recipes[{i}]: {name}: optim.precision tf32 (a GPU's number "
                     "format) runs on CUDA only; on cpu use fp32 or bf16 (resources.gpus is 0: the trials run on CPUs)"
                     for i, name in enumerate(["none", "noise_latent"])]
    searched = write(tmp_path / "searched.yaml", """\
        recipes:
          - recipe: recipes/none.yaml
            search:
              optim.compile: {grid: [auto, reduce-overhead]}
        """)
    with pytest.raises(UserError) as e:
        load_sweep(searched)
    assert str(e.value).splitlines() == [
        f"{searched}: recipes[0].search.optim.compile: 'reduce-overhead' for none: none: optim.compile reduce-overhead "
        "(CUDA graphs) runs on CUDA only; on cpu use true, false or auto (resources.gpus is 0: the trials run on CPUs)"]
    gpu_sweep = load_sweep(REPO / "sweeps" / "demo.yaml", ["optim.precision=tf32", "resources.gpus=0.5"])
    planned = dry_run(gpu_sweep, device="cpu")  # planned here, timed where it can be: not on this CPU
    assert [r.step_s for r in planned.rows] == [None, None]
    assert [n for n in planned.notes if n.startswith("not timed")] == [
        f"not timed: {name}: optim.precision tf32 (a GPU's number format) runs on CUDA only; on cpu use fp32 or bf16"
        for name in ("none", "noise_latent")]


def test_a_random_draw_the_recipe_refuses_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """Values that pass one by one may not together (a mask of no time and no frequency mask): a grid's settings
    are checked at load, a random sweep's draws before the plan or the run (it had stopped after writing --out)."""
    monkeypatch.chdir(REPO)
    path = write(tmp_path / "r.yaml", """\
        recipes:
          - recipe: recipes/audio/mask_input.yaml
            search:
              augmentation.time_masks: {choice: [0, 2]}
              augmentation.freq_masks: {choice: [0, 2]}
        algorithm: {type: random, trials: 20}
        """)
    loaded = load_sweep(path)
    expected = (f"{path}: recipes[0].search: the drawn setting augmentation.time_masks=0, augmentation.freq_masks=0 "
                "for mask_input: augmentation.time_masks: mask needs at least one time or frequency mask")
    with pytest.raises(UserError) as e:
        dry_run(loaded, timed=False)
    assert str(e.value) == expected
    from sedaug.sweep.run import run_sweep

    with pytest.raises(UserError) as e:
        run_sweep(path, out=tmp_path / "out", progress=False)
    assert str(e.value) == expected and not (tmp_path / "out").exists()
    # Optuna's suggestions cannot be listed, but a space of choices only can: each combination Optuna may suggest.
    optuna = write(tmp_path / "o.yaml", path.read_text().replace("{type: random, trials: 20}", "{type: optuna, trials: 3}"))
    with pytest.raises(UserError) as e:
        dry_run(load_sweep(optuna), timed=False)
    assert str(e.value) == expected.replace(str(path), str(optuna)).replace(
        "the drawn setting", "the setting (Optuna may suggest it)")
    # Beside a continuous key, the choices' combinations are checked at each of its bounds (the trials failed).
    mixed = write(tmp_path / "m.yaml", optuna.read_text().replace(
        "search:\n", "search:\n      optim.lr: {loguniform: [0.0001, 0.01]}\n"))
    with pytest.raises(UserError) as e:
        load_sweep(mixed)
    assert str(e.value).splitlines() == [
        f"{mixed}: recipes[0].search: the setting (Optuna may suggest it) optim.lr={lr}, augmentation.time_masks=0, "
        "augmentation.freq_masks=0 for mask_input: augmentation.time_masks: mask needs at least one time or "
        "frequency mask" for lr in (0.0001, 0.01)]


def test_a_mapping_that_would_replace_keys_set_inside_it_is_refused(tmp_path, monkeypatch):
    """`set: {optim: {lr: 0.01}}` beside `optim.epochs: 2`, or a searched `augmentation` beside a set
    `augmentation.sigma`: one of them was silently lost (200 epochs instead of 2; sigma 0.1 instead of 0.3)."""
    monkeypatch.chdir(REPO)
    path = write(tmp_path / "s.yaml", """\
        recipes:
          - recipe: recipes/none.yaml
            set: {optim: {lr: 0.01}}
          - recipe: recipes/noise_latent.yaml
            search:
              augmentation: {grid: [{type: noise, locations: [cnn]}, {type: noise, locations: [rnn]}]}
            set: {augmentation.sigma: 0.3}
        set: {optim.epochs: 2, optim.rampup_epochs: 1}
        """)
    with pytest.raises(UserError) as e:
        load_sweep(path)
    assert str(e.value).splitlines() == [
        f"{path}: recipes[0].set optim replaces the whole optim mapping, and {path}: set gives optim.epochs, "
        "optim.rampup_epochs in it: set optim's keys one by one",
        f"{path}: recipes[1].search.augmentation: each value replaces the whole augmentation mapping, and set gives "
        "augmentation.sigma in it: search its keys one by one, or put those into each value"]
    # The other way round: a set mapping around a searched key, whose searched values silently replaced the set one.
    around = write(tmp_path / "around.yaml", """\
        recipes:
          - recipe: recipes/none.yaml
            search:
              optim.lr: {grid: [1.0e-3]}
        set:
          optim: {lr: 0.01}
        """)
    with pytest.raises(UserError) as e:
        load_sweep(around)
    assert str(e.value).splitlines() == [
        f"{around}: recipes[0].search.optim.lr: set optim gives optim.lr too: set it or search it, not both"]
    with pytest.raises(UserError) as e:
        load_sweep(around, ["optim={lr: 0.02}"])
    assert str(e.value).splitlines() == [
        f"{around}: recipes[0].search.optim.lr: --set optim gives optim.lr too: set it or search it, not both"]
    # A mapping beside the searched key, not around it, replaces nothing the search sets.
    beside = write(tmp_path / "beside.yaml", around.read_text().replace("{lr: 0.01}", "{epochs: 3}"))
    assert load_sweep(beside).bases["none"]["optim"] == {"epochs": 3}


def test_a_sweep_key_set_on_the_command_line_is_named_where_its_problem_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write(tmp_path / "s.yaml", """\
        recipes:
          - recipe: recipes/none.yaml
        set: {optim.epochs: 2}
        """)
    with pytest.raises(UserError) as e:
        load_sweep(path, ["early_stopping.type=asha"])
    assert str(e.value) == (f"{path}: early_stopping.grace_epochs: 10 is more than none's 2 epochs (with --set "
                            "early_stopping.type)")
    with pytest.raises(UserError) as e:  # a sweep-wide search key: named there, with the row it fails for
        load_sweep(path, ["search={augmentation.sigma: {grid: [0.1]}}"])
    assert str(e.value) == (f"{path}: search.augmentation.sigma (for none, recipes[0]) (with --set search): not a key "
                            "of recipe none")


def test_an_optuna_row_that_searches_nothing_is_planned_as_its_one_trial(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write(tmp_path / "o.yaml", """\
        recipes:
          - recipe: recipes/none.yaml
            search:
              optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
          - recipe: recipes/noise_latent.yaml
          - recipe: recipes/vat_input.yaml
            search:
              augmentation.epsilon: {choice: [0.1, 0.2, 0.1]}
        algorithm: {type: optuna, trials: 3}
        """)  # two settings to choose from: trained at most twice (a suggestion made again shares its folder)
    assert [(r.recipe, r.trials) for r in dry_run(load_sweep(path), timed=False).rows] == [
        ("none", 3), ("noise_latent", 1), ("vat_input", 2)]


def test_the_search_seed_is_no_final_seed_by_default_and_a_resume_keeps_the_one_searched_on(tmp_path, monkeypatch):
    """DESIGN §11: the search seed is not a final seed (the winner's curse). Its default, one above the seeds, is
    recorded in OUT/sweep.yaml; a resume whose file leaves it out keeps it, whatever `seeds` became, and so does one
    of a sweep run before the default changed (no search_seed recorded: it searched on the first of its seeds)."""
    from sedaug.sweep.outdir import check_out, keep_search_seed, write_out
    from sedaug.sweep.run import plan_sweep

    monkeypatch.chdir(REPO)
    demo = REPO / "sweeps" / "demo.yaml"
    loaded = load_sweep(demo)
    assert loaded.sweep.seeds == [0, 1] and loaded.sweep.trial_seed == 2
    assert loaded.resolved()["search_seed"] == 2
    out = tmp_path / "out"
    write_out(out, loaded)
    more_seeds = load_sweep(demo, ["seeds=[0, 1, 2, 3]"])
    assert more_seeds.sweep.trial_seed == 4  # alone, the default would move (and then overlap a final seed)
    kept = keep_search_seed(out, more_seeds)
    assert kept.sweep.trial_seed == 2 and kept.sweep.seeds == [0, 1, 2, 3]
    check_out(out, kept, resume=True)
    with pytest.raises(UserError, match=r"^--resume: search_seed \(the search seed\): 2 in .*, 5 now"):
        check_out(out, keep_search_seed(out, load_sweep(demo, ["search_seed=5"])), resume=True)
    saved = out / "sweep.yaml"
    before = "".join(line for line in saved.read_text().splitlines(keepends=True) if not line.startswith("search_seed"))
    saved.write_text(before)  # as an older sedaug wrote it
    kept = keep_search_seed(out, load_sweep(demo))
    assert kept.sweep.trial_seed == 0
    check_out(out, kept, resume=True)
    assert plan_sweep(demo, out=out, resume=True).header().startswith("sweep demo: 4 search trials (seed 0) and")
    assert keep_search_seed(tmp_path / "new", loaded) is loaded  # a new sweep: the default
    assert load_sweep(demo, [f"seeds=[0, {2**32 - 1}]"]).sweep.trial_seed == 1  # the largest seed has no next one


def test_the_dry_run_counts_each_settings_own_steps_per_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write(tmp_path / "steps.yaml", f"""\
        recipes:
          - recipe: recipes/none.yaml
            search:
              optim.max_steps_per_epoch: {{grid: [10, 30]}}
        seeds: [0, 1]
        search_seed: 2
        set: {{optim.epochs: 4, data.features: {tmp_path / "no_store"}}}
        """)  # DESED's sizes, not those of the store `make demo` leaves in data/features
    planned = dry_run(load_sweep(path), timed=False)
    [row] = planned.rows
    assert (row.trials, row.finals, row.steps, row.each_steps) == (2, 2, 10, (10, 30))
    row.step_s = 1.8  # s/step: (10 + 30 search steps + 2 finals x 30, the most) x 4 epochs
    assert row.trial_hours == pytest.approx((10 + 30 + 2 * 30) * 4 * 1.8 / 3600)
    assert "x 4 epochs x 10-30 steps, 1.8 s/step" in planned.row_line(row)
    assert "none: steps per epoch differ between settings (10-30), each timed at the first setting's step" in planned.notes
    # A setting that leaves no step in an epoch will fail: said before it runs.
    batches = write(tmp_path / "batches.yaml", path.read_text().replace("optim.max_steps_per_epoch: {grid: [10, 30]}",
                                                                        "data.batch_size: {grid: [24, 40000]}"))
    planned = dry_run(load_sweep(batches), timed=False)
    assert (f"{batches}: none: no training step in an epoch with data.batch_size=40000 (a batch larger than a split): "
            "take it out of the search (a sweep would be refused)") in planned.notes
    fixed = write(tmp_path / "fixed.yaml", path.read_text().replace("optim.max_steps_per_epoch: {grid: [10, 30]}",
                                                                    "optim.lr: {grid: [0.001]}")
                  .replace("set: {", "set: {data.batch_size: 8000, "))
    planned = dry_run(load_sweep(fixed))  # timed: the row with no step is not (it was, at a batch of 8,000 clips)
    assert (f"{fixed}: none: no training step in an epoch: data.batch_size 8000 is a batch larger than a split of its "
            "feature store: set a smaller one (a sweep would be refused)") in planned.notes
    assert planned.rows[0].step_s is None
    # More CPUs per trial than this machine has: timed with what it has, and said (a cluster may have them).
    from sedaug.sweep.cluster import usable_cpus

    planned = dry_run(load_sweep(path, [f"resources.cpus={usable_cpus() + 60}"]), timed=False)
    assert planned.cpus == usable_cpus()  # each trial's threads
    assert any(n.startswith(f"resources.cpus {usable_cpus() + 60} per trial, but this machine has {usable_cpus()}: timed "
                            f"with {usable_cpus()} threads") for n in planned.notes), planned.notes
    # GPUs or memory this machine lacks: the real run here refuses, the plan says so.
    planned = dry_run(load_sweep(path, ["resources.memory=100000"]), timed=False)
    assert any(n.startswith("resources.memory: 1e+05 GiB per trial, but this machine has ") and
               n.endswith("GiB: a sweep on this machine would be refused (a cluster's nodes may have it)")
               for n in planned.notes), planned.notes


# ---------------------------------------------------------------------------------------------- selection


def _record(tmp_path, recipe, lr, score, status="done"):
    params = {"optim.lr": lr}
    return TrialRecord(recipe, setting_id(params), 0, params, search_dir(tmp_path, recipe, params, 0), 3, 3, score,
                       2, status)


def test_a_trial_that_failed_before_writing_its_folder_is_listed_and_holds_its_row(tmp_path):
    """A setting whose trial fails before train writes its folder (a batch larger than a split) is a failed trial of
    its row in selection.tsv, not a setting that never was: the row is not settled, no winner is trained."""
    import yaml

    from sedaug.files import append_jsonl
    from sedaug.sweep.select import search_records
    from sedaug.sweep.spec import apply_params

    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(f"""\
        recipes:
          - recipe: {REPO / "recipes" / "none.yaml"}
            search: {{data.batch_size: {{grid: [24, 48]}}}}
        seeds: [1]
        set: {{optim.epochs: 2}}
        """))
    loaded = load_sweep(path)
    out = tmp_path / "out"
    seed = loaded.sweep.trial_seed
    ran = search_dir(out, "none", {"data.batch_size": 24}, seed)
    (ran / "checkpoints").mkdir(parents=True)
    (ran / "recipe.yaml").write_text(yaml.safe_dump(apply_params(loaded.bases["none"], {"data.batch_size": 24}, seed)))
    (ran / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "valid_f1": 0.1 * e}) + "\n" for e in (1, 2)))
    torch.save({"state": {"epoch": 2}}, ran / "checkpoints" / "last.pt")
    failed = {"data.batch_size": 48}
    append_jsonl(out / "trials.jsonl", {"stage": "search", "recipe": "none", "setting": setting_id(failed), "seed": seed,
                                        "status": "failed", "error": "too few clips"})
    records = search_records(loaded, out)
    assert [(r.params, r.status) for r in records] == [({"data.batch_size": 24}, "done"), (failed, "failed")]
    write_selection(out, records, winners(records))
    with (out / "selection.tsv").open() as f:
        assert [(r["data.batch_size"], r["status"]) for r in csv.DictReader(f, delimiter="\t")] == [
            ("24", "done"), ("48", "failed")]
    # An Optuna row's trials are not planned: a failed one without a folder leaves its budget short.
    optuna = write(tmp_path / "o.yaml", path.read_text().replace("{grid: [24, 48]}", "{choice: [24, 48]}")
                   + "algorithm: {type: optuna, trials: 2}\n")
    loaded = load_sweep(optuna)
    records = search_records(loaded, out)
    assert [(r.params, r.status) for r in records] == [({"data.batch_size": 24}, "done")]
    assert budget_short(loaded, out, records) == {"none": 1}
    assert budget_short(load_sweep(optuna, ["algorithm.trials=1"]), out, records) == {}
    # Optuna may suggest a setting again: the repeat's trial shares the folder and counts against the budget (a row
    # of a two-value space with a budget of 4 had never finished).
    for _ in range(2):
        append_jsonl(out / "trials.jsonl", {"stage": "search", "recipe": "none", "setting": records[0].setting,
                                            "seed": seed, "status": "done"})
    assert budget_short(loaded, out, records) == {}
    assert budget_short(load_sweep(optuna, ["algorithm.trials=3"]), out, records) == {"none": 1}


def test_an_optuna_tie_goes_to_the_setting_that_ran_first(tmp_path):
    """Optuna's settings are not planned: on a tie, the first to run wins (it had gone to the lowest JSON, so a
    resume that added a trial could replace the winner and retrain its final runs)."""
    import yaml

    from sedaug.files import append_jsonl
    from sedaug.sweep.select import search_records
    from sedaug.sweep.spec import apply_params

    path = write(tmp_path / "o.yaml", f"""\
        recipes:
          - recipe: {REPO / "recipes" / "none.yaml"}
            search:
              optim.lr: {{choice: [1.0e-3, 3.0e-3, 1.0e-2]}}
        algorithm: {{type: optuna, trials: 3}}
        set: {{optim.epochs: 2}}
        """)
    loaded, out = load_sweep(path), tmp_path / "out"
    for lr in (3e-3, 1e-3, 1e-2):  # in the order they ran
        params = {"optim.lr": lr}
        ran = search_dir(out, "none", params, loaded.sweep.trial_seed)
        (ran / "checkpoints").mkdir(parents=True)
        (ran / "recipe.yaml").write_text(yaml.safe_dump(apply_params(loaded.bases["none"], params, 0)))
        (ran / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "valid_f1": 0.5}) + "\n" for e in (1, 2)))
        torch.save({"state": {"epoch": 2}}, ran / "checkpoints" / "last.pt")
        append_jsonl(out / "trials.jsonl", {"stage": "search", "recipe": "none", "setting": setting_id(params),
                                            "seed": loaded.sweep.trial_seed, "status": "done"})
    records = search_records(loaded, out)
    assert [r.params["optim.lr"] for r in records] == [3e-3, 1e-3, 1e-2]
    assert winners(records)["none"].params == {"optim.lr": 3e-3}


def test_the_best_complete_trial_wins_and_selection_tsv_marks_it(tmp_path):
    records = [
        _record(tmp_path, "a", 1e-3, 0.30), _record(tmp_path, "a", 3e-3, 0.42), _record(tmp_path, "a", 1e-2, 0.42),
        _record(tmp_path, "a", 3e-2, 0.90, status="failed"),
        _record(tmp_path, "b", 1e-3, 0.10, status="stopped"), _record(tmp_path, "b", 3e-3, 0.05),
    ]
    chosen = winners(records)
    assert chosen["a"].params == {"optim.lr": 3e-3}  # the tie goes to the first; the failed one never wins
    assert chosen["b"].params == {"optim.lr": 3e-3}  # a complete trial beats an early-stopped one
    (tmp_path / "sweep.yaml").write_text("{}\n")
    write_selection(tmp_path, records, chosen)
    with (tmp_path / "selection.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["winner"] for r in rows] == ["", "*", "", "", "", "*"]
    assert rows[1]["optim.lr"] == "0.003" and rows[1]["score"] == "0.420000" and rows[1]["epochs"] == "3/3"
    assert selected_settings(tmp_path) == {"a": "lr=0.003", "b": "lr=0.003"}
    assert selected_settings(tmp_path / "final") == selected_settings(tmp_path)
    assert in_search(tmp_path / "search" / "a" / "x" / "seed0") and not in_search(tmp_path / "final" / "a" / "seed0")
    assert in_search(tmp_path / "replaced" / "a" / "seed0-20260101-000000")  # an earlier winner's final run


def test_an_epoch_counts_once_its_checkpoint_is_written(tmp_path):
    from sedaug.sweep.trial import checkpointed_metrics

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "valid_f1": 0.1}\n{"epoch": 2, "valid_f1": 0.2}\n')
    assert checkpointed_metrics(run) == []  # no last.pt: nothing to resume from
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert checkpointed_metrics(run) == []  # unreadable: nothing to resume from either
    torch.save({"state": {"epoch": 1}}, run / "checkpoints" / "last.pt")
    assert [r["epoch"] for r in checkpointed_metrics(run)] == [1]  # killed between epoch 2's row and its last.pt
    torch.save({"state": {"epoch": 2}}, run / "checkpoints" / "last.pt")
    os.utime(run / "checkpoints" / "last.pt", ns=(1_000_000_000, 1_000_000_000))  # copied without its file times
    assert [r["epoch"] for r in checkpointed_metrics(run)] == [1, 2]


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch):
    from sedaug.sweep.run import INSTALL_HINT, run_sweep

    monkeypatch.chdir(REPO)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UserError) as e:
        run_sweep(REPO / "sweeps" / "demo.yaml", out=tmp_path / "out")
    assert str(e.value) == INSTALL_HINT == "sedaug sweep needs Ray Tune and Optuna: pip install 'sedaug[sweep]'"
    assert not (tmp_path / "out").exists()


def test_a_resumed_optuna_study_is_told_the_finished_trials_and_reruns_the_unfinished_first(tmp_path, monkeypatch):
    pytest.importorskip("ray.tune.search.optuna")
    from sedaug.sweep.run import optuna_searcher

    monkeypatch.chdir(REPO)
    path = write(tmp_path / "o.yaml", """\
        recipes:
          - recipe: recipes/none.yaml
            search:
              optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        algorithm: {type: optuna, trials: 5, seed: 7}
        """)
    loaded = load_sweep(path)
    records = [_record(tmp_path, "none", 1e-3, 0.3), _record(tmp_path, "none", 2e-3, 0.1, status="stopped"),
               _record(tmp_path, "none", 5e-3, None, status="incomplete")]
    searcher, remaining = optuna_searcher(loaded.sweep, loaded.spaces["none"], records)
    assert remaining == 3  # 5 - the two settled
    searcher.set_search_properties(None, None, {"trial": {"stage": "search"}})
    assert searcher.suggest("a") == {"params": {"optim.lr": 5e-3}}  # the unfinished trial first
    assert 1e-4 <= searcher.suggest("b")["params"]["optim.lr"] <= 1e-2
    told = [t for t in searcher._ot_study.trials if t.value is not None]
    assert sorted(t.value for t in told) == [0.1, 0.3]
    assert optuna_searcher(loaded.sweep, {}, records[:1]) == (None, 0)  # nothing searched, the one trial done
    # A list-valued choice (locations) draws lists, without Optuna's warning about persistent storage.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        space = {"augmentation.locations": Space(choice=[["cnn"], ["rnn"]])}
        searcher, _ = optuna_searcher(loaded.sweep, space, [])
        searcher.set_search_properties(None, None, {"trial": {"stage": "search"}})
        assert searcher.suggest("c")["params"]["augmentation.locations"] in (["cnn"], ["rnn"])
    assert not [w for w in caught if "categorical distribution" in str(w.message)]


# ---------------------------------------------------------------------------------------------- a real sweep


def _lock_holder(lock: Path) -> int | None:
    """The pid holding the flock of a trial's lock file (the trial's Ray worker), from /proc/locks."""
    try:
        inode = os.stat(lock).st_ino
    except FileNotFoundError:
        return None
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue
        if int(parts[5].split(":")[-1]) == inode:
            return int(parts[4])
    return None


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


EPOCHS = 3


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_features, tmp_path_factory):
    """2 recipes x 2 learning rates x search seed 0, 2 trials at once, 3 epochs; winners on seeds 0 and 1.
    One trial's worker is killed after its first epoch; once a trial has finished, the driver is killed (-9);
    then `--resume` finishes the sweep. Yields what the test functions check."""
    if sys.platform != "linux":
        pytest.skip("finds trial workers through /proc/locks")
    pytest.importorskip("ray.tune")
    root = tmp_path_factory.mktemp("sweep")
    out = root / "a-sweep-directory-whose-path-is-long-enough-for-the-short-ray-temp-link"
    sweep = {
        "recipes": [{"recipe": str(REPO / "recipes" / "none.yaml")},
                    {"recipe": str(REPO / "recipes" / "noise_latent.yaml")}],
        "search": {"optim.lr": {"grid": [1e-3, 3e-2]}},
        "set": {**TINY, "data.features": str(tiny_features), "optim.epochs": EPOCHS, "optim.rampup_epochs": 0,
                "consistency.rampup_epochs": 0, "eval.threshold": 0.3},
        "seeds": [0, 1],
        "search_seed": 0,  # a final seed: the winner's search run is copied as seed 0's final run (checked below)
        "max_concurrent_trials": 2,
        "resources": {"cpus": 1},
    }
    spec = root / "tiny.yaml"
    spec.write_text(json.dumps(sweep))  # JSON is YAML
    loaded = load_sweep(spec)
    runs = {(name, p["optim.lr"]): search_dir(out, name, p, 0) for name in loaded.bases
            for p in grid_settings(loaded.spaces[name])}

    code = f"from sedaug.sweep.run import run_sweep; run_sweep({str(spec)!r}, out={str(out)!r}, progress=False)"
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=root, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # A trial's worker, killed after its first epoch (checkpointed: metrics.jsonl is written before last.pt)
        # while it trains the second.
        victim = _wait(lambda: next((r for r in runs.values() if len(_rows(r)) == 1 and (
            r / "checkpoints" / "last.pt").exists() and _lock_holder(trial_lock(r))), None),
            "a trial's first epoch")
        lock = trial_lock(victim)
        first_epoch = _rows(victim)[0]
        worker = _lock_holder(lock)
        os.kill(worker, signal.SIGKILL)
        # Ray retries it in a new worker, which resumes from last.pt: epoch 1 is not trained again.
        _wait(lambda: len(_rows(victim)) >= 2, "the retried trial's second epoch")
        retried_by = _lock_holder(lock)

        # The driver, killed once a trial has finished and while another still runs.
        finished = _wait(lambda: [r for r in runs.values() if len(_rows(r)) == EPOCHS and _lock_holder(
            trial_lock(r)) is None], "a finished trial")  # all written, the trial returned
        snapshot = {r: ((r / "metrics.jsonl").read_text(), (r / "train.log").read_text(),
                        (r / "checkpoints" / "last.pt").stat().st_mtime_ns) for r in finished}
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        unfinished_at_kill = [r for r in runs.values() if len(_rows(r)) < EPOCHS]

        from sedaug.sweep.run import run_sweep

        with pytest.raises(UserError, match="pass --resume"):
            run_sweep(spec, out=out, progress=False)
        result = run_sweep(spec, out=out, resume=True, progress=False)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait()
        try:  # what the killed driver's local Ray leaves behind for a while (its agents), ours by process group
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"out": out, "runs": runs, "victim": victim, "first_epoch": first_epoch, "worker": worker,
            "retried_by": retried_by, "snapshot": snapshot, "unfinished_at_kill": unfinished_at_kill,
            "result": result}


def test_the_sweep_finishes_and_picks_the_best_setting(killed_and_resumed):
    k = killed_and_resumed
    out, result = k["out"], k["result"]
    with (out / "selection.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"} and {r["epochs"] for r in rows} == {f"{EPOCHS}/{EPOCHS}"}
    for name in ("none", "noise_latent"):
        mine = [r for r in rows if r["recipe"] == name]
        best = max(mine, key=lambda r: float(r["score"]))
        winner = next(r for r in mine if r["winner"] == "*")
        assert float(winner["score"]) == float(best["score"])
        assert result.winners[name].params == {"optim.lr": float(winner["optim.lr"])}
        # The score is the best synthetic_valid F1 over the trial's epochs (what best.pt keeps).
        assert float(winner["score"]) == pytest.approx(max(r["valid_f1"] for r in _rows(result.winners[name].run_dir)), abs=1e-6)
    assert result.trials == 4 and result.statuses == {"done": 4}
    assert "sweep tiny: 4 trials (4 done, 0 stopped early, 0 diverged, 0 failed" in result.summary()
    search = int(result.search_s)
    assert f"(search {search // 60}m{search % 60:02d}s)" in result.summary() and 0 < result.search_s < result.elapsed_s
    assert selected_settings(out).keys() == {"none", "noise_latent"}


def test_the_winners_are_trained_on_the_seeds_and_evaluated_on_eval(killed_and_resumed):
    from sedaug.recipe import load_recipe

    k = killed_and_resumed
    out, result = k["out"], k["result"]
    assert sorted(map(str, result.final_runs)) == sorted(str(out / "final" / n / f"seed{s}")
                                                         for n in ("none", "noise_latent") for s in (0, 1))
    for run in result.final_runs:
        recipe = load_recipe(run / "recipe.yaml")
        assert recipe.optim.lr == result.winners[recipe.name].params["optim.lr"]  # says what it used
        assert recipe.seed == int(run.name.removeprefix("seed")) and len(_rows(run)) == EPOCHS
        results = json.loads((run / "eval" / "results.json").read_text())
        assert results["split"] == "eval" and 0 <= results["macro"] <= 1
    # The search seed's final run is the winner's search run (same recipe, same seed), not trained again.
    for name, w in result.winners.items():
        assert _rows(out / "final" / name / "seed0") == _rows(w.run_dir)
    from sedaug.table import build_table

    table = build_table(out / "final", split="eval", metrics=("macro",))
    assert {row.recipe: row.n for row in table.rows} == {"none": 2, "noise_latent": 2}
    ensemble = out / "final" / "none" / "ensemble"  # as `evaluate --ensemble` writes it (its scores do not matter)
    shutil.copytree(out / "final" / "none" / "seed0" / "eval", ensemble / "eval")
    (ensemble / "recipe.yaml").write_text((out / "final" / "none" / "seed0" / "recipe.yaml").read_text().replace(
        "name: none\n", "name: none_ensemble\n"))
    try:
        notes = {row.recipe: row.note for row in build_table(out / "final", split="eval", metrics=("macro",)).rows}
        assert notes["none_ensemble"] == notes["none"] and notes["none"].startswith("selected lr=")  # its seeds' setting
    finally:
        shutil.rmtree(ensemble)


def test_a_killed_worker_is_retried_and_resumes_from_last_pt(killed_and_resumed):
    k = killed_and_resumed
    assert k["retried_by"] != k["worker"]
    rows = _rows(k["victim"])
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert rows[0] == k["first_epoch"]  # epoch 1 was not trained again


def test_a_killed_driver_resumes_without_redoing_finished_trials(killed_and_resumed):
    k = killed_and_resumed
    assert k["snapshot"] and k["unfinished_at_kill"]  # it was killed mid-search
    for run, (metrics, log, mtime) in k["snapshot"].items():
        assert (run / "metrics.jsonl").read_text() == metrics
        assert (run / "train.log").read_text() == log
        assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime
    for run in k["unfinished_at_kill"]:
        assert [r["epoch"] for r in _rows(run)] == list(range(1, EPOCHS + 1))
    # Ray's state and logs stayed in the sweep directory; the short temp-dir link is gone.
    assert (k["out"] / "ray" / "tmp").is_dir() and (k["out"] / "ray" / "search").is_dir()
    assert not any(p.is_symlink() and os.readlink(p) == str(k["out"] / "ray" / "tmp")
                   for p in Path("/tmp").glob("sedaug-ray-*"))
    assert any("reached through" in n for n in k["result"].notes)


def test_selection_takes_every_metric_of_results_json():
    from sedaug.evaluation.results import METRICS as RESULTS
    from sedaug.sweep.spec import METRICS

    assert METRICS == RESULTS


def test_an_interrupted_sweep_says_the_command_that_resumes_it(monkeypatch, tmp_path):
    from sedaug.errors import Interrupted
    from sedaug.sweep import run as sweep_run

    def interrupted(*args):
        raise Interrupted("interrupted: the finished trials are in OUT")

    monkeypatch.setattr(sweep_run, "_run_sweep", interrupted)
    with pytest.raises(Interrupted) as e:
        sweep_run.run_sweep(Path("s.yaml"), out=tmp_path / "my sweep", overrides=["optim.epochs=1"])
    assert str(e.value) == ("interrupted: the finished trials are in OUT; continue with `sedaug sweep s.yaml --out "
                            f"'{tmp_path / 'my sweep'}' --set optim.epochs=1 --resume`")
    with pytest.raises(Interrupted) as e:
        sweep_run.run_sweep(Path("s.yaml"), out=tmp_path / "o", address="auto", connect_timeout=120,
                            wait_for_resources=True)
    assert str(e.value).endswith(f"`sedaug sweep s.yaml --out {tmp_path / 'o'} --address auto --connect-timeout 120 "
                                 "--wait-for-resources --resume`")
    # `--address local` over a RAY_ADDRESS: said, or the resume in the same shell would join that cluster.
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    for address, said in (("local", " --address local"), (None, " --address 10.0.0.1:6379")):
        with pytest.raises(Interrupted) as e:
            sweep_run.run_sweep(Path("s.yaml"), out=tmp_path / "o", address=address)
        assert str(e.value).endswith(f"`sedaug sweep s.yaml --out {tmp_path / 'o'}{said} --resume`")


def test_ray_tunes_own_failure_is_one_line_that_says_how_to_resume(monkeypatch, tmp_path):
    """Ray Tune's driver failing (its experiment state on a full disk) is one line, not Ray's tracebacks."""
    from ray import tune

    from sedaug.sweep import run as sweep_run

    def full_disk(self):
        try:
            raise OSError(28, "No space left on device")
        except OSError as err:
            raise tune.TuneError("Tune failed") from err

    monkeypatch.setattr(tune.Tuner, "__init__", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(tune.Tuner, "fit", full_disk)
    loaded = load_sweep(REPO / "sweeps" / "demo.yaml")
    with pytest.raises(sweep_run.TuneStopped) as e:
        sweep_run._fit("search", tmp_path, None, None, loaded, {}, {})
    assert str(e.value) == (f"{tmp_path}: Ray Tune stopped ([Errno 28] No space left on device); the finished "
                            "trials are kept")
    monkeypatch.setattr(sweep_run, "_run_sweep", lambda *args: sweep_run._fit("search", tmp_path, None, None, loaded,
                                                                              {}, {}))
    with pytest.raises(UserError, match=r"the finished trials are kept; continue with `sedaug sweep s\.yaml .*--resume`"):
        sweep_run.run_sweep(Path("s.yaml"), out=tmp_path)


def test_a_sweep_inside_a_feature_store_is_refused(tiny_features, tmp_path, monkeypatch):
    from sedaug.sweep.outdir import check_out

    monkeypatch.chdir(REPO)
    store = shutil.copytree(tiny_features, tmp_path / "features")
    with pytest.raises(UserError, match=f"--out {store / 'sw'} is in the feature store {store}: give the sweep"):
        check_out(store / "sw", load_sweep(REPO / "sweeps" / "demo.yaml"), resume=False)


def test_a_sweep_that_recorded_its_store_with_dot_dot_resumes(tmp_path, monkeypatch):
    """Sweeps recorded `cwd/../features` before `..` was resolved: the same store, not an incomparable change."""
    from sedaug.sweep.outdir import check_out, write_out

    monkeypatch.chdir(REPO)
    loaded = load_sweep(REPO / "sweeps" / "demo.yaml", [f"data.features={tmp_path / 'features'}"])
    out = tmp_path / "out"
    out.mkdir()
    write_out(out, loaded)
    recipe = out / "recipes" / "none.yaml"
    text = recipe.read_text()
    assert str(tmp_path / "features") in text
    recipe.write_text(text.replace(str(tmp_path / "features"), str(tmp_path / "elsewhere" / ".." / "features")))
    check_out(out, loaded, resume=True)
    recipe.write_text(text.replace(str(tmp_path / "features"), str(tmp_path / "other")))
    with pytest.raises(UserError, match="data.features: the finished trials would not be comparable"):
        check_out(out, loaded, resume=True)


def test_sigterm_stops_a_sweep_as_ctrl_c_does(tiny_features, tmp_path):
    """A batch system's stop (SLURM at the end of its time, `timeout`, `scancel`) sends SIGTERM: the sweep ends as on
    Ctrl-C, with selection.tsv and one line naming the command that resumes it, exit status 143. Ray's own handler
    printed a stack dump (`*** SIGTERM received ...`) and no line."""
    if sys.platform != "linux":
        pytest.skip("finds trial workers through /proc/locks")
    pytest.importorskip("ray.tune")
    out = tmp_path / "out"
    spec = tmp_path / "long.yaml"
    spec.write_text(json.dumps({
        "recipes": [{"recipe": str(REPO / "recipes" / "none.yaml")}],
        "set": {**TINY, "data.features": str(tiny_features), "optim.epochs": 100, "optim.rampup_epochs": 0},
        "seeds": [0], "resources": {"cpus": 1}}))
    loaded = load_sweep(spec)
    run = search_dir(out, "none", {}, loaded.sweep.trial_seed)
    driver = subprocess.Popen([Path(sys.executable).parent / "sedaug", "sweep", spec, "--out", out], cwd=tmp_path,
                              start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: _lock_holder(trial_lock(run)), "the trial's start", timeout=180)
        os.killpg(driver.pid, signal.SIGTERM)  # as SLURM does: every process of the job (Ray's among them)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
        with contextlib.suppress(ProcessLookupError):  # what the local Ray leaves behind for a while
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 143 and stderr == (
        f"error: SIGTERM: interrupted: the finished trials are in {out}; continue with "
        f"`sedaug sweep {spec} --out {out} --resume`\n"), stderr
    with (out / "selection.tsv").open() as f:
        [row] = list(csv.DictReader(f, delimiter="\t"))
    assert row["status"] == "incomplete" and row["winner"] == ""
    _wait(lambda: _lock_holder(trial_lock(run)) is None, "the trial's worker to end", timeout=60)


def test_after_sigterm_only_python_writes_to_stderr_until_the_way_out():
    """A SIGTERM to the job ends Ray's processes with the driver, whose core worker then wrote "Attempting to
    recover 1 lost objects ..." to fd 2 before sedaug's line (one CI run in a few): fd 2 is quiet until the way out."""
    script = """if True:
        import os, signal, sys, time
        from sedaug.sweep.run import SigtermAsCtrlC
        with SigtermAsCtrlC():
            os.write(2, b"native before\\n")
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            except KeyboardInterrupt:
                os.write(2, b"native after SIGTERM\\n")
                print("python after SIGTERM", file=sys.stderr)
        os.write(2, b"native on the way out\\n")
        print("python on the way out", file=sys.stderr)
    """
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "native before\npython after SIGTERM\nnative on the way out\n"
                                                  "python on the way out\n")


def test_a_sweep_without_final_runs_does_not_say_where_they_are():
    from sedaug.sweep.run import SweepResult

    result = SweepResult(Path("/o"), "d", {"diverged": 1}, 0, {}, [0], [], 8.0, 15.0)
    assert result.summary() == ("sweep d: 1 trial (0 done, 0 stopped early, 1 diverged, 0 failed, 0 retried) in 0m15s "
                                "(search 0m08s); selected no setting; no final run -> /o (selection.tsv)")
