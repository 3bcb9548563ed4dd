import json
import math
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sedaug.cli import app
from sedaug.errors import UserError
from sedaug.recipe import Recipe, dump_recipe, load_recipe, validate_recipe
from sedaug.strict_yaml import parse_yaml

REPO = Path(__file__).parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
AUDIO_RECIPES = sorted((REPO / "recipes" / "audio").glob("*.yaml"))
TABLE1 = {
    "none", "baseline", "noise_input", "noise_latent", "adversarial_latent", "vat_input_mt", "vat_input",
    "vat_latent", "mixup_latent", "vat_input_unlabeled",
}
# Table 2: each audio transform at the input and in the latent space, random and adversarial where defined, L2.
TABLE2 = {
    f"{transform}_{where}"
    for transform in ("filter", "adversarial_filter", "reverb", "adversarial_reverb", "frequency_shift", "time_shift", "mask")
    for where in ("input", "latent")
}
# A tiny CRNN with four blocks (time pooled 4x, as every model must), so that cnn2 and cnn4 keep frequency rows.
TINY_FOUR_BLOCKS = {"cnn_filters": [4, 4, 4, 4], "cnn_pooling": [[4, 4], [1, 2], [1, 2], [1, 2]], "rnn_hidden": 8}


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_the_ten_table1_recipes_exist():
    assert {p.stem for p in RECIPES} == TABLE1


def test_the_table2_recipes_exist_and_their_names_do_not_collide_with_table1():
    assert {p.stem for p in AUDIO_RECIPES} == TABLE2
    assert not TABLE1 & TABLE2


