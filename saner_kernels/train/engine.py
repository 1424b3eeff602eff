"""One training run (one optimizer): epochs, two-pass SAM/SANER steps, metrics, checkpoint and resume.

Reproducibility: the model is initialised from ``torch.manual_seed(seed)``; the data order and the
augmentation draw from a private CPU generator seeded with ``seed + 1``; both generator states, the
global CPU/CUDA RNG states, the model, the optimizer, the alpha schedule and the metric history are in the
per-epoch checkpoint, so ``--resume`` continues to the same weights as an uninterrupted run. The checkpoint
holds only tensors and plain containers and is read with ``weights_only=True`` (``checkpoint.py``).

Metrics: test accuracy always; where clean training labels exist (digits, CIFAR, CIFAR-N, Tiny-ImageNet,
image folders with synthetic noise) also the memorisation of the noisy ones. Animal-10N and Mini-WebVision
ship only their noisy labels: for them the log says so and holds test accuracy only.

Under torchrun (``distributed.py``) the run is one DDP replica per process: each trains on its shard of the
global batch, metrics are counts summed over the ranks, rank 0 writes; the checkpoint records the world
size, and ``--resume`` refuses another one.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import SAM, SAMONLY, SAMWO, SANER, AlphaScheduler
from ..variants import HYPERPARAMETERS as variant_hyperparameters
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import AMP_MODES, Config, settings_differences
from .data import DeviceData
from .distributed import DDP_MODES, Dist, global_batchnorm
from .layer_groups import fractions_by_kind, parameter_kinds
from .models import build_model
from .plan import ABLATIONS, OPTIMIZERS, PERTURBED, TWO_PASS
from .replica_state import own_state, with_own_state
from .report import JsonlLog
from .streaming import StreamingData

CKPT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available in this PyTorch build/machine; use --device cpu")
    return dev


def lr_at(cfg: Config, epoch: int) -> float:
    """Step schedule: x lr_gamma at each milestone (fractions of the epochs, paper: 50% and 75%)."""
    passed = sum(epoch >= int(round(m * cfg.epochs)) for m in cfg.milestones)
    return cfg.lr * cfg.lr_gamma**passed


def _accepts(cls, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def build_optimizer(name: str, params, cfg: Config, ddp=None):
    """Returns (optimizer, alpha scheduler or None). ``ddp``: the DistributedDataParallel model under torchrun.

    samwo and samonly are the paper's group ablations: they keep their own alpha (SAMWO's Group B bound, 1 as in the
    authors' scripts), not SANER's target, and have no schedule."""
    if name == "sgd":
        opt = torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
            dampening=cfg.dampening,
        )
        return opt, None
    kwargs = dict(
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        rho=cfg.rho,
        adaptive=cfg.adaptive,
        nesterov=cfg.nesterov,
        dampening=cfg.dampening,
        ratio_eps=cfg.eps,
        backend=cfg.backend,
        # per parameter (an extra pass over the gradients each step): the fractions per layer kind, when the groups
        # are read at all, in one process only (the per-parameter counts would be this rank's)
        track_groups="per_parameter" if ddp is None and cfg.groups_every > 0 else True,
    )
    if name not in TWO_PASS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    if name in PERTURBED:  # the variant's own hyperparameters only (the optimizer refuses another's)
        kwargs.update(variant=cfg.variant, **{k: getattr(cfg, k) for k in variant_hyperparameters[cfg.variant]})
    cls = {"sam": SAM, "saner": SANER, "samwo": SAMWO, "samonly": SAMONLY}[name]
    extra = dict(alpha=cfg.alpha) if name == "saner" else dict(group=cfg.group) if name in ABLATIONS else {}
    if ddp is not None:
        kwargs.update(ddp=ddp, ddp_mode=cfg.ddp_mode)  # global mode: group_fractions uses its process group
    try:
        opt = cls(params, **extra, **kwargs)
    except ValueError as exc:  # a combination the optimizer refuses (e.g. --ddp-mode local with --variant gsam)
        raise SystemExit(f"--optimizer {name}: {exc}") from exc
    return opt, (AlphaScheduler(opt, k=cfg.k) if name == "saner" else None)


def bn_running_buffers(model: nn.Module) -> list[torch.Tensor]:
    """running_mean, running_var and num_batches_tracked of every BatchNorm layer that tracks them."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out += [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    return out


