"""Thin Typer commands: parse, call one function, print a one-line summary. Heavy imports stay inside."""

from __future__ import annotations

import codecs
import contextlib
import functools
import logging
import os
import re
import select
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sedaug.deps import binary_mismatch
from sedaug.errors import INTERRUPTED, UserError, counted, listed

app = typer.Typer(
    name="sedaug",
    help="Latent and adversarial data augmentations for semi-supervised sound event detection on DESED.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Summaries stay one line in logs and CI (no wrapping at 80 columns when stderr is not a terminal); text, not
# markup: a path `runs/[x]` is printed as it is.
console = Console(stderr=True, soft_wrap=True, markup=False)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader went away (`| head`): a BrokenPipeError may be a socket's too."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # not a file descriptor (a test's capture), no poll (Windows)
        return False


READER_GONE = 141  # 128 + SIGPIPE: the status a shell reports for a command whose stdout reader went away


def _silence_stdout() -> None:
    """Nobody reads stdout any more: point it at devnull (Python's advice), or the flush at exit fails again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


class _Stdout(Console):
    """A table on stdout: whole rows in a log, and where its reader left (`| head`), the status the other
    outputs end with then (rich's own is exit 1, an error that says nothing)."""

    def __init__(self):
        super().__init__(width=None if sys.stdout is not None and sys.stdout.isatty() else 10_000)

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _silence_stdout()
        raise SystemExit(READER_GONE)


# Whether a command said why it ended: typer ends a Ctrl-C outside any command's body (while it parses) with the
# same status 130 as one inside, and says nothing.
_said = False


def print_error(err: UserError | str) -> None:
    """A UserError on stderr, `error: ` before each of its lines."""
    global _said
    _said = True
    for line in str(err).splitlines():
        print(f"error: {line}", file=sys.stderr)


def user_errors(command):
    """Report a UserError, or an OSError of the environment (a full disk, a folder where a file should be, a
    permission), as one line per problem on stderr and exit non-zero, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as e:
            print_error(e)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # atomic writes leave the previous file in place: say what failed, nothing is lost
            if isinstance(e, BrokenPipeError) and _stdout_gone():  # `| head`: nothing to tell a reader that left
                _silence_stdout()
                raise typer.Exit(READER_GONE) from None
            where = e.filename or "sedaug"
            print(f"error: {where}: {e.strerror or e} (earlier outputs are left as they were)", file=sys.stderr)
            raise typer.Exit(1) from None
        except UnicodeEncodeError as e:
            if "surrogate" not in e.reason:
                raise
            # A name's bytes that the locale could not decode (an ASCII locale without Python's UTF-8 mode), asked
            # to be written as UTF-8 text (a manifest's paths).
            text = e.object if isinstance(e.object, str) else ""
            name = text[:e.start].rsplit("\t", 1)[-1].rsplit("\n", 1)[-1] + text[e.start:].split("\t", 1)[0]
            print(f"error: {name.splitlines()[0] if name else 'a name'}: this locale "
                  f"({sys.getfilesystemencoding()}) cannot read it; run with PYTHONUTF8=1 or a UTF-8 locale "
                  "(earlier outputs are left as they were)", file=sys.stderr)
            raise typer.Exit(1) from None
        except EOFError:  # an input that ended (typer would print an empty line, then abort)
            print("error: aborted: the input ended", file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves last.pt and says so itself)
            print_error(INTERRUPTED)
            raise typer.Exit(130) from None

    return wrapper


class Size(str, Enum):
    tiny = "tiny"
    small = "small"
    medium = "medium"


class Split(str, Enum):
    eval = "eval"
    validation = "validation"
    synthetic_valid = "synthetic_valid"


class Checkpoint(str, Enum):
    best = "best"
    last = "last"


class Format(str, Enum):
    rich = "rich"
    markdown = "markdown"
    latex = "latex"
    csv = "csv"


DeviceOption = Annotated[str | None, typer.Option(metavar="cpu|cuda", help="cpu or cuda (default: cuda when available).")]


def _version(asked: bool) -> None:
    if asked:
        from sedaug import __version__

        print(f"sedaug {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", metavar="", callback=_version, is_eager=True,
                                                   help="Print sedaug's version and exit.")] = False) -> None:
    pass


@app.command("prepare-desed")
@user_errors
def prepare_desed(
    root: Annotated[Path | None, typer.Option(metavar="DIR", help="A real DESED tree (DCASE 2020 layout) to import.")] = None,
    synthetic: Annotated[bool, typer.Option("--synthetic", metavar="", help="Generate the embedded synthetic DESED (default).")] = False,
    size: Annotated[Size | None, typer.Option(help="Synthetic set size (default: small).")] = None,
    seed: Annotated[int | None, typer.Option(metavar="N", help="Synthetic generator seed (default: 0).")] = None,
    sample_rate: Annotated[int | None, typer.Option(help="Synthetic audio rate: 16000 mono or 44100 stereo like "
                                                    "DESED (default: 16000).")] = None,
    download: Annotated[bool, typer.Option("--download", metavar="", help="Download DESED into --root first (needs sedaug\\[download]).")] = False,
    out: Annotated[Path, typer.Option(metavar="DIR", help="Prepared directory (manifest; the synthetic audio too).")] = Path("data/desed"),
) -> None:
    """Generate the synthetic DESED, or check a real DESED tree, and write the manifest."""
    from sedaug.data import desed
    from sedaug.data import synthetic as synth
    from sedaug.rundir import sedaug_data_holding

    held = sedaug_data_holding(out)  # None, or this very prepared DESED
    if held is not None and held != f"the prepared DESED {out.resolve()}":
        raise UserError(f"--out {out} is in {held}: give the folder for the manifest (e.g. data/desed)")
    if root is not None and synthetic:
        raise UserError("--root and --synthetic are exclusive: import a real DESED or generate a synthetic one")
    if download and root is None:
        raise UserError("--download needs --root DIR to download into")
    if root is not None:
        given = [name for name, value in (("--size", size), ("--seed", seed), ("--sample-rate", sample_rate))
                 if value is not None]
        if given:
            raise UserError(f"{', '.join(given)}: only for the synthetic DESED; --root imports a real one as it is")
    if root is None:
        size, seed, sample_rate = size or Size.small, 0 if seed is None else seed, sample_rate or 16000
        if seed < 0:
            raise UserError(f"--seed {seed}: expected an integer >= 0")
        if sample_rate not in (16000, 44100):
            raise UserError(f"--sample-rate {sample_rate}: expected 16000 or 44100")
        already = synth.is_generated(out, size.value, seed, sample_rate)
        record = out / desed.MANIFEST_DIR / desed.PREPARE_JSON
        before = record.read_bytes() if record.is_file() else None
        synth.generate_synthetic(out, size=size.value, seed=seed, sample_rate=sample_rate)
        report = desed.prepare_desed(out, out)  # already done by the generator: this reads its report back
        clips = ", ".join(f"{name} {n:,}" for name, n in report.counts.items())
        state = "generated" if not already else "already up to date" if record.read_bytes() == before else \
            "already generated (its manifest made again: a file changed since, or an older sedaug wrote it)"
        console.print(f"synthetic DESED ({size.value}, seed {seed}, {sample_rate} Hz) {state} in {out}: {clips}")
        return
    if download:
        from sedaug.data.download import download_desed

        download_desed(root)
    console.print(desed.prepare_desed(root, out).summary())


@app.command("extract-mels")
@user_errors
def extract_mels(
    data: Annotated[Path, typer.Option(metavar="DIR", help="Prepared DESED directory (from prepare-desed).")] = Path("data/desed"),
    out: Annotated[Path, typer.Option(metavar="DIR", help="Feature store directory.")] = Path("data/features"),
    device: DeviceOption = None,
    workers: Annotated[int | None, typer.Option(metavar="N", help="Decoding workers (default: all CPUs).")] = None,
) -> None:
    """Compute the linear mel features of every split into one array per split, plus the scaler."""
    from sedaug.data.extract import extract_mels as extract
    from sedaug.device import parse_device

    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: expected a positive number of decoding threads (leave it out: every CPU)")
    report = extract(data, out, device=parse_device(device), workers=workers)
    console.print(report.summary())


@app.command()
@user_errors
def train(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE.yaml", help="Recipe YAML (see recipes/).")],
    set_: Annotated[list[str], typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe value: key.path=value (repeatable).")] = [],  # noqa: B006
    runs: Annotated[Path, typer.Option(metavar="DIR", help="Where run directories go: RUNS/<name>/seed<seed>.")] = Path("runs"),
    resume: Annotated[bool, typer.Option("--resume", metavar="", help="Continue the run from checkpoints/last.pt; restart one that stopped before saving any.")] = False,
    device: DeviceOption = None,
    out: Annotated[Path | None, typer.Option(hidden=True)] = None,  # the other commands' name for where it goes
) -> None:
    """Train the CRNN with a recipe's objective, writing a run directory."""
    if out is not None:
        raise UserError(f"train has no --out: give --runs {out}, under which the run goes (<name>/seed<seed>)")
    from sedaug.device import parse_device
    from sedaug.recipe import load_recipe
    from sedaug.strict_yaml import blamed_override
    from sedaug.train import train as run_training

    r = load_recipe(recipe, set_)
    epochs_given = blamed_override("optim.epochs", [item.partition("=")[0].strip() for item in set_]) is not None
    result = run_training(r, runs / r.name / f"seed{r.seed}", resume=resume, device=parse_device(device),
                          epochs_given=epochs_given, stop_on_sigterm=True)
    if result.nothing_left:
        ended = (f"; its recipe.yaml now says optim.epochs {result.epochs} (it said {result.epochs_were})"
                 if result.epochs_were is not None else "")
        console.print(f"nothing to train: {result.run_dir} holds all {counted(result.epochs, 'epoch')} of "
                      f"{result.recipe} seed {result.seed}{ended} (--set optim.epochs=N --resume trains more)")
        return
    console.print(
        f"trained {result.recipe} seed {result.seed} ({result.step}): {counted(result.epochs, 'epoch')}, best "
        "synthetic_valid macro F1 "
        f"{result.best_f1:.3f} (epoch {result.best_epoch}) -> {result.run_dir}"
    )
    if result.short_rampups:
        console.print(f"note: {result.short_rampups}")


@app.command()
@user_errors
def evaluate(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Run directories (runs/<name>/seed<k>), e.g. runs/none/seed*.")],
    split: Annotated[Split, typer.Option(metavar="SPLIT", help="Split to score: eval, validation or synthetic_valid.")] = Split.eval,
    checkpoint: Annotated[Checkpoint, typer.Option(help="Checkpoint to score.")] = Checkpoint.best,
    ensemble: Annotated[bool, typer.Option("--ensemble", metavar="", help="Average the runs' frame scores and score the average "
                                           "(into RUNS/<name>/ensemble, or --out).")] = False,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="With --ensemble: the ensemble's directory.")] = None,
    device: DeviceOption = None,
    features: Annotated[Path | None, typer.Option(metavar="DIR", help="The feature store to score on (default: the run's "
                                                  "data.features).")] = None,
    other_store: Annotated[bool, typer.Option("--other-store", metavar="", help="Score on a feature store other than the one "
                                              "the runs trained on (refused otherwise).")] = False,
) -> None:
    """Score trained runs with the DCASE 2020 protocol (macro F1, PSDS), one by one or as a seed ensemble."""
    from sedaug.device import parse_device
    from sedaug.evaluate import NotScored, evaluate_ensemble, evaluate_run, summary
    from sedaug.rundir import RunDir, is_ensemble

    dev = parse_device(device)
    if ensemble:  # `runs/<name>/*` holds an earlier ensemble's folder too: not a member
        for run_dir in filter(is_ensemble, run_dirs):
            console.print(f"skipped {run_dir}: an ensemble's folder, not a member")
        run_dirs = [r for r in run_dirs if not is_ensemble(r)]
        where, results, replaced = evaluate_ensemble(run_dirs, split=split.value, checkpoint=checkpoint.value,
                                                     device=dev, out=out, features=features, other_store=other_store)
        if replaced is not None:
            console.print(f"note: replaced the ensemble of {listed(replaced, 5)} in {where / split.value}",
                          markup=False, highlight=False)
        console.print(summary(where, results))
        return
    if out is not None:
        raise UserError("--out goes with --ensemble (a single run is scored into RUN/<split>/)")
    skipped, failed = [], []
    for run_dir in run_dirs:
        try:
            before = _scored_checkpoint(RunDir(run_dir).results(split.value))
            results = evaluate_run(run_dir, split=split.value, checkpoint=checkpoint.value, device=dev,
                                   features=features, other_store=other_store)
        except NotScored as e:  # one of several (a diverged seed, runs/<name>/* with its ensemble): others scored
            if len(run_dirs) == 1:
                raise
            console.print(f"skipped {e}")
            skipped.append(run_dir)
            continue
        except UserError as e:  # one of several (no best.pt yet, say): said, and the others are scored
            if len(run_dirs) == 1:
                raise
            print_error(e)
            failed.append(run_dir)
            continue
        if before not in (None, checkpoint.value):
            console.print(f"note: replaced the evaluation of {before}.pt in {run_dir / split.value}", markup=False,
                          highlight=False)
        console.print(summary(run_dir, results))
    if len(skipped) == len(run_dirs):
        raise UserError(f"no run given is one to score ({', '.join(map(str, skipped))}): each diverged or is an "
                        "ensemble")
    if failed:
        raise UserError(f"{counted(len(failed), 'run')} of {len(run_dirs)} not scored: {listed(failed)}")


