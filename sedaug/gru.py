"""The CRNN's bidirectional GRU for CPU training: nn.GRU's maths and parameters, with a hand-written backward.

Autograd through nn.GRU on CPU records ~15 small ops per time step and direction; here both directions advance
together (one batched matmul per step), the input projections of all steps are one matmul, and the backward is
one loop that keeps only the gates. In float32 the two loops run in C (sedaug/kernels/gru.c, one thread per
direction): forward+backward of the CRNN's 2 layers 148 ms against 204 ms for the PyTorch loops below, which
remain for other dtypes and machines without a compiler. Used on CPU without autocast; CUDA keeps cuDNN. Gate order
and formulas are PyTorch's: r, z, n;  n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sedaug import kernels


def bidirectional_gru(x: Tensor, gru: nn.GRU) -> Tensor:
    """`gru(x)[0]` for a batch-first, bidirectional nn.GRU with zero initial state (B, T, in) -> (B, T, 2H)."""
    for layer in range(gru.num_layers):
        weights = [
            torch.stack([getattr(gru, f"{name}_l{layer}"), getattr(gru, f"{name}_l{layer}_reverse")])
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        use_kernel = x.device.type == "cpu" and x.dtype == torch.float32 and kernels.library() is not None
        x = (_KernelLayer if use_kernel else _BidirectionalLayer).apply(x, *weights)
    return x


def _time_major(per_direction: Tensor) -> Tensor:
    """(2, B, T, G) -> (T, 2, B, G) with the reverse direction's time flipped: step t is one slice for both."""
    return torch.stack([per_direction[0], per_direction[1].flip(1)]).permute(2, 0, 1, 3).contiguous()