@pytest.mark.parametrize("path", RECIPES + AUDIO_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_validates_and_names_itself(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    header = path.read_text().splitlines()[:2]
    table, command = ("# Table 2", f"recipes/audio/{path.name}") if path.parent.name == "audio" else ("# Table 1", f"recipes/{path.name}")
    assert header[0].startswith(table) and f"sedaug train {command}" in header[1]
    # The resolved recipe round-trips through YAML.
    assert validate_recipe(parse_yaml(dump_recipe(recipe), "x")) == recipe


def test_factors_match_table1():
    r = {p.stem: load_recipe(p) for p in RECIPES}
    assert r["baseline"].augmentation.locations == ["mel"] and r["baseline"].regularization.type == "mean_teacher"
    assert r["vat_latent"].augmentation.locations == ["cnn", "rnn"] and r["vat_latent"].regularization.type == "l2"
    assert r["vat_input_unlabeled"].consistency.data == "unlabeled"
    assert r["none"].augmentation.type == "none" and r["none"].regularization.type == "none"


def test_factors_match_table2():
    r = {p.stem: load_recipe(p) for p in AUDIO_RECIPES}
    for name, recipe in r.items():
        transform, where = name.rsplit("_", 1)
        assert recipe.augmentation.type == transform, name
        assert recipe.regularization.type == "l2" and recipe.consistency.data == "all", name
        latent = recipe.augmentation.locations == ["cnn2", "cnn4"]
        assert latent == (where == "latent"), name
    # The physical transforms act on the linear mel; the shift and the masks on the normalized log-mel.
    assert {n for n, x in r.items() if x.augmentation.locations == ["mel"]} == {
        "filter_input", "adversarial_filter_input", "reverb_input", "adversarial_reverb_input", "frequency_shift_input"
    }
    # An adversarial row is its random row plus the search.
    for transform in ("filter", "reverb"):
        for where in ("input", "latent"):
            random, adversarial = r[f"{transform}_{where}"].augmentation, r[f"adversarial_{transform}_{where}"].augmentation
            assert adversarial.model_dump(exclude={"type", "steps", "step_size"}) == random.model_dump(exclude={"type"})


def test_noise_input_is_the_baseline_with_l2():
    """Paper §5.1: Table 1 lines 2 and 3 "differ only by the regularization method"."""
    baseline, noise_input = (load_recipe(Path(__file__).parents[1] / "recipes" / f"{n}.yaml") for n in ("baseline", "noise_input"))
    assert noise_input.augmentation == baseline.augmentation
    assert noise_input.regularization.type == "l2"
    same = {"name", "paper_row", "regularization"}
    assert noise_input.model_dump(exclude=same) == baseline.model_dump(exclude=same)


@pytest.mark.parametrize("name", ["vat_input", "vat_latent", "vat_input_mt", "vat_input_unlabeled"])
def test_vat_recipes_search_a_deterministic_network_with_a_float32_step(name):
    aug = load_recipe(Path(__file__).parents[1] / "recipes" / f"{name}.yaml").augmentation
    assert aug.dropout == "shared" and aug.xi >= 1e-4


def test_defaults_are_the_dcase20_baseline():
    r = Recipe(name="x")
    assert (r.data.batch_size, r.optim.lr, r.optim.epochs, r.optim.rampup_epochs) == (24, 1e-3, 200, 50)
    assert r.consistency.weight == 2.0 and r.model.batchnorm_momentum == 0.99
    assert r.model.attention_softmax == "classes" and r.eval.median_window == 7


def test_unknown_keys_and_wrong_types_are_all_reported(tmp_path):
    path = write(tmp_path, "name: x\noptim:\n  lr: fast\n  epoch: 3\nmodel:\n  dropout: 2\n")
    with pytest.raises(UserError) as e:
        load_recipe(path)
    lines = str(e.value).splitlines()
    assert len(lines) == 3
    assert any(line.endswith("optim.lr: fast is not a number") for line in lines)
    assert any(line.endswith("optim.epoch: not a key of optim (did you mean optim.epochs?)") for line in lines)
    assert any("model.dropout:" in line for line in lines)
    assert all(line.startswith(str(path)) for line in lines)


def test_a_sweep_file_given_as_a_recipe_is_said_so():
    from conftest import one_line_error, run

    sweep = Path(__file__).parents[1] / "sweeps" / "demo.yaml"
    one_line_error(run("train", sweep), f"{sweep} is a sweep file, not a recipe: run it with `sedaug sweep {sweep}`")


@pytest.mark.parametrize(("override", "message"), [
    ("opitm.lr=0.1", "--set opitm: not a key of a recipe (did you mean optim?)"),
    ("augmentation.epsilom=1", "--set augmentation.epsilom: not a key of a vat augmentation (did you mean "
                               "augmentation.epsilon?)"),
    ("augmentation.alpha=1", "--set augmentation.alpha: not a key of a vat augmentation"),  # mixup's: no match
    ("model.cnn_filter=[8]", "--set model.cnn_filter: not a key of model (did you mean model.cnn_filters?)"),
    ("optim.rampup=3", "--set optim.rampup: not a key of optim (did you mean optim.rampup_epochs?)"),  # its start
])
def test_an_unknown_key_is_said_with_the_nearest_key_of_its_section(override, message):
    with pytest.raises(UserError) as e:
        load_recipe(REPO / "recipes" / "vat_latent.yaml", [override])
    assert str(e.value) == message


def test_union_errors_name_the_plain_path(tmp_path):
    path = write(tmp_path, "name: x\naugmentation:\n  type: vat\n  locations: [cnn]\n  alpha: 1\n")
    with pytest.raises(UserError, match=r"augmentation\.alpha: not a key of a vat augmentation$"):
        load_recipe(path)


def test_exponent_floats_are_floats_and_quoted_numbers_are_text(tmp_path):
    assert load_recipe(write(tmp_path, "name: x\noptim:\n  lr: 1e-3\n")).optim.lr == 1e-3
    with pytest.raises(UserError, match="optim.lr: '1e-3' is quoted text, not a number: leave out the quotes$"):
        load_recipe(write(tmp_path, "name: x\noptim:\n  lr: '1e-3'\n"))


def test_duplicate_keys_are_rejected(tmp_path):
    with pytest.raises(UserError, match=r"invalid YAML at line 4, column 3: duplicate key 'lr'"):
        load_recipe(write(tmp_path, "name: x\noptim:\n  lr: 1.0\n  lr: 2.0\n"))


def test_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, "name: x\n")
    r = load_recipe(path, ["optim.epochs=3", "augmentation.type=noise", "augmentation.locations=[cnn, rnn]"])
    assert r.optim.epochs == 3 and r.augmentation.locations == ["cnn", "rnn"]
    with pytest.raises(UserError, match=r"optim.epoch: not a key of optim \(did you mean optim.epochs\?\)"):
        load_recipe(path, ["optim.epoch=3"])
    with pytest.raises(UserError, match="expected key.path=value"):
        load_recipe(path, ["optim.epochs"])
    # The --set that made a section a value is named, not only the one that then reaches into it.
    with pytest.raises(UserError) as err:
        load_recipe(path, ["optim=3", "model.rnn_hidden=8", "optim.lr=0.1"])
    assert str(err.value) == "--set 'optim.lr=0.1': optim is not a section (after --set 'optim=3')"


def test_cross_field_rules(tmp_path):
    with pytest.raises(UserError, match="augmentation.locations: not a key of a none augmentation"):
        load_recipe(write(tmp_path, "name: x\naugmentation:\n  type: none\n  locations: [cnn]\n"))
    with pytest.raises(UserError, match="vat acts on input, cnn or rnn, not mel"):
        load_recipe(write(tmp_path, "name: x\naugmentation:\n  type: vat\n  locations: [mel]\n"))
    with pytest.raises(UserError, match="needs at least one location"):
        load_recipe(write(tmp_path, "name: x\naugmentation:\n  type: noise\n  locations: []\n"))
    with pytest.raises(UserError, match="cnn_filters has 2 blocks but cnn_pooling has 7"):
        load_recipe(write(tmp_path, "name: x\nmodel:\n  cnn_filters: [4, 8]\n"))


@pytest.mark.parametrize(("augmentation", "message"), [
    ("{type: filter, locations: [cnn]}", "augmentation.locations: filter acts along frequency, and cnn has no frequency axis"),
    ("{type: frequency_shift, locations: [input, rnn]}", "augmentation.locations: frequency_shift acts along frequency, and rnn has"),
    ("{type: adversarial_filter, locations: [cnn7]}", "augmentation.locations: adversarial_filter acts along frequency, and model.cnn_pooling leaves cnn7 1 frequency row"),
    ("{type: mask, locations: [rnn]}", "augmentation.locations: mask with freq_masks > 0 acts along frequency, and rnn has"),
    ("{type: mask, locations: [input], time_masks: 0, freq_masks: 0}", "augmentation.time_masks: mask needs at least one"),
    ("{type: filter, locations: [mel], gain_db: [6, -6]}", "augmentation.gain_db: the minimum 6.0 is above the maximum -6.0"),
    ("{type: filter, locations: [mel], bands: [4, 2]}", "augmentation.bands: the minimum 4 is above the maximum 2"),
    ("{type: filter, locations: [mel], bands: [3, 5], min_bandwidth: 30}",
     "augmentation.bands: 5 bands of at least min_bandwidth 30 mel bins do not fit in the 128 mel bands"),
    ("{type: reverb, locations: [mel], decay_s: [0, 1]}", "augmentation.decay_s.0: Input should be greater than or equal to 0.001"),
    ("{type: adversarial_reverb, locations: [mel], decay_s: [0.1, 1.0e39]}",
     "augmentation.decay_s.1: Input should be less than or equal to 1000"),
    ("{type: adversarial_reverb, locations: [mel], step_size: 2}", "augmentation.step_size: Input should be less than or equal to 1"),
    ("{type: time_shift, locations: [input], max_frames: 65}", "augmentation.max_frames: Input should be less than or equal to 64"),
    ("{type: time_shift, locations: [cnn8]}", "augmentation.locations.0: Input should be 'mel', 'input', 'cnn1'"),
    ("{type: noise, locations: [cnn3]}", "augmentation.locations: cnn3 is the output of block 3, and the model has 2 blocks"),
])
def test_audio_augmentations_are_checked_against_the_model(tmp_path, augmentation, message):
    path = write(tmp_path, "name: x\nmodel:\n  cnn_filters: [4, 8]\n  cnn_pooling: [[4, 4], [1, 32]]\n")
    overrides = [f"augmentation={augmentation}"]
    if "cnn7" in augmentation:
        overrides = [f"augmentation={augmentation}", "model.cnn_filters=[4, 4, 4, 4, 4, 4, 4]",
                     "model.cnn_pooling=[[2, 2], [2, 2], [1, 2], [1, 2], [1, 2], [1, 2], [1, 2]]"]
    with pytest.raises(UserError) as e:
        load_recipe(path, overrides)
    assert any(line.startswith(f"--set {message}") for line in str(e.value).splitlines()), str(e.value)


def test_every_point_with_a_frequency_axis_takes_every_transform(tmp_path):
    path = write(tmp_path, "name: x\n")  # the dcase20 model: cnn6 keeps 2 frequency rows, cnn7 one
    points = ["mel", "input", "cnn1", "cnn2", "cnn3", "cnn4", "cnn5", "cnn6"]
    for kind in ("filter", "adversarial_filter", "frequency_shift", "mask", "reverb", "adversarial_reverb", "time_shift"):
        load_recipe(path, [f"augmentation={{type: {kind}, locations: [{', '.join(points)}]}}"])
    load_recipe(path, ["augmentation={type: mask, locations: [cnn7, cnn, rnn], freq_masks: 0}"])
    load_recipe(path, ["augmentation={type: time_shift, locations: [cnn7, cnn, rnn]}"])


@pytest.mark.parametrize("recipe", AUDIO_RECIPES, ids=lambda p: p.stem)
def test_every_table2_recipe_trains_one_step_through_the_cli(recipe, tiny_features, tmp_path):
    args = ["train", str(recipe), "--runs", str(tmp_path), "--device", "cpu", "--set", "optim.epochs=1"]
    overrides = [f"model.{key}={value}" for key, value in TINY_FOUR_BLOCKS.items()]
    for item in [*overrides, f"data.features={tiny_features}", "data.batch_size=4", "optim.max_steps_per_epoch=1"]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / recipe.stem / "seed0"
    assert (run / "checkpoints" / "last.pt").is_file()
    assert load_recipe(run / "recipe.yaml").augmentation == load_recipe(recipe).augmentation
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["epoch"] == 1 and math.isfinite(row["loss_total"]) and row["loss_const"] > 0


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.cnn_filters=[0, 8]", "model.cnn_pooling=[[2, 2], [2, 2]]"], "model.cnn_filters.0: Input should be greater than or equal to 1"),
    (["model.rnn_hidden=0"], "model.rnn_hidden: Input should be greater than or equal to 1"),
    (["model.kernel_size=0"], "model.kernel_size: Input should be greater than or equal to 1"),
    (["model.kernel_size=4"], "model.kernel_size: must be odd"),
    (["model.cnn_filters=[4]", "model.cnn_pooling=[[1, 256]]"], "model.cnn_pooling: pools the 128 mel bands down to nothing"),
    (["seed=-1"], "seed: Input should be greater than or equal to 0"),
    (["seed=4294967296"], "seed: Input should be less than 4294967296"),
    (["optim.epochs=true"], "optim.epochs: true is not an integer"),
    (["optim.epochs=2.0"], "optim.epochs: 2.0 is not an integer"),
    # A boolean is no number, nor a number a boolean (pydantic's lax mode read true as lr 1.0, 1 as true).
    (["optim.lr=true"], "optim.lr: true is not a number"),
    (["model.dropout=false"], "model.dropout: false is not a number"),
    (["consistency.update_batchnorm=1"], "consistency.update_batchnorm: 1 is not true or false"),
    (["optim.compile=yes"], "optim.compile: 'yes': expected true, false, auto or reduce-overhead"),  # YAML 1.1's true
    (["optim.betas=[0.9]"], "optim.betas: expected 2 values, got 1"),
    (["optim.betas=[0.9, 0.9, 0.9]"], "optim.betas: expected 2 values, got 3"),
    (["model.cnn_filters.0=8"], "'model.cnn_filters.0=8': a list's items are not set one by one: give "
     "model.cnn_filters the whole list"),
    (["optim.lr=.inf"], "optim.lr: Input should be a finite number"),
    (["consistency.weight=.nan"], "consistency.weight: Input should be a finite number"),
    (["name=.."], "name: '..': letters, digits, _, - and . only, not first a dot (it names a folder under --runs)"),
    (["name=a/b"], "name: 'a/b': letters, digits"),
    (["name=2024"], "name: 2024 is not text (quote a name that YAML reads as a number)"),
    # Beyond what float32 or the optimizer holds: each crashed or made NaN at the first step.
    (["optim.betas=[1.0, 0.9]"], "optim.betas.0: Input should be less than 1"),
    (["optim.betas=[0.9, -0.1]"], "optim.betas.1: Input should be greater than or equal to 0"),
    (["augmentation={type: noise, locations: [mel], snr_db: -4000}"], "augmentation.snr_db: Input should be greater"),
    (["optim.lr=1e39"], "optim.lr: Input should be less than or equal to 1e+30"),
    (["regularization={type: l2, weight_decay: 1e39}"], "regularization.weight_decay: Input should be less than or "
     "equal to 1e+30"),
    (["augmentation={type: mixup, locations: [cnn], alpha: 1e-300}"], "augmentation.alpha: Input should be greater "
     "than or equal to 0.01"),
    (["augmentation={type: noise, locations: [input], sigma: 1.0e+39}"], "augmentation.sigma: Input should be less"),
    (["augmentation={type: mask, locations: [input], time_masks: 1000000000}"], "augmentation.time_masks: Input "
     "should be less than or equal to 100"),
    (["augmentation={type: reverb, locations: [mel], decay_s: [1.0e-50, 1.0]}"], "augmentation.decay_s.0: Input "
     "should be greater than or equal to 0.001"),
    (["augmentation={type: filter, locations: [mel], gain_db: [-1000, 6]}"], "augmentation.gain_db.0: Input should "
     "be greater than or equal to -100"),
])
def test_values_that_would_break_the_model_or_the_seeding_are_refused(tmp_path, overrides, message):
    path = write(tmp_path, "name: x\n")
    with pytest.raises(UserError) as e:
        load_recipe(path, overrides)
    assert any(line.startswith(f"--set {message}") for line in str(e.value).splitlines()), str(e.value)


