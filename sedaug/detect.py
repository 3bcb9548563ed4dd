"""`sedaug detect`: a trained run's model on any recordings (docs/detect.md).

Each recording is decoded as `extract-mels` decodes a clip (channels averaged, resampled to 16 kHz as dcase20
did), cut into overlapping 10 s windows (the model's input), and each window's linear mel is computed by the
feature code of `extract-mels` (`data/mel.py`'s `clip_mels`: a last window that runs past the end is padded as a
short clip is, with 0 dB frames) and rounded through float16 as the feature store holds it (the model's log then
floors each window at its own maximum − 80 dB, as it did each training clip). The model's output frames of the windows are stitched on the output grid of
`data/grid.py`: every output frame is the mean of the windows that cover it. The run's own post-processing
(threshold, median filter) then turns the frame scores into events, exactly as `sedaug evaluate` does.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from sedaug.checkpoint import advice, load_model
from sedaug.data.desed import EVENT_COLUMNS, decode_reason, truncated
from sedaug.data.grid import N_OUTPUT_FRAMES, PARAMS, TIME_POOLING, check_sample_rate
from sedaug.data.mel import clip_mels, mel_problems, resample
from sedaug.device import full_float32, parse_device
from sedaug.errors import UserError, counted
from sedaug.evaluation.detection_plot import plot_detections
from sedaug.evaluation.plots import DETECT_PLOT_TITLE, is_marked
from sedaug.evaluation.postprocess import decode
from sedaug.evaluation.scores import SCORE_COLUMNS, clip_id, score_frames, score_text
from sedaug.files import named_as, remove_stale_temporaries, sha256, write_bytes, write_text, writing
from sedaug.progress import progress_bar
from sedaug.rundir import RunDir, is_ensemble, sedaug_data_holding

# What a folder is searched for (recursively); a file named on the command line is read whatever its suffix.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64")
# A file soundfile cannot read raises LibsndfileError (a RuntimeError); a missing one OSError; an empty, too short
# or non-finite one ValueError.
DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, ValueError, OSError)

# Windows: the model's 10 s input (628 frames, 157 output frames) every half window, rounded down to whole output
# frames so that the windows' output frames fall on one grid: 312 input frames = 78 output frames = 4.9725 s.
HOP_FRAMES = PARAMS.n_frames // 2 // TIME_POOLING * TIME_POOLING
HOP_OUTPUT_FRAMES = HOP_FRAMES // TIME_POOLING


@dataclass(frozen=True)
class Recording:
    path: Path
    name: str  # the `filename` column: the file's name, or its path below the folder it was found in


@dataclass
class DetectReport:
    out: Path
    run_dir: Path
    checkpoint: str
    epoch: int
    threshold: float
    n_recordings: int = 0
    n_events: int = 0
    audio_seconds: float = 0.0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    scores_dir: Path | None = None
    plot_dir: Path | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """The one line `sedaug detect` prints."""
        extras = "".join(
            f", {what} in {where}" for what, where in (("scores", self.scores_dir), ("plots", self.plot_dir)) if where
        )
        failed = f"; {len(self.failures)} failed" if self.failures else ""
        if self.n_recordings == 0:
            return f"no recording could be scored ({len(self.failures)} failed): {self.out} was not written"
        return (
            f"detected {counted(self.n_events, 'event')} in {counted(self.n_recordings, 'recording')} "
            f"({_hms(self.audio_seconds)} of audio) "
            f"with {self.run_dir} ({self.checkpoint}.pt, epoch {self.epoch}, threshold {self.threshold:g}) "
            f"in {self.seconds:.1f} s -> {self.out}{extras}{failed}"
        )


def detect(
    run_dir: Path,
    paths: Sequence[Path],
    out: Path,
    scores_dir: Path | None = None,
    plot_dir: Path | None = None,
    threshold: float | None = None,
    checkpoint: str = "best",
    device: str | torch.device | None = "cpu",
    progress: bool = True,
    on_error: Callable[[Path, str], None] | None = None,
) -> DetectReport:
    """Detect events in the audio files `paths` (folders searched recursively) with a run's checkpoint.

    Writes `out` (DCASE TSV: filename, onset, offset, event_label), one sed_scores_eval score file per recording
    under `scores_dir` and one PNG per recording under `plot_dir` when given. A file that cannot be decoded is a
    failure (`on_error(path, reason)`, and listed in the report); the others are scored. `threshold` defaults to
    the run's (recipe `eval.threshold`); the median filter is the run's.
    """
    start = time.perf_counter()
    if is_ensemble(Path(run_dir)):
        raise UserError(f"{run_dir} is an ensemble's folder, with scores but no model of its own: detect with one of "
                        "its seed runs")
    _check_outputs(Path(out), scores_dir, plot_dir)
    torch_device = parse_device(device)
    model, recipe, state = load_model(Path(run_dir), checkpoint, torch_device)
    threshold = recipe.eval.threshold if threshold is None else float(threshold)
    if not 0.0 < threshold < 1.0:
        raise UserError(f"--threshold {threshold:g}: expected a value between 0 and 1 (exclusive)")
    report = DetectReport(Path(out), Path(run_dir), checkpoint, state.epoch, threshold,
                          scores_dir=scores_dir, plot_dir=plot_dir)

    def fail(path: Path, reason: str) -> None:
        report.failures.append((path, reason))
        if on_error is not None:
            on_error(path, reason)

    recordings = find_recordings(paths, fail)
    if not recordings and not report.failures:
        raise UserError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {', '.join(map(str, paths))}")
    stems = file_stems([recording.name for recording in recordings])
    _check_files(Path(out), scores_dir, plot_dir, stems)
    with _staged({Path(f) for f in (scores_dir, plot_dir) if f is not None}) as staged:
        events = _detect_all(recordings, stems, model, recipe, threshold, torch_device, report, fail, progress,
                             scores_dir and staged[Path(scores_dir)], plot_dir and staged[Path(plot_dir)], run_dir,
                             checkpoint)
        report.seconds = time.perf_counter() - start
        if not events:  # every recording failed: the previous --out, score files and plots stay
            return report
        _write_detections(Path(out), pd.concat(events, ignore_index=True)[EVENT_COLUMNS])
        failed = {path for path, _ in report.failures}
        # Then this run's score files and plots, each whole, in place of an earlier detect's; a recording that failed
        # keeps none (an earlier detect's would be another model's).
        for folder, suffix in ((scores_dir, ".tsv"), (plot_dir, ".png")):
            if folder is None:
                continue
            folder, stage = Path(folder), staged[Path(folder)]
            with writing(folder):
                for recording in recordings:
                    name = stems[recording.name] + suffix
                    if (stage / name).is_file():
                        (folder / name).parent.mkdir(parents=True, exist_ok=True)  # a stem may name a subfolder
                        os.replace(stage / name, folder / name)
                    elif recording.path in failed:
                        (folder / name).unlink(missing_ok=True)  # _check_files vouched it detect's
    return report


@contextmanager
def _staged(folders: set[Path]) -> Iterator[dict[Path, Path]]:
    """{folder: an empty hidden sibling to write its files into}, removed afterwards: a detect stopped midway (or
    whose every recording failed) leaves each folder as it was, not holding two models' files."""
    stages = {}
    try:
        for folder in map(Path, folders):
            where = folder.resolve()  # `--scores .` too
            if not where.name:
                raise UserError(f"{folder}: the root folder: give detect's files a folder of their own")
            remove_stale_temporaries(where.parent)  # a detect killed before its clean-up
            stages[folder] = where.with_name(f".{where.name}.tmp{os.getpid()}")
            with writing(stages[folder]):
                stages[folder].mkdir(parents=True)
        yield stages
    finally:
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)