class BnStatsSnapshot:
    """Keeps one pass's BatchNorm statistics out of the running buffers: ``frozen()`` copies the running
    buffers aside on entry and back on exit.

    The layers stay exactly as they are (training mode, ``track_running_stats`` on), so a compiled model sees
    the same module state in both SAM/SANER passes and never recompiles for it (toggling a module attribute
    would fail torch.compile's guards on every switch). Eager results are the same as switching
    ``track_running_stats`` off for the pass: in training mode BatchNorm normalises with the batch statistics
    either way, and the buffers end bit-identical to their values before the pass (a copy, no arithmetic).
    The copies are two fused ``_foreach_copy_`` calls per step into buffers allocated once.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._live: list[torch.Tensor] = []
        self._saved: list[torch.Tensor] = []

    def save(self) -> None:
        live = bn_running_buffers(self.model)
        if len(live) != len(self._live) or any(a is not b for a, b in zip(live, self._live)):
            self._live, self._saved = live, [torch.empty_like(b) for b in live]  # first call, or buffers replaced
        if live:
            with torch.no_grad():
                torch._foreach_copy_(self._saved, live)

    def restore(self) -> None:
        if self._live:
            with torch.no_grad():
                torch._foreach_copy_(self._live, self._saved)

    @contextlib.contextmanager
    def frozen(self, freeze: bool = True):
        """The BatchNorm statistics of the forward passes inside the block do not count (when ``freeze``)."""
        if not freeze:
            yield
            return
        self.save()
        try:
            yield
        finally:
            self.restore()


class Progress:
    """A minimal progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total: int, prefix: str, enabled: Optional[bool] = None):
        self.total, self.prefix = total, prefix
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.time()
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and (self.n == self.total or self.n % max(1, self.total // 50) == 0):
            frac = self.n / max(1, self.total)
            bar = "#" * int(30 * frac)
            el = time.time() - self.t0
            eta = el / frac - el if frac > 0 else 0.0
            sys.stderr.write(f"\r{self.prefix} [{bar:<30}] {self.n}/{self.total} {el:.0f}s<{eta:.0f}s ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (len(self.prefix) + 60) + "\r")
            sys.stderr.flush()


def _rng_state(gen: torch.Generator) -> dict:
    st = {"torch": torch.get_rng_state(), "data": gen.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["data"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class Run:
    """One optimizer's training run, resumable from ``<out>/<name>/checkpoint.pt``.

    ``dist``: this process's place under torchrun (``distributed.Dist``); the model is then a
    DistributedDataParallel replica trained on this rank's shard of each global batch, metrics are summed
    over the ranks, and only rank 0 writes the log and the checkpoint.
    """

    def __init__(
        self,
        cfg: Config,
        optimizer: str,
        data: DeviceData | StreamingData,
        num_classes: int,
        in_channels: int,
        name: Optional[str] = None,
        log: Callable[[str], None] = print,
        progress: Optional[bool] = None,
        extra_header: Optional[dict] = None,
        dist: Optional[Dist] = None,
    ):
        self.cfg, self.opt_name, self.data = cfg, optimizer, data
        self.dist = dist = dist or Dist()
        if cfg.ddp_mode not in DDP_MODES:
            raise ValueError(f"unknown ddp mode {cfg.ddp_mode!r}; choose from {DDP_MODES}")
        self.name = name or optimizer
        self.log = log if dist.is_main else (lambda s: None)
        self.progress = progress if dist.is_main else False
        self.device = data.device
        self.dir = os.path.join(cfg.out, self.name)
        self.ckpt_path = os.path.join(self.dir, "checkpoint.pt")
        self.jsonl = JsonlLog(os.path.join(self.dir, "log.jsonl")) if dist.is_main else None  # rank 0 writes
        n_noisy = int(data.is_noisy.sum()) if data.has_clean_labels else None
        self.header = {
            "type": "config",
            "run": self.name,
            "optimizer": optimizer,
            **cfg.to_dict(),
            "n_train": data.n_train,
            "clean_labels": data.has_clean_labels,
            "noisy_samples": n_noisy,
            "realised_noise_rate": None if n_noisy is None else n_noisy / data.n_train,
            "world_size": dist.world_size,
            **(extra_header or {}),
        }

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, num_classes, in_channels, cfg.width, cfg.dropout)
        if dist.active and cfg.ddp_mode == "global":
            model = global_batchnorm(model, self.device)  # the global batch's statistics, as one process has them
        self.model = model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp = None
        train_model = self.model
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            # BatchNorm buffers are not synced at each forward: the same on every rank in global mode; rank 0's
            # broadcast before each evaluation in local mode (torch 2.13 renamed the switch)
            no_buffer_sync = (
                dict(forward_sync_buffers=False)
                if _accepts(DistributedDataParallel, "forward_sync_buffers")
                else dict(broadcast_buffers=False)
            )
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None, **no_buffer_sync
            )
            train_model = self.ddp
            if dist.rank:  # the model is initialised alike on every rank; dropout masks are each rank's own
                torch.manual_seed(cfg.seed + 7919 * dist.rank)
        self.forward_model = train_model
        self.eval_model = self.model  # evaluation: the module itself, no DDP wrapper (no collective)
        if cfg.compile:
            try:
                self.forward_model = torch.compile(train_model, backend=cfg.compile_backend)
            except RuntimeError as exc:  # torch._dynamo's InvalidBackend: says where the valid names are
                raise SystemExit(f"--compile-backend {cfg.compile_backend}: {exc}") from exc
            # evaluation: the compiled model itself, or the compiled module inside the DDP wrapper
            self.eval_model = (
                self.forward_model if self.ddp is None else torch.compile(self.model, backend=cfg.compile_backend)
            )
        self.opt, self.alpha_sched = build_optimizer(optimizer, train_model.parameters(), cfg, ddp=self.ddp)
        self.two_pass = optimizer in TWO_PASS
        # the layer kind of each parameter, for the per-kind group fractions (one process only: see build_optimizer)
        per_parameter = self.two_pass and self.opt.track_groups == "per_parameter"
        self.kinds = parameter_kinds(self.model) if per_parameter else None
        self._local = dist.active and cfg.ddp_mode == "local" and self.two_pass  # ranks with their own averages
        self.gen = torch.Generator()
        self.gen.manual_seed(cfg.seed + 1)
        self.epoch = 0
        self.history: list[dict] = []
        if cfg.amp not in AMP_MODES:
            raise ValueError(f"unknown amp mode {cfg.amp!r}; choose from {AMP_MODES}")
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.autocast = (
            torch.autocast(self.device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
        )
        # fp16 has too little range for the gradients: the stock GradScaler scales the loss, and skips (and backs
        # off) a step whose gradients overflowed in either pass. bf16 has fp32's range and needs no scaler.
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        self._steps_taken = 0  # torch.optim.SGD steps that ran: the scaler skips an overflowed one altogether
        if self.scaler is not None and not self.two_pass:
            self.opt.register_step_post_hook(self._count_step)
        self.bn_snapshot = BnStatsSnapshot(self.model)
        self._first_forward_done = False

    # -- checkpoint -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The checkpoint. Under torchrun every rank calls it (it gathers the ranks' random states); rank 0
        writes it."""
        rng = _rng_state(self.gen)
        optimizer = self.opt.state_dict()
        return {
            "version": CKPT_VERSION,
            "epoch": self.epoch,
            "world_size": self.dist.world_size,  # --resume continues only at this world size
            "config": self.cfg.to_dict(),
            "optimizer_name": self.opt_name,
            "model": self.model.state_dict(),
            "optimizer": optimizer,
            "alpha_scheduler": self.alpha_sched.state_dict() if self.alpha_sched is not None else None,
            "rng": rng,
            # each rank's own global random state (dropout); the data generator is the same on every rank
            "rng_ranks": self.dist.all_gather_object(rng) if self.dist.active else None,
            # local mode: each rank's own gradient averages (fsam, vasso); the rest of the state is rank 0's
            "replica_state": self.dist.all_gather_object(own_state(optimizer)) if self._local else None,
            "history": self.history,
            # plain numbers (scale, growth tracker, factors): loads with weights_only=True
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load(self, ck: dict) -> None:
        world = ck.get("world_size", 1)
        if world != self.dist.world_size:

            def how(n):
                return "one process (no torchrun)" if n == 1 else f"{n} processes (torchrun, world size {n})"

            raise SystemExit(
                f"--resume: {self.ckpt_path} was written by a run of {how(world)}; this run has "
                f"{how(self.dist.world_size)}. A run resumes only at the world size it started with (its data "
                f"shards and random states are the ranks'): relaunch with world size {world} "
                f"(torchrun --nnodes x --nproc-per-node = {world}), or use another --out, or drop --resume"
            )
        diff = settings_differences(ck["config"], self.cfg)
        if diff or ck.get("optimizer_name") != self.opt_name:
            raise SystemExit(
                f"--resume: {self.ckpt_path} was written with different settings "
                f"({', '.join(diff) or 'optimizer'}); use another --out or drop --resume"
            )
        self.model.load_state_dict(ck["model"])
        replicas = ck.get("replica_state")
        self.opt.load_state_dict(
            with_own_state(ck["optimizer"], replicas[self.dist.rank]) if replicas else ck["optimizer"]
        )
        if self.alpha_sched is not None and ck["alpha_scheduler"] is not None:
            self.alpha_sched.load_state_dict(ck["alpha_scheduler"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])  # else (a checkpoint without fp16): a fresh scaler
        ranks = ck.get("rng_ranks")
        _set_rng_state(ranks[self.dist.rank] if ranks else ck["rng"], self.gen)
        self.history = list(ck["history"])
        self.epoch = ck["epoch"]

    def _read_checkpoint(self) -> Optional[dict]:
        """The checkpoint, or None. Under torchrun rank 0 reads it and broadcasts it: the other ranks (other
        nodes) need not see rank 0's files."""
        if not self.dist.active:
            return load_checkpoint(self.ckpt_path) if os.path.isfile(self.ckpt_path) else None
        ck, error = None, None
        if self.dist.is_main and os.path.isfile(self.ckpt_path):
            try:
                ck = load_checkpoint(self.ckpt_path)
            except CheckpointError as exc:
                error = (type(exc), str(exc))
        ck, error = self.dist.broadcast_object((ck, error))
        if error is not None:
            raise error[0](error[1])
        return ck

    def try_resume(self) -> bool:
        ck = self._read_checkpoint()
        if ck is None:
            return False
        self.load(ck)
        # the log is rebuilt from the checkpoint: epochs logged after it (a killed run) are dropped
        if self.dist.is_main:
            self.jsonl.rewrite([self.header] + [{"type": "epoch", **r} for r in self.history])
        return True

    def save(self) -> None:
        state = self.state_dict()  # on every rank: it gathers their random states
        if self.dist.is_main:
            save_checkpoint(state, self.ckpt_path)

    # -- training ---------------------------------------------------------------------------------
    def _loss(self, x, y, batch: int):
        """The mean cross-entropy over the batch; under torchrun this rank's part of the mean over the global
        batch of ``batch`` examples, times the world size (DDP averages the ranks' gradients)."""
        with self.autocast:
            out = self.forward_model(x)
        if not self.dist.active:
            return F.cross_entropy(out.float(), y)
        return F.cross_entropy(out.float(), y, reduction="sum") * (self.dist.world_size / batch)

    def _checked_loss(self, x, y, batch: int):
        if self._first_forward_done:
            return self._loss(x, y, batch)
        try:
            loss = self._loss(x, y, batch)
        except Exception as exc:
            hints = []
            if self.cfg.compile:
                hints.append(
                    f"--compile (torch.compile's {self.cfg.compile_backend} backend needs a working C++ compiler / "
                    f"Triton for this device)"
                )
            if self.cfg.amp != "none":
                kind = {"bf16": "bfloat16", "fp16": "float16"}[self.cfg.amp]
                hints.append(f"--amp {self.cfg.amp} (needs {kind} autocast for these ops on {self.device.type})")
            if self.cfg.channels_last:
                hints.append("--channels-last")
            if hints:
                raise SystemExit(
                    f"the first forward pass failed ({type(exc).__name__}: {exc}); try without: {', '.join(hints)}"
                ) from exc
            raise
        self._first_forward_done = True
        return loss

    def _count_step(self, *_) -> None:
        self._steps_taken += 1

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def train_epoch(self) -> dict:
        cfg, model, opt, scaler = self.cfg, self.model, self.opt, self.scaler
        lr = lr_at(cfg, self.epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        alpha = opt.param_groups[0].get("alpha", None) if self.two_pass else None
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        fr_sum, fr_n = {"A": 0.0, "B": 0.0, "C": 0.0}, 0
        by_kind: dict = {}
        nb = self.data.num_train_batches(cfg.batch_size)
        bar = Progress(nb, f"{self.name} epoch {self.epoch + 1}/{cfg.epochs}", self.progress)
        taken0 = self._steps_taken
        skipped0 = opt.skipped_steps if scaler is not None and self.two_pass else 0
        world = self.dist.world_size
        batches = self.data.train_batches(cfg.batch_size, self.gen, shard=self.dist.shard)
        for step, (_, x, y) in enumerate(batches):
            batch = min(cfg.batch_size, self.data.n_train - step * cfg.batch_size)  # the global batch's size
            if not self.two_pass:
                loss = self._checked_loss(x, y, batch)
                opt.zero_grad(set_to_none=False)
                self._backward(loss)
                if scaler is None:
                    opt.step()
                else:
                    scaler.step(opt)  # unscales, and skips the step if a gradient overflowed
                    scaler.update()
            else:
                # the pass whose BatchNorm statistics must not count runs between a snapshot and its restore
                # (restored after the backward: the BatchNorm backward saved the running buffers at their version)
                with self.bn_snapshot.frozen(cfg.bn_stats == "second"):
                    loss = self._checked_loss(x, y, batch)
                    self._backward(loss)
                opt.first_step(zero_grad=True)
                with self.bn_snapshot.frozen(cfg.bn_stats == "first"):
                    self._backward(self._loss(x, y, batch))
                if scaler is None:
                    opt.second_step(zero_grad=True)
                else:
                    # the second step with the scaler's scale and found_inf (both passes): the update unscales
                    # both gradients and is skipped on the device after an overflow; update() backs off then
                    scaler.step(opt)
                    scaler.update()
                if cfg.groups_every > 0 and (step % cfg.groups_every == 0 or step == nb - 1):
                    fr = self._group_fractions()  # a host sync: only every groups_every steps
                    if not math.isnan(fr["B"]):  # NaN: the step was skipped (non-finite gradients)
                        for k in fr_sum:
                            fr_sum[k] += fr[k]
                        fr_n += 1
                        if step == nb - 1 and self.kinds is not None:  # per layer kind: the epoch's last step (as
                            by_kind = fractions_by_kind(self.kinds, opt.parameter_group_fractions())  # the authors)
            loss_sum += loss.detach().float() * (batch / world)  # this rank's summed cross-entropy
            bar.update()
        bar.close()
        if self.alpha_sched is not None:
            self.alpha_sched.step()
        self.dist.all_reduce_sum(loss_sum)
        if self.dist.active and cfg.ddp_mode == "local":
            self.dist.broadcast_buffers(self.model)  # per-replica BatchNorm statistics: rank 0's from now on
        out = {"lr": lr, "alpha": alpha, "train_loss": float(loss_sum) / self.data.n_train}
        for k in fr_sum:
            out[f"group_{k.lower()}"] = fr_sum[k] / fr_n if fr_n else None
        out.update(by_kind)
        if scaler is not None:  # read once per epoch (host syncs)
            out["grad_scale"] = scaler.get_scale()  # the scale after the epoch's last update
            if self.two_pass:  # SAM/SANER take every step and skip an overflowed one on the device
                out["skipped_steps"] = opt.skipped_steps - skipped0
            else:
                out["skipped_steps"] = nb - (self._steps_taken - taken0)
        return out

    def _group_fractions(self) -> dict:
        """The A/B/C fractions of the last step; under torchrun over every rank's components (local mode: each
        rank has its own masks; global mode: the same counts on every rank)."""
        return self.opt.group_fractions(all_ranks=self.dist.active)

    @torch.no_grad()
    def predict(self, split: str) -> tuple[torch.Tensor, slice]:
        """Predicted classes of ``split`` (under torchrun: of this rank's contiguous part) and their positions."""
        self.model.eval()
        preds, lo, hi = [], None, None
        for x, where in self.data.eval_batches(split, self.cfg.eval_batch_size, shard=self.dist.shard):
            lo = where.start if lo is None else lo
            hi = where.stop
            with self.autocast:
                preds.append(self.eval_model(x).argmax(1))
        self.model.train()
        if not preds:  # this rank's part is empty (fewer examples than ranks)
            return torch.zeros(0, dtype=torch.int64, device=self.device), slice(0, 0)
        return torch.cat(preds), slice(lo, hi)

    def evaluate(self) -> dict:
        """Accuracies from counts summed over the ranks (one process: its own counts)."""
        d = self.data
        p_test, where = self.predict("test")
        counts = [(p_test == d.y_test[where]).sum()]
        if d.has_clean_labels:
            p_train, where = self.predict("train")
            noisy = d.is_noisy[where]
            clean = ~noisy
            fits_clean = p_train == d.y_clean[where]
            fits_noisy = p_train == d.y_noisy[where]
            counts += [
                clean.sum(),
                (fits_clean & clean).sum(),
                noisy.sum(),
                (fits_noisy & noisy).sum(),
                (fits_clean & noisy).sum(),
                fits_noisy.sum(),
            ]
        totals = self.dist.all_reduce_sum(torch.stack(counts).to(torch.int64)).tolist()
        test_acc = totals[0] / int(d.y_test.numel())
        if not d.has_clean_labels:  # no pass over the training set: nothing to compare its predictions with
            return {
                "train_clean_acc": None,
                "noisy_fit_acc": None,
                "noisy_true_acc": None,
                "train_noisy_label_acc": None,
                "test_acc": test_acc,
            }
        n_clean, clean_ok, n_noisy, noisy_fit, noisy_true, label_ok = totals[1:]
        return {
            "train_clean_acc": clean_ok / n_clean if n_clean else float("nan"),
            "noisy_fit_acc": noisy_fit / n_noisy if n_noisy else None,
            "noisy_true_acc": noisy_true / n_noisy if n_noisy else None,
            "train_noisy_label_acc": label_ok / d.n_train,
            "test_acc": test_acc,
        }

    def fit(self, resume: bool = False, max_epochs: Optional[int] = None) -> list[dict]:
        """Trains to ``cfg.epochs`` (or ``max_epochs`` more epochs in this call, to simulate an interruption)."""
        cfg = self.cfg
        if resume and self.try_resume():
            if self.epoch >= cfg.epochs:
                self.log(f"[{self.name}] already finished ({self.epoch} epochs) in {self.ckpt_path}")
                return self.history
            self.log(f"[{self.name}] resuming from epoch {self.epoch} ({self.ckpt_path})")
        else:
            if resume:
                self.log(f"[{self.name}] --resume: no checkpoint at {self.ckpt_path} yet: starting from epoch 0")
            if self.dist.is_main:
                self.jsonl.rewrite([self.header])
        stop = cfg.epochs if max_epochs is None else min(cfg.epochs, self.epoch + max_epochs)
        while self.epoch < stop:
            t0 = time.time()
            rec = self.train_epoch()
            t_train = time.time() - t0
            rec.update(self.evaluate())
            rec = {
                "run": self.name,
                "optimizer": self.opt_name,
                "epoch": self.epoch + 1,
                **rec,
                "train_time": t_train,
                "epoch_time": time.time() - t0,
            }
            self.history.append(rec)
            self.epoch += 1
            self.save()
            if self.dist.is_main:
                self.jsonl.append({"type": "epoch", **rec})
            self.log(format_epoch(rec, cfg.epochs))
        return self.history


def _p(v) -> str:
    return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def format_epoch(r: dict, epochs: int) -> str:
    alpha = "  -  " if r.get("alpha") is None else f"{r['alpha']:.3f}"
    if r["train_clean_acc"] is None:
        metrics = f"test {_p(r['test_acc'])} (no clean labels: test accuracy only)"
    else:
        metrics = (
            f"clean-train {_p(r['train_clean_acc'])} noisy-fit {_p(r['noisy_fit_acc'])} "
            f"noisy->true {_p(r['noisy_true_acc'])} test {_p(r['test_acc'])}"
        )
    amp = f" | scale {r['grad_scale']:g} skipped {r['skipped_steps']}" if r.get("grad_scale") is not None else ""
    return (
        f"[{r['run']}] ep {r['epoch']:>3}/{epochs} lr {r['lr']:.4g} alpha {alpha} loss {r['train_loss']:.3f} | "
        f"{metrics} | B {_p(r.get('group_b'))}{amp} | {r['epoch_time']:.1f}s"
    )
