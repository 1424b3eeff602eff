"""saner-train reproduces the paper's analysis on the digits: the group ablations (``--optimizer samwo --group B``,
``--compare sgd,sam,samwo``), the sweeps of alpha and k (``--sweep``) sharing initial weights, noisy labels and data
order, the authors' per-epoch alpha, Group A/B/C fractions per layer kind, the plots and table, ``--resume`` of a
sweep, and the refusals of combinations that mean nothing."""

import json
import math

import pytest
import torch

pytest.importorskip("sklearn")

import saner_kernels.train.__main__ as cli  # noqa: E402
from saner_kernels.train import report  # noqa: E402
from saner_kernels.train.checkpoint import load_checkpoint  # noqa: E402
from saner_kernels.train.engine import Run  # noqa: E402
from saner_kernels.train.layer_groups import fractions_by_kind, parameter_kinds  # noqa: E402

torch.set_num_threads(1)

TINY = ["--width", "8", "--batch-size", "512", "--device", "cpu", "--no-progress", "--quiet"]


def train(tmp_path, *argv):
    assert cli.main([*argv, *TINY, "--out", str(tmp_path)]) == 0


def history(out, name):
    return load_checkpoint(str(out / name / "checkpoint.pt"))["history"]


def table_rows(out):
    """The run names of summary.md's table."""
    lines = (out / "summary.md").read_text().splitlines()
    return [line.split("|")[1].strip() for line in lines if line.startswith("| ")][1:]


@pytest.fixture
def recorded_starts(monkeypatch):
    """{run name: (initial weights, data generator state, noisy labels)} of every run the CLI builds."""
    starts = {}

    class RecordingRun(Run):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            weights = {k: v.clone() for k, v in self.model.state_dict().items()}
            starts[self.name] = (weights, self.gen.get_state(), self.data.y_noisy.clone())

    monkeypatch.setattr(cli, "Run", RecordingRun)
    return starts


def assert_same_start(starts):
    (first, *others) = starts.values()
    for weights, gen, labels in others:
        assert all(torch.equal(first[0][k], weights[k]) for k in weights)
        assert torch.equal(first[1], gen) and torch.equal(first[2], labels)


@pytest.fixture
def legends(monkeypatch):
    """{plot file name: the legend labels of each of its panels}, as the CLI saves them."""
    seen = {}
    save = report._save

    def recording_save(plt, fig, path, title):
        seen[path.rsplit("/", 1)[-1]] = [ax.get_legend_handles_labels()[1] for ax in fig.axes]
        return save(plt, fig, path, title)

    monkeypatch.setattr(report, "_save", recording_save)
    return seen


def test_alpha_per_epoch_is_the_authors_schedule(tmp_path):
    """Epoch e (from 1) trains at 1 - (1 - alpha) * min(e, k) / k: k=3, alpha=0.5 -> 5/6, 2/3, 1/2, 1/2."""
    train(tmp_path, "--optimizer", "saner", "--epochs", "4", "--k", "3", "--alpha", "0.5")
    alphas = [r["alpha"] for r in history(tmp_path, "saner")]
    assert alphas == pytest.approx([1 - 0.5 / 3, 1 - 1 / 3, 0.5, 0.5], abs=1e-12)


@pytest.mark.parametrize("optimizer,group", [("samwo", "B"), ("samonly", "A")])
def test_ablation_records_groups_per_layer_kind(tmp_path, optimizer, group):
    name = f"{optimizer}-gr{group}"
    train(tmp_path, "--optimizer", optimizer, "--group", group, "--epochs", "1")
    (last,) = history(tmp_path, name)
    log = [json.loads(line) for line in open(tmp_path / name / "log.jsonl")]
    assert log[0]["group"] == group and log[0]["optimizer"] == optimizer
    for kind in ("conv", "linear", "batchnorm"):
        fractions = [last[f"group_{g}_{kind}"] for g in "abc"]
        assert all(0.0 <= f <= 1.0 for f in fractions) and sum(fractions) == pytest.approx(1.0)
    assert 0.0 <= last["noisy_fit_acc"] <= 1.0 and 0.0 <= last["train_clean_acc"] <= 1.0
    assert table_rows(tmp_path) == [name]


def test_compare_with_the_ablation_shares_the_start_and_plots_each_run(tmp_path, recorded_starts, legends):
    train(tmp_path, "--compare", "sgd,sam,samwo", "--group", "B", "--epochs", "1")
    names = ["sgd", "sam", "samwo-grB"]
    assert list(recorded_starts) == names
    assert_same_start(recorded_starts)
    assert table_rows(tmp_path) == names
    assert (tmp_path / "curves.png").exists() and (tmp_path / "groups.png").exists()
    assert all(labels == names for labels in legends["curves.png"][:3])  # test, noisy-fit, clean-fit
    assert all(labels == ["sam", "samwo-grB"] for labels in legends["groups.png"])  # SGD has no groups
    assert len(legends["groups.png"]) == 9  # Groups A, B, C x conv, linear, batchnorm
    # the ablation changes the step: from the same start, SAM and SGD-GrB part after one epoch
    assert history(tmp_path, "sam")[0]["train_loss"] != history(tmp_path, "samwo-grB")[0]["train_loss"]
    # the group is a setting of the ablation only: sgd and sam resume without it
    assert load_checkpoint(str(tmp_path / "sam" / "checkpoint.pt"))["config"]["group"] == ""