def _detect_all(recordings, stems, model, recipe, threshold, torch_device, report, fail, progress, scores_dir,
                plot_dir, run_dir, checkpoint) -> list[pd.DataFrame]:
    """Score every recording, writing its score file and plot into `scores_dir` and `plot_dir` (staging folders);
    each recording's events."""
    events: list[pd.DataFrame] = []
    with progress_bar("Detecting events", len(recordings), progress) as advance:

        def fail_one(path: Path, reason: str) -> None:
            fail(path, reason)
            advance()

        for group in decoded_groups(recordings, recipe.eval.batch_size, fail_one):
            waves = [wave for _, wave in group]
            try:
                scored = score_recordings(model, waves, recipe.eval.batch_size, torch_device, plot_dir is not None,
                                          fail=lambda i, reason, group=group: fail_one(group[i][0].path, reason))
            except NonFiniteOutput as err:
                path = RunDir(Path(run_dir)).checkpoint(checkpoint)
                raise UserError(f"{path}: the model's outputs are not finite (NaN or infinity on "
                                f"{group[err.index][0].path}): the checkpoint is damaged or diverged; "
                                f"{advice(path)}") from None
            for (recording, wave), result in zip(group, scored, strict=True):
                if result is None:  # its mels could not be computed: reported through fail
                    continue
                scores, mel = result
                duration = np.array([len(wave) / PARAMS.sample_rate])
                found = decode(scores[None], [recording.name], threshold, recipe.eval.median_window, duration)
                if scores_dir is not None:
                    [frame] = score_frames(scores[None], [recording.name], duration).values()
                    write_score_files({stems[recording.name]: frame}, Path(scores_dir))
                if plot_dir is not None:
                    plot_detections(mel, float(duration[0]), found, Path(plot_dir) / f"{stems[recording.name]}.png",
                                    title=f"{recording.name}  (threshold {threshold:g})", scores=scores,
                                    threshold=threshold)
                events.append(found)
                report.n_recordings += 1
                report.n_events += len(found)
                report.audio_seconds += float(duration[0])
                advance()
    return events


