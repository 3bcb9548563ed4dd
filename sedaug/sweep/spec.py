"""The sweep file (docs/sweeps.md): base recipes, a search space over recipe keys, seeds, selection, algorithm,
resources. Strict like recipes: every problem, including a searched value a base recipe refuses, is one
`file: path: message` line, all reported at once.

`load_sweep(path, overrides)` returns a `LoadedSweep`: the validated `Sweep` and, per recipe name, the base recipe
(a raw dict, `set` applied, `data.features` made absolute) and its search space.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from sedaug.errors import UserError
from sedaug.files import absolute
from sedaug.recipe import Pair, Recipe, type_message, validate_recipe
from sedaug.strict_yaml import (
    apply_overrides,
    blamed_override,
    get_key,
    nearest,
    parse_yaml,
    read_yaml,
    set_key,
)

# Recipe keys a sweep may not search: `name` is the row, `seed` is the sweep's own `seeds`.
_ABSENT = object()  # get_key's default where a key is not there
RESERVED = {"name": "the row's name: set it in the recipe", "seed": "the sweep's `seeds` and `search_seed` set it"}
# results.json's metrics: evaluation.results.METRICS, restated so that reading a sweep file imports no metric code
METRICS = ("macro", "micro", "psds", "psds_ct", "psds_macro", "psds1", "psds2", "psds1_filtered", "psds2_filtered")
MAX_GRID = 10_000  # settings per recipe: beyond that a typo, not a study


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)  # as a recipe's


Seed = Annotated[int, Field(ge=0, lt=2**32)]
Count = Annotated[int, Field(ge=1)]


class Space(Section):
    """One searched key: exactly one of grid (every value tried), choice, uniform, loguniform (sampled)."""

    grid: list[Any] | None = Field(None, min_length=1)
    choice: list[Any] | None = Field(None, min_length=1)
    uniform: Pair[float] | None = None
    loguniform: Pair[float] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Space:
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform (got {', '.join(given) or 'none'})")
        values = self.grid or []  # (a choice may repeat a value to weight it)
        twice = [v for i, v in enumerate(values) if v in values[:i]]  # 0.001 and 1.0e-3 are one value
        if twice:
            raise ValueError(f"grid lists {', '.join(dict.fromkeys(map(str, twice)))} twice: each value is one "
                             "setting, list it once")
        bounds = self.uniform or self.loguniform
        if bounds is not None:
            low, high = bounds
            if not low < high:
                raise ValueError(f"[{low}, {high}]: the lower bound must be below the upper one")
            if self.loguniform is not None and low <= 0:
                raise ValueError(f"loguniform [{low}, {high}]: bounds must be positive")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None)

    def values_to_check(self) -> list[Any]:
        """The values a base recipe must accept: every listed value, or both bounds."""
        return list(self.grid or self.choice or self.uniform or self.loguniform)


class RecipeEntry(Section):
    recipe: Annotated[Path, Strict(False)]
    search: dict[str, Space] = {}  # merged over the sweep's top-level `search` (the entry wins)
    set: dict[str, Any] = {}  # merged over the sweep's top-level `set`


class Selection(Section):
    # The paper's: event-based macro F1 on synthetic_valid, the score best.pt keeps (read from metrics.jsonl).
    split: Literal["synthetic_valid", "validation"] = "synthetic_valid"
    metric: Literal[METRICS] = "macro"

    @property
    def evaluated_split(self) -> str | None:
        """The split a search trial is evaluated on for its score; None for the paper's selection, the per-epoch
        synthetic_valid F1 that metrics.jsonl holds."""
        return None if (self.split, self.metric) == ("synthetic_valid", "macro") else self.split


class Algorithm(Section):
    type: Literal["grid", "random", "optuna"] = "grid"
    trials: Count | None = None  # per recipe, random and optuna only
    seed: Seed = 0

    @model_validator(mode="after")
    def _trials(self) -> Algorithm:
        if self.type == "grid" and self.trials is not None:
            raise ValueError("trials: a grid tries every setting; trials is for random and optuna")
        if self.type != "grid" and self.trials is None:
            raise ValueError(f"trials: {self.type} needs a trial budget per recipe")
        return self


class Resources(Section):
    cpus: float = Field(1.0, gt=0)  # torch.set_num_threads gets the whole part (at least 1)
    gpus: float = Field(0.0, ge=0)  # a fraction shares a GPU between trials; above 1, whole GPUs
    memory: float | None = Field(None, gt=0)  # GiB per trial; default from the model, batch and family (plan.py)

    @model_validator(mode="after")
    def _whole(self) -> Resources:
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ValueError(f"gpus: {self.gpus}: a fraction of one GPU, or a whole number of GPUs")
        return self


class EarlyStopping(Section):
    type: Literal["asha"]
    grace_epochs: Count = 10  # no trial is stopped before this many epochs
    reduction_factor: float = Field(3.0, gt=1)


class Sweep(Section):
    recipes: list[RecipeEntry] = Field(min_length=1)
    search: dict[str, Space] = {}  # keys searched in every recipe
    set: dict[str, Any] = {}  # recipe keys fixed in every recipe (`--set model.x=...` adds here)
    seeds: list[Seed] = Field([0], min_length=1)  # the winner of each recipe is trained on each
    search_seed: Seed | None = None  # the search trials' seed (default: one above the largest of seeds)
    select: Selection = Selection()
    algorithm: Algorithm = Algorithm()
    resources: Resources = Resources()
    max_concurrent_trials: Count | None = None  # default: as many as the resources allow
    max_failures: int = Field(2, ge=0)  # retries of a trial whose worker dies
    early_stopping: EarlyStopping | None = None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("a seed is listed twice")
        return seeds

    @property
    def trial_seed(self) -> int:
        """The search trials' seed; by default not a final seed (the winner's curse, DESIGN §11)."""
        if self.search_seed is not None:
            return self.search_seed
        return max(self.seeds) + 1 if max(self.seeds) + 1 < 2**32 else min(set(range(len(self.seeds) + 1)) - set(self.seeds))


@dataclass(frozen=True)
class LoadedSweep:
    path: Path
    sweep: Sweep
    bases: dict[str, dict]  # recipe name -> the base recipe's raw dict (sets applied, features absolute)
    spaces: dict[str, dict[str, Space]]  # recipe name -> searched key -> space
    epochs: dict[str, int]  # recipe name -> optim.epochs

    def resolved(self) -> dict:
        """The sweep as it runs (overrides merged, defaults filled, the search seed as resolved): written to
        `<out>/sweep.yaml`."""
        return {**self.sweep.model_dump(mode="json", exclude_none=True), "search_seed": self.sweep.trial_seed}


# ---------------------------------------------------------------------------------------------- keys


def apply_params(base: dict, params: dict[str, Any], seed: int | None = None) -> dict:
    """A copy of the base recipe with the searched values (and the seed) set."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        set_key(raw, key, value)
    if seed is not None:
        raw["seed"] = seed
    return raw


