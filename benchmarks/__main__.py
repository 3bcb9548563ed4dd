"""sedaug benchmarks: every figure measured in one run on this machine (`make bench` / `python -m benchmarks`).

Sections: matmul peak; training-step throughput per augmentation family with model FLOP utilization (MFU) and the
ratio to a naive eager reference; sedaug's default step (as `sedaug train` resolves it) against dcase20's eager
step, taking turns (`default_step`); extract-mels against a librosa per-clip reference; evaluate on a 700-clip split;
peak resident memory of training on a DESED-sized feature store. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["none", "baseline", "noise_latent", "adversarial_latent", "vat_latent", "mixup_latent"]
console = Console()


def timed(fn, repeats: int, sync=lambda: None) -> float:
    """Best-of-`repeats` wall seconds of fn() after one warm-up call (best-of: other load only adds time)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


# --------------------------------------------------------------------------------------------------- peak


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, repeats, _sync(device))
    return 2 * n**3 / seconds


# ------------------------------------------------------------------------------------------- data fixtures


def tiny_store(workdir: Path, sample_rate: int = 16000, size: str = "tiny") -> tuple[Path, Path]:
    from sedaug.data.extract import extract_mels
    from sedaug.data.synthetic import generate_synthetic

    desed = generate_synthetic(workdir / f"desed{sample_rate}_{size}", size=size, sample_rate=sample_rate, progress=False)
    features = workdir / f"features{sample_rate}_{size}"
    extract_mels(desed, features, progress=False)
    return desed, features


def tiled_store(source: Path, out: Path, sizes: dict[str, int]) -> Path:
    """A feature store with `sizes` clips per split, tiling `source`'s clips (renamed) and labels."""
    from sedaug.data.store import FeatureStore, table_hashes

    store = FeatureStore(source)
    out.mkdir(parents=True)
    shutil.copy(source / "scaler.npz", out / "scaler.npz")
    meta = json.loads((source / "features.json").read_text())
    for split, n in sizes.items():
        src = store.split(split)
        (out / split).mkdir()
        reps = -(-n // len(src))
        mels = np.lib.format.open_memmap(out / split / "mels.npy", "w+", np.float16, (n, *src.mels.shape[1:]))
        for i in range(0, n, len(src)):
            mels[i : i + len(src)] = src.mels[: n - i]
        mels.flush()
        del mels
        names = [f"{k:05d}_{f}" for k in range(reps) for f in src.filenames][:n]
        pd.DataFrame({"filename": names, "duration": np.tile(src.durations, reps)[:n]}).to_csv(
            out / split / "clips.tsv", sep="\t", index=False
        )
        if src.events is not None:
            tiled = pd.concat([src.events.assign(filename=f"{k:05d}_" + src.events.filename) for k in range(reps)])
            tiled[tiled.filename.isin(set(names))].to_csv(out / split / "events.tsv", sep="\t", index=False)
        if split == "weak":
            weak = pd.read_csv(source / split / "weak.tsv", sep="\t")
            tiled = pd.concat([weak.assign(filename=f"{k:05d}_" + weak.filename) for k in range(reps)])
            tiled[tiled.filename.isin(set(names))].to_csv(out / split / "weak.tsv", sep="\t", index=False)
        meta["splits"][split] = n
    meta["tables"] = table_hashes(out)  # the tiled tables are this store's own
    (out / "features.json").write_text(json.dumps(meta))
    return out


# ------------------------------------------------------------------------------------------ training steps


class _NaiveBlock(torch.nn.Module):
    """dcase20's block as its code writes it: NCHW, the GLU's linear over permuted channels, nn.Dropout."""

    def __init__(self, c_in: int, c_out: int, pool):
        super().__init__()
        self.conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.99)
        self.linear = torch.nn.Linear(c_out, c_out)
        self.dropout = torch.nn.Dropout(0.5)
        self.pool = torch.nn.AvgPool2d(tuple(pool))

    def forward(self, x):
        x = self.bn(self.conv(x))
        lin = self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.pool(self.dropout(lin * torch.sigmoid(x)))


