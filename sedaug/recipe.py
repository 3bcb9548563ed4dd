"""The recipe schema: one typed, strict description of an experiment; every default lives here.

`load_recipe(path, overrides)` reads YAML (duplicate keys rejected, `1e-3` read as a float), applies
`--set a.b=value` overrides, and validates; every problem is reported at once as `path: message` lines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from sedaug.errors import UserError
from sedaug.paper import PAPER_TABLE1
from sedaug.strict_yaml import (
    apply_overrides,
    blamed_override,
    dump_yaml,
    nearest,
    one_line_yaml,
    parse_yaml,
    read_yaml,
)

# The model's perturbation points (sedaug.model.POINTS): `cnn1`…`cnn7` are the gated blocks' outputs (B, C, T, F).
Location = Literal["mel", "input", "cnn1", "cnn2", "cnn3", "cnn4", "cnn5", "cnn6", "cnn7", "cnn", "rnn"]


class Section(BaseModel):
    # Finite floats only (`.inf` for lr is refused here, not by a NaN in step 0). Strict: a value is of its key's
    # type, `lr: true` is not 1.0, `epochs: 2.0` not 2, `update_batchnorm: 1` not true (an int is a float, though).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


T = TypeVar("T")
# YAML has no tuple or path: `Strict(False)` reads a list and a string as one (a pair's items stay strict).
Pair = Annotated[tuple[T, T], Strict(False)]
Count = Annotated[int, Field(ge=1)]
Beta = Annotated[float, Field(ge=0, lt=1)]  # an Adam moment decay


class DataConfig(Section):
    features: Annotated[Path, Strict(False)] = Path("data/features")
    # A mini-batch is three slices: unlabeled 1/2, weak 1/4, synthetic 1/4 (dcase20: 12/6/6 of 24).
    batch_size: int = Field(24, ge=4, multiple_of=4)


MEL_BANDS = 128  # the features' mel bands (FeatureParams.n_mels)


def bands_left(pooling: list[tuple[int, int]], blocks: int | None = None, bands: int = MEL_BANDS) -> int:
    """The frequency rows left of `bands` after the first `blocks` (default: all) CNN blocks' pooling."""
    for _, pool_f in pooling[:blocks]:
        bands //= pool_f
    return bands


class ModelConfig(Section):
    cnn_filters: list[Count] = Field([16, 32, 64, 128, 128, 128, 128], min_length=1)
    cnn_pooling: list[Pair[Count]] = [(2, 2), (2, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2)]
    kernel_size: Count = 3
    dropout: float = Field(0.5, ge=0, lt=1)
    rnn_hidden: Count = 128
    rnn_layers: Count = 2
    # dcase20 quirk: Keras-style 0.99 passed as PyTorch momentum keeps almost only the last batch's statistics.
    batchnorm_momentum: float = Field(0.99, gt=0, le=1)
    # dcase20 quirk: the attention softmax runs over classes, not over time.
    attention_softmax: Literal["classes", "time"] = "classes"
    # dcase20's weights_init: its N(0, 0.01) linears leave the GLU outputs near zero, so the CRNN sits on the
    # base-rate plateau for hundreds of steps (harmless over 200 DESED epochs; "pytorch" leaves it in tens).
    init: Literal["dcase20", "pytorch"] = "dcase20"

    @model_validator(mode="after")
    def _same_depth(self) -> ModelConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError("model.kernel_size: must be odd (the padding of k // 2 keeps the size only then)")
        if bands_left(self.cnn_pooling) < 1:
            raise ValueError(f"model.cnn_pooling: pools the {MEL_BANDS} mel bands down to nothing")
        if len(self.cnn_filters) != len(self.cnn_pooling):
            raise ValueError(
                f"cnn_filters has {len(self.cnn_filters)} blocks but cnn_pooling has {len(self.cnn_pooling)}"
            )
        return self

    @model_validator(mode="after")
    def _one_output_grid(self) -> ModelConfig:
        # Frame labels and post-processing use one output grid (sedaug/data/grid.py), derived from the default
        # pooling: another time pooling would train against labels on the wrong frames.
        pooled = math.prod(time for time, _ in self.cnn_pooling)
        expected = math.prod(time for time, _ in type(self).model_fields["cnn_pooling"].default)
        if pooled != expected:
            raise ValueError(
                f"model.cnn_pooling: pools time by {pooled}, but frame labels and post-processing use the output grid "
                f"of the default pooling (time pooled {expected}x, sedaug/data/grid.py): keep the time factors' product"
            )
        return self


