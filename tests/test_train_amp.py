"""saner-train --amp fp16: fp16 autocast with the stock torch.amp.GradScaler for sgd, sam and saner; the scale and
the skipped steps in the JSONL log; the scaler's state in the (weights_only) checkpoint, so that --resume continues
bit for bit."""

import json

import pytest
import torch

pytest.importorskip("sklearn")

from saner_kernels.train.__main__ import main, prepare_data  # noqa: E402
from saner_kernels.train.checkpoint import load_checkpoint  # noqa: E402
from saner_kernels.train.engine import Config, Run  # noqa: E402

torch.set_num_threads(1)

QUIET = dict(log=lambda s: None, progress=False)


@pytest.fixture(scope="module")
def digits():
    cfg = Config(dataset="digits", noise="sym", noise_rate=0.4, seed=0)
    data, ds, _ = prepare_data(cfg, torch.device("cpu"), log=lambda s: None)
    return data, ds


def fp16_config(out, **kw):
    base = dict(
        dataset="digits",
        model="smallcnn",
        width=8,
        epochs=3,
        k=2,
        batch_size=128,
        augment=False,
        out=str(out),
        groups_every=1,
        device="cpu",
        amp="fp16",
    )
    base.update(kw)
    return Config(**base)


def overflowing_scaler():
    """Starts far above what fp16 gradients hold, so that the first steps overflow and are skipped while the scale
    backs off, and grows every 3 clean steps, so that it keeps overflowing now and then: the scale and the growth
    tracker at each epoch's end are far from the defaults, which a resume must restore."""
    return torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=3)


def strip_times(history):
    return [{k: v for k, v in r.items() if not k.endswith("time")} for r in history]


@pytest.mark.parametrize("opt", ["sgd", "saner"])
def test_fp16_resume_equals_uninterrupted(tmp_path, digits, opt):
    data, ds = digits
    full = Run(fp16_config(tmp_path / "full"), opt, data, ds.num_classes, ds.in_channels, **QUIET)
    full.scaler = overflowing_scaler()
    full.fit()

    cfg = fp16_config(tmp_path / "cut")
    first = Run(cfg, opt, data, ds.num_classes, ds.in_channels, **QUIET)
    first.scaler = overflowing_scaler()
    first.fit(max_epochs=1)  # "killed" after epoch 1
    ck = load_checkpoint(str(tmp_path / "cut" / opt / "checkpoint.pt"))  # weights_only=True
    assert ck["scaler"] == first.scaler.state_dict()
    assert ck["scaler"]["growth_interval"] == 3 and ck["scaler"]["scale"] < 2.0**24
    torch.manual_seed(1234)  # the global RNG is restored from the checkpoint, whatever happened since
    resumed = Run(cfg, opt, data, ds.num_classes, ds.in_channels, **QUIET)  # a default scaler: the state is loaded
    resumed.fit(resume=True)
    assert resumed.epoch == 3
    assert resumed.scaler.state_dict() == full.scaler.state_dict()
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(full.opt.state[a]["momentum_buffer"], resumed.opt.state[b]["momentum_buffer"])
    assert strip_times(full.history) == strip_times(resumed.history)

    log = [json.loads(s) for s in open(tmp_path / "cut" / opt / "log.jsonl")]
    epochs = log[1:]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    nb = data.num_train_batches(cfg.batch_size)
    assert epochs[0]["skipped_steps"] >= 3  # 2^24 backs off by halves until the gradients fit in fp16
    assert all(0 <= r["skipped_steps"] < nb for r in epochs)  # ... and it learns between the overflows
    assert all(r["grad_scale"] == 2.0 ** round(torch.tensor(r["grad_scale"]).log2().item()) for r in epochs)
    assert epochs[-1]["grad_scale"] == full.scaler.get_scale()
    assert torch.isfinite(torch.tensor([r["train_loss"] for r in epochs])).all()
    assert all(p.isfinite().all() for p in resumed.model.parameters())
    if opt == "saner":  # a skipped step's group statistics are left out of the epoch's mean, not counted as NaN
        assert all(0.0 < r["group_b"] < 1.0 for r in epochs)


def test_fp16_cli_logs_scale_and_checkpoints_scaler(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--compare", "sgd,sam,saner", "--amp", "fp16", "--epochs", "1", "--width", "8", "--batch-size", "256"]
    rc = main(args + ["--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "scale 65536 skipped 0" in text  # the per-epoch line (no overflow at the default scale here)
    for opt in ("sgd", "sam", "saner"):
        log = [json.loads(s) for s in open(out / opt / "log.jsonl")]
        assert log[0]["amp"] == "fp16"
        assert log[1]["grad_scale"] == 65536.0 and log[1]["skipped_steps"] == 0
        ck = load_checkpoint(str(out / opt / "checkpoint.pt"))
        assert ck["scaler"]["scale"] == 65536.0 and ck["scaler"]["_growth_tracker"] == 6  # 1347 / 256: 6 steps


def test_bf16_and_none_have_no_scaler(tmp_path, digits):
    data, ds = digits
    for amp in ("none", "bf16"):
        run = Run(
            fp16_config(tmp_path / amp, amp=amp, epochs=1), "saner", data, ds.num_classes, ds.in_channels, **QUIET
        )
        assert run.scaler is None
        (rec,) = run.fit()
        assert "grad_scale" not in rec and "skipped_steps" not in rec
        assert load_checkpoint(str(tmp_path / amp / "saner" / "checkpoint.pt"))["scaler"] is None