class _NaiveCRNN(torch.nn.Module):
    """The naive reference: the dcase20 CRNN in plain eager PyTorch (NCHW, nn.GRU, nn.Dropout), no sedaug code."""

    def __init__(self):
        super().__init__()
        from sedaug.recipe import ModelConfig

        cfg = ModelConfig()
        channels = [1, *cfg.cnn_filters]
        self.cnn = torch.nn.Sequential(*(_NaiveBlock(channels[i], channels[i + 1], pool)
                                         for i, pool in enumerate(cfg.cnn_pooling)))
        self.rnn = torch.nn.GRU(channels[-1], cfg.rnn_hidden, cfg.rnn_layers, batch_first=True, bidirectional=True)
        self.dropout = torch.nn.Dropout(0.5)
        self.strong = torch.nn.Linear(2 * cfg.rnn_hidden, 10)
        self.attention = torch.nn.Linear(2 * cfg.rnn_hidden, 10)

    def forward(self, mel):
        from sedaug.data.mel import amplitude_to_db

        x = self.cnn(amplitude_to_db(mel).unsqueeze(1))
        x = self.rnn(x.permute(0, 2, 1, 3).flatten(2))[0]
        x = self.dropout(x)
        strong = torch.sigmoid(self.strong(x))
        att = torch.softmax(self.attention(x), dim=-1).clamp(1e-7, 1.0)
        return strong, (strong * att).sum(dim=1) / att.sum(dim=1)


def step_flops(fn) -> int:
    """The model FLOPs of fn(), counted on PyTorch's ops."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _stepper(family: str, features: Path, device: torch.device, batch_size: int, run_steps: int | None = None):
    """One whole training step of `family`'s recipe per call (batch gathering, passes, optimizer, EMA) in the step
    configuration `sedaug train` gives a run of `run_steps` steps (None: a short run's); and that configuration."""
    from sedaug.data.batches import ThreeStreams
    from sedaug.data.store import FeatureStore
    from sedaug.recipe import load_recipe
    from sedaug.train import build_training, training_step

    recipe = load_recipe(REPO / "recipes" / f"{family}.yaml", [f"data.features={features}"])
    store = FeatureStore(features)
    training = build_training(recipe, store.scaler(), device, steps=run_steps)
    streams = ThreeStreams(store, batch_size, recipe.seed, device, resident=device.type == "cuda")
    state = {"step": 0, "batches": iter(())}

    def step():
        batch = next(state["batches"], None)
        if batch is None:  # the tiny store's streams last one step; a new epoch reshuffles them
            state["batches"] = streams.epoch(state["step"])
            batch = next(state["batches"])
        training_step(recipe, training, batch, state["step"], 1e-3, 2.0)
        state["step"] += 1

    return step, training.config


def _fwd_bwd(model, device: torch.device, batch_size: int):
    """Plain forward+backward of `model` on a ready batch with the classification loss, nothing else. (A loss like
    strong.mean() gives gradients ~1e4 times smaller than training's, whose subnormal products slow CPUs down.)"""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 628, 128, generator=g).to(device)
    strong_target = (torch.rand(batch_size, 157, 10, generator=g) < 0.2).float().to(device)
    weak_target = strong_target.amax(dim=1)

    def fwd_bwd():
        strong, weak = model(x)
        (F.binary_cross_entropy(strong, strong_target) + F.binary_cross_entropy(weak, weak_target)).backward()

    return fwd_bwd


def _row(name: str, seconds: float, flops: int, batch_size: int, peak: float) -> dict:
    return {"name": name, "seconds": seconds, "clips_per_s": batch_size / seconds, "flops": flops,
            "mfu": flops / seconds / peak}


def timed_interleaved(steps: dict, repeats: int, sync) -> dict[str, float]:
    """Best-of-`repeats` seconds of each step, the steps taking turns: this VM's speed drifts by up to 2x over
    minutes, and ratios between rows (vs bare student) must not depend on which row ran in a slow minute. Each
    timed call follows an untimed one of the same step: right after another step's different activations, the
    allocator's first call pays page faults that a run of one recipe does not."""
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, step in steps.items():
            step()
            sync()
            start = time.perf_counter()
            step()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_training(features: Path, device: torch.device, peak: float, repeats: int, families: list[str]) -> list[dict]:
    from sedaug.model import CRNN
    from sedaug.recipe import ModelConfig

    batch_size = 24
    rows = []
    # Bare forward+backward on a ready tensor: the naive reference and sedaug's own model.
    reference, bare = "reference (naive eager, NCHW)", "student fwd+bwd (sedaug)"
    steps = {
        reference: _fwd_bwd(_NaiveCRNN().to(device).train(), device, batch_size),
        bare: _fwd_bwd(CRNN(ModelConfig()).to(device).train(), device, batch_size),
        **{family: _stepper(family, features, device, batch_size)[0] for family in families},
    }
    seconds = timed_interleaved(steps, repeats, _sync(device))
    for name, step in steps.items():
        rows.append(_row(name, seconds[name], step_flops(step), batch_size, peak))
        if name in families:
            # MFU relative to the naive reference: the same FLOP rate gives 1.0 whatever the family's extra passes.
            rows[-1]["vs_reference"] = rows[-1]["mfu"] / rows[0]["mfu"]
            rows[-1]["vs_bare_student"] = seconds[name] / seconds[bare]
    return rows


