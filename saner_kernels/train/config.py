"""saner-train's options, defined once: ``Config``'s fields carry the default, the help text, the command-line
group and whether ``--resume`` must find the same value (field metadata, see ``option``). The command line is
generated from them (``add_config_arguments``), the optimizer defaults are read from SANER's signature and the
variants' from their table (``saner_kernels/variants.py``), so no default is written twice.

Fields whose default depends on the dataset (``per_dataset``) get it from ``DATASET_DEFAULTS`` when the flag is
left out; ``derived`` fields (the output folder, the CIFAR-N file) are made by the command line from the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Optional, get_type_hints

from .. import SANER
from ..variants import HYPERPARAMETERS, VARIANTS
from .data import DATASETS
from .distributed import DDP_MODES
from .folders import FOLDER_DATASETS
from .noise import CIFAR100_ASYM_DEFAULT, CIFAR100_ASYM_VARIANTS, NOISE_TYPES

AMP_MODES = ("none", "bf16", "fp16")
ABLATION_GROUPS = ("A", "B", "C", "AB")  # the gradient groups samwo/samonly act on (the authors' optimizer/samwo.py)
DATA, MODEL, RUN = "data and noise", "model and optimizer", "run"

# Per-dataset defaults for the flags left unset. digits: the demo, sized for a few CPU minutes. Image folders:
# the authors' schedule (200 epochs; 120 for Mini-WebVision), 4 decoding workers as in their loaders.
# compare and threads are options of the invocation, not of a run (``__main__``).
_IN_MEMORY = dict(
    epochs=200,
    k=50,
    batch_size=128,
    augment=True,
    compare=None,
    threads=None,
    noise="sym",
    workers=0,
    eval_batch_size=1000,
)
_FOLDERS = dict(_IN_MEMORY, workers=4, eval_batch_size=256)
DATASET_DEFAULTS = {
    "digits": dict(
        _IN_MEMORY, model="smallcnn", epochs=60, k=15, batch_size=64, augment=False, compare="sgd,sam,saner", threads=1
    ),
    "cifar10": dict(_IN_MEMORY, model="wrn28-10"),
    "cifar100": dict(_IN_MEMORY, model="wrn28-10"),
    "imagefolder": dict(_FOLDERS, model="resnet18"),
    "animal10n": dict(_FOLDERS, model="resnet18", noise="none"),  # its labels are the noise
    "miniwebvision": dict(_FOLDERS, model="resnet50", epochs=120, noise="none", eval_batch_size=100),
    "tinyimagenet": dict(_FOLDERS, model="resnet18"),
}


def option(
    default: Any,
    help: str = "",
    *,
    group: str = RUN,
    resume: bool = False,
    choices: Optional[tuple] = None,
    per_dataset: bool = False,
    derived: bool = False,
) -> Any:
    """A ``Config`` field. ``resume``: a checkpoint continues only with the same value. ``per_dataset``: the flag's
    own default is None, filled from ``DATASET_DEFAULTS``. ``derived``: computed by the command line when left out."""
    meta = dict(help=help, group=group, resume=resume, choices=choices, per_dataset=per_dataset, derived=derived)
    return field(default=default, metadata=meta)


# The training tool trains with the paper's CIFAR settings; SANER's constructor takes its clients' defaults
# (davda54/sam's rho, torch.optim.SGD's momentum and weight decay: docs/usage.md), which are not these.
PAPER_SETTINGS = dict(momentum=0.9, weight_decay=5e-4, nesterov=False, dampening=0.0, rho=0.1, alpha=0.5)


def saner_default(name: str) -> Any:
    """The training tool's default for SANER's argument ``name``: the paper's CIFAR setting, else the
    constructor's own default."""
    if name in PAPER_SETTINGS:
        return PAPER_SETTINGS[name]
    return inspect.signature(SANER.__init__).parameters[name].default


def variant_default(name: str) -> Any:
    """The default of a variant hyperparameter (the authors' values, ``variants.HYPERPARAMETERS``)."""
    return next(table[name] for table in HYPERPARAMETERS.values() if name in table)


def fractions(text: str) -> tuple:
    """``"0.5,0.75"`` -> ``(0.5, 0.75)``."""
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 0.5,0.75, got {text!r}") from None


