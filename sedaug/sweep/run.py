"""`sedaug sweep`: the paper's protocol on Ray Tune (docs/sweeps.md).

Search: every setting of every base recipe is a trial (an ordinary run directory, sedaug.sweep.trial) on the search
seed; Ray Tune runs them, several at once, each asking for its row's CPUs, GPU fraction and memory, retries a trial
whose worker dies (it resumes from last.pt) and, when asked, stops bad ones early (ASHA, per row). A diverged trial
is a result. Selection: per recipe the best score (sedaug.sweep.select), every trial listed in selection.tsv.
Final: the winner trained on each seed and evaluated on eval, in `<out>/final/` (Table 1).

The run directories are the record: a sweep stopped by Ctrl-C or killed continues with `--resume`, which hands Ray
only the trials that are not settled on disk (Optuna is told the finished ones), so nothing finished is redone and
nothing is lost, whatever state Ray managed to save; an edited sweep file resumes too, keeping every trial whose
resolved recipe it still holds. Nothing is written before the sweep file, `--out`, the address and the resources
are checked. Ray's logs and state go under `<out>/ray/`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shlex
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sedaug.errors import Interrupted, UserError, counted, listed, one_line
from sedaug.files import absolute
from sedaug.rundir import EVALUATED_SPLITS, RunDir, ensemble_members, is_ensemble, read_diverged
from sedaug.strict_yaml import get_key
from sedaug.sweep.cluster import (
    check_resources,
    driver_lock,
    driver_running,
    local_resources,
    parse_address,
    ray_session,
    sweep_address,
)
from sedaug.sweep.outdir import check_out, keep_search_seed, write_out
from sedaug.sweep.plan import (
    SearchPlan,
    check_drawn,
    domain,
    dry_run,
    final_trials,
    no_step_settings,
    optuna_trials,
    plan_search,
    same_recipe,
    steps_done,
    trial_resources,
)
from sedaug.sweep.select import (
    SETTLED,
    budget_short,
    journal_errors,
    journal_statuses,
    optuna_settled,
    run_state,
    search_records,
    short_value,
    winners,
    without_winner,
    write_selection,
)
from sedaug.sweep.spec import LoadedSweep, load_sweep
from sedaug.sweep.trial import (
    Plan,
    checkpointed_metrics,
    final_dir,
    setting_id,
    trial_dir,
    trial_lock,
    trial_spec,
)

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
        elapsed, search = int(self.elapsed_s), int(self.search_s)
        counts = ", ".join(f"{self.statuses.get(s, 0)} {w}" for s, w in
                           (("done", "done"), ("stopped", "stopped early"), ("diverged", "diverged"),
                            ("failed", "failed")))
        chosen = "; ".join(f"{w.recipe} {_short(w.params) or 'defaults'} ({w.score:.3f})"
                           for w in self.winners.values()) or "no setting"
        seeds = ", ".join(map(str, self.seeds))
        finals = (f"final runs on seed{'s' * (len(self.seeds) != 1)} {seeds}, evaluated on eval -> {self.out} "
                  f"(selection.tsv; {shlex.join(['sedaug', 'table', str(self.out / 'final')])})" if self.final_runs
                  else f"no final run -> {self.out} (selection.tsv)")
        return (f"sweep {self.name}: {counted(self.trials, 'trial')} ({counts}, {self.retries} retried) in "
                f"{elapsed // 60}m{elapsed % 60:02d}s (search {search // 60}m{search % 60:02d}s); selected {chosen}; "
                f"{finals}")


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
    connect_timeout: float = 30.0,
    wait_for_resources: bool = False,
) -> SweepResult:
    """Run the sweep of `spec_path` into `out` on the cluster at `address` (None: RAY_ADDRESS where set, else a local
    Ray); on Ctrl-C or Ray Tune's own stop, the error says the command that resumes it."""
    address = sweep_address(address)
    with SigtermAsCtrlC() as sigterm:
        try:
            return _run_sweep(spec_path, out, address, resume, overrides, progress, connect_timeout,
                              wait_for_resources, sigterm)
        except (Interrupted, TuneStopped, KeyboardInterrupt, SystemExit) as e:
            if isinstance(e, SystemExit):  # ray.init's own SIGTERM handler, while Ray starts: sys.exit(15)
                if e.code != signal.SIGTERM:
                    raise
                sigterm.came, e = True, KeyboardInterrupt()
            if isinstance(e, KeyboardInterrupt):  # Ctrl-C before Ray Tune ran (while Ray starts, say)
                if not (_out_dir(spec_path, out) / "sweep.yaml").exists():
                    if sigterm.came:
                        raise sigterm.said(Interrupted("stopped before the sweep began")) from None
                    raise  # nothing to resume yet: the CLI's one line
                e = Interrupted("interrupted")
            again = resume_command(spec_path, out, overrides, address, connect_timeout, wait_for_resources)
            raise sigterm.said(type(e)(f"{e}; continue with `{again}`")) from None


