"""A whole study runs to its end (issue 19): a diverging setting is a result, an edited sweep resumes keeping what
ran, early stopping ranks each row on its own, `--dry-run` plans what runs; and the sweep command keeps the one-line
promise (binary files, `make table-full` without DESED), with a local Ray that listens on 127.0.0.1 only.
Resources and clusters: tests/test_sweep_cluster.py.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import one_line_error
from sweep_files import EPOCHS, TINY, study, sweep_cli, write_sweep

from sedaug.errors import UserError
from sedaug.sweep.spec import load_sweep

REPO = Path(__file__).parents[1]


# ---------------------------------------------------------------------------------------------- listening sockets


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def _listening(pids: set[int]) -> set[str]:
    """The local addresses of the TCP sockets in LISTEN state that `pids` hold, as a.b.c.d."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                ip = bytes.fromhex(parts[1].split(":")[0][-8:])[::-1]
                v4_mapped = len(parts[1].split(":")[0]) == 8 or parts[1].startswith("0000000000000000FFFF0000")
                addresses.add(".".join(map(str, ip)) if v4_mapped else parts[1].split(":")[0])
    return addresses


class SocketWatch(threading.Thread):
    """Samples the listening sockets of this process and its descendants (the local Ray) while a sweep runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.5):
            self.seen |= _listening(_descendants(os.getpid()))


# ---------------------------------------------------------------------------------------------- the study


@pytest.fixture(scope="module")
def edited_study(tiny_features, tmp_path_factory):
    """The study run once (a setting diverges), then resumed with one sigma removed and one added."""
    pytest.importorskip("ray.tune")
    from sedaug.sweep.plan import dry_run
    from sedaug.sweep.run import run_sweep

    root = tmp_path_factory.mktemp("study")
    out = root / "out"
    spec = write_sweep(root / "study.yaml", study(tiny_features, [0.05, 0.2]))
    planned = dry_run(load_sweep(spec), timed=False)
    watch = SocketWatch()
    watch.start()
    try:
        first = run_sweep(spec, out=out, progress=False)
    finally:
        watch.done.set()
        watch.join()
    with (out / "selection.tsv").open() as f:
        first_rows = list(csv.DictReader(f, delimiter="\t"))
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("search/*/*/seed0/checkpoints/last.pt")}
    journal_lines = len((out / "trials.jsonl").read_text().splitlines())
    edited = write_sweep(root / "study.yaml", study(tiny_features, [0.05, 0.1]))
    second = run_sweep(edited, out=out, resume=True, progress=False)
    return SimpleNamespace(out=out, spec=edited, planned=planned, first=first, first_rows=first_rows, second=second,
                           mtimes=mtimes, journal_lines=journal_lines, listening=watch.seen)


def test_a_diverged_setting_is_a_result_and_its_row_goes_on(edited_study):
    k = edited_study
    rows = {(r["recipe"], r.get("optim.lr") or r.get("augmentation.sigma")): r for r in k.first_rows}
    bad = rows[("none", "1e+30")]
    assert bad["status"] == "diverged" and bad["winner"] == ""
    epoch, step = int(bad["diverged_epoch"]), int(bad["diverged_step"])
    assert 1 <= epoch <= EPOCHS and bad["epochs"] == f"{epoch - 1}/{EPOCHS}"  # last.pt holds the epochs before
    assert rows[("none", "0.001")]["winner"] == "*"  # the row finished with the other setting
    assert k.first.statuses == {"done": 3, "diverged": 1} and k.first.retries == 0  # not retried
    journal = [json.loads(line) for line in (k.out / "trials.jsonl").read_text().splitlines()]
    diverged = [j for j in journal if j["status"] == "diverged"]
    assert [(j["recipe"], j["epoch"], j["step"]) for j in diverged] == [("none", epoch, step)]
    assert (k.out / "final" / "none" / "seed1" / "eval" / "results.json").is_file()
    assert "1 diverged" in k.first.summary()


def test_an_edited_sweep_resumes_running_only_the_new_setting(edited_study):
    k = edited_study
    # Nothing that had run was trained again (the removed sigma's folder included).
    for path, mtime in k.mtimes.items():
        assert path.stat().st_mtime_ns == mtime, path
    with (k.out / "selection.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    sigmas = sorted(float(r["augmentation.sigma"]) for r in rows if r["recipe"] == "noise_latent")
    assert sigmas == [0.05, 0.1]  # 0.2 is left on disk, ignored by selection
    assert len(list((k.out / "search" / "noise_latent").glob("*/seed0"))) == 3
    # `seed*` matches run directories only (the trials' locks are hidden): `sedaug evaluate final/none/seed*` works.
    assert {p.name for p in k.out.rglob("seed*")} == {"seed0", "seed1"} and all(p.is_dir() for p in k.out.rglob("seed*"))
    ignored = "1 search trial of settings no longer in the sweep left on disk, ignored by selection (search/noise_latent/"
    assert any(n.startswith(ignored) for n in k.second.notes)
    assert k.second.trials == 4
    # The diverged setting stays a result: never run again.
    resumed = [json.loads(line) for line in (k.out / "trials.jsonl").read_text().splitlines()[k.journal_lines:]]
    assert [(j["stage"], j["recipe"]) for j in resumed if j["stage"] == "search"] == [("search", "noise_latent")]


def test_the_final_runs_of_a_row_the_edited_sweep_drops_move_to_replaced(edited_study, tiny_features, tmp_path):
    from conftest import run

    from sedaug.sweep.run import run_sweep
    from sedaug.table import build_table

    out = shutil.copytree(edited_study.out, tmp_path / "out", ignore=shutil.ignore_patterns("ray"))  # sockets
    seed1 = out / "final" / "none" / "seed1"
    seed2 = shutil.copytree(seed1, seed1.with_name("seed2"))  # an ensemble needs two (seed 2: no seed of the sweep)
    (seed2 / "recipe.yaml").write_text((seed2 / "recipe.yaml").read_text().replace("seed: 1\n", "seed: 2\n"))
    for checkpoint in (seed2 / "checkpoints").glob("*.pt"):  # its model's recipe says so too (evaluate checks)
        saved = torch.load(checkpoint, weights_only=False)
        saved["recipe"]["seed"] = 2
        torch.save(saved, checkpoint)
    assert run("evaluate", seed1, seed2, "--ensemble", "--device", "cpu").exit_code == 0
    sweep = study(tiny_features, [0.05, 0.1])
    sweep["recipes"] = sweep["recipes"][1:]  # `none` removed
    result = run_sweep(write_sweep(tmp_path / "study.yaml", sweep), out=out, resume=True, progress=False)
    assert not (out / "final" / "none").exists()  # the ensemble of its seeds went with them (it stayed, out of date)
    ensemble, moved, other = sorted((out / "replaced" / "none").iterdir())
    assert moved.name.startswith("seed1-") and (moved / "eval" / "results.json").is_file()
    assert ensemble.name.startswith("ensemble-") and other.name.startswith("seed2-")
    assert result.notes[-3:] == [
        f"final/none/seed1 is of a seed or row the sweep no longer has: moved to replaced/none/{moved.name}",
        f"final/none/ensemble is an ensemble of final/none/seed1: moved to replaced/none/{ensemble.name}",
        f"final/none/seed2 is of a seed or row the sweep no longer has: moved to replaced/none/{other.name}"]
    shutil.rmtree(ensemble), shutil.rmtree(other)
    assert [r.recipe for r in build_table(out / "final").rows] == ["noise_latent"]
    assert [r.recipe for r in build_table(out).rows] == ["noise_latent"]  # replaced/ is not read either
    # ... unless asked for: a folder inside search/ or replaced/ is a table of its runs, a row per setting, named by
    # its values (the search's lr 0.001 and 1e30).
    assert [r.recipe for r in build_table(out / "replaced").rows] == [f"none [{moved.name.removeprefix('seed1-')}]"]
    other = shutil.copytree(moved, moved.parent / moved.name.replace("seed1-", "seed0-"))  # set aside with it
    (other / "recipe.yaml").write_text((other / "recipe.yaml").read_text().replace("seed: 1\n", "seed: 0\n"))
    assert [(r.recipe, r.n) for r in build_table(out / "replaced").rows] == [
        (f"none [{moved.name.removeprefix('seed1-')}]", 2)]  # one row for the seeds one edit set aside
    shutil.rmtree(other)
    rows = build_table(out / "search" / "none").rows
    assert [r.recipe for r in rows] == ["none [optim.lr=0.001]", "none [optim.lr=1e+30]"]
    assert rows[0].note == "not evaluated (search trials: their selection scores are in selection.tsv)"
    assert run("table", out / "search" / "none").stderr == ""  # no "evaluate them" beside that note


def test_a_row_left_with_only_its_diverged_setting_is_a_note_and_the_sweep_ends_normally(edited_study, tiny_features,
                                                                                          tmp_path):
    from sedaug.sweep.run import run_sweep
    from sedaug.table import build_table

    out = shutil.copytree(edited_study.out, tmp_path / "out", ignore=shutil.ignore_patterns("ray"))
    sweep = study(tiny_features, [0.05, 0.1])
    sweep["recipes"][0]["search"] = {"optim.lr": {"grid": [1e30]}}  # the winner 1e-3 removed
    result = run_sweep(write_sweep(tmp_path / "study.yaml", sweep), out=out, resume=True, progress=False)
    [lost] = [n for n in result.notes if n.startswith("none: ")]
    assert lost.startswith("none: every setting diverged (optim.lr=1e+30 in epoch ") and \
        lost.endswith("): no final runs for this row"), lost
    assert set(result.winners) == {"noise_latent"} and "selected noise_latent " in result.summary()
    assert any(n.startswith("final/none/seed1 was the final run of an earlier winner, and no setting") for n in result.notes)
    assert [r.recipe for r in build_table(out / "final").rows] == ["noise_latent"]


def test_a_final_run_whose_files_lost_their_times_is_evaluated_on_resume(edited_study, tmp_path):
    """A finished run copied without its file times looks one epoch short (metrics.jsonl newer than last.pt): the
    trial's train call finds nothing left, and the trial still evaluates it."""
    from sedaug.sweep.run import run_sweep

    out = shutil.copytree(edited_study.out, tmp_path / "out", ignore=shutil.ignore_patterns("ray"))
    final = out / "final" / "none" / "seed1"
    shutil.rmtree(final / "eval")
    os.utime(final / "metrics.jsonl", ns=(2**62, 2**62))  # newer than last.pt
    result = run_sweep(edited_study.spec, out=out, resume=True, progress=False)
    assert (final / "eval" / "results.json").is_file(), result.notes