# ------------------------------------------- step comparison: sedaug's default step vs dcase20's eager step

# A dcase20 run: 200 epochs of 263 steps (the weak stream, 1578 clips, 6 a batch, is the shortest).
DCASE20_RUN_STEPS = 200 * 263


def _dcase20_stepper(family: str, device: torch.device, batch_size: int):
    """dcase20's training step as its main.py writes it, in plain eager PyTorch (the naive CRNN: NCHW, nn.Dropout,
    nn.GRU): the student on the batch, BCE on the labeled slices; for `baseline` the EMA teacher on the 30 dB-noised
    batch and w·MSE on both outputs; Adam; the EMA update."""
    student = _NaiveCRNN().to(device).train()
    teacher = _NaiveCRNN().to(device).train().requires_grad_(False) if family == "baseline" else None
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3, betas=(0.9, 0.999))
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch_size, 628, 128, generator=g) ** 4 * 10).to(device)
    u, w = batch_size // 2, batch_size // 4
    strong_target = (torch.rand(batch_size - u - w, 157, 10, generator=g) < 0.2).float().to(device)
    weak_target = (torch.rand(w, 10, generator=g) < 0.3).float().to(device)
    done = {"steps": 0}

    def step():
        strong, weak = student(x)
        loss = F.binary_cross_entropy(strong[u + w :], strong_target) + F.binary_cross_entropy(weak[u:w + u], weak_target)
        if teacher is not None:
            noisy = x + (x.square().mean(dim=1, keepdim=True) * 1e-3).sqrt() * torch.randn_like(x)
            with torch.no_grad():
                teacher_strong, teacher_weak = teacher(noisy)
            loss = loss + 2.0 * (F.mse_loss(strong, teacher_strong) + F.mse_loss(weak, teacher_weak))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done["steps"] += 1
        if teacher is not None:
            alpha = min(1 - 1 / (done["steps"] + 1), 0.999)
            with torch.no_grad():
                for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                    t.mul_(alpha).add_(s, alpha=1 - alpha)

    return step


def bench_default_step(features: Path, device: torch.device, repeats: int, families=("none", "baseline")) -> list[dict]:
    """Each family's default sedaug step against the dcase20-style eager step, the four steps taking turns in one
    process (timed_interleaved); the first call of a compiled step compiles, untimed."""
    batch_size = 24
    steps, configs = {}, {}
    for family in families:
        steps[f"{family} dcase20"] = _dcase20_stepper(family, device, batch_size)
        steps[f"{family} sedaug"], configs[family] = _stepper(family, features, device, batch_size, DCASE20_RUN_STEPS)
    start = time.perf_counter()
    seconds = timed_interleaved(steps, repeats, _sync(device))
    return [{"family": family, "dcase20_s": seconds[f"{family} dcase20"], "sedaug_s": seconds[f"{family} sedaug"],
             "speedup": seconds[f"{family} dcase20"] / seconds[f"{family} sedaug"],
             "config": str(configs[family]), "wall_s": time.perf_counter() - start} for family in families]


def bench_long_run(features: Path, device: torch.device, repeats: int, families: list[str]) -> list[dict]:
    """Each family's step as a short run takes it (eager) and as a dcase20-length run does (`auto`: on a CPU the
    compiled CNN), turns taken; the long run's first step (its compile) timed apart. Families whose two steps are
    the same configuration (on CUDA until CUDA_AUTO compiles) are left out."""
    batch_size = 24
    steps, configs, first = {}, {}, {}
    for family in families:
        short, short_config = _stepper(family, features, device, batch_size)
        steps[f"{family} long"], configs[family] = _stepper(family, features, device, batch_size, DCASE20_RUN_STEPS)
        if configs[family] == short_config:
            del steps[f"{family} long"], configs[family]
            continue
        steps[f"{family} short"] = short
        start = time.perf_counter()
        steps[f"{family} long"]()
        _sync(device)()
        first[family] = time.perf_counter() - start
    seconds = timed_interleaved(steps, repeats, _sync(device))
    return [{"family": family, "short_s": seconds[f"{family} short"], "long_s": seconds[f"{family} long"],
             "speedup": seconds[f"{family} short"] / seconds[f"{family} long"], "first_long_step_s": first[family],
             "config": str(configs[family])} for family in configs]


# ------------------------------------------------------------------------------------------ extract-mels