@pytest.mark.parametrize("overrides", [
    ["optim.betas=[0.0, 0.999999]"],
    ["augmentation={type: noise, locations: [mel], snr_db: -100}"],
    ["augmentation={type: noise, locations: [mel], snr_db: 100}"],
    ["augmentation={type: noise, locations: [input, cnn1], sigma: 100}"],
    ["augmentation={type: mask, locations: [input], time_masks: 100, freq_masks: 100}"],
    ["augmentation={type: adversarial_reverb, locations: [mel], decay_s: [1.0e-3, 1.0e-3]}"],
    ["augmentation={type: adversarial_filter, locations: [mel], gain_db: [-100, 100]}"],
], ids=lambda o: o[0].split("=")[0] if "{" not in o[0] else o[0].split(",")[0].split(": ")[-1])
def test_the_schemas_bounds_train_finite(overrides, tiny_model_overrides):
    """At each bound the schema accepts, two training steps stay finite (beyond, it refuses: above)."""
    from test_dcase20_parity import SCALER, tiny_batch

    from sedaug.train import build_training, training_step

    recipe = load_recipe(REPO / "recipes" / "baseline.yaml", [*tiny_model_overrides, *overrides])
    torch.manual_seed(0)
    training = build_training(recipe, SCALER, torch.device("cpu"))
    for step in range(2):
        losses = training_step(recipe, training, tiny_batch(), step, 1e-3, 2.0)
        assert all(math.isfinite(float(x)) for x in losses), (overrides, losses)
    assert all(torch.isfinite(p).all() for p in training.model.parameters())