def test_a_dry_run_of_a_resume_refuses_what_the_resume_would_and_says_what_is_done(edited_study):
    from sedaug.sweep.run import plan_sweep

    k = edited_study
    with pytest.raises(UserError, match="is not empty: pass --resume"):
        plan_sweep(k.spec, out=k.out)
    with pytest.raises(UserError, match="--resume: recipe .* optim.epochs"):
        plan_sweep(k.spec, out=k.out, resume=True, overrides=["optim.epochs=4"])
    planned = plan_sweep(k.spec, out=k.out, resume=True)
    assert any(n.startswith(f"--resume: 4 of the search trials and 2 of the final runs are done in {k.out} already")
               for n in planned.notes)
    assert any(n.startswith("1 search trial of settings no longer in the sweep") for n in planned.notes)  # as it runs
    for row in planned.rows:  # all of it done: nothing left of the estimate
        row.step_s = 1.0
        assert row.done_steps == pytest.approx(row.trial_hours * 3600) and row.left_hours == pytest.approx(0.0), row
    assert planned.footer()[1] == "  left: 0 s (what --resume finds done taken off)"


def test_a_dry_run_of_a_resume_counts_a_dethroned_winners_final_run_as_to_train(edited_study, tmp_path):
    """The winner's sigma taken out of the grid: its final run is set aside and another winner's trained. The dry
    run said every final run was done and nothing was left."""
    import fcntl

    from sedaug.sweep.run import plan_sweep

    k = edited_study
    with (k.out / "selection.tsv").open() as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["recipe"] == "noise_latent"]
    loser = next(float(r["augmentation.sigma"]) for r in rows if r["winner"] != "*" and r["status"] == "done")
    sweep = json.loads(k.spec.read_text())  # write_sweep writes JSON
    spec = write_sweep(tmp_path / "study.yaml", {**sweep, "recipes": [
        *sweep["recipes"][:1],
        {"recipe": str(REPO / "recipes" / "noise_latent.yaml"), "search": {"augmentation.sigma": {"grid": [loser]}}}]})
    planned = plan_sweep(spec, out=k.out, resume=True)
    assert any(n.startswith(f"--resume: 3 of the search trials and 1 of the final runs are done in {k.out} already; "
                            "1 final run of a winner the edit dethroned would be set aside")
               for n in planned.notes), planned.notes
    row = next(r for r in planned.rows if r.recipe == "noise_latent")
    row.step_s = 1.0
    assert row.left_hours == pytest.approx(row.epochs * row.steps / 3600)  # its one final run, again
    assert not any("another `sedaug sweep` is running" in n for n in planned.notes)
    with open(k.out / ".sweep.lock") as lock:  # a driver at work there: the resume would be refused
        fcntl.flock(lock, fcntl.LOCK_EX)
        planned = plan_sweep(spec, out=k.out, resume=True)
    assert f"another `sedaug sweep` is running on {k.out}: this one would be refused until it ends" in planned.notes


