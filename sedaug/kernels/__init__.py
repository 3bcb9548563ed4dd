"""sedaug's CPU kernels: the gated block's BatchNorm → GLU → dropout → pooling, fused (`gated_block.c`), and the
bidirectional GRU's recurrences (`gru.c`, for sedaug/gru.py).

On CPU these memory-bound steps cost more than the convolutions (DESIGN §10): eager PyTorch makes ~20 passes
over each full-resolution activation per step, the kernel 4. It is built on first use with the system's C compiler
into a cache keyed by source, flags and CPU, and loaded with ctypes. Where no compiler works, `library()` is None and
the model keeps its eager path, which computes the same numbers from the same random draws. SEDAUG_KERNELS=0 turns
the kernel off (A/B runs, debugging).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCES = [Path(__file__).with_name(name) for name in ("gated_block.c", "gru.c")]
HEADERS = [Path(__file__).with_name("common.h")]
FLAGS = ["-O2", "-ftree-vectorize", "-march=native", "-fPIC", "-shared", "-pthread"]

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "gb_stats": [_P, _I64, _I64, _I64, _I64, _P, _INT],
    "gb_forward": [_P, _I64, _I64, _I64, _I64, _I64, _I64, _P, _P, _P, _P, _P, _P, _INT],
    "gb_backward": [_P, _I64, _I64, _I64, _I64, _I64, _I64, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _INT],
    "gb_bn_backward": [_P, _P, _I64, _I64, _P, _P, _P, _INT],
    "gru_forward": [_P, _P, _P, _I64, _I64, _I64, _P, _P, _P, _P],
    "gru_backward": [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _P, _P],
}


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sedaug"


def _cpu_id() -> bytes:
    """The CPU's feature flags: -march=native code is only reused on a CPU that has the same ones."""
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).encode()
    except (OSError, StopIteration):
        return platform.processor().encode()


@functools.cache
def library() -> ctypes.CDLL | None:
    if os.environ.get("SEDAUG_KERNELS", "1") == "0" or platform.system() != "Linux":
        return None
    compiler = os.environ.get("CC", "cc")
    try:
        sources = b"".join(p.read_bytes() for p in SOURCES + HEADERS)
        key = hashlib.sha256(sources + " ".join([compiler, *FLAGS]).encode() + _cpu_id()).hexdigest()
        path = _cache_dir() / f"kernels-{key[:16]}.so"
        if not path.exists():
            if shutil.which(compiler) is None:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            built = subprocess.run([compiler, *FLAGS, "-o", str(partial), *map(str, SOURCES)], capture_output=True, text=True)
            if built.returncode != 0:
                return _unavailable(f"it did not build: {built.stderr[-500:]}")
            os.replace(partial, path)  # atomic: concurrent first uses each build, and one wins
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        return _unavailable(str(error))
    for name, argtypes in _SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = None
    return lib


def _unavailable(reason: str) -> None:
    warnings.warn(f"sedaug: the CPU kernel is not available, the eager path runs instead: {reason}", stacklevel=3)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _f32(t: Tensor) -> Tensor:
    return t.to(torch.float32).contiguous()


class GatedTail(torch.autograd.Function):
    """avgpool(dropout(Linear_c(BN(c)) * sigmoid(BN(c)))) for a channels-last float32 CPU `c` (B, C, T, F).

    BN uses batch statistics (and updates the running ones) when `bn.training`, else the running ones. `bits` are the
    dropout's random bytes (p = 1/2, see sedaug.model._random_bytes) or None for no dropout.
    """

    @staticmethod
    def forward(ctx, c, gamma, beta, weight, bias, bn, pool, bits):
        lib = library()
        B, C, T, F = c.shape
        threads = torch.get_num_threads()
        if bn.training:
            sums = torch.empty(2, C, dtype=torch.float64)
            lib.gb_stats(_ptr(c), B, T, F, C, _ptr(sums), threads)
            n = B * T * F
            mean = sums[0] / n
            var = (sums[1] / n - mean * mean).clamp_min(0)
            bn.num_batches_tracked.add_(1)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), bn.momentum)
            bn.running_var.lerp_((var * n / max(n - 1, 1)).to(bn.running_var.dtype), bn.momentum)
        else:
            mean, var = bn.running_mean.double(), bn.running_var.double()
        invstd = (var + bn.eps).rsqrt()
        scale = gamma.double() * invstd
        shift = beta.double() - mean * scale
        pt, pf = pool
        out = torch.empty(B, T // pt, F // pf, C).permute(0, 3, 1, 2)  # channels-last, like c
        weight_t = _f32(weight.t())
        scale, shift, bias = _f32(scale), _f32(shift), _f32(bias)
        lib.gb_forward(_ptr(c), B, T, F, C, pt, pf, _ptr(scale), _ptr(shift), _ptr(weight_t), _ptr(bias),
                       _ptr(bits), _ptr(out), threads)
        ctx.save_for_backward(c, weight, weight_t, bias, bits, scale, shift, _f32(mean), invstd)
        ctx.pool, ctx.training = pool, bn.training
        return out

    @staticmethod
    def backward(ctx, grad_out):
        c, weight, weight_t, bias, bits, scale, shift, mean, invstd = ctx.saved_tensors
        lib = library()
        B, C, T, F = c.shape
        pt, pf = ctx.pool
        threads = torch.get_num_threads()
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        # Pixels that pooling drops (T % pt, F % pf) get no gradient from the gating, only BN's terms.
        grad_c = (torch.zeros_like if T % pt or F % pf else torch.empty_like)(c, memory_format=torch.channels_last)
        sums = torch.empty(C * C + 3 * C, dtype=torch.float64)
        lib.gb_backward(_ptr(c), B, T, F, C, pt, pf, _ptr(scale), _ptr(shift), _ptr(mean), _ptr(_f32(weight)),
                        _ptr(weight_t), _ptr(bias), _ptr(bits), _ptr(grad_out), _ptr(grad_c), _ptr(sums), threads)
        grad_weight, grad_bias, sum_dxb, sum_dxb_centred = sums.split([C * C, C, C, C])
        scale = scale.double()
        grad_gamma = invstd * sum_dxb_centred
        # dc = scale · dxb, plus (with batch statistics) the terms through the batch mean and variance.
        n = B * T * F
        slope = -scale * invstd * invstd * sum_dxb_centred / n if ctx.training else torch.zeros_like(scale)
        offset = -scale * sum_dxb / n - slope * mean.double() if ctx.training else torch.zeros_like(scale)
        a, b, k = _f32(scale), _f32(slope), _f32(offset)
        lib.gb_bn_backward(_ptr(grad_c), _ptr(c), n, C, _ptr(a), _ptr(b), _ptr(k), threads)
        return (grad_c, grad_gamma.float(), sum_dxb.float(), grad_weight.view(C, C).float(), grad_bias.float(),
                None, None, None)
