"""The dcase20 CRNN (docs/architecture.md), with its log-mel front end and named perturbation points.

`CRNN(cfg)(mel, perturb)` maps a batch of LINEAR mel spectrograms (B, T, F) to (strong (B, T', C), weak (B, C)).
`perturb(point, h) -> h'`, when given, is called at each point of `POINTS`, in that order: `mel` (B, T, F), the linear
mel; `input` (B, T, F), the normalized log-mel; `cnn1`…`cnn7` (B, C, T_i, F_i), gated block i's output; `cnn`
(B, T', C·F'), the CNN's output as the GRU reads it; `rnn` (B, T', 2·hidden).
`CRNN()` is the dcase20 model; `forward_log_mel` takes the baseline's own input, the normalized log-mel, so the
baseline's weights can be loaded and compared output for output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sedaug.data.mel import amplitude_to_db
from sedaug.recipe import MEL_BANDS, ModelConfig, bands_left

# In call order. `cnn1`…`cnn7` are the outputs of the gated blocks (after pooling), (B, C, T, F); a model with fewer
# blocks skips the missing ones (and a deeper one calls `cnn8`… too, which recipes cannot name).
POINTS = ("mel", "input", *(f"cnn{i}" for i in range(1, 8)), "cnn", "rnn")
Perturb = Callable[[str, Tensor], Tensor]


@dataclass(frozen=True)
class Perturbation:
    """A perturb(point, h) that names the points it acts at. The CNN visits its block points (`cnn1`…, breaking a
    compiled CNN into one graph per block, which runs slower) only for a perturb that may act there: a plain
    callable, or one of these naming a block."""

    points: frozenset[str]
    fn: Perturb

    def __call__(self, point: str, h: Tensor) -> Tensor:
        return self.fn(point, h) if point in self.points else h


def _visits_blocks(perturb: Perturb | None) -> bool:
    if perturb is None:
        return False
    return not isinstance(perturb, Perturbation) or any(p.startswith("cnn") and p != "cnn" for p in perturb.points)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that can record a training pass's batch statistics (`record = True`) and normalize later
    passes with them (`replay = True`): VAT's probe passes run the clean pass's network (sedaug.augment.SameDraws).
    Done in the forward, not in hooks added later, so that a compiled CNN records and replays too."""

    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.record = self.replay = False
        # Not in state_dict: they describe one pass, not the model.
        self.register_buffer("batch_mean", torch.zeros(num_features), persistent=False)
        self.register_buffer("batch_var", torch.ones(num_features), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.replay:
            return F.batch_norm(x, self.batch_mean, self.batch_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.record and self.training and x.dtype == torch.float32:
            # The statistics this pass normalizes with, as the kernel returns them: statistics summed apart (var_mean)
            # differ by rounding that grows with the batch, and VAT's finite difference measured that gap (at batch
            # 24, cos(VAT, H·d0) fell to 0.26; the replay now matches this pass to 1e-6). nn.BatchNorm2d's own
            # bookkeeping, then the op F.batch_norm runs on a CPU (on a GPU, in place of cuDNN's). The CRNN's layers
            # track running statistics with a float momentum (recipe: batchnorm_momentum > 0), all this supports.
            self.num_batches_tracked.add_(1)
            out, mean, invstd = torch.native_batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                                                        True, self.momentum, self.eps)
            with torch.no_grad():
                self.batch_mean.copy_(mean)
                self.batch_var.copy_(invstd.reciprocal().square() - self.eps)
            return out
        if self.record and self.training:  # autocast's bf16: VAT replays its reference pass too (SameDraws.reduced)
            with torch.no_grad():
                var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
                self.batch_mean.copy_(mean)
                self.batch_var.copy_(var)
        return super().forward(x)


class Dropout(nn.Dropout):
    """nn.Dropout, its mask drawn more cheaply: at p = 1/2 (dcase20's, every recipe's) as random bits, eight per
    random byte, otherwise as uniform floats ≥ p. A CPU's bernoulli_ draws a float per element: it took a third of
    dcase20's eager step (README, Speed). The same distribution from other draws. `draws`: drawn by the caller
    (`count`, `draw`), as the CNN does for all its blocks at once."""

    def count(self, n: int) -> int:
        """How many random numbers the masks of n elements take."""
        return -(-n // 8) if self.p == 0.5 else n

    def draw(self, count: int, device: torch.device) -> Tensor:
        if self.p == 0.5:
            return torch.randint(0, 256, (count,), dtype=torch.uint8, device=device)
        return torch.rand(count, device=device)

    def forward(self, x: Tensor, draws: Tensor | None = None) -> Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        if draws is None:
            draws = self.draw(self.count(n), x.device)
        if self.p == 0.5:
            keep = (draws[:, None] >> torch.arange(8, dtype=torch.uint8, device=x.device)).bitwise_and_(1).flatten()[:n]
        else:
            keep = draws >= self.p
        # Scaled in place: one activation-sized temporary fewer (the product is not kept for the backward pass).
        return (x * keep.view(x.shape)).mul_(1 / (1 - self.p))


class GatedBlock(nn.Module):
    """Conv 3×3 → BatchNorm → GLU `Linear_c(x) * sigmoid(x)` → Dropout → AvgPool (dcase20)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, pool: tuple[int, int], cfg: ModelConfig):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=1, padding=kernel // 2)
        # dcase20 quirk (default 0.99): Keras' momentum passed to PyTorch, so running stats ≈ the last batch's.
        self.bn = BatchNorm2d(c_out, eps=1e-3, momentum=cfg.batchnorm_momentum)
        self.linear = nn.Linear(c_out, c_out)
        self.dropout = Dropout(cfg.dropout)
        self.pool = nn.AvgPool2d(tuple(pool))

    def forward(self, x: Tensor, dropout_draws: Tensor | None = None) -> Tensor:
        x = self.conv(x)
        x = self.bn(x)
        # A Linear over channels is a 1×1 convolution: same maths, no permute copies.
        lin = F.conv2d(x, self.linear.weight[:, :, None, None], self.linear.bias)
        return self.pool(self.dropout(lin * torch.sigmoid(x), dropout_draws))


@torch.compiler.disable
def _at(perturb: Perturb, point: str, h: Tensor) -> Tensor:
    # Outside the compiled graph: a compiled CNN breaks its graph here instead of tracing the augmentation's
    # Python (a new closure with new floats and tensors every step), so it compiles once, not once per step.
    return perturb(point, h)


class CNN(nn.Sequential):
    def forward(self, x: Tensor, perturb: Perturb | None = None) -> Tensor:
        draws = self.dropout_draws(x.shape, x.device)
        # Sequential's own forward, in user code: torch.compile then traces the blocks as one graph, not one each.
        if perturb is None:
            for block, block_draws in zip(self, draws, strict=True):
                x = block(x, block_draws)
            return x
        for i, (block, block_draws) in enumerate(zip(self, draws, strict=True), start=1):
            x = _at(perturb, f"cnn{i}", block(x, block_draws))  # the point `cnn<i>`: block i's output (B, C, T, F)
        return x

    def dropout_draws(self, shape: torch.Size, device: torch.device) -> list[Tensor | None]:
        """Every block's dropout draws, in one RNG call. Inductor reorders random calls that share no data, and
        VAT's probes replay the clean pass's masks by rewinding the RNG: one call draws the same numbers into the
        same places, compiled or eager (a compiled CNN draws with aten's RNG: `CRNN.compile_cnn`)."""
        dropout = self[0].dropout
        if not dropout.training or dropout.p == 0:
            return [None] * len(self)
        (batch, _, time, freq), counts = shape, []
        for block in self:  # an odd kernel keeps the size; the block pools after its dropout
            counts.append(dropout.count(batch * block.conv.out_channels * time * freq))
            time, freq = time // block.pool.kernel_size[0], freq // block.pool.kernel_size[1]
        return list(dropout.draw(sum(counts), device).split(counts))


class Scaler(nn.Module):
    """Per-mel-bin mean and std of the log-mel over the training splits (from the feature store)."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def forward(self, log_mel: Tensor) -> Tensor:
        return (log_mel - self.mean) / self.std


class CRNN(nn.Module):
    def __init__(self, cfg: ModelConfig = ModelConfig(), n_classes: int = 10, n_mels: int = MEL_BANDS):  # noqa: B008 (frozen)
        super().__init__()
        channels = [1, *cfg.cnn_filters]
        self.cnn = CNN(
            *(
                GatedBlock(channels[i], channels[i + 1], cfg.kernel_size, tuple(pool), cfg)
                for i, pool in enumerate(cfg.cnn_pooling)
            )
        )
        freq = bands_left(cfg.cnn_pooling, bands=n_mels)
        if freq < 1:
            raise ValueError(f"model.cnn_pooling pools {n_mels} mel bands down to nothing")
        # dcase20 pools frequency down to 1; otherwise the remaining bands are flattened into the features.
        self.rnn = nn.GRU(
            channels[-1] * freq, cfg.rnn_hidden, cfg.rnn_layers, batch_first=True, bidirectional=True
        )
        self.dropout = Dropout(cfg.dropout)
        self.strong = nn.Linear(2 * cfg.rnn_hidden, n_classes)
        self.attention = nn.Linear(2 * cfg.rnn_hidden, n_classes)
        # dcase20 quirk (default "classes"): the attention softmax normalizes over classes, not over time.
        self.attention_dim = -1 if cfg.attention_softmax == "classes" else 1
        if cfg.init == "dcase20":
            self.apply(_dcase20_init)
        self.cnn.to(memory_format=torch.channels_last)
        # Registered last, so that the network's own parameters and buffers come first in state_dict order, as
        # in the baseline's model (order-based weight mapping).
        self.scaler = Scaler(n_mels)

    @torch.no_grad()
    def set_scaler(self, mean: np.ndarray | Tensor, std: np.ndarray | Tensor) -> None:
        """Per-mel-bin mean and std of the log-mel over the training splits."""
        self.scaler.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.scaler.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def compile_cnn(self, mode: str = "default", backend: str = "inductor") -> None:
        """Compile the CNN in place (it holds the time; the perturbation points stay outside its graph). Inductor
        draws dropout's random numbers with aten's generator (`fallback_random`), as eager does: the masks are then
        the eager ones, and VAT's probes replay them even if dynamo ever ran a pass eagerly. `reduce-overhead`:
        CUDA graphs."""
        self.cnn.compile(backend=backend, options={"fallback_random": True, "triton.cudagraphs": mode == "reduce-overhead"})

    def forward(self, mel: Tensor, perturb: Perturb | None = None) -> tuple[Tensor, Tensor]:
        x = mel.float()
        if perturb is not None:
            x = perturb("mel", x)
        # abs: noise added to the linear mel may go negative; dcase20's librosa log takes |S| (no-op otherwise).
        return self.forward_log_mel(self.scaler(amplitude_to_db(x.abs())), perturb)

    def forward_log_mel(self, x: Tensor, perturb: Perturb | None = None) -> tuple[Tensor, Tensor]:
        """The network from the normalized log-mel (B, T, F), the dcase20 baseline's input, on."""
        if perturb is not None:
            x = perturb("input", x)
        # Channels-last: oneDNN's convolutions run ~15 % faster on CPU without layout reorders.
        x = x.unsqueeze(1).contiguous(memory_format=torch.channels_last)
        x = self.cnn(x, perturb if _visits_blocks(perturb) else None)  # (B, C, T', F')
        x = x.permute(0, 2, 1, 3).flatten(2)  # (B, T', C·F')
        if perturb is not None:
            x = perturb("cnn", x)
        x = self.rnn(x)[0]
        if perturb is not None:
            x = perturb("rnn", x)
        x = self.dropout(x)
        strong = torch.sigmoid(self.strong(x))
        att = torch.softmax(self.attention(x), dim=self.attention_dim).clamp(1e-7, 1.0)
        weak = (strong * att).sum(dim=1) / att.sum(dim=1)
        return strong, weak


def _dcase20_init(m: nn.Module) -> None:
    """dcase20's `weights_init`: Xavier convolutions, orthogonal GRU matrices, N(0, 0.01) linears, BN γ ~ N(1, 0.02)."""
    if isinstance(m, nn.Conv2d):
        nn.init.xavier_uniform_(m.weight, gain=np.sqrt(2))
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.GRU):
        for p in m.parameters():
            if p.dim() > 1:
                nn.init.orthogonal_(p)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