class NoAugmentation(Section):
    type: Literal["none"]


class NoiseAugmentation(Section):
    type: Literal["noise"]
    locations: list[Location]
    # Bounded where float32 still holds the noise (beyond, the clip or the noise is all there is).
    snr_db: float = Field(30.0, ge=-100, le=100)  # at `mel`: the dcase20 per-clip, per-bin SNR
    sigma: float = Field(0.1, gt=0, le=100)  # elsewhere: std = sigma * RMS of the tensor, per clip


class AdversarialAugmentation(Section):
    type: Literal["adversarial"]
    locations: list[Location]
    epsilon: float = Field(0.1, gt=0)
    epsilon_mode: Literal["relative", "absolute"] = "relative"


class VATAugmentation(Section):
    type: Literal["vat"]
    locations: list[Location]
    epsilon: float = Field(0.1, gt=0)
    epsilon_mode: Literal["relative", "absolute"] = "relative"
    # ξ·‖h‖₂ per clip (relative) or ξ: the finite-difference step of the power iteration. 1e-6 (the VAT authors'
    # value, in float64 practice) is at float32 round-off; 1e-3 keeps the step measuring curvature.
    xi: float = Field(1e-3, gt=0)
    iterations: Count = 1
    # shared: probe passes replay the clean pass's dropout masks and batch statistics (eq. 8, a deterministic f).
    # independent: fresh masks per probe (sedaug 0.1): the direction is then the first-order one (dropout residual).
    dropout: Literal["shared", "independent"] = "shared"


class MixupAugmentation(Section):
    type: Literal["mixup"]
    locations: list[Location]
    # λ ~ Beta(α, α). Below 0.01 torch's sampler underflows (its draws turn into 0.5); above 1e6, λ is 0.5 ± 5e-4.
    alpha: float = Field(1.0, ge=0.01, le=1e6)


# ------------------------------------------------ audio transforms (docs/audio_augmentations.md)


def _ordered(name: str, pair: tuple[float, float]) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"augmentation.{name}: the minimum {pair[0]} is above the maximum {pair[1]}")


# Adversarial transforms: projected sign-gradient ascent of the parameters on the consistency divergence, `steps`
# steps of `step_size` × the parameter's range (max − min), each clamped back into the range.
SearchSteps = Count
StepSize = Annotated[float, Field(gt=0, le=1)]
Gain = Annotated[float, Field(ge=-100, le=100)]  # dB; 10^(1000/20) overflowed to inf and made the loss NaN
# Seconds of T60: shorter is no decay at all (a frame is 16 ms); the longest halls ring ~10 s, and past float32's
# range adversarial_reverb's bounds overflowed.
DecayTime = Annotated[float, Field(ge=1e-3, le=1000)]