@dataclass
class Config:
    # -- data and noise
    dataset: str = option(
        "digits",
        "image folders: imagefolder (ROOT/train/<class>/ and ROOT/val/ or ROOT/test/), animal10n, miniwebvision, "
        "tinyimagenet (the layouts of the official releases; see the README)",
        group=DATA,
        resume=True,
        choices=DATASETS + FOLDER_DATASETS,
    )
    data_dir: str = option(
        "data",
        "folder holding cifar-10-batches-py/ or cifar-100-python/ (python-pickle release), or the image folder's "
        "splits (or the dataset's own folder: Animal-10N/, tiny-imagenet-200/)",
        group=DATA,
    )
    noise: str = option(
        "sym",
        "sym: exactly int(rate*N) labels moved to a uniformly random other class; asym: CIFAR-10 class map / "
        "CIFAR-100 next class (see --asym100); idn: instance-dependent (Xia et al. 2020); human: CIFAR-N labels "
        "(see --human-labels); none. Default: sym, and none for animal10n and miniwebvision, whose labels are "
        "real-world noise",
        group=DATA,
        resume=True,
        choices=NOISE_TYPES + ("human",),
        per_dataset=True,
    )
    human_labels: str = option(
        "",
        "--noise human: CIFAR-N label file (default: <data-dir>/CIFAR-10_human.pt or CIFAR-100_human.pt, from "
        "github.com/UCSC-REAL/cifar-10-100n)",
        group=DATA,
        derived=True,
    )
    human_key: str = option(
        "",
        "--noise human: label set of the file: worse_label (default for CIFAR-10N), aggre_label, "
        "random_label1..3, clean_label; noisy_label (default for CIFAR-100N)",
        group=DATA,
        resume=True,
        derived=True,
    )
    noise_rate: float = option(0.4, group=DATA, resume=True)
    asym100: str = option(
        CIFAR100_ASYM_DEFAULT,
        "CIFAR-100 asymmetric map: block = next class within each block of 5 (Patrini et al.); cyclic = (y+1) "
        "mod 100 (the SANER paper's code)",
        group=DATA,
        resume=True,
        choices=CIFAR100_ASYM_VARIANTS,
    )
    augment: bool = option(
        True,
        "random crop (4-pixel padding; 8 for 64-pixel folders; random resized crop for miniwebvision) + "
        "horizontal flip on the device (default: on, off for digits)",
        group=DATA,
        resume=True,
        per_dataset=True,
    )
    image_size: int = option(
        0,
        "image folders: side the images are resized to (0: the dataset's, 64; 224 for miniwebvision)",
        group=DATA,
        resume=True,
    )
    workers: int = option(
        0,
        "image folders: DataLoader worker processes decoding the files (default 4; 0: in the training process)",
        group=DATA,
        per_dataset=True,
    )
    skip_bad_images: bool = option(
        False,
        "image folders: train without the files that cannot be decoded (their number is logged) instead of "
        "refusing to start; every file is decoded once before the first epoch either way",
        group=DATA,
    )
    # -- model and optimizer
    model: str = option(
        "smallcnn",
        "smallcnn, wrn28-10, wrn40-2, wrn16-8 (any wrnD-K), resnet18, resnet34, densenet121 (CIFAR variants, also "
        "for 64-pixel folders), resnet50, resnet18-imagenet (224 pixels) (default: smallcnn for digits, wrn28-10 "
        "for CIFAR, resnet50 for miniwebvision, resnet18 otherwise)",
        group=MODEL,
        resume=True,
        per_dataset=True,
    )
    width: int = option(32, "smallcnn base width", group=MODEL, resume=True)
    dropout: float = option(0.0, "Wide-ResNet dropout", group=MODEL)
    backend: str = option(
        saner_default("backend"), "SAM/SANER kernel backend: auto, reference, cpp, cuda, triton", group=MODEL
    )
    epochs: int = option(200, "default: 60 digits, 200 CIFAR", group=MODEL, resume=True, per_dataset=True)
    batch_size: int = option(
        128,
        "the global batch: under torchrun each of the N processes trains on its 1/N share of it, and the ranks "
        "together see exactly the batches one process sees (default: 64 digits, 128 CIFAR)",
        group=MODEL,
        resume=True,
        per_dataset=True,
    )
    lr: float = option(0.1, group=MODEL, resume=True)
    milestones: tuple = option((0.5, 0.75), "lr decay points as fractions of the epochs", group=MODEL, resume=True)
    lr_gamma: float = option(0.1, group=MODEL, resume=True)
    momentum: float = option(saner_default("momentum"), group=MODEL, resume=True)
    weight_decay: float = option(saner_default("weight_decay"), group=MODEL, resume=True)
    nesterov: bool = option(saner_default("nesterov"), group=MODEL, resume=True)
    dampening: float = option(saner_default("dampening"), group=MODEL, resume=True)
    rho: float = option(saner_default("rho"), group=MODEL, resume=True)
    alpha: float = option(
        saner_default("alpha"), "SANER's Group B weight (target of the schedule)", group=MODEL, resume=True
    )
    k: int = option(
        50,
        "epochs of the linear alpha schedule 1 -> alpha (0: target from the start; default: 15 digits, 50 CIFAR)",
        group=MODEL,
        resume=True,
        per_dataset=True,
    )
    adaptive: bool = option(saner_default("adaptive"), "adaptive (ASAM-style) perturbation", group=MODEL, resume=True)
    group: str = option(
        "",
        "--optimizer samwo/samonly: the gradient group of the paper's ablation (Figures 2-4): samwo = SAM with this "
        "group's g_SAM replaced by g_SGD (SGD-GrA/GrB/GrC), samonly = g_SAM in this group only; A: ratio >= 1, "
        "B: 0 < ratio < 1, C: ratio <= 0, AB: ratio > 0 (default B)",
        group=MODEL,
        resume=True,
        choices=ABLATION_GROUPS,
        derived=True,
    )
    variant: str = option(
        saner_default("variant"),
        "the perturbation of sam and saner: sam (SAM's own), fsam (Friendly-SAM: less the gradient average), "
        "vasso (VaSSO: along a gradient average), gsam (GSAM: surrogate-gap ascent in the update); runs are "
        "named after it (saner-fsam)",
        group=MODEL,
        resume=True,
        choices=VARIANTS,
    )
    sigma: float = option(
        variant_default("sigma"), "--variant fsam: weight of the gradient average removed", group=MODEL, resume=True
    )
    lmbda: float = option(
        variant_default("lmbda"), "--variant fsam: momentum of the gradient average", group=MODEL, resume=True
    )
    theta: float = option(
        variant_default("theta"), "--variant vasso: the new gradient's weight in the average", group=MODEL, resume=True
    )
    gsam_alpha: float = option(
        variant_default("gsam_alpha"), "--variant gsam: weight of the surrogate-gap ascent", group=MODEL, resume=True
    )
    eps: float = option(saner_default("ratio_eps"), group=MODEL, resume=True)
    bn_stats: str = option(
        "first",
        "which SAM/SANER forward pass updates BatchNorm running statistics (second = the paper code's choice)",
        group=MODEL,
        resume=True,
        choices=("first", "second"),
    )
    # -- run
    seed: int = option(0, resume=True)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    amp: str = option(
        "none",
        "autocast the forward passes: bf16 (recommended where supported; no loss scaling needed), or fp16 with "
        "the stock torch.amp.GradScaler (its scale and the skipped steps are logged per epoch)",
        choices=AMP_MODES,
    )
    channels_last: bool = option(False)
    compile: bool = option(False, "torch.compile the model")
    compile_backend: str = option(
        "inductor",
        "--compile: torch.compile's backend (inductor, its default; aot_eager traces and runs the same graphs "
        "without generating code: quick to compile, for tests and debugging)",
    )
    eval_batch_size: int = option(
        1000,
        "batch of the accuracy passes (default: 1000 in memory, 256 image folders, 100 miniwebvision)",
        per_dataset=True,
    )
    groups_every: int = option(10, "read the A/B/C group fractions every N steps (a host sync); 0: never")
    out: str = option(
        "runs/default", "output folder (default: runs/<dataset>-<noise><rate>-<model>-s<seed>)", derived=True
    )
    ddp_mode: str = option(
        saner_default("ddp_mode"),
        "under torchrun: global = DDP as usual, both backward passes all-reduced, equal to one process on the "
        "global batch (BatchNorm over the global batch); local = per-replica SAM/SANER (m-sharpness): each rank "
        "perturbs and masks with its own shard's gradients, the reweighted gradients are averaged; BatchNorm per "
        "replica; sgd runs as plain DDP in both",
        resume=True,
        choices=DDP_MODES,
    )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