def bench_extract(desed: Path, workdir: Path) -> dict:
    import librosa
    import soundfile as sf

    from sedaug.data.desed import load_manifest
    from sedaug.data.extract import extract_mels

    out = workdir / "features_bench"
    start = time.perf_counter()
    report = extract_mels(desed, out, progress=False)
    ours = time.perf_counter() - start
    paths = [p for table in load_manifest(desed).values() for p in table["path"]]

    def reference(path: str) -> np.ndarray:
        y, sr = sf.read(path, dtype="float32", always_2d=True)
        y = librosa.resample(y.mean(axis=1), orig_sr=sr, target_sr=16000)
        y = librosa.util.fix_length(y, size=160000)
        spec = np.abs(librosa.stft(y, n_fft=2048, hop_length=255, window=np.hamming(2048), center=True, pad_mode="reflect"))
        return librosa.feature.melspectrogram(S=spec, sr=16000, n_mels=128, fmin=0, fmax=8000, htk=False, norm=None)

    start = time.perf_counter()
    for path in paths:
        reference(path)
    theirs = time.perf_counter() - start
    return {"clips": report.n_clips, "sedaug_s": ours, "sedaug_clips_per_s": report.n_clips / ours,
            "librosa_s": theirs, "librosa_clips_per_s": len(paths) / theirs, "speedup": theirs / ours}


# -------------------------------------------------------------------------------------------- evaluate


