"""saner-train data: the CIFAR pickle loaders on tiny files in the real release format, the helpful error
for a missing folder, digits split, on-device augmentation."""

import os
import pickle

import numpy as np
import pytest
import torch

from saner_kernels.train.data import DataError, Dataset, DeviceData, load_dataset, stratified_split

torch.set_num_threads(1)


def _images(n, seed):
    return np.random.RandomState(seed).randint(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root, n_per_batch=4, n_test=3):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    expected_x, expected_y = [], []
    for i in range(1, 6):
        x = _images(n_per_batch, i)
        y = [(i + j) % 10 for j in range(n_per_batch)]
        _dump(
            os.path.join(folder, f"data_batch_{i}"),
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": y,
                b"data": x,
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n_per_batch)],
            },
        )
        expected_x.append(x)
        expected_y += y
    xt = _images(n_test, 99)
    _dump(
        os.path.join(folder, "test_batch"),
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": [7, 8, 9][:n_test],
            b"data": xt,
            b"filenames": [b"t.png"] * n_test,
        },
    )
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(
        os.path.join(folder, "batches.meta"),
        {b"num_cases_per_batch": n_per_batch, b"label_names": names, b"num_vis": 3072},
    )
    return np.concatenate(expected_x), expected_y, xt


def write_cifar100(root, n_train=6, n_test=4):
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    x, xt = _images(n_train, 1), _images(n_test, 2)
    fine, fine_t = [5, 99, 0, 42, 17, 63][:n_train], [1, 2, 98, 50][:n_test]
    _dump(
        os.path.join(folder, "train"),
        {
            b"filenames": [b"a.png"] * n_train,
            b"batch_label": b"training batch 1 of 1",
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": x,
        },
    )
    _dump(
        os.path.join(folder, "test"),
        {
            b"filenames": [b"b.png"] * n_test,
            b"batch_label": b"testing batch 1 of 1",
            b"fine_labels": fine_t,
            b"coarse_labels": [f // 5 for f in fine_t],
            b"data": xt,
        },
    )
    _dump(
        os.path.join(folder, "meta"),
        {
            b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
        },
    )
    return x, fine, xt, fine_t


def test_cifar10_loader_real_format(tmp_path):
    x, y, xt = write_cifar10(str(tmp_path))
    for data_dir in (str(tmp_path), str(tmp_path / "cifar-10-batches-py")):  # parent or the folder itself
        ds = load_dataset("cifar10", data_dir)
        assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_train.dtype == torch.uint8
        assert ds.y_train.tolist() == y and ds.num_classes == 10
        assert ds.x_test.shape == (3, 3, 32, 32) and ds.y_test.tolist() == [7, 8, 9]
        # channel-major rows: the first 1024 bytes are red, row by row
        assert ds.x_train[5, 0, 0, 0] == x[5, 0] and ds.x_train[5, 0, 1, 0] == x[5, 32]
        assert ds.x_train[5, 1, 0, 0] == x[5, 1024] and ds.x_train[5, 2, 31, 31] == x[5, 3071]
        assert torch.equal(ds.x_test[2].reshape(-1), torch.from_numpy(xt[2]))
        assert ds.classes[9] == "truck"
        assert ds.mean.shape == (3,) and abs(float(ds.mean[0]) - x.reshape(20, 3, 1024)[:, 0].mean()) < 1e-3


def test_cifar100_loader_fine_labels(tmp_path):
    x, fine, xt, fine_t = write_cifar100(str(tmp_path))
    ds = load_dataset("cifar100", str(tmp_path))
    assert ds.num_classes == 100 and ds.y_train.tolist() == fine and ds.y_test.tolist() == fine_t
    assert torch.equal(ds.x_train.reshape(6, -1), torch.from_numpy(x))
    assert ds.classes[42] == "class42"


@pytest.mark.parametrize(
    "name,sub,url",
    [
        ("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz"),
        ("cifar100", "cifar-100-python", "cifar-100-python.tar.gz"),
    ],
)
def test_missing_folder_helpful_error(tmp_path, name, sub, url):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DataError) as err:
        load_dataset(name, missing)
    msg = str(err.value)
    assert sub in msg and url in msg and "--data-dir" in msg and missing in msg