class SigtermAsCtrlC:
    """SIGTERM (a batch system's stop at the end of its time, `timeout`, `scancel`) ends the sweep as Ctrl-C does:
    the finished trials in selection.tsv, one line with the command that resumes it (exit status 143, the shell's
    128 + 15); `came` says one did. ray.init puts in Ray's own handler (a stack dump, no line): `install` again once
    Ray runs. The handler before is put back on the way out, after Ray has shut down."""

    def __init__(self):
        self.came, self.before, self.fd2, self.stderr = False, None, None, None

    def _handler(self, signum, frame):
        if not self.came:
            self._quiet_native_stderr()
        self.came = True
        raise KeyboardInterrupt

    def _quiet_native_stderr(self) -> None:
        """A SIGTERM to the job ends Ray's processes too, and the driver's core worker writes to fd 2 what it sees
        of that ("Attempting to recover 1 lost objects ..."): fd 2 goes to /dev/null until the way out, Python's
        stderr (where it is fd 2) to a copy of it."""
        try:
            sys.stderr.flush()
            moves = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):  # None, or pytest's capture: not fd 2
            moves = False
        self.fd2 = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        if moves:
            self.stderr, sys.stderr = sys.stderr, open(os.dup(self.fd2), "w", encoding=sys.stderr.encoding,
                                                       errors=sys.stderr.errors, buffering=1)

    def said(self, err: UserError) -> UserError:
        """`err`, saying SIGTERM stopped the sweep where one did."""
        if self.came:
            err = type(err)(f"SIGTERM: {err}")
            err.exit_code = 143
        return err

    def install(self) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
            signal.signal(signal.SIGTERM, self._handler)

    def __enter__(self) -> SigtermAsCtrlC:
        self.before = signal.getsignal(signal.SIGTERM)
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.before is None else self.before)
        if self.fd2 is not None:
            if self.stderr is not None:
                sys.stderr.close()
                sys.stderr = self.stderr
            os.dup2(self.fd2, 2)
            os.close(self.fd2)
            self.fd2 = self.stderr = None


def resume_command(spec_path: Path, out: Path | None, overrides: list[str], address: str | None,
                   connect_timeout: float = 30.0, wait_for_resources: bool = False) -> str:
    """The command line that resumes this sweep (its options as given; the defaults left out)."""
    args = ["sedaug", "sweep", str(spec_path), "--out", str(_out_dir(spec_path, out))]
    for item in overrides:
        args += ["--set", item]
    args += ["--address", address] if address else []
    args += ["--connect-timeout", f"{connect_timeout:g}"] if connect_timeout != 30.0 else []
    args += ["--wait-for-resources"] if wait_for_resources else []
    return shlex.join([*args, "--resume"])


