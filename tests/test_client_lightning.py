"""PyTorch Lightning drives SANER/SAM unchanged (docs/migrating.md, "Lightning").

Automatic optimization hands the optimizer a closure that runs training_step and backward at the current
weights; SANER calls it at w and at w + e (the "both_passes" convention), so each batch runs training_step
twice. Every test compares the weights Lightning trained with a plain two-pass loop (tests/client_loops.py)
on a tiny fp64 problem.
"""

from __future__ import annotations

import copy

import pytest
import torch
from client_loops import BATCH, batches, loss_of, max_weight_difference, plain_run, tiny_data, tiny_net

from saner_kernels import SAM, SANER

L = pytest.importorskip("lightning.pytorch", reason="the Lightning client tests need `pip install -e .[test]`")

pytestmark = pytest.mark.filterwarnings(  # Lightning's own notes about tiny loaders and torch's pytree API
    "ignore:.*does not have many workers",
    "ignore:.*is smaller than the logging interval",
    "ignore:.*LeafSpec.*is deprecated",
)
TIGHT = 1e-12  # fp64: only the restore's rounding (w + e - e against a saved copy) may differ


def trainer(max_steps: int, **kwargs) -> "L.Trainer":
    settings = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=max_steps,
    )
    settings.update(kwargs)
    return L.Trainer(**settings)


def loader(dataset):
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=False)


class TinyModule(L.LightningModule):
    """``configure_optimizers`` returns the optimizer ``make_optimizer(self.parameters())`` builds."""

    def __init__(self, make_optimizer, net=None):
        super().__init__()
        self.net = net if net is not None else tiny_net()
        self.make_optimizer = make_optimizer
        self.training_step_calls = 0

    def training_step(self, batch, batch_idx):
        self.training_step_calls += 1
        return loss_of(self.net, batch)

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