@app.command()
@user_errors
def sweep(
    spec: Annotated[Path, typer.Argument(metavar="SWEEP.yaml", help="Sweep YAML (see sweeps/ and docs/sweeps.md).")],
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Sweep directory (default: runs/sweeps/<sweep file name>).")] = None,
    address: Annotated[str | None, typer.Option(metavar="HOST:PORT", help="An existing Ray cluster (HOST:PORT of its head, or auto) instead of a local Ray; default: RAY_ADDRESS where set (docs/cluster.md).")] = None,
    resume: Annotated[bool, typer.Option("--resume", metavar="", help="Continue the sweep in --out; finished trials are kept, edited search values are run.")] = False,
    set_: Annotated[list[str], typer.Option("--set", metavar="KEY=VALUE", help="A recipe key (model.x=...) for every recipe, or a sweep key (max_concurrent_trials=2); repeatable.")] = [],  # noqa: B006
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar="", help="Print the trials, final runs, epochs and an estimate of the device-hours (a few steps timed here); start nothing.")] = False,
    wait_for_resources: Annotated[bool, typer.Option("--wait-for-resources", metavar="", help="Warn instead of refusing when the cluster lacks the resources a trial asks for (an autoscaling cluster).")] = False,
    connect_timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds to wait for the cluster at --address (or RAY_ADDRESS).")] = 30.0,
) -> None:
    """Select each recipe's hyper-parameters on synthetic_valid with Ray Tune, then train the winners on the seeds."""
    if dry_run:
        from sedaug.sweep.cluster import parse_address, sweep_address
        from sedaug.sweep.run import plan_sweep

        parse_address(sweep_address(address))
        plan = plan_sweep(spec, out=out, resume=resume, overrides=list(set_))
        print(plan.header(), flush=True)
        for row in plan.timed():  # a few steps of each recipe family, printed as they are timed
            print(plan.row_line(row), flush=True)
        for line in plan.footer():
            print(line)
        return
    from sedaug.sweep.run import run_sweep

    result = run_sweep(spec, out=out, address=address, resume=resume, overrides=set_,
                       connect_timeout=connect_timeout, wait_for_resources=wait_for_resources)
    for note in result.notes:
        console.print(note)
    console.print(result.summary())