class FilterAugmentation(Section):
    """FilterAugment (Nam et al., ICASSP 2022): a random gain per frequency band, per clip."""

    type: Literal["filter"]
    locations: list[Location]
    bands: Pair[Count] = (3, 5)  # band count, drawn per step in [min, max] (FilterAugment: randint(3, 6))
    min_bandwidth: Count = 6  # mel bins; at a CNN block, rows of its frequency axis: max(1, this // pooling so far)
    gain_db: Pair[Gain] = (-6.0, 6.0)  # per clip and band, uniform
    shape: Literal["step", "linear"] = "linear"  # constant per band, or linear between gains at the band edges

    @model_validator(mode="after")
    def _ranges(self) -> FilterAugmentation:
        _ordered("bands", self.bands)
        _ordered("gain_db", self.gain_db)
        if self.bands[1] * self.min_bandwidth > MEL_BANDS:  # band_edges would narrow them without a word
            raise ValueError(f"augmentation.bands: {self.bands[1]} bands of at least min_bandwidth "
                             f"{self.min_bandwidth} mel bins do not fit in the {MEL_BANDS} mel bands")
        return self


class AdversarialFilterAugmentation(FilterAugmentation):
    """The band gains searched within `gain_db` for the largest divergence, from a random draw."""

    type: Literal["adversarial_filter"]
    steps: SearchSteps = 1
    step_size: StepSize = 0.5


class ReverbAugmentation(Section):
    """An exponential decay along time, per clip: the linear mel's analogue of a room response."""

    type: Literal["reverb"]
    locations: list[Location]
    # The time for the decay to fall by 60 dB (T60), per clip, uniform.
    decay_s: Pair[DecayTime] = (0.1, 1.0)

    @model_validator(mode="after")
    def _ranges(self) -> ReverbAugmentation:
        _ordered("decay_s", self.decay_s)
        return self


class AdversarialReverbAugmentation(ReverbAugmentation):
    """The decay time searched within `decay_s` for the largest divergence, from a random draw."""

    type: Literal["adversarial_reverb"]
    steps: SearchSteps = 1
    step_size: StepSize = 0.5


class FrequencyShiftAugmentation(Section):
    """k mel bins (or latent frequency rows) up or down, per clip: the pitch-shift analogue."""

    type: Literal["frequency_shift"]
    locations: list[Location]
    # k uniform in [-max_bins, max_bins] mel bins; at a CNN block, rows: max(1, max_bins // pooling so far).
    max_bins: Count = 8
    # shift: the edge bin fills the bins shifted in; roll: the bins shifted out wrap around.
    mode: Literal["shift", "roll"] = "shift"


class TimeShiftAugmentation(Section):
    """k output frames earlier or later, one k per step; the strong target is shifted by the same k."""

    type: Literal["time_shift"]
    locations: list[Location]  # several: one drawn per step
    # |k| uniform in 1..max_frames output frames (dcase20: 0.06375 s each); at most 4 s of a 10 s clip.
    max_frames: Count = Field(16, le=64)


class MaskAugmentation(Section):
    """SpecAugment's time and frequency masks, per clip."""

    type: Literal["mask"]
    locations: list[Location]
    time_masks: int = Field(2, ge=0, le=100)
    time_width: Count = 40  # input frames (0.64 s); at a point with pooled time, max(1, this // pooling so far)
    freq_masks: int = Field(2, ge=0, le=100)
    freq_width: Count = 16  # mel bins; at a CNN block, max(1, this // pooling so far)

    @model_validator(mode="after")
    def _some_mask(self) -> MaskAugmentation:
        if self.time_masks + self.freq_masks == 0:
            raise ValueError("augmentation.time_masks: mask needs at least one time or frequency mask")
        return self


Augmentation = Annotated[
    NoAugmentation
    | NoiseAugmentation
    | AdversarialAugmentation
    | VATAugmentation
    | MixupAugmentation
    | FilterAugmentation
    | AdversarialFilterAugmentation
    | ReverbAugmentation
    | AdversarialReverbAugmentation
    | FrequencyShiftAugmentation
    | TimeShiftAugmentation
    | MaskAugmentation,
    Field(discriminator="type"),
]
# The transforms that act along a frequency axis (mask: when it has frequency masks).
FREQUENCY_TYPES = ("filter", "adversarial_filter", "frequency_shift")


class NoRegularization(Section):
    type: Literal["none"]