def test_a_resume_stopped_before_its_search_leaves_the_edited_sweeps_selection(edited_study, tmp_path, monkeypatch):
    """Ctrl-C while Ray starts: selection.tsv still marked the winner the edit had taken out of the grid."""
    import sedaug.sweep.run
    from sedaug.errors import Interrupted

    out = shutil.copytree(edited_study.out, tmp_path / "out", ignore=shutil.ignore_patterns("ray"))
    with (out / "selection.tsv").open() as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["recipe"] == "noise_latent"]
    winner = next(float(r["augmentation.sigma"]) for r in rows if r["winner"] == "*")
    sweep = json.loads(edited_study.spec.read_text())
    sweep["recipes"][1]["search"]["augmentation.sigma"]["grid"].remove(winner)
    spec = write_sweep(tmp_path / "study.yaml", sweep)

    @contextlib.contextmanager
    def ray_starting(out, address, connect_timeout, before_start):
        before_start(None)
        raise KeyboardInterrupt
        yield []

    monkeypatch.setattr(sedaug.sweep.run, "ray_session", ray_starting)
    with pytest.raises(Interrupted, match="continue with"):
        sedaug.sweep.run.run_sweep(spec, out=out, resume=True, progress=False)
    with (out / "selection.tsv").open() as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["recipe"] == "noise_latent"]
    assert [float(r["augmentation.sigma"]) for r in rows] == sweep["recipes"][1]["search"]["augmentation.sigma"]["grid"]
    assert [r["winner"] for r in rows] == ["*"]  # the one setting left, settled: the row's winner