def test_sweep_alpha_one_run_per_setting_sharing_the_start(tmp_path, recorded_starts, legends):
    train(tmp_path, "--sweep", "alpha=0.5,1.0", "--epochs", "2", "--k", "2")
    names = ["saner-alpha0.5", "saner-alpha1"]
    assert list(recorded_starts) == names
    assert_same_start(recorded_starts)
    assert table_rows(tmp_path) == names
    assert all(labels == names for labels in legends["curves.png"] + legends["groups.png"])
    assert [r["alpha"] for r in history(tmp_path, "saner-alpha0.5")] == [0.75, 0.5]
    assert [r["alpha"] for r in history(tmp_path, "saner-alpha1")] == [1.0, 1.0]
    # alpha 1 is SAM (design.md): the sweep's run equals SAM trained alone from the same seed
    train(tmp_path / "sam", "--optimizer", "sam", "--epochs", "2", "--k", "2")
    swept = load_checkpoint(str(tmp_path / "saner-alpha1" / "checkpoint.pt"))["model"]
    alone = load_checkpoint(str(tmp_path / "sam" / "sam" / "checkpoint.pt"))["model"]
    assert all(torch.equal(swept[k], alone[k]) for k in alone)


def test_resumed_sweep_continues_each_run_from_its_checkpoint(tmp_path):
    sweep = ["--sweep", "k=0,2", "--epochs", "2"]
    train(tmp_path / "full", *sweep)
    train(tmp_path / "cut", *sweep, "--stop-after", "1")
    assert [r["epoch"] for r in history(tmp_path / "cut", "saner-k2")] == [1]
    train(tmp_path / "cut", *sweep, "--resume")
    for name, alphas in (("saner-k0", [0.5, 0.5]), ("saner-k2", [0.75, 0.5])):
        full, cut = history(tmp_path / "full", name), history(tmp_path / "cut", name)
        assert [r["alpha"] for r in cut] == alphas
        strip = [{k: v for k, v in r.items() if not k.endswith("time")} for r in full]
        assert strip == [{k: v for k, v in r.items() if not k.endswith("time")} for r in cut]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--optimizer", "sgd", "--group", "B"], "--group picks the gradient group of samwo and samonly"),
        (["--compare", "sgd,sam", "--group", "A"], "--group picks"),
        (["--sweep", "rho=0.1,0.2"], "KEY one of alpha, k"),
        (["--sweep", "alpha"], "KEY one of alpha, k"),
        (["--sweep", "alpha=0.5,1.5"], r"alpha: values must be in \[0, 1\], got \[1.5\]"),
        (["--sweep", "k=-1,5"], "k: values must be a whole number"),
        (["--sweep", "k=2.5"], "k: values must be a whole number"),
        (["--sweep", "alpha=0.5,0.5"], "each value once"),
        (["--sweep", "alpha=0.5", "--optimizer", "sam"], "--sweep alpha varies a setting of saner, not sam"),
        (["--sweep", "k=0,5", "--compare", "sam,saner"], "give it with --optimizer, not --compare"),
    ],
)
def test_bad_combinations_are_refused_clearly(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main([*argv, *TINY, "--out", str(tmp_path)])
    assert not (tmp_path / "summary.md").exists()


def test_group_is_a_choice_of_the_authors_groups():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--optimizer", "samwo", "--group", "D"])
    args = cli.build_parser().parse_args(["--optimizer", "samonly"])
    cfg, names = cli.config_from_args(args)
    assert cfg.group == "B" and [s.name for s in cli.planned_runs(args, cfg, names)] == ["samonly-grB"]


def test_fractions_pooled_per_layer_kind_by_elements():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(4, 3))
    kinds = parameter_kinds(model)
    assert kinds == [("conv", 18), ("conv", 2), ("batchnorm", 2), ("batchnorm", 2), ("linear", 12), ("linear", 3)]
    per_parameter = [dict(A=a, B=1 - a, C=0.0) for a in (0.0, 0.9, 0.5, 0.5, 1.0, 0.0)]
    pooled = fractions_by_kind(kinds, per_parameter)
    assert pooled["group_a_conv"] == pytest.approx(1.8 / 20) and pooled["group_b_conv"] == pytest.approx(18.2 / 20)
    assert pooled["group_a_linear"] == pytest.approx(12 / 15) and pooled["group_a_batchnorm"] == 0.5
    assert "group_a_other" not in pooled
    skipped = fractions_by_kind(kinds, [dict(A=math.nan, B=math.nan, C=math.nan)] * 6)
    assert all(math.isnan(v) for v in skipped.values())
    with pytest.raises(ValueError, match="5 parameter fractions for 6 parameters"):
        fractions_by_kind(kinds, per_parameter[:5])