def _write_detections(out: Path, events: pd.DataFrame) -> None:
    """Write `out` and its mark. The mark names the new file's hash before the file is replaced, beside the old
    one's, so that detect killed between the two writes still takes either file for its own next time."""
    data = events.to_csv(sep="\t", index=False).encode()  # UTF-8, as pandas writes a file
    new = hashlib.sha256(data).hexdigest()
    old = [sha256(out)] if _wrote(out) else []
    with named_as(_mark(out), out):  # a full disk at the mark: the user's file is what could not be written
        write_text(_mark(out), "\n".join([*old, new]) + "\n")
        write_bytes(out, data)
    write_text(_mark(out), new + "\n")


def _mark(out: Path) -> Path:
    """detect's record beside its --out, the SHA-256 of what it wrote there: a ground-truth TSV has a detections
    TSV's header, so the header alone cannot tell detect's output from a user's labels."""
    return out.with_name(f".{out.name}.detect")


def _wrote(out: Path) -> bool:
    """Whether `out` holds what detect wrote there last (not since edited or replaced)."""
    try:
        return sha256(out) in _mark(out).read_text().split()
    except OSError:
        return False


def _check_outputs(out: Path, scores_dir: Path | None, plot_dir: Path | None) -> None:
    """Refuse outputs that would overwrite what detect did not write: a run's own files, a feature store or a
    prepared DESED (whose label TSVs have a detections TSV's header), or an --out that is not a detections TSV (a
    recording, a recipe)."""
    for option, path in (("--out", out), ("--scores", scores_dir), ("--plot", plot_dir)):
        if path is not None and (held := sedaug_data_holding(path)) is not None:
            raise UserError(f"{option} {path} is in {held}, which detect would overwrite: give a path outside it")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file name")
    for option, folder in (("--scores", scores_dir), ("--plot", plot_dir)):
        if folder is not None and Path(folder).resolve() == out.resolve():
            raise UserError(f"--out {out} is also the {option} folder: give each its own name")
    if out.exists() and out.stat().st_size and not _wrote(out):  # empty: nothing to lose
        raise UserError(f"--out {out} exists and is not a detections TSV that detect wrote (a ground truth has the "
                        "same header; one edited since is yours), which detect would overwrite: give a new file name")
    for option, folder in (("--scores", scores_dir), ("--plot", plot_dir)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise UserError(f"{option} {folder} is a file: give a folder")


def _check_files(out: Path, scores_dir: Path | None, plot_dir: Path | None, stems: dict[str, str]) -> None:
    """Refuse, before anything is written, a score file or plot that would replace a file detect did not write (an
    annotation `rec.tsv` beside `rec.wav`, say), or that would be --out."""
    for name, stem in stems.items():
        for option, folder, suffix in (("--scores", scores_dir, ".tsv"), ("--plot", plot_dir, ".png")):
            if folder is None:
                continue
            path = Path(folder) / f"{stem}{suffix}"
            if path.resolve() == out.resolve():
                raise UserError(f"--out {out} is also {name}'s file in {option} {folder}: give --out another name")
            if not path.exists() or path.is_file() and not path.stat().st_size:  # empty: nothing to lose
                continue
            if suffix == ".tsv" and not (path.is_file() and _first_line(path) == "\t".join(SCORE_COLUMNS)):
                raise UserError(f"--scores: {path} exists and is not a sed_scores_eval score file of sedaug's classes, "
                                f"which detect would replace with {name}'s: give --scores another folder, or move it")
            if suffix == ".png" and not (path.is_file() and is_marked(path, DETECT_PLOT_TITLE)):
                raise UserError(f"--plot: {path} exists and is not a plot of detect's (one an earlier sedaug drew "
                                f"carries no mark), which detect would replace with {name}'s: give --plot another "
                                "folder, or move it")


def _first_line(path: Path) -> str:
    with path.open("rb") as f:
        return f.readline(4096).decode("utf-8", errors="replace").rstrip("\r\n")


def find_recordings(paths: Iterable[Path], fail: Callable[[Path, str], None]) -> list[Recording]:
    """The files to score, in the order given (a folder's files sorted); a missing path or a second recording
    with the same name is a failure."""
    recordings: dict[str, Recording] = {}
    seen: set[Path] = set()  # a file given twice (alone and in its folder, or two folders of one tree): scored once
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(
                p for p in given.rglob("*")
                if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(given).parts)
            )
            candidates = [Recording(p, p.relative_to(given).as_posix()) for p in found]
        elif given.exists():
            candidates = [Recording(given, given.name)]
        else:
            fail(given, "no such file or folder")
            continue
        for recording in candidates:
            if recording.path.resolve() in seen:
                continue
            seen.add(recording.path.resolve())
            try:  # the TSV and the plots write it
                recording.name.encode("utf-8")
            except UnicodeEncodeError:  # bytes the locale could not decode: another encoding's, or an ASCII locale
                fail(recording.path, "its name is not UTF-8 text (in this locale): rename it")
                continue
            if recording.name in recordings:
                fail(recording.path, f"same name {recording.name} as {recordings[recording.name].path}: not scored")
            else:
                recordings[recording.name] = recording
    return list(recordings.values())