def test_dry_run_plans_what_ran(edited_study):
    k = edited_study
    planned = {r.recipe: (r.trials, r.finals, r.epochs) for r in k.planned.rows}
    assert planned == {"none": (2, 1, EPOCHS), "noise_latent": (2, 1, EPOCHS)}
    assert sum(p[0] for p in planned.values()) == k.first.trials
    assert sum(p[1] for p in planned.values()) == len(k.first.final_runs)
    assert "4 search trials (seed 0) and 2 final runs (seed 1)" in k.planned.lines()[0]


def test_dry_run_prints_the_plan_and_its_cost_without_starting_ray(tmp_path, tiny_features, monkeypatch):
    pytest.importorskip("ray")
    import ray

    import sedaug.sweep.plan

    timed = []
    monkeypatch.setattr(sedaug.sweep.plan, "step_seconds",
                        lambda recipe, device, run_steps: timed.append((recipe.name, run_steps)) or 0.5)
    spec = write_sweep(tmp_path / "s.yaml", study(tiny_features, [0.05, 0.2, 0.4]))
    result = sweep_cli(spec, "--dry-run", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "sweep s: 5 search trials (seed 0) and 2 final runs (seed 1) -- nothing is started"
    # tiny store: min(20 unlabeled // 12, 10 weak // 6, 16 synthetic_train // 6) = 1 step per epoch;
    # none: (2 trials + 1 final) x 2 epochs x 1 step x 0.5 s = 3 s
    assert lines[1].split() == ["none", "2", "trials", "+", "1", "final", "x", "2", "epochs", "x", "1", "step,",
                                "0.5", "s/step", "->", "3", "s,", "memory", "1", "GiB"]
    assert "noise_latent" in lines[2] and "-> 4 s," in lines[2]  # (3 + 1) x 2 x 1 x 0.5 s
    assert lines[3].startswith("  total: 7 s of training steps summed over the trials on cpu")
    assert timed == [("none", 2), ("noise_latent", 2)]  # one timing per recipe family, told the trials' length
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_an_estimate_is_said_in_the_unit_that_reads():
    from sedaug.sweep.plan import _duration

    assert [_duration(h) for h in (7720.4, 128.2, 62.74, 1.0, 0.2, 1 / 60, 0.000833, 0)] == [
        "7,720 h", "128 h", "62.7 h", "1 h", "12 min", "1 min", "3 s", "0 s"]


def test_the_local_ray_listens_on_localhost_only(edited_study):
    assert edited_study.listening, "no listening socket seen while the sweep ran"
    assert edited_study.listening <= {"127.0.0.1"}, edited_study.listening


def test_a_change_that_makes_trials_incomparable_is_refused_each_named(edited_study):
    from sedaug.sweep.run import run_sweep

    k = edited_study
    with pytest.raises(UserError) as e:
        run_sweep(k.spec, out=k.out, resume=True, progress=False,
                  overrides=["optim.epochs=3", "select.metric=psds", "search_seed=2"])
    lines = str(e.value).splitlines()
    assert len(lines) == 4, lines
    assert any(line.startswith("--resume: select ") for line in lines)
    assert any(line.startswith("--resume: search_seed ") for line in lines)
    assert sum("optim.epochs" in line and line.startswith("--resume: recipe ") for line in lines) == 2


def test_a_row_whose_every_setting_diverged_is_one_line_naming_it_and_its_settings(tmp_path):
    from sedaug.sweep.select import TrialRecord, winners, without_winner

    def record(recipe, lr, status, diverged=None, score=0.1):
        return TrialRecord(recipe, f"s{lr}", 0, {"optim.lr": lr}, tmp_path, 1, 2, score, 1, status, diverged)

    records = [record("none", 1e30, "diverged", {"epoch": 1, "step": 0}),
               record("none", 1e31, "diverged", {"epoch": 2, "step": 3}),
               record("baseline", 1e-3, "done"), record("baseline", 1e30, "diverged", {"epoch": 1, "step": 0}),
               # early-stopped trials: with the default selection they have a score (the running best F1) and may
               # win; with another select.split they have none (scored at the last epoch only)
               record("noise_latent", 1e30, "diverged", {"epoch": 2, "step": 3}), record("noise_latent", 1e-3, "stopped"),
               record("vat_latent", 1e30, "diverged", {"epoch": 2, "step": 3}),
               record("vat_latent", 1e-3, "stopped", score=None)]
    chosen = winners(records)
    assert {n: w.params for n, w in chosen.items()} == {"baseline": {"optim.lr": 1e-3}, "noise_latent": {"optim.lr": 1e-3}}
    planned = {"none": 2, "baseline": 2, "noise_latent": 2, "vat_latent": 2}
    assert without_winner(records, chosen, planned) == {
        "none": "none: every setting diverged (optim.lr=1e+30 in epoch 1; optim.lr=1e+31 in epoch 2): no final runs "
                "for this row",
        "vat_latent": "vat_latent: no setting to select: 1 diverged, 1 stopped early, before the last epoch, where the "
                      "selection split is scored: no final runs for this row"}
    # A third setting failed before it had a folder (no record): that row is unfinished, not lost.
    assert "none" not in without_winner(records, chosen, {**planned, "none": 3})


# ---------------------------------------------------------------------------------------------- early stopping


def _trial(trial_id: str, recipe: str):
    return SimpleNamespace(trial_id=trial_id, config={"trial": {"stage": "search", "recipe": recipe, "seed": 0,
                                                                "params": {}}})


def test_asha_ranks_each_trial_against_its_own_row_only():
    pytest.importorskip("ray.tune")
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from sedaug.sweep.schedule import RowASHA

    strong = [(_trial(f"a{i}", "strong"), score) for i, score in enumerate([0.80, 0.85, 0.90])]
    weak_best, weak_worse = (_trial("b0", "weak"), 0.30), (_trial("b1", "weak"), 0.20)

    def first_rung(scheduler) -> dict[str, str]:
        scheduler.set_search_properties("score", "max")
        decisions = {}
        for trial, score in [*strong, weak_best, weak_worse]:
            scheduler.on_trial_add(None, trial)
            decisions[trial.trial_id] = scheduler.on_trial_result(None, trial, {"epoch": 1, "score": score})
        return decisions

    shared = first_rung(ASHAScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2))
    assert shared["b0"] == TrialScheduler.STOP  # one ASHA over the grid stops the weak row's best setting
    per_row = first_rung(RowASHA({"strong": 4, "weak": 4}, grace_period=1, reduction_factor=2))
    assert per_row["b0"] == TrialScheduler.CONTINUE  # ranked against its row only
    assert per_row["b1"] == TrialScheduler.STOP  # and still stopped below its row's cutoff
    assert per_row["a0"] == per_row["a1"] == per_row["a2"] == TrialScheduler.CONTINUE