def test_a_name_that_reads_as_a_number_is_written_quoted(tmp_path):
    """recipe.yaml must read back as the recipe: a name like 1e5 (a float to sedaug's YAML) is quoted."""
    recipe = load_recipe(write(tmp_path, "name: '1e5'\n"))
    assert recipe.name == "1e5" and "name: '1e5'" in dump_recipe(recipe)
    assert load_recipe(write(tmp_path, dump_recipe(recipe))) == recipe


def test_a_bad_set_value_is_blamed_on_the_set_even_where_pydantic_reports_its_parent():
    vat = Path(__file__).parents[1] / "recipes" / "vat_input.yaml"
    with pytest.raises(UserError) as e:
        load_recipe(vat, ["augmentation.type=bogus"])  # a tagged union: reported at `augmentation`
    assert str(e.value).startswith("--set augmentation: Input tag 'bogus' found using 'type' does not match")
    # A check across keys failing at the file's key for what --set changed elsewhere names the --set keys too.
    reverb = Path(__file__).parents[1] / "recipes" / "audio" / "reverb_latent.yaml"
    with pytest.raises(UserError) as e:
        load_recipe(reverb, ["model.cnn_filters=[4, 8]", "model.cnn_pooling=[[4, 4], [1, 32]]"])
    assert str(e.value) == (f"{reverb}: augmentation.locations: cnn4 is the output of block 4, and the model has 2 "
                            "blocks (model.cnn_pooling) (with --set model.cnn_filters, model.cnn_pooling)")