@app.command()
@user_errors
def detect(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A trained run directory (runs/<name>/seed<k>).")],
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="Audio files, or folders searched recursively (any rate, channels, length).")],
    out: Annotated[str, typer.Option(metavar="FILE", help="Detected events (DCASE TSV: filename, onset, offset, event_label).")] = "detections.tsv",
    scores: Annotated[Path | None, typer.Option(metavar="DIR", help="Also write each recording's frame scores here (sed_scores_eval TSV).")] = None,
    plot: Annotated[Path | None, typer.Option(metavar="DIR", help="Also draw one PNG per recording here (log-mel and its events).")] = None,
    threshold: Annotated[float | None, typer.Option(metavar="T", help="Decision threshold (default: the run's eval.threshold).")] = None,
    checkpoint: Annotated[Checkpoint, typer.Option(help="Checkpoint to use.")] = Checkpoint.best,
    device: DeviceOption = None,
) -> None:
    """Detect sound events in any recordings with a trained run (long ones in overlapping 10 s windows)."""
    from sedaug.detect import detect as run_detection
    from sedaug.device import parse_device

    def report_error(path: Path, reason: str) -> None:
        print(f"error: {path}: {reason}", file=sys.stderr)

    report = run_detection(
        run_dir, paths, file_option(out, "--out"), scores_dir=scores, plot_dir=plot, threshold=threshold,
        checkpoint=checkpoint.value, device=parse_device(device), on_error=report_error,
    )
    console.print(report.summary())
    if report.failures:
        raise typer.Exit(1)


