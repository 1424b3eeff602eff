"""``saner-train`` under torchrun: the process group, the data shards, BatchNorm across ranks, collectives.

``torchrun --nproc-per-node N -m saner_kernels.train ... --ddp-mode global|local`` starts N processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; each joins the default process group (gloo on CPU, NCCL on
CUDA with device ``cuda:LOCAL_RANK``) and trains a ``DistributedDataParallel`` replica of the model.

- **Global batch.** ``--batch-size`` is the global batch. Every rank draws the same data order and the same
  augmentation numbers from the run's generator (same seed, same state), cuts each global batch into
  ``WORLD_SIZE`` contiguous shards in rank order (``shard_bounds``) and trains on its own shard, so the
  concatenated shards are exactly the batches one process sees. Each rank's loss is its shard's summed
  cross-entropy times ``WORLD_SIZE / global batch``: DDP's average over ranks is then the mean over the
  global batch, also for a last batch that does not split evenly.
- **global** mode (the default): plain DDP, both backward passes all-reduced; BatchNorm normalises with the
  statistics of the whole global batch (``GlobalBatchNorm2d`` on CPU, ``nn.SyncBatchNorm`` on CUDA), so a run
  equals one process on the same global batches up to floating-point rounding.
- **local** mode: per-replica SAM/SANER (the SAM paper's m-sharpness): the optimizer turns DDP's gradient
  sync off, each rank perturbs with its own gradient, and the reweighted gradients are averaged across ranks
  before the update. BatchNorm is per replica (each rank's forward passes are its own); the running
  statistics of rank 0 are broadcast to every rank before each evaluation (DDP's convention: rank 0's buffers).
- Metrics are sums and counts all-reduced across ranks; only rank 0 writes logs, plots and checkpoints.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..replicas import DDP_MODES

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of rank ``rank``'s share of ``n`` items: contiguous chunks in rank order, the first
    ``n % world_size`` one item larger (a rank may get none when ``n < world_size``)."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class Dist:
    """Where this process stands: one process (``active`` False), or rank ``rank`` of ``world_size``."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    active: bool = False
    mode: str = "global"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Optional[tuple[int, int]]:
        """(rank, world size) for the data's ``shard=`` argument; None for one process."""
        return (self.rank, self.world_size) if self.active else None

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t)
        return t

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Every floating-point and integer buffer (BatchNorm's running statistics) from rank 0."""
        if self.active:
            for b in module.buffers():
                dist.broadcast(b, src=0)


def torchrun_env() -> Optional[tuple[int, int, int]]:
    """(rank, world size, local rank) when started by torchrun (its environment variables), else None."""
    if not all(k in os.environ for k in TORCHRUN_ENV):
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def init_distributed(device_arg: str, mode: str) -> tuple[Dist, Optional[torch.device]]:
    """Joins the default process group when started by torchrun. Returns (Dist, the device of this rank),
    or (one-process Dist, None) otherwise (the caller resolves ``--device`` as usual)."""
    if mode not in DDP_MODES:
        raise SystemExit(f"--ddp-mode must be one of {DDP_MODES}, got {mode!r}")
    env = torchrun_env()
    if env is None:
        if mode != "global":
            raise SystemExit(
                f"--ddp-mode {mode} is for several processes: start the run with torchrun "
                f"(torchrun --nproc-per-node N -m saner_kernels.train ... --ddp-mode {mode})"
            )
        return Dist(mode=mode), None
    rank, world, local_rank = env
    if device_arg == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    elif device_arg in ("cpu", "cuda"):
        kind = device_arg
    else:
        raise SystemExit(
            f"--device {device_arg}: under torchrun each process uses cuda:LOCAL_RANK (or the CPU); "
            f"give --device cuda, cpu or auto"
        )
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available in this PyTorch build/machine; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPUs: "
                f"--nproc-per-node must not exceed the GPUs per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return Dist(world_size=world, rank=rank, local_rank=local_rank, active=True, mode=mode), device


def shutdown(d: Dist, clean: bool = True) -> None:
    """Leaves the process group after the DDP models that use it are gone (a model collected at interpreter
    exit, after its group, can abort the process), and, when ``clean``, once every rank is done (rank 0 still
    writes the table and the plot when the others finish; leaving before it could abort a rank too). After an
    error no barrier: another rank may never reach it."""
    if d.active and dist.is_initialized():
        gc.collect()
        if clean:
            dist.barrier()
        dist.destroy_process_group()


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks of the default group; its gradient is the sum of the ranks' gradients
    (each rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (all ranks' shards together).

    What ``nn.SyncBatchNorm`` does on CUDA, for CPU tensors (gloo), which SyncBatchNorm refuses: the per-channel
    sum and count, then the sum of squared deviations from the global mean, are all-reduced (two-pass, like
    BatchNorm's own variance), through a differentiable all-reduce (``_SumOverRanks``), whose backward
    all-reduces the gradients of the sums. Running statistics get the global mean and the unbiased global
    variance, so they are the same on every rank. Evaluation, and one process, are plain BatchNorm2d.
    The state dict is BatchNorm2d's: checkpoints move between one process and several.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        c = self.num_features
        xf = x.float()
        count = torch.full((1,), x.numel() // c, dtype=xf.dtype, device=x.device)
        sums = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
        n = sums[c]
        mean = sums[:c] / n
        dev = xf - mean[None, :, None, None]
        var = all_reduce((dev * dev).sum(dim=(0, 2, 3))) / n
        y = dev * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - f).add_(mean.detach().to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased.detach().to(self.running_var.dtype), alpha=f)
        return y.to(x.dtype)


def global_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``model`` normalising with the global batch's statistics (global mode)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global_bn(model)


def _to_global_bn(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = GlobalBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _to_global_bn(child))
    return module