def _run_sweep(spec_path, out, address, resume, overrides, progress, connect_timeout, wait_for_resources,
               sigterm: SigtermAsCtrlC) -> SweepResult:
    started = time.monotonic()
    loaded = load_sweep(Path(spec_path), list(overrides))
    check_drawn(loaded)
    parse_address(address)
    if not 0 < connect_timeout < math.inf:
        raise UserError(f"--connect-timeout {connect_timeout:g}: give a number of seconds above 0")
    _import_ray(loaded.sweep.algorithm.type == "optuna")
    if (problem := store_problem(loaded, list(overrides))) is not None:
        raise UserError(problem)
    from sedaug.sweep.view import SweepView

    out = _out_dir(spec_path, out)
    loaded = keep_search_seed(out, loaded) if resume else loaded
    check_out(out, loaded, resume)  # before anything is written, as the resources are
    sweep = loaded.sweep
    per_trial = trial_resources(loaded)
    plan = Plan(out=str(out), bases=loaded.bases, select_split=sweep.select.evaluated_split,
                select_metric=sweep.select.metric, cpus=sweep.resources.cpus, gpus=sweep.resources.gpus,
                argv=list(sys.argv))
    view = SweepView(out, loaded.epochs, title=f"sweep {Path(spec_path).stem}")
    notes: list[str] = []
    with contextlib.ExitStack() as stack:

        def before_start(have: dict | None) -> None:
            where = "this machine" if have is None else "the Ray cluster"
            notes.extend(check_resources(loaded, per_trial, have or local_resources(), where, wait_for_resources))
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(driver_lock(out))
            write_out(out, loaded)
            if resume:  # the edited sweep's selection, even if it is stopped before its search starts
                _select(loaded, out)

        notes += stack.enter_context(ray_session(out, address, connect_timeout, before_start))
        sigterm.install()  # over the handler ray.init put in
        stack.enter_context(view.shown(progress))
        if sweep.trial_seed in sweep.seeds:
            instead = (f"--resume keeps the search seed: take {sweep.trial_seed} out of seeds, or run the sweep with "
                       "another --out" if resume else "set search_seed to another seed")
            notes.append(f"the search seed {sweep.trial_seed} is also a final seed: that final run is the winner's "
                         f"search run, whose luck on synthetic_valid enters the mean ({instead}; docs/sweeps.md)")
        searched = plan_search(loaded, out)
        if searched.note(out):
            notes.append(searched.note(out))
        start = time.monotonic()
        try:
            _search(loaded, out, plan, view, searched, per_trial)
        except (Interrupted, TuneStopped):  # what is done so far, in selection.tsv as a finished search writes it
            with contextlib.suppress(Exception, KeyboardInterrupt):
                _select(loaded, out)
            raise
        search_s = time.monotonic() - start
        records, chosen, unsettled, short, ready = _select(loaded, out)
        lost = without_winner(records, chosen, _planned(loaded, searched))
        final_runs = _final(loaded, out, plan, view, ready, per_trial, notes, set(lost))
    problems = []
    notes += lost.values()  # a result, as a diverged setting is: --resume would not change it
    unfinished = sorted({r.recipe for r in unsettled} | set(short)
                        | {n for n in loaded.bases if n not in chosen and n not in lost})
    if unfinished:
        count = len(unsettled) + sum(short.values())
        problems.append(f"the search of {', '.join(unfinished)} is not finished ({counted(count, 'trial')} "
                        f"failed or unfinished, see {out / 'selection.tsv'})")
    diverged_finals = [r for r in final_runs if read_diverged(r) is not None]
    notes += [f"final run {r.relative_to(out)} diverged in epoch {read_diverged(r).get('epoch')}" for r in diverged_finals]
    unfinal = [r for r in final_runs if not RunDir(r).results("eval").exists() and r not in diverged_finals]
    if unfinal:
        problems.append(f"{counted(len(unfinal), 'final run')} did not finish "
                        f"({listed(r.relative_to(out) for r in unfinal)})")
    if problems:
        errors = journal_errors(out) if unsettled or short or unfinal else []
        last = f"; the last error: {errors[-1]}" if errors else ""
        again = resume_command(spec_path, out, overrides, address, connect_timeout, wait_for_resources)
        retry = f"; `{again}` retries" if unsettled or short or unfinal else ""
        raise UserError("\n".join([*lost.values(), *problems[:-1],
                                   f"{out}: {problems[-1]}{last}; Ray's logs in {out / 'ray'}{retry}"]))
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    chosen_w = {n: Winner(n, w.setting, w.params, w.score, w.run_dir) for n, w in chosen.items()}
    return SweepResult(out, Path(spec_path).stem, statuses, view.retries, chosen_w, list(sweep.seeds), final_runs,
                       search_s, time.monotonic() - started, notes)


def _out_dir(spec_path: Path, out: Path | None) -> Path:
    return absolute(out if out is not None else Path("runs") / "sweeps" / Path(spec_path).stem)


def store_problem(loaded: LoadedSweep, overrides: list[str]) -> str | None:
    """Why a row's feature store does not open here, or a setting leaves no step in its epochs, or None. The sweep
    checks it before Ray starts (its trials, on a cluster's nodes too, read it at the same path): one line, not
    every trial failing its retries."""
    from sedaug.data.store import open_whole

    for name, base in loaded.bases.items():
        try:
            open_whole(Path(get_key(base, "data.features")))
        except UserError as err:
            given = any(item.partition("=")[0] == "data.features" for item in overrides)
            return f"{'--set data.features' if given else loaded.path}: {name}'s data.features: {err}"
    return next(filter(None, (no_step_settings(loaded, name) for name in loaded.bases)), None)