def test_missing_folder_cli_exit_code(tmp_path, capsys):
    from saner_kernels.train.__main__ import main

    rc = main(
        ["--dataset", "cifar10", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-progress"]
    )
    assert rc == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err


def test_partial_folder_names_missing_files(tmp_path):
    write_cifar10(str(tmp_path))
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_dataset("cifar10", str(tmp_path))


def test_digits_stratified_split():
    pytest.importorskip("sklearn")
    ds = load_dataset("digits", seed=0)
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.num_classes == 10
    assert ds.y_train.numel() + ds.y_test.numel() == 1797
    tr, te = stratified_split(np.repeat(np.arange(10), 20), 0.25, seed=0)
    assert len(set(tr) & set(te)) == 0 and len(tr) + len(te) == 200
    assert np.bincount(np.repeat(np.arange(10), 20)[te]).tolist() == [5] * 10
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.y_test, ds.y_test)
    assert not torch.equal(load_dataset("digits", seed=1).y_test, ds.y_test)


def test_device_batches_augmentation_deterministic_and_shapes(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(10)
    ds = Dataset("toy", x, y, x[:4], y[:4], 10)
    noisy = y.clone()
    noisy[0] = 3
    data = DeviceData(ds, noisy, torch.device("cpu"), augment=True)
    assert int(data.is_noisy.sum()) == 1

    def batches(seed):
        gen = torch.Generator().manual_seed(seed)
        return list(data.train_batches(4, gen))

    a, b = batches(1), batches(1)
    assert [t[1].shape for t in a] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    assert all(torch.equal(p[1], q[1]) and torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert sorted(torch.cat([t[0] for t in a]).tolist()) == list(range(10))
    # every augmented image is a shifted (possibly flipped) crop of its normalised, zero-padded source
    idx, xb, yb = a[0]
    assert torch.equal(yb, noisy[idx])
    pad_value = (0 - data.mean) * data.inv_std
    src = torch.nn.functional.pad(x[idx].float(), (4, 4, 4, 4))
    src = (src - data.mean) * data.inv_std
    for i in range(xb.shape[0]):
        found = False
        for flip in (False, True):
            s = src[i].flip(2) if flip else src[i]
            for dy in range(9):
                for dx in range(9):
                    if torch.allclose(s[:, dy : dy + 32, dx : dx + 32], xb[i]):
                        found = True
        assert found
    assert pad_value.shape == (1, 3, 1, 1)
    no_aug = DeviceData(ds, noisy, torch.device("cpu"), augment=False)
    idx, xb, _ = next(no_aug.train_batches(4, torch.Generator().manual_seed(1)))
    assert torch.allclose(xb, (x[idx].float() - data.mean) * data.inv_std)


def test_digits_without_sklearn_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="scikit-learn"):
        load_dataset("digits")


@pytest.mark.parametrize(
    "dataset,writer,extra",
    [
        ("cifar10", write_cifar10, ["--noise", "asym", "--noise-rate", "0.5", "--model", "wrn10-1"]),
        ("cifar100", write_cifar100, ["--noise", "sym", "--noise-rate", "0.5", "--model", "resnet18", "--epochs", "1"]),
    ],
)
def test_cli_on_tiny_cifar(tmp_path, capsys, dataset, writer, extra):
    from saner_kernels.train.__main__ import main

    writer(str(tmp_path / "data"))
    rc = main(
        [
            "--dataset",
            dataset,
            "--data-dir",
            str(tmp_path / "data"),
            "--optimizer",
            "saner",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            *extra,
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "| saner" in out and "realised rate" in out
    assert (tmp_path / "out" / "saner" / "checkpoint.pt").exists()


class Payload:
    """Unpickling this runs a command: what a tampered CIFAR batch could do under plain pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_batches_are_read_without_running_code(tmp_path):
    write_cifar10(str(tmp_path))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    marker = tmp_path / "payload-ran"
    with open(batch, "rb") as f:
        content = pickle.load(f, encoding="bytes")
    content[b"labels"].append(Payload(str(marker)))
    for protocol in (0, 2, 5):
        _dump_with(batch, content, protocol)
        with pytest.raises(DataError, match=r"refusing to read .*data_batch_1: it names (posix|os)\.system"):
            load_dataset("cifar10", str(tmp_path))
        assert not marker.exists()


def _dump_with(path, obj, protocol):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def test_cifar_batches_from_numpy_1_and_damaged_ones(tmp_path):
    x, _, _ = write_cifar10(str(tmp_path))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    written = batch.read_bytes()
    # the official files name numpy.core (numpy 1); protocol 2's GLOBAL opcode holds the name as a text line
    as_numpy_1 = written.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in as_numpy_1
    batch.write_bytes(as_numpy_1)
    assert torch.equal(load_dataset("cifar10", str(tmp_path)).x_train.reshape(20, -1), torch.from_numpy(x))
    batch.write_bytes(written[: len(written) // 2])
    with pytest.raises(DataError, match=r"data_batch_1 is truncated or corrupt"):
        load_dataset("cifar10", str(tmp_path))