SANER_SETTINGS = dict(rho=0.5, alpha=0.3, lr=0.1, momentum=0.9, weight_decay=1e-3)
SAM_SETTINGS = dict(rho=0.5, lr=0.1, momentum=0.9, weight_decay=1e-3)
OPTIMIZERS = {
    "SAM": (lambda params: SAM(params, torch.optim.SGD, **SAM_SETTINGS), dict(SAM_SETTINGS, alpha=1.0)),
    "SANER": (lambda params: SANER(params, **SANER_SETTINGS), SANER_SETTINGS),
    "SAM-AdamW": (
        lambda params: SAM(params, torch.optim.AdamW, rho=0.05, lr=1e-2, weight_decay=0.05),
        dict(base_optimizer=torch.optim.AdamW, rho=0.05, lr=1e-2, weight_decay=0.05),
    ),
    "SANER-adaptive-nesterov": (
        lambda params: SANER(params, adaptive=True, nesterov=True, **SANER_SETTINGS),
        dict(SANER_SETTINGS, adaptive=True, nesterov=True),
    ),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_automatic_optimization_equals_the_two_pass_loop(name):
    make_optimizer, plain_settings = OPTIMIZERS[name]
    dataset = tiny_data()
    module = TinyModule(make_optimizer)
    start = copy.deepcopy(module.net)
    epochs = 2
    steps = epochs * len(batches(dataset))
    trainer(steps).fit(module, loader(dataset))
    assert module.training_step_calls == 2 * steps  # at w, then at w + e
    expected = plain_run(start, batches(dataset), epochs, **plain_settings)
    assert max_weight_difference(module.net, expected) < TIGHT
    assert max_weight_difference(module.net, start) > 1e-3  # it trained


@pytest.mark.parametrize("name", ["SAM", "SANER"])
def test_gradient_clip_val_clips_each_closure_gradient(name):
    """Lightning clips after each closure call: g_SGD at w by its own norm, then g_SAM at w + e by its own."""
    make_optimizer, plain_settings = OPTIMIZERS[name]
    dataset = tiny_data()
    module = TinyModule(make_optimizer)
    start = copy.deepcopy(module.net)
    clip = 0.05  # below every gradient norm of the run, so every clip acts
    steps = len(batches(dataset))
    trainer(steps, gradient_clip_val=clip).fit(module, loader(dataset))
    expected = plain_run(start, batches(dataset), clip_norm=clip, **plain_settings)
    assert max_weight_difference(module.net, expected) < TIGHT
    unclipped = plain_run(start, batches(dataset), **plain_settings)
    assert max_weight_difference(module.net, unclipped) > 1e-4  # the clip acted


class ClipThroughSANER(TinyModule):
    """``gradient_clip_val`` routed through SANER's own clip: the update clipped, the Group B mask unclipped."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        optimizer.clip_grad_norm_(gradient_clip_val)  # at w: the norm only; at w + e: the update's factor


def fit_clipped_through_saner(name, clip=0.05):
    make_optimizer, plain_settings = OPTIMIZERS[name]
    dataset = tiny_data()
    module = ClipThroughSANER(make_optimizer)
    start = copy.deepcopy(module.net)
    trainer(len(batches(dataset)), gradient_clip_val=clip).fit(module, loader(dataset))
    return module, start, batches(dataset), plain_settings


def test_configure_gradient_clipping_through_saners_clip_grad_norm():
    clip = 0.05
    module, start, data, plain_settings = fit_clipped_through_saner("SANER", clip)
    expected = plain_run(start, data, clip_update_norm=clip, **plain_settings)
    assert max_weight_difference(module.net, expected) < TIGHT
    both_clipped = plain_run(start, data, clip_norm=clip, **plain_settings)  # Lightning's default clip
    assert max_weight_difference(module.net, both_clipped) > 1e-6  # the mask is another one


def test_saners_clip_grad_norm_is_exact_in_fp64():
    clip = 0.05
    module, start, data, plain_settings = fit_clipped_through_saner("SANER", clip)
    assert max_weight_difference(module.net, plain_run(start, data, clip_update_norm=clip, **plain_settings)) < TIGHT


def test_bf16_mixed_equals_the_loop_under_the_same_autocast():
    """precision="bf16-mixed" on CPU: training_step under bf16 autocast, fp32 weights, no scaler."""
    dataset = tiny_data(dtype=torch.float32)
    net = tiny_net(dtype=torch.float32)
    module = TinyModule(OPTIMIZERS["SANER"][0], net=net)
    start = copy.deepcopy(net)
    steps = len(batches(dataset))
    trainer(steps, precision="bf16-mixed").fit(module, loader(dataset))
    autocast = dict(device_type="cpu", dtype=torch.bfloat16)
    expected = plain_run(start, batches(dataset), autocast=autocast, **SANER_SETTINGS)
    # bf16 forward passes: the same ops on the same inputs; the optimizer's fp32 arithmetic differs in rounding
    assert max_weight_difference(module.net, expected) < 1e-5
    fp32_run = plain_run(start, batches(dataset), **SANER_SETTINGS)
    assert max_weight_difference(module.net, fp32_run) > 1e-5  # autocast was on


def with_step_lr(params):
    """SANER with an epoch-wise StepLR. Lightning accepts only schedulers built on the optimizer it was given (one
    on ``optimizer.base_optimizer`` is refused as 'not returned from configure_optimizers')."""
    optimizer = OPTIMIZERS["SANER-adaptive-nesterov"][0](params)
    return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}


def test_checkpoint_resume_continues_bit_for_bit(tmp_path):
    """A Trainer checkpoint (weights, momentum, LR scheduler, loop state) resumed with ``fit(ckpt_path=...)``. The
    run is cut at an epoch's end: Lightning's own loop resumes a run stopped by ``max_steps`` mid-epoch
    differently, with ``torch.optim.SGD`` too."""
    make_optimizer = with_step_lr
    dataset = tiny_data()

    uninterrupted = TinyModule(make_optimizer)
    first_part = TinyModule(make_optimizer, net=copy.deepcopy(uninterrupted.net))
    trainer(-1, max_epochs=3).fit(uninterrupted, loader(dataset))

    interrupted = trainer(-1, max_epochs=1)
    interrupted.fit(first_part, loader(dataset))
    checkpoint = tmp_path / "epoch1.ckpt"
    interrupted.save_checkpoint(checkpoint)

    resumed = TinyModule(make_optimizer, net=tiny_net(seed=123))  # other weights: the checkpoint must win
    resumed_trainer = trainer(-1, max_epochs=3)
    resumed_trainer.fit(resumed, loader(dataset), ckpt_path=checkpoint)
    assert resumed.training_step_calls == 2 * 2 * len(batches(dataset))  # epochs 2 and 3 only
    for p, q in zip(resumed.net.parameters(), uninterrupted.net.parameters()):
        assert torch.equal(p, q)
    assert resumed_trainer.optimizers[0].param_groups[0]["lr"] == SANER_SETTINGS["lr"] * 0.5**3
    resumed_state = resumed_trainer.optimizers[0].state_dict()["state"]
    uninterrupted_state = uninterrupted.trainer.optimizers[0].state_dict()["state"]
    assert resumed_state.keys() == uninterrupted_state.keys() and resumed_state
    for index, state in uninterrupted_state.items():
        assert torch.equal(resumed_state[index]["momentum_buffer"], state["momentum_buffer"])


def test_accumulate_grad_batches_is_refused_with_a_clear_error():
    module = TinyModule(OPTIMIZERS["SAM"][0])
    start = copy.deepcopy(module.net)
    with pytest.raises(RuntimeError, match="accumulate_grad_batches"):
        trainer(2, accumulate_grad_batches=2).fit(module, loader(tiny_data()))
    # the refusal came before any step: the weights are where they started
    assert max_weight_difference(module.net, start) == 0.0


def test_16_mixed_with_a_grad_scaler_is_refused_with_a_clear_error():
    """precision="16-mixed" on CUDA runs the closure once itself, then ``scaler.step(optimizer)``: one gradient.
    On CPU Lightning makes no scaler (fp16 autocast only, then the closure path above); the plugin with a CPU
    GradScaler is exactly the CUDA flow."""
    from lightning.pytorch.plugins import MixedPrecision

    module = TinyModule(OPTIMIZERS["SAM"][0], net=tiny_net(dtype=torch.float32))
    start = copy.deepcopy(module.net)
    plugin = MixedPrecision(precision="16-mixed", device="cpu", scaler=torch.amp.GradScaler(device="cpu"))
    with pytest.raises(RuntimeError, match="16-mixed"):
        trainer(2, plugins=[plugin]).fit(module, loader(tiny_data(dtype=torch.float32)))
    assert max_weight_difference(module.net, start) == 0.0


# ---------------------------------------------------------------- manual optimization
class ManualModule(L.LightningModule):
    """Manual optimization, in the spellings docs/migrating.md shows ("Lightning, manual optimization")."""

    def __init__(self, spelling: str, net=None):
        super().__init__()
        self.automatic_optimization = False
        self.net = net if net is not None else tiny_net()
        self.spelling = spelling

    def configure_optimizers(self):
        return SANER(self.parameters(), **SANER_SETTINGS)

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()  # a LightningOptimizer around the SANER
        if self.spelling == "closure":  # the recommended one: counts global_step, works with any precision but fp16

            def closure():
                optimizer.zero_grad()
                loss = loss_of(self.net, batch)
                self.manual_backward(loss)
                return loss

            return optimizer.step(closure=closure)  # SANER calls it at w, then at w + e
        if self.spelling == "two_steps":  # works; Lightning does not count these as steps (global_step stays 0)
            self.manual_backward(loss_of(self.net, batch))
            optimizer.first_step(zero_grad=True)
            self.manual_backward(loss_of(self.net, batch))
            optimizer.second_step(zero_grad=True)
        elif self.spelling == "raw_first_step_then_step":  # fp16 with a GradScaler needs this one
            self.manual_backward(loss_of(self.net, batch))
            optimizer.optimizer.first_step(zero_grad=True)
            self.manual_backward(loss_of(self.net, batch))
            optimizer.step()  # Lightning's hooks and step count, then (with a scaler) scaler.step -> second_step
        elif self.spelling == "first_step_then_step":
            self.manual_backward(loss_of(self.net, batch))
            optimizer.first_step(zero_grad=True)
            self.manual_backward(loss_of(self.net, batch))
            optimizer.step()
        elif self.spelling == "davda54_closure":
            optimizer.zero_grad()
            self.manual_backward(loss_of(self.net, batch))
            optimizer.step(closure=lambda: self.manual_backward(loss_of(self.net, batch)))


def fit_manual(spelling: str, precision_plugin=None, dtype=torch.float64):
    dataset = tiny_data(dtype=dtype)
    module = ManualModule(spelling, net=tiny_net(dtype=dtype))
    start = copy.deepcopy(module.net)
    fit = trainer(-1, max_epochs=1, plugins=[precision_plugin] if precision_plugin else None)
    fit.fit(module, loader(dataset))
    return module, start, fit, batches(dataset)


@pytest.mark.parametrize("spelling", ["closure", "two_steps"])
def test_manual_optimization_equals_the_two_pass_loop(spelling):
    module, start, fit, data = fit_manual(spelling)
    expected = plain_run(start, data, **SANER_SETTINGS)
    assert max_weight_difference(module.net, expected) < TIGHT
    assert max_weight_difference(module.net, start) > 1e-3
    # Lightning counts optimizer.step() calls only: first_step/second_step leave global_step (max_steps,
    # step-interval schedulers and checkpoints) at 0
    assert fit.global_step == (len(data) if spelling == "closure" else 0)


def test_manual_optimization_with_fp16_and_a_grad_scaler():
    """The CUDA 16-mixed flow on CPU (a CPU GradScaler): first_step on the wrapped optimizer, then
    ``optimizer.step()``, which Lightning turns into ``scaler.step(optimizer)`` -> the unscaled second step."""
    from lightning.pytorch.plugins import MixedPrecision

    plugin = MixedPrecision(precision="16-mixed", device="cpu", scaler=torch.amp.GradScaler(device="cpu"))
    module, start, fit, data = fit_manual("raw_first_step_then_step", plugin, dtype=torch.float32)
    expected = plain_run(start, data, autocast=dict(device_type="cpu", dtype=torch.float16), **SANER_SETTINGS)
    assert max_weight_difference(module.net, expected) < 1e-6  # power-of-two scale: unscaling is exact
    assert max_weight_difference(module.net, start) > 1e-3
    assert fit.global_step == len(data)


@pytest.mark.parametrize(
    "spelling",
    [
        "raw_first_step_then_step",
        "first_step_then_step",
    ],
)
def test_manual_first_step_then_lightning_step_without_a_scaler(spelling):
    module, start, fit, data = fit_manual(spelling)
    assert max_weight_difference(module.net, plain_run(start, data, **SANER_SETTINGS)) < TIGHT
    assert fit.global_step == len(data)


def test_manual_optimization_with_davda54s_closure():
    module, start, fit, data = fit_manual("davda54_closure")
    assert max_weight_difference(module.net, plain_run(start, data, **SANER_SETTINGS)) < TIGHT