# the fields that must match for --resume to continue a checkpoint
RESUME_KEYS = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["resume"])


def settings_differences(saved: dict, cfg: Config) -> list[str]:
    """``"key: saved vs now"`` for each resume key where a checkpoint's config (``saved``) and ``cfg`` differ."""
    now, default = cfg.to_dict(), Config().to_dict()
    then = {k: saved.get(k, default[k]) for k in RESUME_KEYS}  # a key an older checkpoint lacks had its default
    return [f"{k}: {then[k]!r} vs {now[k]!r}" for k in RESUME_KEYS if then[k] != now[k]]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(groups: dict[str, argparse._ArgumentGroup]) -> None:
    """One flag per ``Config`` field, into the parser's argument group of the field's ``group``.

    Per-dataset and derived fields default to None on the command line (``config_values`` fills them in)."""
    types = get_type_hints(Config)
    for f in dataclasses.fields(Config):
        meta, kind = f.metadata, types[f.name]
        unset = meta["per_dataset"] or meta["derived"]
        kw: dict[str, Any] = dict(help=meta["help"] or None, default=None if unset else f.default)
        if kind is bool:
            # a per-dataset switch can be set either way (--augment / --no-augment); the others only on
            kw["action"] = argparse.BooleanOptionalAction if unset else "store_true"
        else:
            kw["type"] = fractions if kind is tuple else kind
            if meta["choices"]:
                kw["choices"] = meta["choices"]
        groups[meta["group"]].add_argument(flag(f.name), **kw)


def config_values(args: argparse.Namespace) -> dict:
    """The ``Config`` fields given on the command line, with the dataset's defaults for those left unset
    (derived fields stay None)."""
    defaults = DATASET_DEFAULTS[args.dataset]
    values = {}
    for f in dataclasses.fields(Config):
        value = getattr(args, f.name)
        values[f.name] = defaults[f.name] if value is None and f.metadata["per_dataset"] else value
    return values
