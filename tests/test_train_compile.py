"""saner-train --compile: the model compiles once for training, also with the SAM/SANER passes whose BatchNorm
statistics must not count (the running buffers are snapshotted and restored, no module attribute is toggled).

In-process CLI runs (not a subprocess), so that Dynamo's counters are visible here, with ``--compile-backend
aot_eager``: the graphs are Dynamo's whatever the backend, and inductor's C++ code generation would take most of a
minute here (tests/test_training_loops.py compiles a model with the default backend, inductor).
"""

import json
from collections import Counter

import pytest

pytest.importorskip("sklearn")
torch_dynamo = pytest.importorskip("torch._dynamo")

from torch._dynamo.utils import counters, guard_failures  # noqa: E402

from saner_kernels.train.__main__ import main  # noqa: E402
from saner_kernels.train.engine import Run  # noqa: E402

# Dynamo guards that a toggle of BatchNorm's attributes fails (the mechanism BnStatsSnapshot replaced)
BN_ATTRIBUTES = ("track_running_stats", "momentum", ".training")


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def failures() -> Counter:
    """Dynamo's recompile reasons so far (each the guard that failed, with the source line)."""
    return Counter(reason for reasons in guard_failures.values() for reason in reasons)


@pytest.fixture
def fresh_dynamo(monkeypatch):
    """Dynamo as in a new process; the graphs and recompile reasons of the training and evaluation passes apart."""
    torch_dynamo.reset()
    counters.clear()
    seen = {phase: {"graphs": 0, "failures": Counter()} for phase in ("train", "eval")}

    def counted(phase, method):
        def wrapper(self, *args, **kwargs):
            g, f = graphs(), failures()
            try:
                return method(self, *args, **kwargs)
            finally:
                seen[phase]["graphs"] += graphs() - g
                seen[phase]["failures"] += failures() - f

        return wrapper

    monkeypatch.setattr(Run, "train_epoch", counted("train", Run.train_epoch))
    monkeypatch.setattr(Run, "evaluate", counted("eval", Run.evaluate))
    yield seen
    torch_dynamo.reset()
    counters.clear()


def compiled_cli_run(out, *extra):
    # 1347 digits = 3 batches of 449: no smaller last batch (a new batch size would compile a dynamic graph).
    # aot_eager: Dynamo and AOTAutograd trace, guard and recompile exactly as for inductor (the graphs counted here
    # are Dynamo's), without generating and compiling C++ (inductor: 35-70 s here, cold, on a busy 2-core machine)
    args = ["--dataset", "digits", "--epochs", "2", "--batch-size", "449", "--width", "4", "--compile"]
    args += ["--compile-backend", "aot_eager"]
    return main(args + ["--device", "cpu", "--threads", "1", "--no-progress", "--quiet", "--out", str(out), *extra])


def check_compiled_once(seen, out, opt):
    train, ev = seen["train"], seen["eval"]
    assert train["graphs"] + ev["graphs"] == graphs()  # nothing compiled outside the two phases
    # Training: one graph (the forward; AOTAutograd adds its backward), whichever pass's BatchNorm statistics are
    # kept. At most one recompile is allowed, for the step that turns the parameters into views of the optimizer's
    # flat bucket (none happens with torch 2.13: the parameters are graph inputs and keep shapes and strides);
    # none may come from BatchNorm's attributes.
    assert 1 <= train["graphs"] <= 2, seen
    assert not [r for r in train["failures"] if any(a in r for a in BN_ATTRIBUTES)], seen
    # Evaluation: predict() runs under torch.no_grad() with the model in eval mode; the grad mode and the training
    # flag are guarded, so it gets a graph of its own (the first epoch's evaluation compiles it, the second epoch's
    # reuses it). Its batch sizes (450 test images; 1000 + 347 training images) differ from the training batch, so
    # Dynamo compiles it with a dynamic batch size at once: one graph for all of them.
    assert ev["graphs"] == 1, seen
    assert not [r for r in ev["failures"] if any(a in r for a in BN_ATTRIBUTES[:2])], seen
    log = [json.loads(s) for s in open(out / opt / "log.jsonl")]
    assert log[0]["compile"] is True and [r["epoch"] for r in log[1:]] == [1, 2]
    assert all(0.0 <= r["test_acc"] <= 1.0 and r["train_loss"] == r["train_loss"] for r in log[1:])


def test_compile_cli_compiles_once(tmp_path, fresh_dynamo):
    out = tmp_path / "compiled"
    assert compiled_cli_run(out, "--optimizer", "saner") == 0  # --bn-stats first (the default): pass 2 frozen
    check_compiled_once(fresh_dynamo, out, "saner")


def test_compile_cli_bn_stats_second_compiles_once(tmp_path, fresh_dynamo):
    out = tmp_path / "compiled"
    assert compiled_cli_run(out, "--optimizer", "sam", "--bn-stats", "second") == 0  # pass 1 frozen
    check_compiled_once(fresh_dynamo, out, "sam")