# ---------------------------------------------------------------------------------------------- refusals


def test_a_resumed_sweeps_asha_ranks_new_trials_against_the_settled_ones():
    """A resumed sweep's ASHA is new: handed the settled trials' running best F1 by epoch, it records them at every
    rung they reached, so a poor new trial is stopped where, ranked among the new trials only, it would go on."""
    pytest.importorskip("ray.tune")
    from ray.tune.schedulers import TrialScheduler

    from sedaug.sweep.schedule import RowASHA

    settled = {"row": [[0.5, 0.6, 0.7, 0.8], [0.2, 0.7, 0.7, 0.75], [0.6, 0.6, 0.65, 0.7]]}

    def first_report(scheduler, epoch: int, score: float) -> str:
        scheduler.set_search_properties("score", "max")
        trial = _trial("new", "row")
        scheduler.on_trial_add(None, trial)
        return scheduler.on_trial_result(None, trial, {"epoch": epoch, "score": score})

    fresh = RowASHA({"row": 8}, grace_period=1, reduction_factor=2)
    assert first_report(fresh, 1, 0.1) == TrialScheduler.CONTINUE  # alone at its rung
    resumed = RowASHA({"row": 8}, grace_period=1, reduction_factor=2, settled=settled)
    assert first_report(resumed, 1, 0.1) == TrialScheduler.STOP  # below the settled trials' rung-1 cutoff
    [bracket] = resumed.rows["row"]._brackets
    assert {milestone: sorted(recorded.values()) for milestone, recorded in bracket._rungs} == {
        8: [], 4: [0.7, 0.75, 0.8], 2: [0.6, 0.6, 0.7], 1: [0.1, 0.2, 0.5, 0.6]}
    # A trial catching up at epoch 3 is ranked at rung 2, against the settled trials' epoch-2 scores.
    assert first_report(RowASHA({"row": 8}, 1, 2, settled=settled), 3, 0.65) == TrialScheduler.CONTINUE
    assert first_report(RowASHA({"row": 8}, 1, 2, settled=settled), 3, 0.55) == TrialScheduler.STOP
    # The rungs hold what the settled trial's own reports put there, fractional milestones too.
    live = RowASHA({"row": 8}, grace_period=1, reduction_factor=1.2)
    live.set_search_properties("score", "max")
    trial = _trial("settled", "row")
    live.on_trial_add(None, trial)
    for epoch, score in enumerate(settled["row"][1], start=1):
        live.on_trial_result(None, trial, {"epoch": epoch, "score": score})
    replayed = RowASHA({"row": 8}, grace_period=1, reduction_factor=1.2, settled={"row": [settled["row"][1]]})
    first_report(replayed, 1, 0.0)
    rungs = [{m: list(r.values()) for m, r in s.rows["row"]._brackets[0]._rungs} for s in (live, replayed)]
    assert rungs[0] == {m: values[:-1] if m == 1 else values for m, values in rungs[1].items()}  # (the new trial)