def test_a_set_value_that_yaml_would_cut_at_a_comment_is_refused_and_a_quoted_one_or_a_bare_hash_is_kept(tmp_path):
    none = Path(__file__).parents[1] / "recipes" / "none.yaml"
    with pytest.raises(UserError) as e:  # silently `/data/run` before: another store, or none
        load_recipe(none, ["data.features=/data/run #2/features"])
    assert str(e.value) == ("--set 'data.features=/data/run #2/features': YAML reads '#2/features' as a comment: "
                            "leave it out, or quote the value (--set \"data.features='/data/run #2/features'\")")
    with pytest.raises(UserError, match="reads '# 8 steps' as a comment"):
        load_recipe(none, ["optim.max_steps_per_epoch=8 # 8 steps"])
    with pytest.raises(UserError) as e:  # a comment line inside a flow list: [8, 16] silently
        load_recipe(none, ["model.cnn_filters=[8,\n #32,\n 16]"])
    assert str(e.value) == r"--set 'model.cnn_filters=[8,\n #32,\n 16]': YAML reads '#32,' as a comment: leave it " \
        "out, or quote the value"
    for path in (r"D:\runs\new #2", "it's #1", '"a" #1', "$HOME #1"):  # the quoting said is the shell's and YAML's
        with pytest.raises(UserError) as e:
            load_recipe(none, [f"data.features={path}"])
        [said] = shlex.split(str(e.value).rsplit("(--set ", 1)[1].removesuffix(")"))
        assert load_recipe(none, [said]).data.features == Path(path)
    for value, path in (('"/data/run #2/features"', "/data/run #2/features"), ("/data/run#2", "/data/run#2"),
                        ("'/data/#2'", "/data/#2")):
        assert load_recipe(none, [f"data.features={value}"]).data.features == Path(path)


