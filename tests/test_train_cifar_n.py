"""CIFAR-N human labels: label files with the published key names (dicts of numpy arrays, as the UCSC-REAL files
are) built for tiny CIFAR pickles; the default label sets, the checks against the dataset, the CLI run and its
resume."""

import io
import json
import os

import numpy as np
import pytest
import torch
from test_train_data import write_cifar10, write_cifar100
from test_train_folders import assert_same_run, interrupted_then_resumed

from saner_kernels.train.__main__ import main
from saner_kernels.train.cifar_n import load_human_labels, read_label_file
from saner_kernels.train.data import DataError, load_dataset

torch.set_num_threads(1)


def cifar10n_labels(clean, seed=0):
    """The CIFAR-10_human.pt keys: clean, three annotators, their majority and the worst of them."""
    rng = np.random.RandomState(seed)
    clean = np.asarray(clean, dtype=np.int64)
    annotators = [np.where(rng.rand(clean.size) < 0.2, rng.randint(0, 10, clean.size), clean) for _ in range(3)]
    worse = np.where(rng.rand(clean.size) < 0.4, (clean + 1) % 10, clean)
    return {
        "clean_label": clean,
        "worse_label": worse,
        "aggre_label": annotators[0],
        "random_label1": annotators[0],
        "random_label2": annotators[1],
        "random_label3": annotators[2],
    }


def write_label_file(path, labels):
    torch.save(labels, path)
    return str(path)


@pytest.fixture
def tiny_cifar10(tmp_path):
    _, y, _ = write_cifar10(str(tmp_path / "data"))
    labels = cifar10n_labels(y)
    path = write_label_file(tmp_path / "data" / "CIFAR-10_human.pt", labels)
    return tmp_path / "data", path, labels


def test_default_and_chosen_label_sets(tiny_cifar10):
    data_dir, path, labels = tiny_cifar10
    ds = load_dataset("cifar10", str(data_dir))
    noisy, key = load_human_labels(path, "cifar10", None, ds.y_train, 10)
    assert key == "worse_label" and noisy.tolist() == labels["worse_label"].tolist()  # the paper's CIFAR-10N set
    noisy, key = load_human_labels(path, "cifar10", "random_label2", ds.y_train, 10)
    assert noisy.tolist() == labels["random_label2"].tolist() and noisy.dtype == torch.int64


def test_cifar100n_noisy_label_default(tmp_path):
    _, fine, _, _ = write_cifar100(str(tmp_path))
    noisy = (np.asarray(fine) + 3) % 100
    path = write_label_file(tmp_path / "CIFAR-100_human.pt", {"clean_label": np.asarray(fine), "noisy_label": noisy})
    ds = load_dataset("cifar100", str(tmp_path))
    got, key = load_human_labels(path, "cifar100", None, ds.y_train, 100)
    assert key == "noisy_label" and got.tolist() == noisy.tolist()


def test_file_saved_by_numpy_1x_loads(tmp_path):
    """The published files were written with numpy 1.x, whose arrays unpickle through numpy.core.multiarray."""
    buf = io.BytesIO()
    torch.save(
        {"clean_label": np.arange(4), "noisy_label": np.array([1, 1, 2, 3])}, buf, _use_new_zipfile_serialization=False
    )
    raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    (tmp_path / "old.pt").write_bytes(raw)
    assert read_label_file(str(tmp_path / "old.pt"))["noisy_label"].tolist() == [1, 1, 2, 3]


def test_mismatched_files_are_clear_errors(tiny_cifar10, tmp_path):
    data_dir, _, labels = tiny_cifar10
    y = load_dataset("cifar10", str(data_dir)).y_train
    cases = {
        "another_length": ({**labels, "worse_label": labels["worse_label"][:7]}, "has 7 labels but"),
        "cifar100_file": (
            {"clean_label": labels["clean_label"], "noisy_label": labels["worse_label"]},
            "no label set 'worse_label'.*keys are those of CIFAR-100_human.pt",
        ),
        "out_of_range": ({**labels, "worse_label": labels["worse_label"] + 10}, r"labels in \[1\d, 19\], outside"),
        "other_order": ({**labels, "clean_label": labels["clean_label"][::-1].copy()}, "clean_label differs"),
        "not_a_dict": (np.arange(20), "expected a dict"),
    }
    for name, (content, message) in cases.items():
        path = write_label_file(tmp_path / f"{name}.pt", content)
        with pytest.raises(DataError, match=message):
            load_human_labels(path, "cifar10", None, y, 10)
    with pytest.raises(DataError, match="not found.*UCSC-REAL"):
        load_human_labels(str(tmp_path / "missing.pt"), "cifar10", None, y, 10)


def test_label_file_with_foreign_object_is_refused(tiny_cifar10, tmp_path):
    data_dir, _, labels = tiny_cifar10
    path = write_label_file(tmp_path / "evil.pt", {**labels, "extra": io.StringIO("not plain data")})
    with pytest.raises(DataError, match="cannot be read safely|not a CIFAR-N label file"):
        load_human_labels(path, "cifar10", None, load_dataset("cifar10", str(data_dir)).y_train, 10)


def test_cli_human_noise_one_epoch_and_resume(tiny_cifar10, tmp_path, capsys):
    data_dir, _, labels = tiny_cifar10  # the file sits in --data-dir under its published name: found by default
    argv = [
        "--dataset",
        "cifar10",
        "--data-dir",
        str(data_dir),
        "--noise",
        "human",
        "--human-key",
        "aggre_label",
        "--model",
        "smallcnn",
        "--width",
        "8",
        "--optimizer",
        "saner",
        "--backend",
        "reference",
        "--epochs",
        "2",
        "--k",
        "1",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv + ["--out", str(tmp_path / "full")]) == 0
    out = capsys.readouterr().out
    n_noisy = int((labels["aggre_label"] != labels["clean_label"]).sum())
    assert f"noise human (aggre_label of {data_dir}/CIFAR-10_human.pt): {n_noisy} labels differ" in out
    assert f"realised rate {n_noisy / 20:.4f}" in out and "human label noise (CIFAR-N aggre_label" in out
    header = json.loads(open(tmp_path / "full" / "saner" / "log.jsonl").readline())
    assert header["noise"] == "human" and header["noisy_samples"] == n_noisy and header["human_key"] == "aggre_label"
    assert interrupted_then_resumed(argv, str(tmp_path / "cut")) == 0
    assert_same_run(tmp_path / "full", tmp_path / "cut", "saner")
    with pytest.raises(SystemExit, match="human_key"):  # resuming with another label set is refused
        other = [("worse_label" if a == "aggre_label" else a) for a in argv]
        main(other + ["--out", str(tmp_path / "cut"), "--resume"])


def test_human_noise_flag_checks(tmp_path):
    base = ["--out", str(tmp_path / "o"), "--no-progress", "--data-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="cifar10 and cifar100"):
        main(["--dataset", "digits", "--noise", "human", *base])
    with pytest.raises(SystemExit, match="go with --noise human"):
        main(["--dataset", "cifar10", "--human-labels", "x.pt", *base])
    assert main(["--dataset", "cifar10", "--noise", "human", *base]) == 2  # no CIFAR pickles in tmp_path
    assert not os.path.exists(tmp_path / "o" / "saner")
