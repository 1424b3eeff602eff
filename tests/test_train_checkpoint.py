"""Checkpoints are plain data read with weights_only=True: a real one loads, one holding a foreign pickled object
is refused (by load_checkpoint and by the CLI's --resume) without running it."""

import os

import pytest
import torch
from test_train_data import write_cifar10

from saner_kernels.train.__main__ import main
from saner_kernels.train.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint, save_checkpoint

torch.set_num_threads(1)


class Payload:
    """Unpickling this runs a command: what a tampered checkpoint could do with weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_cli(data_dir, out, *extra, quiet=True):
    argv = ["--dataset", "cifar10", "--data-dir", str(data_dir), "--model", "smallcnn", "--width", "4"]
    argv += ["--optimizer", "sgd", "--epochs", "2", "--batch-size", "8", "--threads", "1", "--device", "cpu"]
    argv += ["--no-progress", "--out", str(out), *extra]
    return main(argv + (["--quiet"] if quiet else []))


def test_checkpoint_is_plain_data_and_foreign_objects_are_refused(tmp_path, capsys):
    write_cifar10(str(tmp_path / "data"))
    assert run_cli(tmp_path / "data", tmp_path / "out") == 0
    path = tmp_path / "out" / "sgd" / "checkpoint.pt"
    ck = torch.load(path, map_location="cpu", weights_only=True)  # nothing but tensors and plain containers
    assert ck["epoch"] == 2 and isinstance(ck["rng"]["data"], torch.Tensor) and ck["config"]["dataset"] == "cifar10"

    marker = tmp_path / "payload-ran"
    ck["history"].append({"note": Payload(str(marker))})
    save_checkpoint(ck, str(path))
    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*checkpoint.pt.*arbitrary code"):
        load_checkpoint(str(path))
    capsys.readouterr()
    assert run_cli(tmp_path / "data", tmp_path / "out", "--resume") == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and ("posix.system" in err or "os.system" in err)
    assert not marker.exists()


class Foreign:
    """Harmless, but not plain data: refused all the same."""


def test_unknown_class_is_named_in_the_refusal(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"epoch": 1, "history": [Foreign()]}, path)
    with pytest.raises(UnsafeCheckpointError, match="Foreign"):
        load_checkpoint(str(path))


def folder_snapshot(root) -> dict:
    """Every file under ``root``: its bytes."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def damaged(good: bytes) -> dict:
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    return {
        "empty": (b"", "is empty (0 bytes)"),
        "truncated": (good[: len(good) // 2], "is truncated or corrupt"),
        "cut at the end": (good[:-10], "is truncated or corrupt"),
        "random bytes": (os.urandom(4096), "is truncated or corrupt"),
        "a flipped byte": (bytes(flipped), "fails its checksum"),
    }


def test_damaged_or_foreign_checkpoints_get_one_clear_line_and_change_nothing(tmp_path, capsys):
    write_cifar10(str(tmp_path / "data"))
    out = tmp_path / "out"
    assert run_cli(tmp_path / "data", out, "--stop-after", "1") == 0
    path = out / "sgd" / "checkpoint.pt"
    good = path.read_bytes()
    model_only = tmp_path / "model.pt"
    torch.save(torch.load(path, weights_only=True)["model"], model_only)  # a bare state_dict saved by hand
    cases = {**damaged(good), "a model state_dict": (model_only.read_bytes(), "is not a saner-train checkpoint")}
    for case, (content, says) in cases.items():
        path.write_bytes(content)
        before = folder_snapshot(out)
        capsys.readouterr()
        assert run_cli(tmp_path / "data", out, "--resume") == 2, case
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and says in err, (case, err)
        assert "altered" not in err and "arbitrary code" not in err, case  # corruption is not called tampering
        assert folder_snapshot(out) == before, case
        with pytest.raises(CheckpointError) as raised:
            load_checkpoint(str(path))
        assert not isinstance(raised.value, UnsafeCheckpointError), case
    path.write_bytes(good)
    assert run_cli(tmp_path / "data", out, "--resume") == 0  # and the intact file still resumes


def test_resume_with_flags_that_name_another_run_is_refused(tmp_path, capsys):
    write_cifar10(str(tmp_path / "data"))
    out = tmp_path / "out"
    sam = ("--optimizer", "sam", "--backend", "reference")
    assert run_cli(tmp_path / "data", out, *sam, "--stop-after", "1") == 0
    before = folder_snapshot(out)
    capsys.readouterr()
    assert run_cli(tmp_path / "data", out, *sam, "--variant", "fsam", "--resume") == 2  # would be run sam-fsam
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other runs than sam-fsam" in err
    assert "sam (optimizer 'sam'; variant: 'sam' vs 'fsam')" in err
    assert folder_snapshot(out) == before
    assert run_cli(tmp_path / "data", out, *sam, "--resume") == 0  # the run's own flags continue it


def test_resume_into_an_empty_folder_starts_fresh_and_says_so(tmp_path, capsys):
    write_cifar10(str(tmp_path / "data"))
    capsys.readouterr()
    assert run_cli(tmp_path / "data", tmp_path / "new", "--stop-after", "1", "--resume", quiet=False) == 0
    assert "[sgd] --resume: no checkpoint at" in capsys.readouterr().out
    assert torch.load(tmp_path / "new" / "sgd" / "checkpoint.pt", weights_only=True)["epoch"] == 1