def test_a_resumed_sweep_hands_its_asha_the_settled_trials(tiny_features, tmp_path, monkeypatch):
    """Through `sedaug sweep` with early stopping: the sweep runs under RowASHA, and resumed with a setting added,
    hands it each settled trial's running best F1 by epoch, read from the trials' own metrics."""
    pytest.importorskip("ray.tune")
    from sedaug.sweep import schedule
    from sedaug.sweep.run import run_sweep

    def sweep(lrs: list[float]) -> dict:
        return {"recipes": [{"recipe": str(REPO / "recipes" / "none.yaml"), "search": {"optim.lr": {"grid": lrs}}}],
                "set": {**TINY, "data.features": str(tiny_features), "optim.epochs": EPOCHS,
                        "optim.max_steps_per_epoch": 2, "optim.rampup_epochs": 0},
                "seeds": [1], "search_seed": 0, "max_concurrent_trials": 2, "resources": {"cpus": 1, "memory": 1.0},
                "early_stopping": {"type": "asha", "grace_epochs": 1, "reduction_factor": 2}}

    handed = []
    init = schedule.RowASHA.__init__

    def spy(self, *args, **kwargs):
        handed.append(kwargs.get("settled"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(schedule.RowASHA, "__init__", spy)
    spec, out = write_sweep(tmp_path / "s.yaml", sweep([1e-3, 3e-3])), tmp_path / "out"
    run_sweep(spec, out=out, progress=False)
    assert handed == [{}]
    trained = sorted(out.glob("search/none/*/seed0"), key=lambda d: yaml.safe_load((d / "recipe.yaml").read_text())
                     ["optim"]["lr"])
    running_best = []
    for run_dir in trained:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert rows and [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        running_best.append([max(r["valid_f1"] for r in rows[: i + 1]) for i in range(len(rows))])
    run_sweep(write_sweep(spec, sweep([1e-3, 3e-3, 1e-2])), out=out, resume=True, progress=False)
    assert handed[1:] == [{"none": running_best}]
    assert len(list(out.glob("search/none/*/seed0/metrics.jsonl"))) == 3


def test_ctrl_c_while_ray_starts_says_how_to_go_on(tiny_features, tmp_path, monkeypatch):
    """Once --out holds the sweep, a Ctrl-C before Ray Tune runs (Ray starting) names the resume command; before,
    there is nothing to resume (the CLI's one line)."""
    pytest.importorskip("ray.tune")
    from sedaug.sweep import run as sweep_run

    def interrupted_start(written: bool):
        @contextlib.contextmanager
        def ray_session(out, address, connect_timeout, before_start):
            if written:
                before_start(None)
            raise KeyboardInterrupt
            yield []
        return ray_session

    spec = write_sweep(tmp_path / "s.yaml", study(tiny_features, [0.05]))
    monkeypatch.setattr(sweep_run, "ray_session", interrupted_start(False))
    with pytest.raises(KeyboardInterrupt):
        sweep_run.run_sweep(spec, out=tmp_path / "out", progress=False)
    monkeypatch.setattr(sweep_run, "ray_session", interrupted_start(True))
    with pytest.raises(sweep_run.Interrupted) as e:
        sweep_run.run_sweep(spec, out=tmp_path / "out", progress=False)
    assert str(e.value) == f"interrupted; continue with `sedaug sweep {spec} --out {tmp_path / 'out'} --resume`"
    assert (tmp_path / "out" / "sweep.yaml").is_file()


def test_an_interrupted_search_leaves_selection_tsv_of_what_is_done(edited_study, tmp_path, monkeypatch):
    """Stopped in the search, selection.tsv says what is done so far, winners of the rows whose search had finished
    kept (`table OUT/final` reads them)."""
    from sedaug.sweep import run as sweep_run

    out = shutil.copytree(edited_study.out, tmp_path / "out", ignore=shutil.ignore_patterns("ray"))
    before = (out / "selection.tsv").read_text()

    def interrupted(*args):
        raise sweep_run.Interrupted(f"interrupted: the finished trials are in {out}")

    monkeypatch.setattr(sweep_run, "_search", interrupted)
    for _ in range(2):  # an interrupted resume keeps the file as it was; a file lost is written again
        with pytest.raises(sweep_run.Interrupted):
            sweep_run.run_sweep(edited_study.spec, out=out, resume=True, progress=False)
        assert (out / "selection.tsv").read_text() == before
        (out / "selection.tsv").unlink()
    rows = list(csv.DictReader(before.splitlines(), delimiter="\t"))
    assert len(rows) == 4 and sum(r["winner"] == "*" for r in rows) == 2  # the case: both rows had chosen


def test_a_setting_that_leaves_no_training_step_is_refused_before_ray(tiny_features, tmp_path):
    """A batch larger than a split: train refuses every trial of it, so its row could never finish (it had trained
    the other settings, then ended "not finished ... --resume retries", which never could)."""
    pytest.importorskip("ray.tune")
    sweep = study(tiny_features, [0.05])
    sweep["recipes"][1]["search"] = {"data.batch_size": {"grid": [8, 48]}}
    spec = write_sweep(tmp_path / "s.yaml", sweep)
    one_line_error(sweep_cli(spec, "--out", tmp_path / "out"), f"{spec}: noise_latent: no training step in an epoch "
                   "with data.batch_size=48 (a batch larger than a split): take it out of the search")
    assert not (tmp_path / "out").exists()


def test_binary_sweep_files_and_recipes_are_one_line(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    one_line_error(sweep_cli(binary, "--out", tmp_path / "out"), "not a YAML sweep file (byte")
    spec = write_sweep(tmp_path / "s.yaml", {"recipes": [{"recipe": str(binary)}]})
    one_line_error(sweep_cli(spec, "--out", tmp_path / "out"), f"{binary}: not a YAML recipe (byte")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- make


def test_make_table_full_without_desed_is_one_line():
    if shutil.which("make") is None:
        pytest.skip("no make")
    result = subprocess.run(["make", "--no-print-directory", "table-full"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "DESED=/path/to/DESED" in lines[0], lines

