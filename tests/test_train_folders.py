"""saner-train on image folders: tiny JPEG datasets written in each official layout (imagefolder, Animal-10N flat
and in class folders, Mini-WebVision, Tiny-ImageNet), scanning and its errors, decoding in worker processes,
one-epoch CLI runs of each layout with --resume continuing bit for bit."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from saner_kernels.train.__main__ import build_parser, config_from_args, main, prepare_data
from saner_kernels.train.checkpoint import load_checkpoint
from saner_kernels.train.data import DataError
from saner_kernels.train.engine import Run
from saner_kernels.train.folders import load_folder_dataset
from saner_kernels.train.streaming import StreamingData

torch.set_num_threads(1)

WNIDS = ["n01443537", "n01629819", "n01641577"]


def write_image(path, seed, label, size=(64, 64)):
    """A smooth JPEG (or PNG) whose colour depends on the label: compressible like a photo, learnable."""
    rng = np.random.RandomState(seed)
    base = np.array([60 + 70 * (label % 3), 40 + 50 * (label % 4), 200 - 60 * (label % 3)], dtype=np.float64)
    small = np.clip(base + rng.randn(6, 6, 3) * 30, 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(small).resize(size, Image.BILINEAR).save(path)


def write_class_folders(split_dir, classes, per_class, seed, ext=".jpg", size=(64, 64)):
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(os.path.join(split_dir, name, f"img{i}{ext}"), seed + 100 * c + i, c, size)


def write_imagefolder(root, test_split="val"):
    classes = ["cat", "dog", "owl"]
    write_class_folders(os.path.join(root, "train"), classes, 4, 0)
    write_class_folders(os.path.join(root, test_split), classes, 2, 5000, ext=".png", size=(48, 40))
    return classes


def write_animal10n(data_dir, flat=True):
    """Official release: Animal-10N/training/<label>_<id>.jpg; the authors' copy: class folders instead."""
    root = os.path.join(data_dir, "Animal-10N")
    for split, per_class, seed in (("training", 4, 0), ("testing", 2, 5000)):
        if flat:
            for label in range(3):
                for i in range(per_class):
                    write_image(
                        os.path.join(root, split, f"{label}_{1000 * label + i:05d}.jpg"), seed + 10 * label + i, label
                    )
        else:
            write_class_folders(os.path.join(root, split), ["cat", "lynx", "wolf"], per_class, seed)
    return root


def write_miniwebvision(root):
    """train/<class>/ (web images of any size) and val/<class>/ (ImageNet val), as the authors' script lays out."""
    classes = ["n01440764", "n01443537", "n01484850"]
    for c, name in enumerate(classes):
        for i in range(4):
            write_image(os.path.join(root, "train", name, f"google_{i}.jpg"), 10 * c + i, c, (96 + 40 * i, 80))
        for i in range(2):
            write_image(os.path.join(root, "val", name, f"ILSVRC2012_val_{c}{i}.JPEG"), 500 + 10 * c + i, c, (90, 120))
    return classes


