"""`sedaug sweep`: the paper's protocol on Ray Tune (docs/sweeps.md).

Search: every setting of every base recipe is a trial (an ordinary run directory, sedaug.sweep.trial) on the search
seed; Ray Tune runs them, several at once, retries a trial whose worker dies (it resumes from last.pt) and, when
asked, stops bad ones early (ASHA). Selection: per recipe the best score (sedaug.sweep.select), every trial listed in
selection.tsv. Final: the winner trained on each seed and evaluated on eval, in `<out>/final/` (Table 1).

The run directories are the record: a sweep stopped by Ctrl-C or killed continues with `--resume`, which hands Ray
only the trials that are not complete on disk (Optuna is told the finished ones), so nothing finished is redone and
nothing is lost, whatever state Ray managed to save. Ray's logs and state go under `<out>/ray/`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sedaug.errors import UserError
from sedaug.sweep.cluster import check_resources, driver_lock, ray_session
from sedaug.sweep.select import (
    journal_errors,
    journal_statuses,
    run_state,
    search_records,
    short_value,
    winners,
    write_selection,
)
from sedaug.sweep.spec import LoadedSweep, Space, grid_settings, load_sweep
from sedaug.sweep.trial import Plan, final_dir, run_trial, search_dir, setting_id, trial_spec

INSTALL_HINT = "sedaug sweep needs Ray Tune and Optuna: pip install 'sedaug[sweep]'"


@dataclass(frozen=True)
class Winner:
    recipe: str
    setting: str
    params: dict[str, Any]
    score: float
    run_dir: Path


@dataclass(frozen=True)
class SweepResult:
    out: Path
    name: str
    statuses: dict[str, int]  # search trials on disk by status
    retries: int
    winners: dict[str, Winner]
    seeds: list[int]
    final_runs: list[Path]
    search_s: float  # the search stage's time
    elapsed_s: float  # the whole command's
    notes: list[str] = field(default_factory=list)

    @property
    def trials(self) -> int:
        return sum(self.statuses.values())

    def summary(self) -> str:
        elapsed = int(self.elapsed_s)
        counts = ", ".join(f"{self.statuses.get(s, 0)} {w}" for s, w in
                           (("done", "done"), ("stopped", "stopped early"), ("failed", "failed")))
        chosen = "; ".join(f"{w.recipe} {_short(w.params) or 'defaults'} ({w.score:.3f})" for w in self.winners.values())
        seeds = ", ".join(map(str, self.seeds))
        return (f"sweep {self.name}: {self.trials} trials ({counts}, {self.retries} retried) in "
                f"{elapsed // 60}m{elapsed % 60:02d}s; selected {chosen}; trained on seeds {seeds} and evaluated on "
                f"eval -> {self.out} (selection.tsv; sedaug table {self.out / 'final'})")


def _short(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in params.items())


# ---------------------------------------------------------------------------------------------- the driver


def run_sweep(
    spec_path: Path,
    out: Path | None = None,
    address: str | None = None,
    resume: bool = False,
    overrides: list[str] = (),
    progress: bool = True,
) -> SweepResult:
    started = time.monotonic()
    loaded = load_sweep(Path(spec_path), list(overrides))
    _import_ray(loaded.sweep.algorithm.type == "optuna")
    from sedaug.sweep.view import SweepView

    out = Path(out if out is not None else Path("runs") / "sweeps" / Path(spec_path).stem).absolute()
    _prepare_out(out, loaded, resume)
    sweep = loaded.sweep
    plan = Plan(out=str(out), bases=loaded.bases, select_split=sweep.select.split, select_metric=sweep.select.metric,
                cpus=sweep.resources.cpus, gpus=sweep.resources.gpus, argv=list(sys.argv))
    view = SweepView(out, loaded.epochs, title=f"sweep {Path(spec_path).stem}")
    with driver_lock(out), ray_session(out, address) as notes, view.shown(progress):
        check_resources(loaded)
        start = time.monotonic()
        _search(loaded, out, plan, view)
        search_s = time.monotonic() - start
        records = search_records(loaded, out)
        chosen = winners(records)
        write_selection(out, records, chosen)
        unsettled = [r for r in records if r.status not in ("done", "stopped")]
        missing = [n for n in loaded.bases if n not in chosen]
        ready = {n: w for n, w in chosen.items() if not any(r.recipe == n for r in unsettled)}
        final_runs = _final(loaded, out, plan, view, ready)
    problems = []
    if unsettled or missing:
        names = sorted({r.recipe for r in unsettled} | set(missing))
        problems.append(f"the search of {', '.join(names)} is not finished ({len(unsettled)} trials failed or "
                        f"unfinished, see {out / 'selection.tsv'})")
    unfinal = [r for r in final_runs if not (r / "eval" / "results.json").exists()]
    if unfinal:
        problems.append(f"{len(unfinal)} final runs did not finish ({', '.join(str(r.relative_to(out)) for r in unfinal[:3])}"
                        f"{', ...' if len(unfinal) > 3 else ''})")
    if problems:
        errors = journal_errors(out)
        last = f"; the last error: {errors[-1]}" if errors else ""
        raise UserError(f"{out}: {'; '.join(problems)}{last}; Ray's logs in {out / 'ray'}; "
                        "`sedaug sweep --resume` retries")
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    chosen_w = {n: Winner(n, w.setting, w.params, w.score, w.run_dir) for n, w in chosen.items()}
    return SweepResult(out, Path(spec_path).stem, statuses, view.retries, chosen_w, list(sweep.seeds), final_runs,
                       search_s, time.monotonic() - started, notes)


def _import_ray(optuna: bool) -> None:
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401

        if optuna:
            import optuna as _  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def _prepare_out(out: Path, loaded: LoadedSweep, resume: bool) -> None:
    """A new sweep needs an empty --out; --resume needs the same resolved sweep and base recipes as before."""
    sweep_file, recipes_dir = out / "sweep.yaml", out / "recipes"
    resolved = loaded.resolved()
    if not resume:
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} is not empty: pass --resume to continue that sweep, or choose another --out")
        recipes_dir.mkdir(parents=True, exist_ok=True)
        header = f"# The sweep as run (overrides merged, defaults filled) from {loaded.path}; --resume checks it.\n"
        _write(sweep_file, header + yaml.safe_dump(resolved, sort_keys=False))
        for name, base in loaded.bases.items():
            _write(recipes_dir / f"{name}.yaml", yaml.safe_dump(base, sort_keys=False))
        return
    if not sweep_file.exists():
        raise UserError(f"{out}: no sweep to resume (no sweep.yaml): run it without --resume")
    from sedaug.strict_yaml import parse_yaml

    saved = parse_yaml(sweep_file.read_text(), str(sweep_file))
    diff = _diff(saved, resolved)
    for name, base in loaded.bases.items():
        path = recipes_dir / f"{name}.yaml"
        before = parse_yaml(path.read_text(), str(path)) if path.exists() else {}
        diff += [f"recipe {name}: {k}" for k in _diff(before, base)]
    if diff:
        raise UserError(f"--resume: the sweep differs from the one in {out} at {', '.join(diff)}")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in dict.fromkeys([*a, *b]) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".") or "(top)"]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _trial_dirname(trial) -> str:
    spec = trial_spec(trial.config)
    setting = setting_id(spec["params"]) if spec["stage"] == "search" else "final"
    return f"{spec['recipe']}-{setting}-seed{spec['seed']}-{trial.trial_id}"


def _fit(name: str, out: Path, plan: Plan, view, loaded: LoadedSweep, param_space: dict, *, search_alg=None,
         num_samples: int = 1, early_stopping: bool = False) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    sweep = loaded.sweep
    scheduler = None
    if early_stopping and sweep.early_stopping is not None:
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max(loaded.epochs.values()),
                                  grace_period=sweep.early_stopping.grace_epochs,
                                  reduction_factor=sweep.early_stopping.reduction_factor)
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan),
                                    {"cpu": sweep.resources.cpus, "gpu": sweep.resources.gpus})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=search_alg, scheduler=scheduler,
                                    num_samples=num_samples, max_concurrent_trials=sweep.max_concurrent_trials,
                                    trial_dirname_creator=_trial_dirname, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(out / "ray"), name=name, verbose=0, callbacks=[view],
                                  failure_config=tune.FailureConfig(max_failures=sweep.max_failures)),
    )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        raise UserError(f"interrupted: the finished trials are in {out}; continue with `sedaug sweep --resume`") from None


def _settled(out: Path, loaded: LoadedSweep, stage: str, spec: dict, statuses: dict) -> bool:
    """Complete on disk (every epoch, the evaluations it needs), or stopped early by ASHA."""
    sweep = loaded.sweep
    if stage == "search":
        run_dir = search_dir(out, spec["recipe"], spec["params"], spec["seed"])
        split = None if sweep.select.is_default else sweep.select.split
        if statuses.get(("search", spec["recipe"], setting_id(spec["params"]), spec["seed"])) == "stopped":
            return True
    else:
        run_dir, split = final_dir(out, spec["recipe"], spec["seed"]), "eval"
    return run_state(run_dir, loaded.epochs[spec["recipe"]], split, sweep.select.metric)[3]


def _search(loaded: LoadedSweep, out: Path, plan: Plan, view) -> None:
    sweep = loaded.sweep
    statuses = journal_statuses(out)
    if sweep.algorithm.type == "optuna":
        for name in loaded.bases:
            _optuna_search(loaded, out, plan, view, name, statuses)
        return
    trials = [{"stage": "search", "recipe": name, "seed": sweep.trial_seed, "params": params}
              for name, space in loaded.spaces.items() for params in _settings(loaded, name, space)]
    pending = [t for t in trials if not _settled(out, loaded, "search", t, statuses)]
    view.begin_stage(f"search ({sweep.algorithm.type})", _per_recipe(trials), _per_recipe(trials, pending))
    if pending:
        from ray import tune

        _fit("search", out, plan, view, loaded, {"trial": tune.grid_search(pending)}, early_stopping=True)


def _settings(loaded: LoadedSweep, name: str, space: dict[str, Space]) -> list[dict[str, Any]]:
    """The grid's settings, or `trials` random ones drawn by Ray Tune's samplers from the algorithm's seed (the
    same list every time, so that --resume finds the same trials); duplicates drawn twice are run once."""
    sweep = loaded.sweep
    if sweep.algorithm.type == "grid":
        return grid_settings(space)
    import numpy as np

    rng = np.random.default_rng([sweep.algorithm.seed, list(loaded.bases).index(name)])
    settings = {}
    for _ in range(sweep.algorithm.trials):
        params = {key: _sample(dom, rng) for key, dom in space.items()}
        settings.setdefault(setting_id(params), params)
    return list(settings.values())


def _domain(dom: Space):
    from ray import tune

    if dom.kind == "choice":
        return tune.choice(dom.choice)
    if dom.kind == "uniform":
        return tune.uniform(*dom.uniform)
    return tune.loguniform(*dom.loguniform)


def _sample(dom: Space, rng) -> Any:
    value = _domain(dom).sample(random_state=rng)
    return value.item() if hasattr(value, "item") else value  # numpy scalars -> plain numbers (YAML, JSON)


def _per_recipe(trials: list[dict], among: list[dict] | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials if among is None else [t for t in trials if t not in among]:
        counts[t["recipe"]] = counts.get(t["recipe"], 0) + 1
    return counts


def _optuna_search(loaded: LoadedSweep, out: Path, plan: Plan, view, name: str, statuses: dict) -> None:
    """One Optuna TPE study per recipe (each row gets its own budget), told the trials already on disk."""
    sweep = loaded.sweep
    records = [r for r in search_records(loaded, out) if r.recipe == name]
    searcher, remaining = optuna_searcher(sweep, loaded.spaces[name], records)
    view.begin_stage(f"search (optuna: {name})", {name: sweep.algorithm.trials},
                     {name: sum(r.status in ("done", "stopped") for r in records)})
    if remaining <= 0:
        return
    if searcher is None:  # nothing to search: the base recipe is the one setting
        from ray import tune

        trial = {"stage": "search", "recipe": name, "seed": sweep.trial_seed, "params": {}}
        _fit(f"search-{name}", out, plan, view, loaded, {"trial": tune.grid_search([trial])}, early_stopping=True)
        return
    param_space = {"trial": {"stage": "search", "recipe": name, "seed": sweep.trial_seed}}
    _fit(f"search-{name}", out, plan, view, loaded, param_space, search_alg=searcher, num_samples=remaining,
         early_stopping=True)


def optuna_searcher(sweep, space: dict[str, Space], records: list) -> tuple[Any, int]:
    """Ray Tune's OptunaSearch (TPE) for one recipe and the trials left in its budget. It is told the settled
    trials on disk (score known) and asked to run the unfinished ones first; its seed moves on with the number of
    settled trials, so that a resumed study does not draw the same first points again. (None, n) when nothing is
    searched: the one setting is the base recipe."""
    from ray.tune.search.optuna import OptunaSearch

    settled = [r for r in records if r.status in ("done", "stopped")]
    unfinished = [r for r in records if r not in settled]
    if not space:
        return None, 0 if settled else 1
    remaining = sweep.algorithm.trials - len(settled)
    flat = [{f"params/{k}": v for k, v in r.params.items()} for r in unfinished][: max(remaining, 0)]
    distributions = OptunaSearch.convert_search_space({"params": {k: _domain(d) for k, d in space.items()}})
    searcher = OptunaSearch(space=distributions, metric="score", mode="max", seed=sweep.algorithm.seed + len(settled),
                            points_to_evaluate=flat or None)
    for r in settled:
        if r.score is not None:
            searcher.add_evaluated_point({f"params/{k}": v for k, v in r.params.items()}, r.score)
    return searcher, remaining


def _final(loaded: LoadedSweep, out: Path, plan: Plan, view, chosen: dict) -> list[Path]:
    """Each recipe's winner on every seed, evaluated on eval; the search seed's run is the winner's search run."""
    sweep = loaded.sweep
    trials = []
    for name, w in chosen.items():
        for seed in sweep.seeds:
            trial = {"stage": "final", "recipe": name, "seed": seed, "params": w.params, "evaluate": "eval"}
            if seed == sweep.trial_seed and w.complete:
                trial["copy_from"] = str(w.run_dir)
            trials.append(trial)
    pending = [t for t in trials if not _settled(out, loaded, "final", t, {})]
    view.begin_stage("final (seeds, eval)", _per_recipe(trials), _per_recipe(trials, pending))
    if pending:
        from ray import tune

        _fit("final", out, plan, view, loaded, {"trial": tune.grid_search(pending)})
    return [final_dir(out, t["recipe"], t["seed"]) for t in trials]