class MeanTeacher(Section):
    type: Literal["mean_teacher"]
    ema_decay: float = Field(0.999, gt=0, lt=1)


class L2Regularization(Section):
    type: Literal["l2"]
    weight_decay: float = Field(1e-4, ge=0, le=1e30)  # Adam takes it as a float32 (1e39 overflowed)


Regularization = Annotated[NoRegularization | MeanTeacher | L2Regularization, Field(discriminator="type")]


class ConsistencyConfig(Section):
    data: Literal["all", "unlabeled"] = "all"
    weight: float = Field(2.0, ge=0)
    rampup_epochs: float = Field(50, ge=0)
    # Whether the student's perturbed pass (l2/none) updates its BatchNorm running statistics. dcase20's student
    # only saw clean passes; with momentum 0.99 an updating perturbed pass would leave it perturbed statistics.
    update_batchnorm: bool = False


class OptimConfig(Section):
    lr: float = Field(1e-3, gt=0, le=1e30)  # Adam takes it as a float32 (1e39 overflowed)
    betas: Pair[Beta] = (0.9, 0.999)
    epochs: Count = 200
    rampup_epochs: float = Field(50, ge=0)
    # Cap on steps per epoch (None: until the shortest stream is exhausted, as dcase20); for quick runs.
    max_steps_per_epoch: Count | None = None
    # auto: what sedaug.device.resolve_step_config picks for the device and the run's length (README, "Speed").
    # fp32 is strict float32; tf32 (CUDA only) lets convolutions and matmuls round to TF32; bf16: autocast.
    precision: Literal["auto", "fp32", "tf32", "bf16"] = "auto"
    # true: the CNN runs under torch.compile; reduce-overhead (CUDA only): compiled, with CUDA graphs.
    compile: bool | Literal["auto", "reduce-overhead"] = "auto"

    @field_validator("compile", mode="before")
    @classmethod
    def _one_of(cls, value: Any) -> Any:  # one message, and no 1 or "yes" read as true
        if isinstance(value, bool) or value in ("auto", "reduce-overhead"):
            return value
        raise ValueError(f"{value!r}: expected true, false, auto or reduce-overhead")


class EvalConfig(Section):
    threshold: float = Field(0.5, gt=0, lt=1)
    median_window: Count = 7
    batch_size: Count = 64


class Recipe(Section):
    # A folder name under --runs: no separators, no leading dot (`..` would write outside it).
    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$", max_length=200)
    # numpy's generators take seeds below 2**32.
    seed: int = Field(0, ge=0, lt=2**32)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augmentation: Augmentation = NoAugmentation(type="none")
    regularization: Regularization = NoRegularization(type="none")
    consistency: ConsistencyConfig = ConsistencyConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    # The row of the paper's Table 1 this recipe reproduces (sedaug/paper.py: 1-9 English, 10 the French extra row);
    # `sedaug table --paper` prints that row's values beside it.
    paper_row: int | None = Field(None, ge=1, le=len(PAPER_TABLE1))

    @model_validator(mode="after")
    def _coherent(self) -> Recipe:
        aug = self.augmentation
        if aug.type != "none":
            if not aug.locations:
                raise ValueError(f"augmentation.locations: {aug.type} needs at least one location")
            if len(set(aug.locations)) != len(aug.locations):
                raise ValueError("augmentation.locations: a location is listed twice")
            if aug.type in ("adversarial", "vat", "mixup") and "mel" in aug.locations:
                raise ValueError(f"augmentation.locations: {aug.type} acts on input, cnn or rnn, not mel")
            self._points_exist(aug)
        return self

    def _points_exist(self, aug: Any) -> None:
        """`cnn<k>` names one of the model's blocks; a frequency transform acts where a frequency axis is left."""
        pooling = self.model.cnn_pooling
        along_frequency = aug.type in FREQUENCY_TYPES or (aug.type == "mask" and aug.freq_masks > 0)
        what = "mask with freq_masks > 0" if aug.type == "mask" else aug.type
        for point in aug.locations:
            if point in ("cnn", "rnn"):
                if along_frequency:
                    raise ValueError(
                        f"augmentation.locations: {what} acts along frequency, and {point} has no frequency "
                        f"axis (mel, input and cnn1…cnn{len(pooling)} have one)"
                    )
                continue
            block = int(point[3:]) if point.startswith("cnn") else 0
            if block > len(pooling):
                raise ValueError(
                    f"augmentation.locations: {point} is the output of block {block}, and the model has "
                    f"{len(pooling)} blocks (model.cnn_pooling)"
                )
            rows = bands_left(pooling, block)
            if along_frequency and rows < 2:
                raise ValueError(
                    f"augmentation.locations: {what} acts along frequency, and model.cnn_pooling leaves "
                    f"{point} {rows} frequency row"
                )