def _select(loaded: LoadedSweep, out: Path):
    """The search's trials on disk, each row's best, the unsettled trials, the rows short of their budget, and the
    winners of the rows whose search has finished (a row still searching has none yet), written to selection.tsv."""
    records, chosen, unsettled, short, ready = _selected(loaded, out)
    write_selection(out, records, ready)
    return records, chosen, unsettled, short, ready


def _planned(loaded: LoadedSweep, searched: SearchPlan) -> dict[str, int]:
    """Each row's search trials: the grid's, or Optuna's budget."""
    return {name: optuna_trials(loaded, name) if loaded.sweep.algorithm.type == "optuna" else
            sum(t["recipe"] == name for t in searched.trials) for name in loaded.bases}


def _selected(loaded: LoadedSweep, out: Path):
    """_select's answer, nothing written."""
    records = search_records(loaded, out)
    chosen = winners(records)
    unsettled = [r for r in records if r.status not in SETTLED]
    short = budget_short(loaded, out, records)
    ready = {n: w for n, w in chosen.items() if not any(r.recipe == n for r in unsettled) and n not in short}
    return records, chosen, unsettled, short, ready


def plan_sweep(spec_path: Path, out: Path | None = None, resume: bool = False, overrides: list[str] = ()):
    """`sedaug sweep --dry-run`: the plan (untimed: `DryRun.timed()` times it) of the sweep these arguments would
    run, refused where `run_sweep` would refuse it (a non-empty --out without --resume, an incomparable edit); with
    --resume, a note says how much of it is done already. Starts nothing, writes nothing."""
    loaded = load_sweep(Path(spec_path), list(overrides))
    out = _out_dir(spec_path, out)
    loaded = keep_search_seed(out, loaded) if resume else loaded
    check_out(out, loaded, resume)
    plan = dry_run(loaded, timed=False)
    problem = store_problem(loaded, list(overrides))  # planned with DESED's sizes where there is no store (README)
    if problem is not None and f"{problem} (a sweep would be refused)" not in plan.notes:
        plan.notes.append(f"{problem} (a sweep would be refused)")
    if resume and out.is_dir():
        if driver_running(out):
            plan.notes.append(f"another `sedaug sweep` is running on {out}: this one would be refused until it ends")
        records, chosen, _, _, ready = _selected(loaded, out)
        searched = plan_search(loaded, out)
        lost = without_winner(records, chosen, _planned(loaded, searched))
        rows = {row.recipe: row for row in plan.rows}
        for r in records:
            rows[r.recipe].done_steps += steps_done(r.run_dir, r.epochs, r.status in SETTLED)
        finals_done, dethroned = 0, 0
        for name in loaded.bases:
            for seed in loaded.sweep.seeds:
                final = final_dir(out, name, seed)
                if not RunDir(final).recipe.is_file():
                    continue
                if name in lost or name in ready and not same_recipe(final, loaded.bases[name], ready[name].params,
                                                                     seed):
                    dethroned += 1  # set aside by the sweep (_final), and made again where a winner is left
                    continue
                evaluated = RunDir(final).results("eval").is_file()
                finals_done += evaluated
                if seed != loaded.sweep.trial_seed:  # else the search run's copy, never counted as training
                    rows[name].done_steps += steps_done(final, loaded.epochs[name], evaluated)
        done = sum(r.status in SETTLED for r in records)
        aside = (f"; {counted(dethroned, 'final run')} of a winner the edit dethroned would be set aside"
                 if dethroned else "")
        plan.notes.append(f"--resume: {done} of the search trials and {finals_done} of the final runs are done in "
                          f"{out} already{aside}")
        if (ignored := searched.note(out)) is not None:  # as the sweep itself will say
            plan.notes.append(ignored)
    return plan


def _import_ray(optuna: bool) -> None:
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401

        if optuna:
            import optuna as _  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def _trial_dirname(trial) -> str:
    spec = trial_spec(trial.config)
    setting = (spec.get("setting") or setting_id(spec["params"])) if spec["stage"] == "search" else "final"
    return f"{spec['recipe']}-{setting}-seed{spec['seed']}-{trial.trial_id}"