def write_tinyimagenet(data_dir):
    """tiny-imagenet-200/: wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG + boxes, val/images + val_annotations.txt,
    test/images (unlabelled)."""
    root = os.path.join(data_dir, "tiny-imagenet-200")
    os.makedirs(root)
    with open(os.path.join(root, "wnids.txt"), "w") as f:
        f.write("\n".join(reversed(WNIDS)) + "\n")  # not sorted: the class order comes from the folders
    for c, wnid in enumerate(WNIDS):
        for i in range(5):
            write_image(os.path.join(root, "train", wnid, "images", f"{wnid}_{i}.JPEG"), 10 * c + i, c)
        with open(os.path.join(root, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
            f.write("".join(f"{wnid}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(5)))
    annotations = []
    for j in range(6):
        c = (2 * j + 1) % 3
        write_image(os.path.join(root, "val", "images", f"val_{j}.JPEG"), 900 + j, c)
        annotations.append(f"val_{j}.JPEG\t{WNIDS[c]}\t1\t2\t60\t61\n")
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
        f.writelines(annotations)
    write_image(os.path.join(root, "test", "images", "test_0.JPEG"), 999, 0)
    return root


# --- scanning -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("test_split", ["val", "test"])
def test_imagefolder_scan(tmp_path, test_split):
    classes = write_imagefolder(str(tmp_path), test_split)
    ds = load_folder_dataset("imagefolder", str(tmp_path))
    assert ds.classes == classes and ds.num_classes == 3 and ds.image_size == 64
    assert ds.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and ds.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    assert all(f.endswith(".png") and f"/{test_split}/" in f for f in ds.test_files)
    assert ds.preset.clean_labels and ds.preset.crop == "pad"


def test_animal10n_flat_and_class_folder_layouts(tmp_path):
    write_animal10n(str(tmp_path / "flat"), flat=True)
    ds = load_folder_dataset("animal10n", str(tmp_path / "flat"))  # finds the Animal-10N/ folder inside
    assert ds.root.endswith("Animal-10N") and ds.classes == ["0", "1", "2"]
    assert ds.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and ds.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    assert os.path.basename(ds.train_files[5]) == "1_01001.jpg"
    assert not ds.preset.clean_labels and ds.preset.pad == 8 and ds.image_size == 64
    root = write_animal10n(str(tmp_path / "folders"), flat=False)
    ds = load_folder_dataset("animal10n", root)  # the dataset folder itself works too
    assert ds.classes == ["cat", "lynx", "wolf"] and ds.y_test.tolist() == [0, 0, 1, 1, 2, 2]


def test_miniwebvision_scan(tmp_path):
    classes = write_miniwebvision(str(tmp_path))
    ds = load_folder_dataset("miniwebvision", str(tmp_path))
    assert ds.classes == classes and ds.image_size == 224 and ds.preset.crop == "resized"
    assert len(ds.train_files) == 12 and ds.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    assert not ds.preset.clean_labels


def test_tinyimagenet_scan_reads_val_annotations(tmp_path):
    write_tinyimagenet(str(tmp_path))
    ds = load_folder_dataset("tinyimagenet", str(tmp_path))
    assert ds.classes == sorted(WNIDS)  # ImageFolder's order (the authors' labels), not wnids.txt's
    assert len(ds.train_files) == 15 and all("/images/" in f for f in ds.train_files)  # boxes files skipped
    assert [os.path.basename(f) for f in ds.test_files] == [f"val_{j}.JPEG" for j in range(6)]
    assert ds.y_test.tolist() == [(2 * j + 1) % 3 for j in range(6)]
    assert ds.preset.mean == (0.4802, 0.4481, 0.3975) and ds.preset.clean_labels


def test_layout_errors_say_what_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"training/<label>_<id>\.jpg.*dm\.kaist\.ac\.kr"):
        load_folder_dataset("animal10n", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="tiny-imagenet-200.zip"):
        load_folder_dataset("tinyimagenet", str(tmp_path / "nowhere"))
    write_class_folders(str(tmp_path / "a" / "train"), ["x", "y"], 1, 0)
    with pytest.raises(DataError, match="no val/ or test/"):
        load_folder_dataset("imagefolder", str(tmp_path / "a"))
    write_class_folders(str(tmp_path / "a" / "val"), ["x", "z"], 1, 0)
    with pytest.raises(DataError, match="class folders that the training split lacks: z"):
        load_folder_dataset("imagefolder", str(tmp_path / "a"))
    root = write_tinyimagenet(str(tmp_path / "t"))
    with open(os.path.join(root, "val", "val_annotations.txt"), "a") as f:
        f.write("val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="line 7"):
        load_folder_dataset("tinyimagenet", str(tmp_path / "t"))


# --- decoding and streaming -----------------------------------------------------------------------------------


def test_streaming_decodes_resizes_and_matches_pillow(tmp_path):
    write_imagefolder(str(tmp_path))
    ds = load_folder_dataset("imagefolder", str(tmp_path))
    data = StreamingData(ds, ds.y_train, torch.device("cpu"), augment=False)
    batches = list(data.eval_batches("test", 4))
    assert [x.shape for x, _ in batches] == [(4, 3, 64, 64), (2, 3, 64, 64)]
    with Image.open(ds.test_files[5]) as im:  # 48x40 PNG: resized to 64x64 in the worker
        want = torch.from_numpy(np.array(im.convert("RGB").resize((64, 64), Image.BILINEAR))).permute(2, 0, 1)
    got = batches[1][0][1] / data.inv_std[0] + data.mean[0]
    assert torch.allclose(got, want.float(), atol=1e-3)
    assert data.is_noisy.sum() == 0 and data.has_clean_labels


def test_workers_give_the_same_epoch(tmp_path):
    """Decoding in 2 worker processes, augmentation on the device from the run's generator: the same batches
    as decoding in the training process."""
    write_miniwebvision(str(tmp_path))
    ds = load_folder_dataset("miniwebvision", str(tmp_path), image_size=64)

    def epoch(workers):
        data = StreamingData(ds, ds.y_train, torch.device("cpu"), augment=True, workers=workers)
        return list(data.train_batches(5, torch.Generator().manual_seed(3)))

    a, b = epoch(0), epoch(2)
    assert [x.shape for _, x, _ in a] == [(5, 3, 64, 64), (5, 3, 64, 64), (2, 3, 64, 64)]
    assert sorted(torch.cat([i for i, _, _ in a]).tolist()) == list(range(12))
    for (ia, xa, ya), (ib, xb, yb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(xa, xb) and torch.equal(ya, yb)


# --- one-epoch CLI runs, resume included ----------------------------------------------------------------------

QUIET = dict(log=lambda s: None, progress=False)


def cli_args(dataset, data_dir, *extra):
    return [
        "--dataset",
        dataset,
        "--data-dir",
        str(data_dir),
        "--model",
        "smallcnn",
        "--width",
        "8",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def interrupted_then_resumed(argv, out):
    """Epoch 1 of the CLI's configuration through the Run API (a run killed after its first checkpoint), then
    the CLI with --resume to finish."""
    cfg, names = config_from_args(build_parser().parse_args(argv + ["--out", out]))
    data, ds, info = prepare_data(cfg, torch.device("cpu"), log=lambda s: None)
    for name in names:
        Run(cfg, name, data, ds.num_classes, ds.in_channels, extra_header=info, **QUIET).fit(max_epochs=1)
    return main(argv + ["--out", out, "--resume"])


def assert_same_run(dir_a, dir_b, name):
    a = load_checkpoint(os.path.join(dir_a, name, "checkpoint.pt"))
    b = load_checkpoint(os.path.join(dir_b, name, "checkpoint.pt"))
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    strip = lambda h: [{k: v for k, v in r.items() if not k.endswith("time")} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


LAYOUTS = {
    # name: (writer(data_dir), dataset, extra flags, clean labels)
    "imagefolder-val": (lambda d: write_imagefolder(d, "val"), "imagefolder", ["--optimizer", "sgd"], True),
    "imagefolder-test": (
        lambda d: write_imagefolder(d, "test"),
        "imagefolder",
        ["--optimizer", "saner", "--backend", "reference", "--k", "1"],
        True,
    ),
    "animal10n-flat": (lambda d: write_animal10n(d, flat=True), "animal10n", ["--optimizer", "sgd"], False),
    "animal10n-folders": (lambda d: write_animal10n(d, flat=False), "animal10n", ["--optimizer", "sgd"], False),
    # 112 pixels (half the preset's 224, from a 128 frame): the same resized-crop path, a quarter of the pixels
    "miniwebvision": (
        write_miniwebvision,
        "miniwebvision",
        ["--optimizer", "sam", "--backend", "reference", "--image-size", "112"],
        False,
    ),
    "tinyimagenet": (
        write_tinyimagenet,
        "tinyimagenet",
        ["--optimizer", "saner", "--backend", "reference", "--noise-rate", "0.4"],
        True,
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cli_one_epoch_each_layout_and_resume(tmp_path, capsys, layout):
    writer, dataset, extra, clean = LAYOUTS[layout]
    writer(str(tmp_path / "data"))
    argv = cli_args(dataset, tmp_path / "data", "--epochs", "2", *extra)
    assert main(argv + ["--out", str(tmp_path / "full")]) == 0
    out = capsys.readouterr().out
    name = extra[1]
    header = json.loads(open(tmp_path / "full" / name / "log.jsonl").readline())
    assert header["clean_labels"] is clean and header["dataset"] == dataset
    summary = open(tmp_path / "full" / "summary.md").read()
    if clean:
        assert "realised rate" in out and "noisy-fit" in out and header["realised_noise_rate"] > 0
    else:
        assert "no clean labels" in out and "test accuracy only" in out and header["realised_noise_rate"] is None
        assert "No clean labels" in summary
    assert interrupted_then_resumed(argv, str(tmp_path / "cut")) == 0
    assert "resuming from epoch 1" in capsys.readouterr().out
    assert_same_run(tmp_path / "full", tmp_path / "cut", name)


def test_real_noise_datasets_refuse_synthetic_noise(tmp_path):
    write_animal10n(str(tmp_path))
    with pytest.raises(SystemExit, match="no clean labels"):
        main(cli_args("animal10n", tmp_path, "--noise", "sym", "--out", str(tmp_path / "o")))
    with pytest.raises(SystemExit, match="idn"):
        main(cli_args("imagefolder", tmp_path, "--noise", "idn", "--out", str(tmp_path / "o")))


def test_missing_folder_cli_exit_code(tmp_path, capsys):
    assert main(cli_args("miniwebvision", tmp_path / "nope", "--out", str(tmp_path / "o"))) == 2
    err = capsys.readouterr().err
    assert "miniwebvision not found" in err and "train/<class>/*.jpg" in err


def test_folder_flags_and_run_names():
    parse = build_parser().parse_args
    cfg, _ = config_from_args(parse(["--dataset", "animal10n"]))
    assert (cfg.noise, cfg.model, cfg.workers, cfg.eval_batch_size) == ("none", "resnet18", 4, 256)
    assert cfg.out == os.path.join("runs", "animal10n-realnoise-resnet18-s0")
    cfg, _ = config_from_args(parse(["--dataset", "miniwebvision"]))
    assert (cfg.model, cfg.epochs, cfg.eval_batch_size, cfg.image_size) == ("resnet50", 120, 100, 0)
    cfg, _ = config_from_args(parse(["--dataset", "cifar10", "--noise", "human"]))
    assert cfg.human_labels == os.path.join("data", "CIFAR-10_human.pt") and cfg.out.endswith(
        "cifar10-human-worse_label-wrn28-10-s0"
    )
    cfg, _ = config_from_args(parse(["--dataset", "digits"]))  # the demo's settings are untouched
    assert (cfg.noise, cfg.noise_rate, cfg.model, cfg.epochs, cfg.k, cfg.batch_size) == (
        "sym",
        0.4,
        "smallcnn",
        60,
        15,
        64,
    )
    assert cfg.out == os.path.join("runs", "digits-sym0.4-smallcnn-s0") and cfg.eval_batch_size == 1000
    with pytest.raises(SystemExit, match="image-folder datasets"):
        config_from_args(parse(["--dataset", "cifar10", "--workers", "2"]))


# --- bad files: refused before training, or left out on request ------------------------------------------------


def write_bad_files(root) -> list[str]:
    """A JPEG cut in half, an empty file and random bytes named .jpg, in the training and the test split."""
    good = open(os.path.join(root, "train", "dog", "img0.jpg"), "rb").read()
    bad = {
        os.path.join(root, "train", "dog", "truncated.jpg"): good[: len(good) // 2],
        os.path.join(root, "train", "cat", "empty.jpg"): b"",
        os.path.join(root, "val", "owl", "noise.jpg"): np.random.RandomState(0).bytes(2000),
    }
    for path, content in bad.items():
        open(path, "wb").write(content)
    return list(bad)


def cli_with(workers, data_dir, out, *extra):
    argv = cli_args("imagefolder", data_dir, "--optimizer", "sgd", "--epochs", "1", *extra, "--out", str(out))
    return argv[: argv.index("--workers") + 1] + [workers] + argv[argv.index("--workers") + 2 :]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_bad_image_files_are_refused_before_training_or_skipped(tmp_path, capsys, workers):
    write_imagefolder(str(tmp_path / "data"))
    bad = write_bad_files(str(tmp_path / "data"))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(cli_with(workers, tmp_path / "data", out)) == 2
    err = capsys.readouterr().err
    assert "3 of 21 images" in err and all(path in err for path in bad) and "--skip-bad-images" in err
    assert not (out / "sgd" / "checkpoint.pt").exists()  # nothing was trained
    assert main(cli_with(workers, tmp_path / "data", out, "--skip-bad-images")) == 0
    printed = capsys.readouterr().out
    assert "left out 3 images that cannot be decoded" in printed and "train 12 test 6" in printed


def test_empty_class_folders_are_refused(tmp_path):
    write_imagefolder(str(tmp_path))
    os.makedirs(tmp_path / "train" / "yak")
    with pytest.raises(DataError, match=r"train has class folders without images .*: yak"):
        load_folder_dataset("imagefolder", str(tmp_path))
    os.rmdir(tmp_path / "train" / "yak")
    for name in os.listdir(tmp_path / "val" / "owl"):
        os.remove(tmp_path / "val" / "owl" / name)
    with pytest.raises(DataError, match=r"val has class folders without images .*: owl"):
        load_folder_dataset("imagefolder", str(tmp_path))