# What a strict type error says the key takes.
_EXPECTED = {"float_type": "a number", "int_type": "an integer", "bool_type": "true or false", "string_type": "text "
             "(quote a name that YAML reads as a number)", "list_type": "a list", "tuple_type": "a list"}

_BOUNDS = {"greater_than": "greater than", "greater_than_equal": "greater than or equal to", "less_than": "less than",
           "less_than_equal": "less than or equal to"}


def _unquoted(text: str) -> Any:
    try:
        return parse_yaml(text, "")
    except UserError:
        return text


def type_message(e: dict) -> str:
    """A pydantic error's message, saying for a value of the wrong type what was given and what the key takes."""
    if e["type"] in _EXPECTED:
        given, expected = e["input"], _EXPECTED[e["type"]]
        if isinstance(given, str) and isinstance(_unquoted(given), int | float | bool):  # lr: '1e-3'
            return f"{one_line_yaml(given)} is quoted text, not {expected}: leave out the quotes"
        return f"{one_line_yaml(given)} is not {expected}"
    if e["type"] in _BOUNDS:  # pydantic writes 1e30 with all its zeros
        (bound,) = e["ctx"].values()
        shown = f"{bound:g}" if isinstance(bound, float) and float(f"{bound:g}") == bound else str(bound)
        return f"Input should be {_BOUNDS[e['type']]} {shown}"
    if e["type"] == "missing" and e["loc"] and isinstance(e["loc"][-1], int):  # a pair given one value
        return f"expected {e['loc'][-1] + 1} values, got {e['loc'][-1]}"
    if e["type"] == "too_long" and e["ctx"].get("field_type") == "Tuple":
        return f"expected {e['ctx']['max_length']} values, got {e['ctx']['actual_length']}"
    return e["msg"].removeprefix("Value error, ")


def _format_errors(error: ValidationError, where: str, overridden: frozenset[str] = frozenset()) -> str:
    """One line per problem, naming the recipe file and the key, or `--set KEY` where an override put the value."""
    tags = {"none", "noise", "adversarial", "vat", "mixup", "mean_teacher", "l2", "filter", "adversarial_filter",
            "reverb", "adversarial_reverb", "frequency_shift", "time_shift", "mask"}
    lines = []
    for e in error.errors():
        # Drop the discriminator tag pydantic inserts into the path of a tagged union.
        loc = [str(p) for i, p in enumerate(e["loc"]) if not (i == 1 and p in tags)]
        msg = type_message(e)
        key = ".".join(loc)
        if e["type"] == "missing" and loc and loc[-1].isdigit():  # a pair given one value: named whole
            key = ".".join(loc[:-1])
        elif e["type"] == "string_pattern_mismatch" and loc == ["name"]:
            msg = f"{e['input']!r}: letters, digits, _, - and . only, not first a dot (it names a folder under --runs)"
        if e["type"] == "union_tag_not_found":  # a section given keys but no type
            msg = f"no type given: set {key}.type too"
        if e["type"] == "extra_forbidden":
            tag = e["loc"][1] if len(e["loc"]) > 2 and e["loc"][1] in tags else None
            msg = _unknown_key(key, tag)
        across = msg.startswith(("augmentation.", "regularization.", "model.")) and ": " in msg  # a model validator's
        if across:
            key, msg = msg.split(": ", 1)
        # A key the file lacks, asked for by the type --set gave its section (augmentation.type=vat needs locations),
        # or one it has that the new type does not (a noise augmentation's snr_db).
        typed = [o for o in (f"{loc[0]}.type", loc[0]) if o in overridden] \
            if e["type"] in ("missing", "extra_forbidden") and loc else []
        if blamed_override(key, overridden) is not None:
            lines.append(f"--set {key}: {msg}")
        else:  # a check across keys may fail at a key of the file for a value --set gave another
            blamed = sorted(overridden) if across else typed
            given = f" (with --set {', '.join(blamed)})" if blamed else ""
            lines.append(f"{where}: {key}: {msg}{given}" if key else f"{where}: {msg}{given}")
    return "\n".join(lines)