@app.command()
@user_errors
def table(
    runs_dir: Annotated[Path, typer.Argument(metavar="RUNS_DIR", help="Folder of runs (searched recursively).")] = Path("runs"),
    format: Annotated[Format | None, typer.Option("--format", metavar="FORMAT", help="Output format, rich, markdown, latex or csv (default: rich on the terminal; "
                                                  "with --out, the file's: .md, .tex, .csv, else markdown).")] = None,
    out: Annotated[str | None, typer.Option(metavar="FILE", help="Write to a file instead of the terminal.")] = None,
    metrics: Annotated[str | None, typer.Option(metavar="LIST", help="Comma-separated metric columns, of: macro, micro (event-based F1), "
                                         "psds_ct (Table 1's PSDS), psds, psds_macro, psds1, psds2, psds1_filtered, "
                                         "psds2_filtered (default: macro,psds_ct).")] = None,
    split: Annotated[Split, typer.Option(metavar="SPLIT", help="Evaluated split to tabulate: eval, validation or synthetic_valid.")] = Split.eval,
    ci: Annotated[float | None, typer.Option("--ci", metavar="PERCENT", help="Add each cell's bootstrap interval at this level in percent "
                                             "(e.g. 95), resampling the split's clips in the runs' score files.")] = None,
    resamples: Annotated[int | None, typer.Option(metavar="N", help="With --ci: bootstrap resamples, at least 100 "
                                                  "(default 1000).")] = None,
    bootstrap_seed: Annotated[int | None, typer.Option(metavar="N", help="With --ci: the resamples' seed, the same for "
                                                       "every row (default 0).")] = None,
    compare: Annotated[str | None, typer.Option(metavar="ROW", help="With --ci: the reference row of the paired test "
                                                "(default: baseline, if present): its name; a row split by its "
                                                "settings, also a part of its name that only it has.")] = None,
    no_compare: Annotated[bool, typer.Option("--no-compare", metavar="", help="With --ci: intervals only, no paired test.")] = False,
    paper: Annotated[bool, typer.Option("--paper", metavar="", help="Add the paper's Table 1 values beside the rows that "
                                        "reproduce them (recipe paper_row).")] = False,
    per_class: Annotated[bool, typer.Option("--per-class", metavar="", help="Print each row's per-class F1 and PSDS1 instead.")] = False,
    plot: Annotated[str | None, typer.Option(metavar="FILE", help="Also draw the table as a figure (.png, .pdf or "
                                             ".svg; no suffix: PNG): each row's metrics with their intervals, the "
                                             "reference row's shaded, the paper's values.")] = None,
) -> None:
    """Collect evaluated runs into the paper's Table 1."""
    from sedaug.table import NO_COMPARISON, build_table, left_out, per_class_rows
    from sedaug.table_render import print_per_class, print_table, render, render_per_class

    out, plot = file_option(out, "--out"), file_option(plot, "--plot")
    _check_table_outputs(out, plot)
    for option, given in (("--resamples", resamples), ("--bootstrap-seed", bootstrap_seed)):
        if given is not None and ci is None:
            raise UserError(f"{option} goes with --ci LEVEL (without it there is no bootstrap)")
    given = ("macro,psds_ct" if metrics is None else metrics).split(",")  # "": none given, not the defaults
    names = tuple(dict.fromkeys(m.strip() for m in given if m.strip()))  # each once
    suffixes = {".md": Format.markdown, ".markdown": Format.markdown, ".tex": Format.latex, ".csv": Format.csv}
    said = suffixes.get(out.suffix.lower()) if out is not None else None
    if format is not None and said is not None and format is not said:  # LaTeX in a .csv: a reader would be misled
        other = next((suffix for suffix, named in suffixes.items() if named is format), None)
        instead = f"name the file {other}" if other else "give the file another suffix (.txt, say)"
        raise UserError(f"--out {out} is a {out.suffix} file, and --format {format.value} writes no {out.suffix}: "
                        f"{instead}, or leave out --format")
    if format is None:  # a file gets text, not a terminal's escape codes
        format = Format.rich if out is None else said or Format.markdown
    if runs_dir.is_dir() and (orphans := left_out(runs_dir, split.value)):
        its = "its" if len(orphans) == 1 else "their"
        console.print(f"note: left out {counted(len(orphans), 'evaluated folder')} without a recipe.yaml to name {its} "
                      f"row: {listed(orphans)}", markup=False, highlight=False)
    if per_class:
        if ci is not None or paper or plot is not None or compare is not None or no_compare or metrics is not None:
            raise UserError("--per-class prints the per-class view alone (F1 and PSDS1): leave out --metrics, --ci, "
                            "--compare, --paper and --plot")
        rows = per_class_rows(runs_dir, split=split.value)
        _none_evaluated(rows, runs_dir, split.value)
        if out is None and format is Format.rich:
            print_per_class(rows, split.value, _Stdout())
            return
        text, count = render_per_class(rows, format.value, split.value), len(rows)
    else:
        if compare is not None and not compare.strip():  # "" is build_table's NO_COMPARISON
            raise UserError("--compare \"\": give a row's name (or --no-compare)")
        if no_compare and compare is not None:
            raise UserError(f"--no-compare and --compare {compare} exclude each other")
        if no_compare and ci is None:
            raise UserError("--no-compare goes with --ci LEVEL (without it there is no paired test to turn off)")
        data = build_table(runs_dir, split=split.value, metrics=names, ci=ci,
                           resamples=1000 if resamples is None else resamples,
                           bootstrap_seed=0 if bootstrap_seed is None else bootstrap_seed,
                           compare=NO_COMPARISON if no_compare else compare,
                           paper=paper, progress=ci is not None)
        _none_evaluated(data.rows, runs_dir, split.value)
        if plot is not None:
            from sedaug.evaluation.plots import plot_table

            plot_table(data, plot)
            console.print(f"wrote {plot} ({len(data.rows)} recipes)")
        if out is None and format is Format.rich:
            print_table(data, _Stdout())  # whole rows in logs
            return
        text, count = render(data, format.value), len(data.rows)
    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        from sedaug.files import write_text

        write_text(out, text)
        console.print(f"wrote {out} ({count} recipes)")