def _fit(name: str, out: Path, plan: Plan, view, loaded: LoadedSweep, param_space: dict, per_trial: dict, *,
         search_alg=None, num_samples: int = 1, early_stopping: bool = False) -> None:
    from ray import tune

    from sedaug.sweep.trial import run_trial

    sweep = loaded.sweep
    scheduler = None
    if early_stopping and sweep.early_stopping is not None:
        from sedaug.sweep.schedule import RowASHA

        scheduler = RowASHA(loaded.epochs, grace_period=sweep.early_stopping.grace_epochs,
                            reduction_factor=sweep.early_stopping.reduction_factor, settled=_settled_scores(loaded, out))
    # Each row's trials ask for its CPUs, GPU fraction and memory (Ray packs trials by all three).
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan),
                                    lambda config: per_trial[trial_spec(config)["recipe"]])
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
        raise Interrupted(f"interrupted: the finished trials are in {out}") from None
    except tune.TuneError as err:  # Ray Tune's driver itself failed (its experiment state on a full disk, say)
        raise TuneStopped(f"{out}: Ray Tune stopped ({one_line(err.__cause__ or err)}); the finished trials are "
                          "kept") from None


def _settled_scores(loaded: LoadedSweep, out: Path) -> dict[str, list[list[float]]]:
    """Per row, each settled search trial's running best synthetic_valid F1 by epoch (its reports' scores)."""
    settled: dict[str, list[list[float]]] = {}
    for record in search_records(loaded, out):
        if record.status in SETTLED:
            scores = [r["valid_f1"] for r in checkpointed_metrics(record.run_dir)
                      if isinstance(r.get("valid_f1"), int | float)]
            settled.setdefault(record.recipe, []).append(list(itertools.accumulate(scores, max)))
    return settled


class TuneStopped(UserError):
    """Ray Tune's driver failed, not a trial: the sweep stops and can be resumed."""


def _settled(out: Path, loaded: LoadedSweep, spec: dict, statuses: dict) -> bool:
    """Complete on disk (every epoch, the evaluations it needs), diverged, or stopped early by ASHA."""
    sweep = loaded.sweep
    run_dir = trial_dir(out, spec)
    if read_diverged(run_dir) is not None:
        return True
    if spec["stage"] == "search":
        split = sweep.select.evaluated_split
        if statuses.get(("search", spec["recipe"], run_dir.parent.name, spec["seed"])) == "stopped":
            return True
    else:
        split = "eval"
    return run_state(run_dir, loaded.epochs[spec["recipe"]], split, sweep.select.metric).complete


def _search(loaded: LoadedSweep, out: Path, plan: Plan, view, searched: SearchPlan, per_trial: dict) -> None:
    sweep = loaded.sweep
    statuses = journal_statuses(out)
    if sweep.algorithm.type == "optuna":
        for name in loaded.bases:
            _optuna_search(loaded, out, plan, view, name, per_trial)
        return
    trials = searched.trials
    pending = [t for t in trials if not _settled(out, loaded, t, statuses)]
    view.begin_stage(f"search ({sweep.algorithm.type})", _per_recipe(trials), _per_recipe(trials, pending))
    if pending:
        from ray import tune

        _fit("search", out, plan, view, loaded, {"trial": tune.grid_search(pending)}, per_trial, early_stopping=True)


