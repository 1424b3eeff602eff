"""SANER under DistributedDataParallel (docs/design.md, "Distributed").

- ``global`` mode is DDP as usual: both backward passes are all-reduced by DDP, every rank holds the same
  two gradients and so takes the same step; nothing here is involved.
- ``local`` mode (per-replica perturbation, the SAM paper's m-sharpness): ``ReplicaSync`` switches DDP's
  gradient sync off for good (``require_backward_grad_sync = False``, what ``ddp.no_sync()`` sets for its
  block), so both gradients stay each rank's own; the optimizer agrees the skip flag across ranks and
  averages each bucket's reweighted gradient with one all-reduce before the SGD step.

Sharded parameters (FSDP2's ``fully_shard``, DTensor) are refused: see ``check_not_sharded``.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch.distributed as dist
from torch import Tensor

DDP_MODES = ("global", "local")


def check_not_sharded(params: Iterable[Tensor]) -> None:
    """A clear error for DTensor parameters (``torch.distributed.fsdp.fully_shard``)."""
    if not dist.is_available():
        return
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in params):
        raise TypeError(
            "SANER/SAM got sharded (DTensor) parameters, e.g. from torch.distributed.fsdp.fully_shard: not "
            "supported (the perturbation's norm would need an all-reduce across shards; docs/design.md, "
            "'Distributed'). Wrap the model in torch.nn.parallel.DistributedDataParallel instead: "
            "ddp_mode='global' (both passes synced) or 'local' (per-replica perturbation)."
        )


class ReplicaSync:
    """Local mode's collectives, over the DDP model's process group."""

    def __init__(self, ddp_model):
        from torch.nn.parallel import DistributedDataParallel

        if not isinstance(ddp_model, DistributedDataParallel):
            raise TypeError(
                f"ddp_mode='local' needs the DistributedDataParallel model (ddp=...), got {type(ddp_model).__name__}"
            )
        self.ddp = ddp_model
        self.group = ddp_model.process_group
        self.world_size = dist.get_world_size(self.group)
        # Neither pass may sync: a synced g_SAM against a local g_SGD would be the mixed case.
        ddp_model.require_backward_grad_sync = False

    def check_unsynced(self) -> None:
        """Refuse a step whose gradients DDP may have all-reduced (someone re-enabled its sync)."""
        if self.ddp.require_backward_grad_sync:
            raise RuntimeError(
                "ddp_mode='local': DDP's gradient sync was switched back on (require_backward_grad_sync is "
                "True), so this step's gradients may be all-reduced ones: the per-replica step needs each "
                "rank's own. Leave require_backward_grad_sync alone (the optimizer set it to False)."
            )

    def agree_skip_(self, skip: Tensor) -> None:
        """Every rank skips when any rank found a non-finite gradient (in place, on the device)."""
        dist.all_reduce(skip, op=dist.ReduceOp.MAX, group=self.group)

    def average_(self, flat: Tensor) -> None:
        """The mean over ranks, in place: divided first, then summed (as DDP's own hook does); every rank gets
        the same bits."""
        flat.div_(self.world_size)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)


def sum_over_ranks_(counts: Tensor, group: Optional[object] = None) -> None:
    """Add integer counters over the ranks of ``group`` (default: the default group), in place."""
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