def _none_evaluated(rows, runs_dir: Path, split: str) -> None:
    if not any(r.n for r in rows) and any(r.to_evaluate for r in rows):  # a table of empty rows: how to fill it
        console.print(f"note: no run below {runs_dir} is evaluated on {split}: `sedaug evaluate RUN_DIR... --split "
                      f"{split}` scores them", markup=False, highlight=False)


def file_option(value: str | None, option: str) -> Path | None:
    """The file an option names. One ending in a slash names a folder (which Path would forget): refused."""
    if value is not None and value.endswith(("/", os.sep)):
        raise UserError(f"{option} {value} is a folder: give a file name")
    return None if value is None else Path(value)


PLOT_SUFFIXES = (".png", ".pdf", ".svg", "")  # the plot's format (none: PNG)


def _check_table_outputs(out: Path | None, plot: Path | None) -> None:
    """Refuse outputs that would overwrite what is no table or plot of `table`'s: a folder, a run's, a store's or a
    DESED's files, any other existing file (a README, a recipe, a recording, a figure of one's own), one file for
    both."""
    from sedaug.evaluation.plots import TABLE_PLOT_TITLE, is_marked
    from sedaug.rundir import sedaug_data_holding

    if out is not None and plot is not None and out.resolve() == plot.resolve():
        raise UserError(f"--out and --plot are both {out}: give each its own file")
    for path, what in ((out, "--out"), (plot, "--plot")):
        if path is None:
            continue
        if path.is_dir():
            raise UserError(f"{what} {path} is a folder: give a file name")
        if (held := sedaug_data_holding(path)) is not None:
            raise UserError(f"{what} {path} is in {held}, which the table would overwrite: give a path outside it")
    if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(f"--plot {plot}: a figure is .png, .pdf or .svg (no suffix: PNG)")
    if out is not None and out.suffix.lower() in PLOT_SUFFIXES[:-1]:
        raise UserError(f"--out {out}: --out writes the table as text (.md, .tex, .csv); --plot {out.name} draws it")
    if out is not None and out.is_file() and out.stat().st_size and not _is_table_text(out):
        raise UserError(f"--out {out} exists and is not a table `sedaug table` wrote, which it would overwrite: give "
                        "a new file name")
    if plot is not None and plot.is_file() and plot.stat().st_size and not is_marked(plot, TABLE_PLOT_TITLE):
        raise UserError(f"--plot {plot} exists and is not a figure `sedaug table` drew (one an earlier sedaug drew "
                        "carries no mark), which it would overwrite: give a new file name")