def _per_recipe(trials: list[dict], among: list[dict] | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials if among is None else [t for t in trials if t not in among]:
        counts[t["recipe"]] = counts.get(t["recipe"], 0) + 1
    return counts


def _optuna_search(loaded: LoadedSweep, out: Path, plan: Plan, view, name: str, per_trial: dict) -> None:
    """One Optuna TPE study per recipe (each row gets its own budget), told the trials already on disk."""
    sweep = loaded.sweep
    records = [r for r in search_records(loaded, out) if r.recipe == name]
    n_settled, budget = optuna_settled(out, records, name), optuna_trials(loaded, name)
    searcher, remaining = optuna_searcher(sweep, loaded.spaces[name], records, n_settled)
    view.begin_stage(f"search (optuna: {name})", {name: budget}, {name: min(n_settled, budget)})
    if remaining <= 0:
        return
    if searcher is None:  # nothing to search: the base recipe is the one setting
        from ray import tune

        trial = {"stage": "search", "recipe": name, "seed": sweep.trial_seed, "params": {}}
        _fit(f"search-{name}", out, plan, view, loaded, {"trial": tune.grid_search([trial])}, per_trial,
             early_stopping=True)
        return
    param_space = {"trial": {"stage": "search", "recipe": name, "seed": sweep.trial_seed}}
    _fit(f"search-{name}", out, plan, view, loaded, param_space, per_trial, search_alg=searcher,
         num_samples=remaining, early_stopping=True)


def optuna_searcher(sweep, space: dict, records: list, n_settled: int | None = None) -> tuple[Any, int]:
    """Ray Tune's OptunaSearch (TPE) for one recipe and the trials left in its budget. It is told the settled
    trials on disk (score known; a diverged one scores 0) and asked to run the unfinished ones first; its seed moves
    on with the number of settled trials, so that a resumed study does not draw the same first points again.
    `n_settled` counts a setting Optuna suggested twice twice (optuna_settled; default: the settled records).
    (None, n) when nothing is searched: the one setting is the base recipe."""
    from ray.tune.search.optuna import OptunaSearch

    # A list-valued choice (augmentation.locations) is fine in memory; Optuna warns for its persistent storage.
    warnings.filterwarnings("ignore", message="Choices for a categorical distribution should be", category=UserWarning)
    settled = [r for r in records if r.status in SETTLED]
    unfinished = [r for r in records if r not in settled]
    if not space:
        return None, 0 if settled else 1
    remaining = sweep.algorithm.trials - (len(settled) if n_settled is None else n_settled)
    flat = [{f"params/{k}": v for k, v in r.params.items()} for r in unfinished][: max(remaining, 0)]
    distributions = OptunaSearch.convert_search_space({"params": {k: domain(d) for k, d in space.items()}})
    searcher = OptunaSearch(space=distributions, metric="score", mode="max", seed=sweep.algorithm.seed + len(settled),
                            points_to_evaluate=flat or None)
    for r in settled:
        score = 0.0 if r.status == "diverged" else r.score
        if score is not None:
            searcher.add_evaluated_point({f"params/{k}": v for k, v in r.params.items()}, score)
    return searcher, remaining


def _set_aside(out: Path, run_dir: Path, why: str, notes: list[str]) -> None:
    """Move a final run (or an ensemble of final runs) to <out>/replaced/; an ensemble of the run goes with it (its
    scores are no longer those of the row's runs)."""
    member = str(run_dir.resolve())
    ensembles = [p for p in sorted(run_dir.parent.iterdir()) if p.is_dir() and is_ensemble(p) and any(
        member in (ensemble_members(RunDir(p).results(split)) or []) for split in EVALUATED_SPLITS)]
    dest = out / "replaced" / run_dir.parent.name / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with RunDir(run_dir).lock():  # not from under an evaluation reading it (refused, one line)
        run_dir.rename(dest)
    trial_lock(run_dir).unlink(missing_ok=True)
    if not any(run_dir.parent.iterdir()):
        run_dir.parent.rmdir()  # a row with no final run left
    notes.append(f"{run_dir.relative_to(out)} {why}: moved to {dest.relative_to(out)}")
    for ensemble in ensembles:
        _set_aside(out, ensemble, f"is an ensemble of {run_dir.relative_to(out)}", notes)


def _final(loaded: LoadedSweep, out: Path, plan: Plan, view, chosen: dict, per_trial: dict,
           notes: list[str], lost: set[str]) -> list[Path]:
    """Each recipe's winner on every seed, evaluated on eval (plan.final_trials). A final run of an earlier winner
    (the search values were edited and another setting won, or none is left to win: the rows `lost`), or of a seed
    or row the edited sweep no longer has, moves to <out>/replaced/, where table does not look."""
    trials = final_trials(loaded, chosen)
    for t in trials:
        run_dir = trial_dir(out, t)
        if RunDir(run_dir).recipe.is_file() and not same_recipe(run_dir, loaded.bases[t["recipe"]], t["params"],
                                                                 t["seed"]):
            _set_aside(out, run_dir, "was the final run of an earlier winner", notes)
    for run_dir in sorted(p for p in (out / "final").glob("*/seed*") if p.is_dir() and p.name[4:].isdigit()):
        if run_dir.parent.name not in loaded.bases or int(run_dir.name[4:]) not in loaded.sweep.seeds:
            _set_aside(out, run_dir, "is of a seed or row the sweep no longer has", notes)
        elif run_dir.parent.name in lost:
            _set_aside(out, run_dir, "was the final run of an earlier winner, and no setting of its row is left to "
                       "select", notes)
    pending = [t for t in trials if not _settled(out, loaded, t, {})]
    view.begin_stage("final (seeds, eval)", _per_recipe(trials), _per_recipe(trials, pending))
    if pending:
        from ray import tune

        _fit("final", out, plan, view, loaded, {"trial": tune.grid_search(pending)}, per_trial)
    return [trial_dir(out, t) for t in trials]