def grid_settings(space: dict[str, Space]) -> list[dict[str, Any]]:
    """Every combination of the grid values, in the file's order (the first key varies slowest)."""
    keys = list(space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(space[k].grid for k in keys))]


# ---------------------------------------------------------------------------------------------- loading


def _loc(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _schema_errors(error: ValidationError, where: str, overridden: set[str] = frozenset()) -> list[str]:
    """One `where: path: message` line per problem; a value `--set KEY` gave is blamed on `--set KEY`."""
    lines = []
    for e in error.errors():
        msg = type_message(e)
        loc = _loc(tuple(e["loc"]))
        if (key := blamed_override(loc, overridden)) is not None:
            msg = msg.replace("Extra inputs are not permitted", "not a key of a sweep file (nor a recipe section)")
            lines.append(f"--set {key}: {msg}" if loc == key else f"--set {key}: {loc}: {msg}")
        else:
            if e["type"] == "extra_forbidden":
                msg = _unknown_key(tuple(e["loc"]))
            lines.append(f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}")
    return lines


def _unknown_key(loc: tuple) -> str:
    """A key the sweep file's schema has not there, and the nearest one it has (`seed` -> seeds, `gird` -> grid)."""
    section: Any = Sweep
    for part in loc[:-1]:  # down the schema: a section's field, a list's item, a mapping's value
        if isinstance(section, type) and issubclass(section, BaseModel):
            section = section.model_fields[part].annotation if part in section.model_fields else None
            if get_origin(section) in (Union, UnionType):  # an optional section
                section = next(a for a in get_args(section) if a is not type(None))
        elif get_origin(section) in (list, dict):
            section = get_args(section)[-1]
    known = list(section.model_fields) if isinstance(section, type) and issubclass(section, BaseModel) else []
    where = {Sweep: "a sweep file", Space: "a search space", RecipeEntry: "a recipes entry"}.get(section) or str(loc[-2])
    close = nearest(str(loc[-1]), known)
    return f"not a key of {where}" + (f" (did you mean {close}?)" if close else "")


def _replaced_keys(levels: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """A set key whose mapping would replace (or be replaced by) another set key inside it: `optim: {lr: 0.01}`
    beside `optim.epochs: 2` loses one of them, whichever is applied first. One line per pair, naming where each is."""
    keys = [(where, key) for where, items in levels for key in items]
    inside: dict[tuple[str, str, str], list[str]] = {}
    for w1, k1 in keys:
        for w2, k2 in keys:
            if k2.startswith(f"{k1}."):
                inside.setdefault((w1, k1, w2), []).append(k2)
    return [f"{w1} {k1} replaces the whole {k1} mapping, and {w2} gives {', '.join(k2s)} in it: set {k1}'s keys one "
            "by one" for (w1, k1, w2), k2s in inside.items()]


def recipe_problems(raw: dict, name: str, key: str | None) -> list[str]:
    """validate_recipe's `path: message` lines for a candidate recipe, worded for the sweep file."""
    try:
        validate_recipe(raw, "@")
    except UserError as e:
        out = []
        for line in str(e).splitlines():
            msg = line.removeprefix("@: ")
            if key is not None and msg.startswith(f"{key}: "):
                msg = msg[len(key) + 2 :]
            msg = re.sub(r"not a key of [^(]*?(?= \(|$)", f"not a key of recipe {name}", msg)  # its suggestion kept
            out.append(msg)
        return out
    return []


def _split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, Any]]:
    """`--set` items: a recipe key (its first part a recipe section) joins `set`; anything else edits the sweep."""
    sweep_items, recipe_items = [], {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key.path=value")
        if key.split(".")[0] in Recipe.model_fields:
            recipe_items[key] = parse_yaml(value, f"--set {key}")
        else:
            sweep_items.append(item)
    return sweep_items, recipe_items


def load_sweep(path: Path, overrides: list[str] = ()) -> LoadedSweep:
    path = Path(path)
    where = str(path)
    raw = read_yaml(path, "sweep file")
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a sweep file is a YAML mapping, got {type(raw).__name__}")
    sweep_items, recipe_items = _split_overrides(list(overrides))
    apply_overrides(raw, sweep_items)
    if recipe_items:
        if not isinstance(raw.get("set", {}), dict):
            raise UserError(f"{where}: set: expected a mapping of recipe keys")
        raw["set"] = {**raw.get("set", {}), **recipe_items}
    problems: list[str] = []
    try:
        sweep = Sweep.model_validate(raw)
        indices, kinds, unchecked = list(range(len(sweep.recipes))), True, set()
    except ValidationError as e:
        # Report every problem at once: check the recipes of the entries that are valid on their own too.
        problems = _schema_errors(e, where, {item.partition("=")[0] for item in sweep_items})
        sweep, indices, kinds, unchecked = _salvage(raw, e)
        if sweep is None:
            raise UserError("\n".join(problems)) from None

    bases, spaces, epochs = {}, {}, {}
    for i, entry in zip(indices, sweep.recipes, strict=True):
        here = f"{where}: recipes[{i}]"
        try:
            base = read_yaml(entry.recipe, "recipe")
        except UserError as e:
            relative = not Path(entry.recipe).is_absolute() and not Path(entry.recipe).exists()
            problems.append(f"{here}.recipe: {e}" + (f" (a relative path is read from the working directory, "
                                                     f"{Path.cwd()})" if relative else ""))
            continue
        if not isinstance(base, dict):
            problems.append(f"{here}.recipe: {entry.recipe} is not a recipe mapping")
            continue
        if "recipes" in base:  # each of its keys would be "not a key of recipe ..."
            problems.append(f"{here}.recipe: {entry.recipe} is a sweep file, not a recipe (recipes/*.yaml are)")
            continue
        fixed = {**sweep.set, **entry.set, **recipe_items}  # --set over the file's sets
        levels = [(f"{where}: set", sweep.set), (f"{here}.set", entry.set), ("--set", recipe_items)]
        problems += _replaced_keys(levels)
        for key, value in fixed.items():
            if key in ("seed",):
                problems.append(f"{'--set ' + key if key in recipe_items else here + '.set.' + key}: {RESERVED[key]}")
                continue
            try:
                set_key(base, key, value)
            except ValueError as e:
                problems.append(f"{here}.set.{key}: {e}")
        set_problems = recipe_problems(base, str(base.get("name", entry.recipe)), None)
        if set_problems:
            for p in set_problems:
                key, _, message = p.partition(": ")
                given = blamed_override(key, recipe_items)
                with_set = f" (with --set {', '.join(sorted(recipe_items))})" if recipe_items else ""
                problems.append((f"--set {given}: {message}" if given == key else f"--set {given}: {p}") if given
                                else f"{here}: {entry.recipe} with set: {p}{with_set}")
            continue
        name = base["name"]
        if name in bases:
            problems.append(f"--set name: every recipe of the sweep would be named {name!r} (names are the rows)"
                            if "name" in recipe_items else
                            f"{here}.recipe: recipe name {name!r} is already in the sweep (names are the rows)")
            continue
        set_key(base, "data.features", str(absolute(validate_recipe(base).data.features)))
        space = {**sweep.search, **entry.search}
        checked = {k: v for k, v in space.items() if (i, k) not in unchecked}  # not the sweep-wide value instead
        # A key of the sweep-wide search is named there, with the row it fails for.
        places = {k: f"{here}.search.{k}" if k in entry.search else
                  f"{where}: search.{k} (for {name}, recipes[{i}]){_with_set(sweep_items, 'search')}" for k in checked}
        problems += _check_space(sweep, base, name, checked, fixed, places, f"{here}.search", kinds, set(recipe_items))
        bases[name], spaces[name] = base, space
        recipe = validate_recipe(base)
        epochs[name] = recipe.optim.epochs
        if sweep.resources.gpus == 0:
            problems += [f"{here}: {p}{_with_set(sweep_items, 'resources')}" for p in _cpu_problems(recipe)]
        grace = sweep.early_stopping.grace_epochs if sweep.early_stopping else None
        if grace is not None and grace > epochs[name]:
            problems.append(f"{where}: early_stopping.grace_epochs: {grace} is more than {name}'s {epochs[name]} epochs"
                            f"{_with_set(sweep_items, 'early_stopping')}")
    if problems:
        raise UserError("\n".join(dict.fromkeys(problems)))  # a --set's problem once, not once per recipe
    return LoadedSweep(path, sweep, bases, spaces, epochs)


def _with_set(sweep_items: list[str], section: str) -> str:
    """" (with --set KEY, ...)" naming the `--set` items that edited a section of the sweep, where a problem found
    in that section may come from them; "" when none did."""
    keys = [item.partition("=")[0] for item in sweep_items if item.partition("=")[0].split(".")[0] == section]
    return f" (with --set {', '.join(keys)})" if keys else ""


def _cpu_problems(recipe: Recipe) -> list[str]:
    import torch

    from sedaug.device import device_problems

    return [f"{p} (resources.gpus is 0: the trials run on CPUs)" for p in device_problems(recipe, torch.device("cpu"))]


def _salvage(raw: dict, error: ValidationError) -> tuple[Sweep | None, list[int], bool, set]:
    """The sweep without its invalid parts, the kept entries' indices, whether the algorithm survived, and the
    entries' searched keys left unchecked ((entry index, key)); None for the sweep when nothing sensible is left. A
    bad searched key leaves its search only, so that the entry's other keys are still checked; any other problem
    leaves its top-level key or its whole recipe entry."""
    raw = copy.deepcopy(raw)
    bad_top, bad_entries, unchecked = set(), set(), set()
    for loc in (tuple(e["loc"]) for e in error.errors()):
        if not loc:
            continue
        if loc[0] == "recipes" and len(loc) > 1:
            entry, searched = raw["recipes"][loc[1]], loc[2:4]
            if len(searched) == 2 and searched[0] == "search" and isinstance(entry.get("search"), dict):
                entry["search"].pop(searched[1], None)
                unchecked.add((loc[1], searched[1]))
            else:
                bad_entries.add(loc[1])
        elif loc[0] == "search" and len(loc) > 1 and isinstance(raw.get("search"), dict):
            raw["search"].pop(loc[1], None)
        else:
            bad_top.add(loc[0])
    kept = {k: v for k, v in raw.items() if k not in bad_top}
    indices: list[int] = []
    if isinstance(raw.get("recipes"), list):
        indices = [i for i in range(len(raw["recipes"])) if i not in bad_entries]
        kept["recipes"] = [raw["recipes"][i] for i in indices]
    try:
        return Sweep.model_validate(kept), indices, "algorithm" not in bad_top, unchecked
    except ValidationError:
        return None, [], False, unchecked


def _check_space(sweep: Sweep, base: dict, name: str, space: dict[str, Space], fixed: dict, places: dict[str, str],
                 here: str, kinds: bool = True, given: set[str] = frozenset()) -> list[str]:
    """Each searched key and value against the base recipe; `places`: where each key is searched (said in its
    problems), `here` the row's search; `given`: the keys `--set` fixed."""
    problems = []
    algorithm = sweep.algorithm.type if kinds else None
    # The base recipe's own are reported once, by load_sweep; a searched value reports only what it adds.
    base_cpu_problems = _cpu_problems(validate_recipe(base)) if sweep.resources.gpus == 0 else []
    for key, dom in space.items():
        at = places[key]
        if key.split(".")[0] in RESERVED:
            problems.append(f"{at}: {RESERVED[key.split('.')[0]]}")
            continue
        if key == "optim.epochs":
            problems.append(f"{at}: a row's trials all run its one optim.epochs (early stopping and selection count "
                            "to it): set it, and let early_stopping cut the poor settings short")
            continue
        if key in given:
            problems.append(f"--set {key}: {name} searches it ({at}): a fixed value would replace every searched one; "
                            "leave it out of --set")
            continue
        if key in fixed:
            problems.append(f"{at}: the key is also in set: fix it or search it, not both")
            continue
        # A set mapping that holds the searched key: each searched value would silently replace the set one.
        if enclosing := [k for k in fixed if key.startswith(f"{k}.") and get_key(fixed[k], key[len(k) + 1:], _ABSENT)
                         is not _ABSENT]:
            where = "--set" if enclosing[0] in given else "set"
            problems.append(f"{at}: {where} {enclosing[0]} gives {key} too: set it or search it, not both")
            continue
        inside = sorted(k for k in fixed if k.startswith(f"{key}."))
        if inside:  # each searched value would replace the mapping, dropping what set gives inside it
            problems.append(f"{at}: each value replaces the whole {key} mapping, and set gives {', '.join(inside)} "
                            "in it: search its keys one by one, or put those into each value")
            continue
        if algorithm is None:
            pass  # the algorithm itself is wrong: which spaces it takes is not known
        elif algorithm == "grid" and dom.kind != "grid":
            problems.append(f"{at}: {dom.kind} is sampled: the grid algorithm takes {{grid: [...]}} (or use random/optuna)")
            continue
        elif algorithm != "grid" and dom.kind == "grid":
            problems.append(f"{at}: {algorithm} samples: use {{choice: [...]}} instead of grid")
            continue
        read_as: dict[str, Any] = {}  # each grid value as the recipe reads it -> the value as listed
        for value in dom.values_to_check():
            try:
                candidate = apply_params(base, {key: value})
            except ValueError as e:
                problems.append(f"{at}: {e}")
                break
            bad = recipe_problems(candidate, name, key)
            unknown = [p for p in bad if p.startswith(f"not a key of recipe {name}")]
            if unknown:  # whatever the value: said once
                problems.append(f"{at}: {unknown[0]}")
                break
            if not bad and sweep.resources.gpus == 0:
                bad = [p for p in _cpu_problems(validate_recipe(candidate)) if p not in base_cpu_problems]
            problems += [f"{at}: {value!r} for {name}: {p}" for p in bad]
            if not bad and dom.kind == "grid":  # data/f and ./data/f are one setting: it would be trained twice
                read = json.dumps(get_key(validate_recipe(candidate).model_dump(mode="json"), key), sort_keys=True)
                if read in read_as:
                    problems.append(f"{at}: {read_as[read]!r} and {value!r} are one value for {name} ({read}): list "
                                    "it once")
                read_as.setdefault(read, value)
    if problems or not space:
        return problems
    if algorithm == "grid" and all(d.kind == "grid" for d in space.values()):
        settings, what = grid_settings(space), "the setting"
        if len(settings) > MAX_GRID:
            return [f"{here}: {len(settings):,} settings for {name} (at most {MAX_GRID:,})"]
    elif algorithm == "optuna" and math.prod(len(d.values_to_check()) for d in space.values()) <= MAX_GRID:
        # Every combination of the choices, a continuous key at each of its bounds: all Optuna may suggest for a
        # space of choices, and the settings most likely refused otherwise (a refused suggestion fails its trial).
        corners = itertools.product(*(d.values_to_check() for d in space.values()))
        settings, what = [dict(zip(space, c, strict=True)) for c in corners], "the setting (Optuna may suggest it)"
    else:
        return problems
    return list(dict.fromkeys(refused_settings(base, name, settings, here, what)))  # (a choice may repeat a value)


def refused_settings(base: dict, name: str, settings: list[dict[str, Any]], here: str, what: str) -> list[str]:
    """One line per setting the recipe refuses although each of its values passed alone (a mask of no time and no
    frequency mask)."""
    problems = []
    for params in settings:
        bad = recipe_problems(apply_params(base, params), name, None)
        if bad:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            problems.append(f"{here}: {what} {shown} for {name}: {bad[0]}")
    return problems