def _scored_checkpoint(results: Path) -> str | None:
    """The checkpoint (best, last) an evaluation's results.json is of, or None."""
    from sedaug.files import read_json_object

    checkpoint = (read_json_object(results) or {}).get("checkpoint")
    name = checkpoint.get("name") if isinstance(checkpoint, dict) else None
    return name if isinstance(name, str) else None


def _is_table_text(path: Path) -> bool:
    from sedaug.table_render import is_table_text

    if path.stat().st_size > 2**24:  # no table is that long
        return False
    text = path.read_bytes().decode("utf-8", errors="replace")
    return is_table_text(re.sub(r"\x1b\[[0-9;]*m", "", text))


def _command_in(argv: list[str]) -> str:
    """`sedaug <command>` for a usage error that comes without its context (an option given no value)."""
    names = {info.name or info.callback.__name__ for info in app.registered_commands}
    return f"sedaug {argv[1]}" if len(argv) > 1 and argv[1] in names else "sedaug"


def main() -> None:
    global _said
    _said = False
    # sed_eval's dcase_util imports pkg_resources, whose deprecation warning would come before sedaug's own lines.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    # Inductor compiling for a CPU warns, on a machine without CUDA, that it found no CUDA runtime: nothing to act on.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    for stream in (sys.stdout, sys.stderr):  # an ASCII locale: "—" or a path's "é" escaped, not a traceback
        if stream is not None and codecs.lookup(stream.encoding or "utf-8").name != "utf-8":
            with contextlib.suppress(AttributeError, ValueError):  # not a TextIOWrapper (a test's capture)
                stream.reconfigure(errors="backslashreplace")
    problem = binary_mismatch()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(1)
    if len(sys.argv) == 1:  # `sedaug` alone: the help, as click prints it (and exits)
        app(prog_name="sedaug")
    try:
        code = app(prog_name="sedaug", standalone_mode=False)
    except typer.TyperException as e:  # click's usage errors (an unknown option, a missing argument): one line
        ctx = getattr(e, "ctx", None)
        command = ctx.command_path if ctx is not None else _command_in(sys.argv)
        suggestion = None
        if ctx is not None and getattr(e, "possibilities", None):  # not a hidden option (train's --out)
            from sedaug.strict_yaml import nearest

            hidden = {opt for param in ctx.command.params if getattr(param, "hidden", False) for opt in param.opts}
            # click's suggestions are loose (`--bogus`: --runs): a close one only, said as for recipe keys
            suggestion = nearest(e.option_name, [o for o in e.possibilities if o not in hidden])
            e.possibilities = []
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        message = message.replace("Value error, ", "")  # an enum option's value: click quotes pydantic's wording
        message += f" (did you mean {suggestion}?)" if suggestion else ""
        print(f"error: {command}: {' '.join(message.split())} (see {command} --help)", file=sys.stderr)
        raise SystemExit(getattr(e, "exit_code", 2)) from None
    if code == 130 and not _said:  # Ctrl-C while typer parsed
        print_error(INTERRUPTED)
    try:
        if sys.stdout is not None:  # None: started with stdout closed (`>&-`)
            sys.stdout.flush()  # buffered output meets a closed pipe here, after the command
    except BrokenPipeError:
        _silence_stdout()
        raise SystemExit(READER_GONE) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