def bench_evaluate(features: Path, device: torch.device, n_clips: int = 700) -> dict:
    from sedaug.data.labels import frame_labels
    from sedaug.data.store import FeatureStore
    from sedaug.evaluation.predict import predict
    from sedaug.evaluation.results import evaluate_scores, write_evaluation
    from sedaug.model import CRNN
    from sedaug.recipe import ModelConfig

    split = FeatureStore(features).split("eval")
    reps = -(-n_clips // len(split))
    mels = np.concatenate([np.asarray(split.mels)] * reps)[:n_clips]
    names = [f"{k:04d}_{f}" for k in range(reps) for f in split.filenames][:n_clips]
    durations = np.tile(split.durations, reps)[:n_clips]
    gt = pd.concat([split.events.assign(filename=f"{k:04d}_" + split.events.filename) for k in range(reps)])
    gt = gt[gt.filename.isin(set(names))]

    model = CRNN(ModelConfig()).to(device)
    start = time.perf_counter()
    predict(model, mels, 64, device)
    predict_s = time.perf_counter() - start
    # Scores that look like a trained model's: the ground truth's frames, blurred and noisy.
    rng = np.random.default_rng(0)
    target = frame_labels(gt, names).astype(np.float32)
    strong = np.clip(0.7 * target + 0.3 * rng.random(target.shape, dtype=np.float32), 0, 1)
    timing: dict[str, float] = {}
    evaluation = evaluate_scores(strong, names, durations, gt, threshold=0.5, median_window=7, progress=False, timing=timing)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_evaluation(evaluation, Path(tmp) / "eval", timing)
        timing["write"] = time.perf_counter() - start
    return {"clips": n_clips, "predict_s": predict_s, **{f"{k}_s": v for k, v in timing.items()},
            "total_s": predict_s + sum(timing.values())}


# ---------------------------------------------------------------------------------------------- memory

DESED_SIZES = {"unlabeled": 14412, "weak": 1578, "synthetic_train": 2067, "synthetic_valid": 517}


def _status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def bench_memory(source: Path, workdir: Path, steps: int) -> dict:
    """Peak RSS of `sedaug train` (full model) over a DESED-sized store; anonymous memory sampled apart."""
    store = tiled_store(source, workdir / "desed_sized", {**DESED_SIZES, **{s: 12 for s in ("validation", "eval")}})
    size = sum((store / s / "mels.npy").stat().st_size for s in DESED_SIZES)
    cmd = [sys.executable, "-m", "sedaug", "train", str(REPO / "recipes" / "baseline.yaml"), "--runs",
           str(workdir / "runs"), "--device", "cpu", "--set", f"data.features={store}", "--set", "optim.epochs=1",
           "--set", f"optim.max_steps_per_epoch={steps}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_anon, last = 0, {}
    while proc.poll() is None:
        try:
            status = _status(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        if "VmHWM" in status:  # a process that has exited (a zombie) reports no memory lines
            last = status
            peak_anon = max(peak_anon, status.get("RssAnon", 0))
        time.sleep(0.1)
    if proc.wait() != 0:
        raise RuntimeError(f"memory benchmark training failed: {proc.stderr.read()[-2000:]}")
    return {"feature_bytes": size, "clips": sum(DESED_SIZES.values()), "steps": steps,
            "peak_rss_bytes": last.get("VmHWM", 0), "peak_anon_bytes": peak_anon}


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="peak,train,default_step,extract,evaluate,memory",
                        help="comma-separated sections (also: long_run, each family eager vs a long run's step)")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per step (default 3 CPU, 20 GPU)")
    parser.add_argument("--memory-steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--packing", default=None, metavar="N,N,...",
                        help="instead: N trials per device at once (benchmarks/packing.py), e.g. 1,2,4,8")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "latest.json")
    args = parser.parse_args(argv)
    if args.packing:
        from benchmarks.packing import main as packing

        packing(["--device", args.device, "--packing", args.packing])
        return
    sections = set(args.only.split(","))
    device = torch.device(args.device)
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                                 "threads": torch.get_num_threads(), "device": str(device),
                                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        _, features = tiny_store(workdir)
        peak = matmul_peak(device, torch.float32)
        results["peak"] = {"fp32_flops": peak}
        if device.type == "cuda":
            results["peak"]["bf16_flops"] = matmul_peak(device, torch.bfloat16)
        if "train" in sections:
            results["train"] = bench_training(features, device, peak, repeats, args.families.split(","))
        if "default_step" in sections:
            results["default_step"] = bench_default_step(features, device, repeats)
        if "long_run" in sections:
            results["long_run"] = bench_long_run(features, device, repeats, args.families.split(","))
        if "extract" in sections:
            desed44, _ = tiny_store(workdir, sample_rate=44100)
            results["extract"] = bench_extract(desed44, workdir)
        if "evaluate" in sections:
            results["evaluate"] = bench_evaluate(features, device)
        if "memory" in sections:
            results["memory"] = bench_memory(features, workdir, args.memory_steps)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    report(results)
    console.print(f"wrote {args.json}")


def report(results: dict) -> None:
    peak = results["peak"]
    console.print(f"[bold]{results['machine']['device']}[/]: fp32 matmul peak {peak['fp32_flops'] / 1e9:.1f} GFLOP/s"
                  + (f", bf16 {peak['bf16_flops'] / 1e12:.1f} TFLOP/s" if "bf16_flops" in peak else ""))
    if "train" in results:
        table = Table("training step (batch 24)", "s/step", "clips/s", "GFLOP/step", "MFU", "vs naive", "vs bare fwd+bwd",
                      title="Training steps, full-size CRNN")
        for row in results["train"]:
            table.add_row(row["name"], f"{row['seconds']:.3f}", f"{row['clips_per_s']:.1f}", f"{row['flops'] / 1e9:.1f}",
                          f"{row['mfu']:.1%}", f"{row['vs_reference']:.2f}x" if "vs_reference" in row else "",
                          f"{row['vs_bare_student']:.2f}x" if "vs_bare_student" in row else "")
        console.print(table)
    if "default_step" in results:
        table = Table("recipe", "dcase20 eager s/step", "sedaug default s/step", "sedaug config", "speedup",
                      title="sedaug's default step vs dcase20's (full-size CRNN, batch 24, turns taken)")
        for row in results["default_step"]:
            table.add_row(row["family"], f"{row['dcase20_s']:.3f}", f"{row['sedaug_s']:.3f}", row["config"],
                          f"{row['speedup']:.2f}x")
        console.print(table)
    if "long_run" in results:
        table = Table("recipe", "short run (eager) s/step", "long run s/step", "long run config", "speedup",
                      "long run's first step s", title="A short run's step vs a dcase20-length run's (auto; turns taken)")
        for row in results["long_run"]:
            table.add_row(row["family"], f"{row['short_s']:.3f}", f"{row['long_s']:.3f}", row["config"],
                          f"{row['speedup']:.2f}x", f"{row['first_long_step_s']:.1f}")
        console.print(table)
    if "extract" in results:
        e = results["extract"]
        console.print(f"extract-mels ({e['clips']} clips, 44.1 kHz stereo): sedaug {e['sedaug_clips_per_s']:.1f} clips/s, "
                      f"librosa per clip {e['librosa_clips_per_s']:.1f} clips/s -> {e['speedup']:.2f}x")
    if "evaluate" in results:
        e = results["evaluate"]
        parts = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in e.items() if k.endswith("_s") and k != "total_s")
        console.print(f"evaluate ({e['clips']} clips): total {e['total_s']:.1f} s ({parts})")
    if "memory" in results:
        m = results["memory"]
        console.print(f"memory ({m['clips']} clips, {m['feature_bytes'] / 2**30:.2f} GiB of features, {m['steps']} steps): "
                      f"peak RSS {m['peak_rss_bytes'] / 2**30:.2f} GiB, peak anonymous {m['peak_anon_bytes'] / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