def file_stems(names: Sequence[str]) -> dict[str, str]:
    """Recording name -> the stem of its score file and plot: its clip_id (the name without .wav, as `sedaug
    evaluate` names an eval clip's files) where that is unique, even ignoring case; else its whole name (a.flac and
    a.flac.wav, both a.flac otherwise). Names that still clash ignoring case (a.wav and a.WAV, one file on a
    case-insensitive disk) get "~2", "~3"... in the order given."""
    base = {name: clip_id(name) for name in names}
    clashes = Counter(stem.casefold() for stem in base.values())
    used: set[str] = set()
    stems = {}
    for name in names:
        stem = first = name if clashes[base[name].casefold()] > 1 else base[name]
        k = 1
        while stem.casefold() in used:
            k += 1
            stem = f"{first}~{k}"
        used.add(stem.casefold())
        stems[name] = stem
    return stems


def decoded_groups(
    recordings: Iterable[Recording], n_windows: int, fail: Callable[[Path, str], None]
) -> Iterator[list[tuple[Recording, np.ndarray]]]:
    """The recordings decoded, in groups of at least `n_windows` windows (the last group may hold fewer), so that
    short clips share the model's batches; a file that cannot be decoded is `fail(path, reason)`."""
    group: list[tuple[Recording, np.ndarray]] = []
    windows = 0
    for recording in recordings:
        try:
            wave = load_recording(recording.path)
        except DECODE_ERRORS as err:
            fail(recording.path, decode_reason(err))
            continue
        group.append((recording, wave))
        windows += len(window_starts(len(wave)))
        if windows >= n_windows:
            yield group
            group, windows = [], 0
    if group:
        yield group