class _BidirectionalLayer(torch.autograd.Function):
    """One bidirectional layer; both directions advance together, the reverse one on time-flipped inputs.

    Per step: forward 6 ops, backward 7 (the gate derivatives are computed for all steps at once beforehand).
    """

    @staticmethod
    def forward(ctx, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        # x (B, T, I); w_ih (2, 3H, I); w_hh (2, 3H, H); biases (2, 3H)
        batch, steps, _ = x.shape
        hidden = w_hh.shape[2]
        gi = _time_major(torch.matmul(x, w_ih.transpose(1, 2)[:, None]) + b_ih[:, None, None])  # (T, 2, B, 3H)
        w_hh_t, b_hh = w_hh.transpose(1, 2).contiguous(), b_hh[:, None]
        gh = x.new_empty(steps, 2, batch, 3 * hidden)
        rz = x.new_empty(steps, 2, batch, 2 * hidden)
        n = x.new_empty(steps, 2, batch, hidden)
        hs = x.new_empty(steps + 1, 2, batch, hidden)  # hs[0] = 0, the initial state
        hs[0] = 0
        # Per-step views, made once: indexing inside the loop costs more than the small ops themselves.
        rz_part, n_part = slice(None, 2 * hidden), slice(2 * hidden, None)
        loop = zip(gi[..., rz_part].unbind(0), gi[..., n_part].unbind(0), gh.unbind(0), gh[..., rz_part].unbind(0),
                   gh[..., n_part].unbind(0), rz.unbind(0), rz[..., :hidden].unbind(0), rz[..., hidden:].unbind(0),
                   n.unbind(0), hs[:-1].unbind(0), hs[1:].unbind(0), strict=True)
        for gi_rz, gi_n, gh_t, gh_rz, gh_n, rz_t, r, z, n_t, h, h_next in loop:
            torch.baddbmm(b_hh, h, w_hh_t, out=gh_t)
            torch.sigmoid(torch.add(gi_rz, gh_rz), out=rz_t)
            torch.tanh(torch.addcmul(gi_n, r, gh_n), out=n_t)
            torch.lerp(n_t, h, z, out=h_next)  # (1 - z) n + z h
        ctx.save_for_backward(x, w_ih, w_hh, hs, rz, n, gh[..., n_part])
        return torch.cat([hs[1:, 0], hs[1:, 1].flip(0)], dim=-1).transpose(0, 1)  # (B, T, 2H)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, w_ih, w_hh, hs, rz, n, gh_n = ctx.saved_tensors
        steps, _, batch, hidden = n.shape
        grad_out = grad_out.transpose(0, 1)  # (T, B, 2H)
        grad_h = torch.stack([grad_out[..., :hidden], grad_out[..., hidden:].flip(0)], dim=1)  # (T, 2, B, H)
        r, z = rz[..., :hidden], rz[..., hidden:]
        # d/dh of each pre-activation, for all steps at once: h' = (1 - z) n + z h, n = tanh(a_n), a_n = ... + r gh_n
        dn_dh = (1 - z) * (1 - n * n)
        dz_dh = (hs[:-1] - n) * z * (1 - z)
        dr_dn = gh_n * r * (1 - r)
        grad_gh = x.new_empty(steps, 2, batch, 3 * hidden)  # d loss / d (W_hh h + b_hh)
        grad_n = torch.empty_like(n)  # d loss / d a_n
        dh = x.new_zeros(2, batch, hidden)
        loop = zip(grad_h.unbind(0), dn_dh.unbind(0), dz_dh.unbind(0), dr_dn.unbind(0), r.unbind(0), z.unbind(0),
                   grad_n.unbind(0), grad_gh.unbind(0), grad_gh[..., :hidden].unbind(0),
                   grad_gh[..., hidden : 2 * hidden].unbind(0), grad_gh[..., 2 * hidden :].unbind(0), strict=True)
        for g, dn_dh_t, dz_dh_t, dr_dn_t, r_t, z_t, dn, dgh, dgh_r, dgh_z, dgh_n in reversed(list(loop)):
            dh.add_(g)
            torch.mul(dh, dn_dh_t, out=dn)
            torch.mul(dh, dz_dh_t, out=dgh_z)
            torch.mul(dn, dr_dn_t, out=dgh_r)
            torch.mul(dn, r_t, out=dgh_n)
            dh = torch.baddbmm(dh * z_t, dgh, w_hh)
        grad_w_hh = torch.einsum("tdbg,tdbh->dgh", grad_gh, hs[:-1])
        grad_b_hh = grad_gh.sum((0, 2))
        grad_gi = torch.cat([grad_gh[..., : 2 * hidden], grad_n], dim=-1)  # r and z enter both sides alike
        grad_gi = torch.stack([grad_gi[:, 0], grad_gi[:, 1].flip(0)]).transpose(1, 2)  # (2, B, T, 3H)
        grad_w_ih = torch.einsum("dbtg,bti->dgi", grad_gi, x)
        grad_b_ih = grad_gi.sum((1, 2))
        grad_x = torch.einsum("dbtg,dgi->bti", grad_gi, w_ih)
        return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


class _KernelLayer(torch.autograd.Function):
    """_BidirectionalLayer's maths with the recurrences in C (sedaug/kernels/gru.c), batch-major: the per-step loops
    run without op dispatch, and no time flips or transposes are copied. float32 on CPU."""

    @staticmethod
    def forward(ctx, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        batch, steps, inputs = x.shape
        hidden = w_hh.shape[2]
        x = x.contiguous()
        gi = torch.baddbmm(b_ih[:, None], x.view(1, -1, inputs).expand(2, -1, -1), w_ih.transpose(1, 2))
        y = x.new_empty(batch, steps, 2 * hidden)
        rz = x.new_empty(2, batch, steps, 2 * hidden)
        n, gh_n = x.new_empty(2, batch, steps, hidden), x.new_empty(2, batch, steps, hidden)
        w_hh_t, b_hh = w_hh.transpose(1, 2).contiguous(), b_hh.contiguous()
        kernels.library().gru_forward(gi.data_ptr(), w_hh_t.data_ptr(), b_hh.data_ptr(), batch, steps, hidden,
                                      y.data_ptr(), rz.data_ptr(), n.data_ptr(), gh_n.data_ptr())
        ctx.save_for_backward(x, w_ih, w_hh, y, rz, n, gh_n)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, w_ih, w_hh, y, rz, n, gh_n = ctx.saved_tensors
        batch, steps, inputs = x.shape
        hidden = w_hh.shape[2]
        grad_gi = x.new_empty(2, batch * steps, 3 * hidden)  # d loss / d (W_ih x + b_ih)
        grad_gh = torch.empty_like(grad_gi)  # d loss / d (W_hh h + b_hh)
        w_hh = w_hh.contiguous()
        kernels.library().gru_backward(grad_y.contiguous().data_ptr(), y.data_ptr(), rz.data_ptr(), n.data_ptr(),
                                       gh_n.data_ptr(), w_hh.data_ptr(), batch, steps, hidden, grad_gi.data_ptr(),
                                       grad_gh.data_ptr())
        # Each step's previous state: the forward direction's at t - 1, the reverse one's at t + 1; 0 at the start.
        h_prev = y.new_zeros(2, batch, steps, hidden)
        h_prev[0, :, 1:] = y[:, :-1, :hidden]
        h_prev[1, :, :-1] = y[:, 1:, hidden:]
        grad_w_hh = torch.bmm(grad_gh.transpose(1, 2), h_prev.view(2, -1, hidden))
        grad_w_ih = torch.matmul(grad_gi.transpose(1, 2), x.view(-1, inputs))
        grad_x = torch.addmm(grad_gi[0] @ w_ih[0], grad_gi[1], w_ih[1]).view(batch, steps, inputs)
        return grad_x, grad_w_ih, grad_w_hh, grad_gi.sum(1), grad_gh.sum(1)