def test_a_section_set_without_its_type_or_with_a_type_that_needs_more_names_the_set(tmp_path):
    path = write(tmp_path, "name: base\n")
    for overrides, expected in [
        (["augmentation.type=vat"], f"{path}: augmentation.locations: Field required (with --set augmentation.type)"),
        (["augmentation.locations=[cnn]"], "--set augmentation: no type given: set augmentation.type too"),
        (["regularization.ema_decay=0.9"], "--set regularization: no type given: set regularization.type too"),
        (["augmentation.type=vat", "augmentation.epsilon=0.2"],
         f"{path}: augmentation.locations: Field required (with --set augmentation.type)"),
    ]:
        with pytest.raises(UserError) as e:
            load_recipe(path, overrides)
        assert str(e.value) == expected
    # A key of the file that the type --set gave has not: the --set is named too (the file alone was blamed).
    baseline = REPO / "recipes" / "baseline.yaml"
    for overrides, expected in [
        (["augmentation.type=vat"], "augmentation.snr_db: not a key of a vat augmentation (with --set augmentation.type)"),
        (["regularization.type=l2"],
         "regularization.ema_decay: not a key of a l2 regularization (with --set regularization.type)"),
    ]:
        with pytest.raises(UserError) as e:
            load_recipe(baseline, overrides)
        assert str(e.value) == f"{baseline}: {expected}"


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="a recipe is a YAML mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\n\x89PNG\x00\xff")
    with pytest.raises(UserError, match=r"binary.yaml: not a YAML recipe \(byte 8 is not UTF-8 text\)"):
        load_recipe(binary)
    with pytest.raises(UserError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_optim_compile_takes_true_false_auto_or_reduce_overhead_and_nothing_read_as_them():
    none = Path(__file__).parents[1] / "recipes" / "none.yaml"
    for value, parsed in (("true", True), ("false", False), ("auto", "auto"), ("reduce-overhead", "reduce-overhead")):
        assert load_recipe(none, [f"optim.compile={value}"]).optim.compile == parsed
    for value in ("1", "0", "default", "max-autotune"):
        with pytest.raises(UserError) as e:
            load_recipe(none, [f"optim.compile={value}"])
        assert str(e.value).splitlines() == [f"--set optim.compile: {parse_yaml(value, 'x')!r}: expected true, "
                                             "false, auto or reduce-overhead"]


def test_a_value_of_another_type_is_quoted_as_given_on_one_line():
    import numpy as np

    from sedaug.recipe import validate_recipe

    for value, said in ((Path("a/b"), "PosixPath('a/b')"), ("abc...", "abc..."), ("a\nb", "'a\\nb'"),
                        ([1, {"a": None}], "[1, {a: null}]")):
        with pytest.raises(UserError) as e:  # from Python (a Path), or YAML
            validate_recipe({"name": "x", "optim": {"lr": value}})
        assert str(e.value) == f"recipe: optim.lr: {said} is not a number", value
    with pytest.raises(UserError, match=r"^recipe: seed: np.int64\(3\) is not an integer$"):  # no YAML: repr
        validate_recipe({"name": "x", "seed": np.int64(3)})
