"""Image-folder datasets: the file lists and labels of each split, found in the layouts the datasets ship in.

``imagefolder``    ``ROOT/train/<class>/**/*.jpg`` and ``ROOT/val/`` (or ``ROOT/test/``) with the same class
                   folders; classes in sorted folder-name order (torchvision's ImageFolder order).
``animal10n``      Animal-10N (Song et al., ICML 2019): ``training/`` and ``testing/``, either the official
                   flat files ``<label>_<id>.jpg`` or class subfolders (the SANER authors' layout); 64x64.
``miniwebvision``  the first 50 WebVision classes (Jiang et al. 2018) as the SANER authors' script lays them
                   out: ``train/<class>/`` (Google images) and ``val/<class>/`` (the ImageNet validation images).
``tinyimagenet``   ``tiny-imagenet-200/``: ``train/<wnid>/images/*.JPEG`` and ``val/images/`` labelled by
                   ``val/val_annotations.txt`` (the official test split has no labels, so val is the test set);
                   ``val/<wnid>/`` or ``test/<wnid>/`` class folders are read too.

Each preset also fixes the authors' input size and augmentation, and whether the labels are clean (then
synthetic noise can be added and memorisation measured) or already noisy (Animal-10N and WebVision: their
labels are the real-world noise, no clean labels exist, only test accuracy is measured).
Nothing is decoded here: ``streaming.py`` reads the files in DataLoader workers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .data import DataError
from .device_transforms import IMAGENET_MEAN, IMAGENET_STD

FOLDER_DATASETS = ("imagefolder", "animal10n", "miniwebvision", "tinyimagenet")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ANIMAL10N_FILE = re.compile(r"^(\d+)_[^/]*$")  # official Animal-10N names: <label>_<image id>.jpg


@dataclass(frozen=True)
class FolderPreset:
    folder: Optional[str]  # the dataset's own folder name, looked for inside --data-dir
    train: tuple  # candidate names of the training split, first found wins
    test: tuple
    image_size: int
    crop: str  # "pad": random crop with padding; "resized": random resized crop
    pad: int  # padding of the "pad" crop (0: image_size // 8)
    mean: tuple  # per-channel statistics of [0, 1] pixels
    std: tuple
    clean_labels: bool
    source: str  # where the official files come from


PRESETS = {
    "imagefolder": FolderPreset(
        None,
        ("train",),
        ("val", "test"),
        64,
        "pad",
        0,
        IMAGENET_MEAN,
        IMAGENET_STD,
        True,
        "any folder of class subfolders",
    ),
    # the authors' Animal-10N loader: RandomCrop(64, padding=8), flip, ImageNet statistics
    "animal10n": FolderPreset(
        "Animal-10N",
        ("training",),
        ("testing",),
        64,
        "pad",
        8,
        IMAGENET_MEAN,
        IMAGENET_STD,
        False,
        "https://dm.kaist.ac.kr/datasets/animal-10n/ (request form)",
    ),
    # the authors' Mini-WebVision loader: RandomResizedCrop(224), flip; test: Resize((224, 224))
    "miniwebvision": FolderPreset(
        "miniwebvision",
        ("train",),
        ("val",),
        224,
        "resized",
        0,
        IMAGENET_MEAN,
        IMAGENET_STD,
        False,
        "WebVision 1.0 Google resized images + ImageNet val, first 50 classes "
        "(https://data.vision.ee.ethz.ch/cvl/webvision/download.html)",
    ),
    # the authors' Tiny-ImageNet loader: RandomCrop(64, padding=8), flip, Tiny-ImageNet's own statistics
    "tinyimagenet": FolderPreset(
        "tiny-imagenet-200",
        ("train",),
        ("val", "test"),
        64,
        "pad",
        8,
        (0.4802, 0.4481, 0.3975),
        (0.2302, 0.2265, 0.2262),
        True,
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    ),
}


@dataclass
class FolderDataset:
    name: str
    root: str
    train_files: list
    y_train: Tensor  # (N,) int64: clean labels, or the dataset's own noisy ones when preset.clean_labels is False
    test_files: list
    y_test: Tensor
    classes: list
    preset: FolderPreset
    image_size: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 3  # every image is decoded to RGB


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _subfolders(folder: str) -> list:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _images_below(folder: str) -> list:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)]
    return found


def scan_class_folders(folder: str, classes: Optional[list] = None) -> tuple[list, list, list]:
    """(files, labels, classes) of ``folder/<class>/**/<image>``. With ``classes`` given (the training split's),
    labels index that list and a class folder not in it is an error."""
    names = _subfolders(folder)
    if classes is None:
        classes = names
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DataError(f"{folder} has class folders that the training split lacks: {', '.join(unknown[:5])}")
    index = {c: i for i, c in enumerate(classes)}
    files, labels, empty = [], [], []
    for name in names:
        found = _images_below(os.path.join(folder, name))
        files += found
        labels += [index[name]] * len(found)
        if not found:
            empty.append(name)
    if empty:  # an empty training class would still receive labels moved there by symmetric noise
        raise DataError(
            f"{folder} has class folders without images ({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty[:10])}. "
            f"Remove them or add their images"
        )
    return files, labels, classes


def scan_labelled_files(folder: str) -> tuple[list, list]:
    """Official Animal-10N: flat files named ``<label>_<id>.<ext>``."""
    files, labels = [], []
    for name in sorted(os.listdir(folder)):
        m = ANIMAL10N_FILE.match(name)
        if m and _is_image(name):
            files.append(os.path.join(folder, name))
            labels.append(int(m.group(1)))
    return files, labels


def scan_tiny_imagenet_val(folder: str, classes: list) -> tuple[list, list]:
    """``val/images/<file>`` labelled by ``val/val_annotations.txt`` (file, wnid, box; tab-separated)."""
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    with open(os.path.join(folder, "val_annotations.txt")) as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or fields[1] not in index:
                raise DataError(
                    f"{folder}/val_annotations.txt line {n}: expected '<file> <wnid> ...' with a wnid "
                    f"of train/, got {line.strip()!r}"
                )
            files.append(os.path.join(folder, "images", fields[0]))
            labels.append(index[fields[1]])
    missing = [p for p in files if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} images named in {folder}/val_annotations.txt are missing, e.g. {missing[0]}")
    return files, labels


def _layout_help(name: str, preset: FolderPreset) -> str:
    train, test = preset.train[0], "/ or ".join(preset.test)
    if name == "animal10n":
        return f"{train}/<label>_<id>.jpg and {test}/<label>_<id>.jpg (or class subfolders in each)"
    if name == "tinyimagenet":
        return "train/<wnid>/images/*.JPEG and val/images/*.JPEG with val/val_annotations.txt"
    return f"{train}/<class>/*.jpg and {test}/<class>/*.jpg"


def find_root(name: str, data_dir: str) -> str:
    """The folder holding the splits: ``data_dir/<preset folder>`` or ``data_dir`` itself."""
    preset = PRESETS[name]
    data_dir = os.path.expanduser(data_dir)
    candidates = ([os.path.join(data_dir, preset.folder)] if preset.folder else []) + [data_dir]
    for root in candidates:
        if any(os.path.isdir(os.path.join(root, t)) for t in preset.train):
            return root
    raise DataError(
        f"{name} not found: expected {_layout_help(name, preset)} in "
        f"{' or '.join(c + '/' for c in candidates)}. Official files: {preset.source}. "
        f"Point --data-dir at the folder that holds them; nothing is downloaded automatically."
    )


def _split(root: str, names: tuple) -> Optional[str]:
    return next((os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))), None)


def load_folder_dataset(name: str, data_dir: str, image_size: int = 0) -> FolderDataset:
    """Scans the splits of ``name`` under ``data_dir`` (see the module doc). ``image_size`` 0: the preset's."""
    if name not in PRESETS:
        raise DataError(f"unknown image-folder dataset {name!r}; choose one of {FOLDER_DATASETS}")
    preset = PRESETS[name]
    root = find_root(name, data_dir)
    train_dir = _split(root, preset.train)
    test_dir = _split(root, preset.test)
    if test_dir is None:
        raise DataError(
            f"{name}: {root}/ has {os.path.basename(train_dir)}/ but no "
            f"{' or '.join(t + '/' for t in preset.test)} (expected {_layout_help(name, preset)})"
        )
    if name == "animal10n" and not _subfolders(train_dir):
        train_files, train_labels = scan_labelled_files(train_dir)
        test_files, test_labels = scan_labelled_files(test_dir)
        classes = [str(c) for c in range(max(train_labels + test_labels, default=-1) + 1)]
    else:
        train_files, train_labels, classes = scan_class_folders(train_dir)
        if name == "tinyimagenet" and os.path.isfile(os.path.join(test_dir, "val_annotations.txt")):
            test_files, test_labels = scan_tiny_imagenet_val(test_dir, classes)
        else:
            test_files, test_labels, _ = scan_class_folders(test_dir, classes)
    for split, files in ((train_dir, train_files), (test_dir, test_files)):
        if not files:
            raise DataError(
                f"{name}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {split}/ (expected {_layout_help(name, preset)})"
            )
    if len(classes) < 2:
        raise DataError(f"{name}: {train_dir}/ holds {len(classes)} class; expected {_layout_help(name, preset)}")
    return FolderDataset(
        name,
        root,
        train_files,
        torch.tensor(train_labels, dtype=torch.int64),
        test_files,
        torch.tensor(test_labels, dtype=torch.int64),
        classes,
        preset,
        image_size or preset.image_size,
    )