def load_recording(path: Path, chunk_seconds: int = 60) -> np.ndarray:
    """The whole recording as `extract-mels` decodes a clip (data/extract.py): channels averaged, resampled to
    16 kHz (float32). Audio holding NaN or infinity, too short for one STFT frame, at an absurd sample rate
    (data/grid.py's check_sample_rate) or cut short of what its header announces is a ValueError.

    Decoded and resampled `chunk_seconds` at a time, each with a second of the file on either side (the resampler's
    filter reaches about 0.01 s), so that memory holds the 16 kHz wave and one chunk, not the decoded file: what it
    returns equals the whole file resampled at once (within float rounding)."""
    pieces = []
    if Path(path).stat().st_size == 0:  # libsndfile would say "Format not recognised"
        raise ValueError("an empty file")
    with sf.SoundFile(os.fsencode(path)) as f:
        rate, start = f.samplerate, 0
        check_sample_rate(rate)
        if (cut := truncated(sf.info(os.fsencode(path)))) is not None:  # as prepare-desed refuses a DESED clip
            raise ValueError(f"truncated: its header announces {cut[0]:,} bytes of samples, the file holds "
                             f"{cut[1]:,} (a download or copy cut short?)")
        while True:  # until a read comes back short: the frame count a header gives may be wrong (VBR MP3)
            first = max(0, start - rate)
            f.seek(first)
            audio = f.read((start - first) + (chunk_seconds + 1) * rate, dtype="float32", always_2d=True)
            end = first + len(audio)
            if end <= start:
                break
            finite = np.isfinite(audio).all(axis=1)
            if not finite.all():
                raise ValueError(f"non-finite audio samples (the first at {(first + int(finite.argmin())) / rate:.3f} s)")
            resampled = resample(torch.from_numpy(audio.mean(axis=1)), rate).numpy()
            # Whole seconds, so each chunk starts on a 16 kHz sample: its output from there on is the file's.
            piece = resampled[(start - first) * PARAMS.sample_rate // rate :]
            ended = end < start + (chunk_seconds + 1) * rate  # read to the end: the rest is its own
            pieces.append(piece if ended else piece[: chunk_seconds * PARAMS.sample_rate])
            if ended:
                break
            start += chunk_seconds * rate
    wave = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if len(wave) <= PARAMS.n_fft // 2:
        raise ValueError(f"only {end / rate:.3f} s of audio, too short to analyse")
    return wave


def window_starts(n_samples: int) -> np.ndarray:
    """The first sample of each window: every HOP_FRAMES input frames, until a window reaches the end (the last
    window starts less than clip_seconds − HOP_FRAMES frames, about 5 s, before the end)."""
    hop = HOP_FRAMES * PARAMS.hop
    n_windows = 1 + max(0, math.ceil((n_samples - PARAMS.clip_samples) / hop))
    return np.arange(n_windows) * hop


def linear_window_mels(
    windows: Sequence[tuple[np.ndarray, int]], device: torch.device
) -> torch.Tensor:
    """Linear mels (W, n_frames, n_mels), float32, of the windows (wave, first sample): each window is the recording
    from there on, a clip of `extract-mels`, through the same code (cut where no kept frame sees it, padded with 0 dB
    frames when it ends before 10 s); rounded to float16 afterwards, as the store holds them."""
    return clip_mels([wave[start : start + PARAMS.kept_samples] for wave, start in windows], device)


def stitch(window_scores: np.ndarray, hop: int = HOP_OUTPUT_FRAMES) -> np.ndarray:
    """Windows' output frames (W, T, C), window k starting at output frame k·hop -> (T + (W − 1)·hop, C) float64:
    each frame the mean of the windows that cover it."""
    n, t, c = window_scores.shape
    sums = np.zeros(((n - 1) * hop + t, c))
    counts = np.zeros((len(sums), 1))
    for k, scores in enumerate(window_scores):
        sums[k * hop : k * hop + t] += scores
        counts[k * hop : k * hop + t] += 1
    return sums / counts


class NonFiniteOutput(ValueError):
    """The model's output is NaN or infinite on finite mels of recording `index`: the model is at fault."""

    def __init__(self, index: int):
        super().__init__(f"the model's outputs are not finite (NaN or infinity) on recording {index}")
        self.index = index


def score_recordings(
    model, waves: Sequence[np.ndarray], batch_size: int, device: torch.device, keep_mels: bool = False,
    fail: Callable[[int, str], None] | None = None,
) -> list[tuple[np.ndarray, np.ndarray | None] | None]:
    """Each recording's stitched frame scores (T, C) and, when asked, its linear mel (frames, n_mels) for the plot
    (each window's first HOP_FRAMES frames, the last window's up to the recording's end). The windows of all the
    recordings go through the model in batches of `batch_size`.

    A recording whose mels the model cannot take (data/mel.py's mel_problems: samples so large that the STFT
    overflows) is None, and `fail(index, reason)` is called (without `fail`, a ValueError); a non-finite output on
    good mels is a NonFiniteOutput."""
    starts = [window_starts(len(wave)) for wave in waves]
    windows = [(i, s) for i, recording in enumerate(starts) for s in recording]
    outputs: list[list[np.ndarray]] = [[] for _ in waves]
    mels: list[list[np.ndarray]] = [[] for _ in waves]
    failed: set[int] = set()
    with torch.inference_mode(), full_float32(device):  # as evaluate predicts
        for first in range(0, len(windows), batch_size):
            batch = [(i, s) for i, s in windows[first : first + batch_size] if i not in failed]
            if not batch:
                continue
            linear = linear_window_mels([(waves[i], s) for i, s in batch], device)
            for row, problem in mel_problems(linear).items():
                i, s = batch[row]
                if fail is None:
                    raise ValueError(f"recording {i}: {problem}")
                failed.add(i)
                fail(i, f"{problem} (window at {s / PARAMS.sample_rate:.1f} s)")
            mel = linear.half()  # as data/extract.py stores them
            strong, _ = model(mel)
            if strong.shape[1] != N_OUTPUT_FRAMES:
                raise ValueError(f"the model outputs {strong.shape[1]} frames per window, not {N_OUTPUT_FRAMES}")
            strong = strong.float().cpu().numpy()
            for row, (i, s) in enumerate(batch):
                if i in failed:
                    continue
                if not np.isfinite(strong[row]).all():
                    raise NonFiniteOutput(i)
                outputs[i].append(strong[row])
                if keep_mels:
                    last = s == starts[i][-1]
                    mels[i].append(mel[row, : None if last else HOP_FRAMES].float().cpu().numpy())
    results: list[tuple[np.ndarray, np.ndarray | None] | None] = []
    for i, wave in enumerate(waves):
        if i in failed:
            results.append(None)
            continue
        mel = None
        if keep_mels:
            mel = np.concatenate(mels[i])[: len(wave) // PARAMS.hop + 1]  # the recording's centred frames
        results.append((stitch(np.stack(outputs[i])), mel))
    return results


def write_score_files(scores: dict[str, pd.DataFrame], directory: Path) -> None:
    """Each recording's frame scores as `<directory>/<key>.tsv` (detect's keys: `file_stems`), in the text
    `sedaug evaluate` writes (sed_scores_eval's format; numbers in their shortest exact form), one atomic write per
    file. Other files in `directory` stay."""
    for key, frame in scores.items():
        write_text(directory / f"{key}.tsv", score_text(frame))


def _hms(seconds: float) -> str:
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min" if hours else f"{m} min {s} s" if m else f"{s} s"