def _unknown_key(key: str, tag: str | None) -> str:
    """What to say of a key no section has: where it is not a key, and the nearest one that is."""
    parent, _, name = key.rpartition(".")
    known = [k.rpartition(".")[2] for k in _schema_keys(Recipe) if k.rpartition(".")[0] == parent and k != key]
    close = nearest(name, known)
    where = f"a {tag} {parent}" if tag else parent or "a recipe"
    if not close:
        return f"not a key of {where}"
    return f"not a key of {where} (did you mean {f'{parent}.' if parent else ''}{close}?)"


def _schema_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every dotted key of a recipe section and the sections inside it (each type of a union's)."""
    def models(annotation) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in get_args(annotation) for m in models(arg)]

    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        for section in models(field.annotation):
            keys |= _schema_keys(section, f"{prefix}{name}.")
    return keys


def validate_recipe(raw: Any, where: str = "recipe", overridden: frozenset[str] = frozenset()) -> Recipe:
    """`raw` as a Recipe; a UserError, one line per problem, naming `where` or the `--set` key (`overridden`)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a recipe is a YAML mapping, got {type(raw).__name__}")
    if "recipes" in raw and "name" not in raw:  # each of its keys would be "not a key of a recipe"
        raise UserError(f"{where} is a sweep file, not a recipe: run it with `sedaug sweep {where}`")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise UserError(_format_errors(e, where, overridden)) from None


def load_recipe(path: Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    raw = read_yaml(path, "recipe") or {}
    if isinstance(raw, dict):
        raw = apply_overrides(raw, list(overrides))
    return validate_recipe(raw, str(path), frozenset(item.partition("=")[0] for item in overrides))


def dump_recipe(recipe: Recipe) -> str:
    return dump_yaml(recipe.model_dump(mode="json"))


def seed_settings(recipe: Recipe) -> dict:
    """What must agree between the seeds of one recipe (a table's row, an ensemble), what trains and scores the
    model: not its name, seed, row label, store path or eval batch size, nor its consistency settings where no
    augmentation makes a consistency loss."""
    dump = recipe.model_dump(mode="json", exclude={"name", "seed", "paper_row"})
    dump["data"].pop("features"), dump["eval"].pop("batch_size")
    if recipe.augmentation.type == "none":
        dump.pop("consistency")
    return dump


def what_a_run_trains(recipe: Recipe) -> dict:
    """The recipe as a run's weights depend on it, to compare runs: `optim.epochs` aside (a resume may ask for more,
    a sweep trial's recipe.yaml may hold fewer), `paper_row` (a label of the table's row) and `data.features` (where
    the store is found: a moved run resumes; the checkpoint's record of the store's identity guards its data)."""
    dump = recipe.model_dump(mode="json")
    dump["optim"].pop("epochs"), dump.pop("paper_row", None), dump["data"].pop("features")
    return dump
