"""Command line of ``saner-train`` / ``python -m saner_kernels.train``.

With no arguments it runs the demo: SGD, SAM and SANER compared on the digits with 40% symmetric label
noise and a small conv net (a few minutes on 2 CPU cores, offline; needs scikit-learn). On CIFAR the
defaults are the SANER paper's (200 epochs, batch 128, lr 0.1 x0.1 at 50%/75%, momentum 0.9, wd 5e-4,
rho 0.1, alpha 0.5 reached linearly over k = 50 epochs). Real-world noise: CIFAR-N human labels
(``--noise human``) and the image-folder datasets (``--dataset imagefolder/animal10n/miniwebvision/
tinyimagenet``, streamed from disk; needs Pillow). Several processes and nodes: start it with torchrun
(``torchrun --nproc-per-node N -m saner_kernels.train ... --ddp-mode global|local``; see ``distributed.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import torch

from ..variants import VARIANTS
from .checkpoint import UnsafeCheckpointError
from .cifar_n import CIFAR_N_FILES, DEFAULT_KEYS, load_human_labels
from .data import DATASETS, DataError, DeviceData, load_dataset
from .distributed import DDP_MODES, Dist, init_distributed, shutdown
from .engine import AMP_MODES, OPTIMIZERS, Config, Run, resolve_device, run_name
from .folders import FOLDER_DATASETS, PRESETS, load_folder_dataset
from .noise import CIFAR100_ASYM_DEFAULT, CIFAR100_ASYM_VARIANTS, NOISE_TYPES, make_noisy_labels
from .report import format_table, plot_curves, summary_rows
from .streaming import StreamingData

# Per-dataset defaults for the flags left unset. digits: the demo, sized for a few CPU minutes. Image folders:
# the authors' schedule (200 epochs; 120 for Mini-WebVision), 4 decoding workers as in their loaders.
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saner-train",
        description="Train on noisy labels with SGD, SAM or SANER and measure memorisation. "
        "No arguments: the digits demo comparing sgd,sam,saner (40% symmetric noise).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument_group("data and noise")
    a.add_argument(
        "--dataset",
        choices=DATASETS + FOLDER_DATASETS,
        default="digits",
        help="image folders: imagefolder (ROOT/train/<class>/ and ROOT/val/ or ROOT/test/), animal10n, "
        "miniwebvision, tinyimagenet (the layouts of the official releases; see the README)",
    )
    a.add_argument(
        "--data-dir",
        default="data",
        help="folder holding cifar-10-batches-py/ or cifar-100-python/ (python-pickle release), or the "
        "image folder's splits (or the dataset's own folder: Animal-10N/, tiny-imagenet-200/)",
    )
    a.add_argument(
        "--noise",
        choices=NOISE_TYPES + ("human",),
        default=None,
        help="sym: exactly int(rate*N) labels moved to a uniformly random other class; asym: CIFAR-10 "
        "class map / CIFAR-100 next class (see --asym100); idn: instance-dependent (Xia et al. 2020); "
        "human: CIFAR-N labels (see --human-labels); none. Default: sym, and none for animal10n and "
        "miniwebvision, whose labels are real-world noise",
    )
    a.add_argument(
        "--human-labels",
        default=None,
        help="--noise human: CIFAR-N label file (default: <data-dir>/CIFAR-10_human.pt or "
        "CIFAR-100_human.pt, from github.com/UCSC-REAL/cifar-10-100n)",
    )
    a.add_argument(
        "--human-key",
        default=None,
        help="--noise human: label set of the file: worse_label (default for CIFAR-10N), aggre_label, "
        "random_label1..3, clean_label; noisy_label (default for CIFAR-100N)",
    )
    a.add_argument("--noise-rate", type=float, default=0.4)
    a.add_argument(
        "--asym100",
        choices=CIFAR100_ASYM_VARIANTS,
        default=CIFAR100_ASYM_DEFAULT,
        help="CIFAR-100 asymmetric map: block = next class within each block of 5 (Patrini et al.); "
        "cyclic = (y+1) mod 100 (the SANER paper's code)",
    )
    a.add_argument(
        "--augment",
        dest="augment",
        action="store_true",
        default=None,
        help="random crop (4-pixel padding; 8 for 64-pixel folders; random resized crop for miniwebvision) "
        "+ horizontal flip on the device (default: on, off for digits)",
    )
    a.add_argument("--no-augment", dest="augment", action="store_false")
    a.add_argument(
        "--image-size",
        type=int,
        default=0,
        help="image folders: side the images are resized to (0: the dataset's, 64; 224 for miniwebvision)",
    )
    a.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image folders: DataLoader worker processes decoding the files (default 4; 0: in the training process)",
    )
    m = p.add_argument_group("model and optimizer")
    m.add_argument(
        "--model",
        default=None,
        help="smallcnn, wrn28-10, wrn40-2, wrn16-8 (any wrnD-K), resnet18, resnet34, densenet121 (CIFAR "
        "variants, also for 64-pixel folders), resnet50, resnet18-imagenet (224 pixels) (default: "
        "smallcnn for digits, wrn28-10 for CIFAR, resnet50 for miniwebvision, resnet18 otherwise)",
    )
    m.add_argument("--width", type=int, default=32, help="smallcnn base width")
    m.add_argument("--dropout", type=float, default=0.0, help="Wide-ResNet dropout")
    m.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="a single run (default for CIFAR: saner)")
    m.add_argument(
        "--compare",
        default=None,
        help="comma-separated optimizers run with the same data, noise and seed (default for digits: sgd,sam,saner)",
    )
    m.add_argument("--backend", default="auto", help="SAM/SANER kernel backend: auto, reference, cpp, cuda, triton")
    m.add_argument("--epochs", type=int, default=None, help="default: 60 digits, 200 CIFAR")
    m.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the global batch: under torchrun each of the N processes trains on its 1/N share of it, and the "
        "ranks together see exactly the batches one process sees (default: 64 digits, 128 CIFAR)",
    )
    m.add_argument("--lr", type=float, default=0.1)
    m.add_argument("--milestones", default="0.5,0.75", help="lr decay points as fractions of the epochs")
    m.add_argument("--lr-gamma", type=float, default=0.1)
    m.add_argument("--momentum", type=float, default=0.9)
    m.add_argument("--weight-decay", type=float, default=5e-4)
    m.add_argument("--nesterov", action="store_true")
    m.add_argument("--dampening", type=float, default=0.0)
    m.add_argument("--rho", type=float, default=0.1)
    m.add_argument("--alpha", type=float, default=0.5, help="SANER's Group B weight (target of the schedule)")
    m.add_argument(
        "--k",
        type=int,
        default=None,
        help="epochs of the linear alpha schedule 1 -> alpha (0: target from the start; default: 15 digits, 50 CIFAR)",
    )
    m.add_argument("--adaptive", action="store_true", help="adaptive (ASAM-style) perturbation")
    m.add_argument(
        "--variant",
        choices=VARIANTS,
        default="sam",
        help="the perturbation of sam and saner: sam (SAM's own), fsam (Friendly-SAM: less the gradient "
        "average), vasso (VaSSO: along a gradient average), gsam (GSAM: surrogate-gap ascent in the update); "
        "runs are named after it (saner-fsam)",
    )
    m.add_argument("--sigma", type=float, default=1.0, help="--variant fsam: weight of the gradient average removed")
    m.add_argument("--lmbda", type=float, default=0.9, help="--variant fsam: momentum of the gradient average")
    m.add_argument("--theta", type=float, default=0.2, help="--variant vasso: the new gradient's weight in the average")
    m.add_argument("--gsam-alpha", type=float, default=0.01, help="--variant gsam: weight of the surrogate-gap ascent")
    m.add_argument("--eps", type=float, default=1e-8)
    m.add_argument(
        "--bn-stats",
        choices=("first", "second"),
        default="first",
        help="which SAM/SANER forward pass updates BatchNorm running statistics (second = the paper code's choice)",
    )
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    r.add_argument(
        "--amp",
        choices=AMP_MODES,
        default="none",
        help="autocast the forward passes: bf16 (recommended where supported; no loss scaling needed), or fp16 "
        "with the stock torch.amp.GradScaler (its scale and the skipped steps are logged per epoch)",
    )
    r.add_argument("--channels-last", action="store_true")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument(
        "--compile-backend",
        default="inductor",
        help="--compile: torch.compile's backend (inductor, its default; aot_eager traces and runs the same graphs "
        "without generating code: quick to compile, for tests and debugging)",
    )
    r.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 for digits, whose tiny convolutions run slower with more "
        "threads on a busy machine; torch's default otherwise)",
    )
    r.add_argument(
        "--eval-batch-size",
        type=int,
        default=None,
        help="batch of the accuracy passes (default: 1000 in memory, 256 image folders, 100 miniwebvision)",
    )
    r.add_argument(
        "--groups-every",
        type=int,
        default=10,
        help="read the A/B/C group fractions every N steps (a host sync); 0: never",
    )
    r.add_argument("--out", default=None, help="output folder (default: runs/<dataset>-<noise><rate>-<model>-s<seed>)")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoints in --out (at the world size that wrote them)",
    )
    r.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="stop after this many epochs in this invocation (time-limited job slots); continue with --resume",
    )
    r.add_argument(
        "--ddp-mode",
        choices=DDP_MODES,
        default="global",
        help="under torchrun: global = DDP as usual, both backward passes all-reduced, equal to one process on "
        "the global batch (BatchNorm over the global batch); local = per-replica SAM/SANER (m-sharpness): "
        "each rank perturbs and masks with its own shard's gradients, the reweighted gradients are averaged; "
        "BatchNorm per replica; sgd runs as plain DDP in both",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p


def config_from_args(args) -> tuple[Config, list[str]]:
    dd = DATASET_DEFAULTS[args.dataset]

    def pick(v, key):
        return dd[key] if v is None else v

    if args.optimizer and args.compare:
        raise SystemExit("give either --optimizer or --compare, not both")
    if args.compare:
        names = [s.strip() for s in args.compare.split(",") if s.strip()]
    elif args.optimizer:
        names = [args.optimizer]
    else:
        names = (dd["compare"] or "saner").split(",")
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad or len(set(names)) != len(names):
        raise SystemExit(f"--compare: optimizers must be distinct names from {OPTIMIZERS}, got {names}")
    if args.variant != "sam" and not any(n in ("sam", "saner") for n in names):
        raise SystemExit(f"--variant {args.variant} is a perturbation of sam and saner; this run has only {names}")
    noise = pick(args.noise, "noise")
    check_data_flags(args, noise)
    model = pick(args.model, "model")
    human_labels = ""
    if noise == "human":
        human_labels = args.human_labels or os.path.join(args.data_dir, CIFAR_N_FILES[args.dataset])
    if noise == "human":
        noise_tag = f"human-{args.human_key or DEFAULT_KEYS[args.dataset]}"
    elif args.dataset in FOLDER_DATASETS and not PRESETS[args.dataset].clean_labels:
        noise_tag = "realnoise"
    else:
        noise_tag = f"{noise}{args.noise_rate:g}"
    cfg = Config(
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=model,
        width=args.width,
        dropout=args.dropout,
        noise=noise,
        noise_rate=args.noise_rate,
        asym100=args.asym100,
        human_labels=human_labels,
        human_key=args.human_key or "",
        image_size=args.image_size,
        workers=pick(args.workers, "workers"),
        eval_batch_size=pick(args.eval_batch_size, "eval_batch_size"),
        epochs=pick(args.epochs, "epochs"),
        batch_size=pick(args.batch_size, "batch_size"),
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=args.nesterov,
        dampening=args.dampening,
        rho=args.rho,
        alpha=args.alpha,
        k=pick(args.k, "k"),
        adaptive=args.adaptive,
        eps=args.eps,
        milestones=tuple(float(s) for s in args.milestones.split(",") if s.strip()),
        lr_gamma=args.lr_gamma,
        backend=args.backend,
        bn_stats=args.bn_stats,
        augment=pick(args.augment, "augment"),
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_backend=args.compile_backend,
        groups_every=args.groups_every,
        variant=args.variant,
        sigma=args.sigma,
        lmbda=args.lmbda,
        theta=args.theta,
        gsam_alpha=args.gsam_alpha,
        ddp_mode=args.ddp_mode,
        out=args.out or os.path.join("runs", f"{args.dataset}-{noise_tag}-{model}-s{args.seed}"),
    )
    return cfg, names


def check_data_flags(args, noise: str) -> None:
    """The data and noise flags that make sense for ``args.dataset``, or a SystemExit saying what to use."""
    if args.dataset not in FOLDER_DATASETS and (args.image_size or args.workers is not None):
        raise SystemExit(
            f"--image-size and --workers are for the image-folder datasets; {args.dataset} is held in memory"
        )
    if noise == "asym" and args.dataset not in ("cifar10", "cifar100"):
        raise SystemExit(
            f"--noise asym is defined for cifar10 (class map) and cifar100 (next class), "
            f"not {args.dataset}; use --noise sym or idn"
        )
    if noise == "human" and args.dataset not in ("cifar10", "cifar100"):
        raise SystemExit(f"--noise human reads the CIFAR-N label files of cifar10 and cifar100, not {args.dataset}")
    if (args.human_labels or args.human_key) and noise != "human":
        raise SystemExit("--human-labels and --human-key go with --noise human")
    if args.dataset in FOLDER_DATASETS:
        if not PRESETS[args.dataset].clean_labels and noise != "none":
            raise SystemExit(
                f"{args.dataset}'s labels are its real-world noise and it has no clean labels to add "
                f"synthetic noise to; drop --noise (or give --noise none)"
            )
        if noise == "idn":
            raise SystemExit(
                "--noise idn projects the whole training set held in memory (CIFAR, digits); for image "
                "folders use --noise sym"
            )
    if not 0.0 <= args.noise_rate <= 1.0:
        raise SystemExit(f"--noise-rate must be in [0, 1], got {args.noise_rate}")


def check_flags(cfg: Config, device: torch.device, names: list[str], dist: Optional[Dist] = None) -> None:
    if cfg.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("--amp bf16: this GPU does not support bfloat16; drop --amp")
    if dist is not None and dist.active and cfg.ddp_mode == "local" and cfg.amp == "fp16":
        # each rank's GradScaler would see only its own overflows and back its scale off alone: the ranks'
        # scales would part, and with them the loss scaling of their gradients
        raise SystemExit("--ddp-mode local does not support --amp fp16 (per-rank loss scales); use --amp bf16")
    if cfg.amp == "fp16" and cfg.variant in ("fsam", "vasso") and any(n in ("sam", "saner") for n in names):
        raise SystemExit(
            f"--variant {cfg.variant} keeps an average of past gradients, which fp16's scaled gradients would "
            f"corrupt: use --amp bf16 (or --variant sam/gsam with --amp fp16)"
        )
    if cfg.backend != "auto" and any(n in ("sam", "saner") for n in names):
        try:
            from saner_kernels import available_backends
        except ImportError as exc:
            raise SystemExit(f"--backend {cfg.backend}: saner_kernels optimizers are not importable ({exc})") from exc
        status = available_backends(device)
        if cfg.backend not in status:
            raise SystemExit(f"--backend {cfg.backend!r} unknown; choose auto or one of {sorted(status)}")
        if not status[cfg.backend]:
            raise SystemExit(
                f"--backend {cfg.backend} cannot run on {device.type}: {status[cfg.backend]!r}; available: {status}"
            )


def prepare_data(cfg: Config, device: torch.device, log=print):
    folders = cfg.dataset in FOLDER_DATASETS
    ds = (
        load_folder_dataset(cfg.dataset, cfg.data_dir, cfg.image_size)
        if folders
        else load_dataset(cfg.dataset, cfg.data_dir, cfg.seed)
    )
    clean = not folders or ds.preset.clean_labels
    n_train = int(ds.y_train.numel())
    info = {"n_train": n_train, "n_test": int(ds.y_test.numel()), "num_classes": ds.num_classes, "clean_labels": clean}
    where = f" ({ds.image_size}px images in {ds.root})" if folders else ""
    head = f"data: {cfg.dataset} train {info['n_train']} test {info['n_test']} classes {ds.num_classes}{where}; "
    if not clean:
        noisy = ds.y_train.clone()
        info.update(noisy_samples=None, realised_noise_rate=None)
        log(
            head + "labels: the dataset's own, with real-world noise and no clean labels to compare with: "
            "memorisation cannot be measured, test accuracy only"
        )
    else:
        noisy, how = noisy_training_labels(cfg, ds)
        n_flip = int((noisy != ds.y_train).sum())
        info.update(noisy_samples=n_flip, realised_noise_rate=n_flip / n_train)
        changed = "labels differ from the clean ones" if cfg.noise == "human" else "labels changed"
        log(head + f"{how}: {n_flip} {changed}, realised rate {info['realised_noise_rate']:.4f}")
    if folders:
        data = StreamingData(ds, noisy, device, cfg.augment, cfg.workers, channels_last=cfg.channels_last)
    else:
        data = DeviceData(ds, noisy, device, cfg.augment, channels_last=cfg.channels_last)
    return data, ds, info


def noisy_training_labels(cfg: Config, ds) -> tuple[torch.Tensor, str]:
    """(the training labels the run sees, how they were made) for a dataset with clean labels."""
    if cfg.noise == "human":
        noisy, key = load_human_labels(cfg.human_labels, cfg.dataset, cfg.human_key or None, ds.y_train, ds.num_classes)
        return noisy, f"noise human ({key} of {cfg.human_labels})"
    feats = ds.normalised_train_features() if cfg.noise == "idn" else None
    noisy = make_noisy_labels(
        ds.y_train,
        ds.num_classes,
        cfg.noise,
        cfg.noise_rate,
        cfg.seed,
        dataset=cfg.dataset,
        features=feats,
        asym100=cfg.asym100,
    )
    variant = f" ({cfg.asym100})" if cfg.noise == "asym" and cfg.dataset == "cifar100" else ""
    return noisy, f"noise {cfg.noise} rate {cfg.noise_rate:g}{variant}"


def run_title(cfg: Config, info: dict) -> str:
    if not info["clean_labels"]:
        return (
            f"{cfg.dataset} real-world label noise (no clean labels: test accuracy only), {cfg.model}, seed {cfg.seed}"
        )
    rate = info["realised_noise_rate"]
    if cfg.noise == "human":
        key = cfg.human_key or DEFAULT_KEYS[cfg.dataset]
        return f"{cfg.dataset} human label noise (CIFAR-N {key}, realised {rate:.3f}), {cfg.model}, seed {cfg.seed}"
    return f"{cfg.dataset} {cfg.noise} {cfg.noise_rate:g} noise (realised {rate:.3f}), {cfg.model}, seed {cfg.seed}"


def run(
    cfg: Config,
    names: list[str],
    resume: bool = False,
    log=print,
    progress: Optional[bool] = None,
    dist: Optional[Dist] = None,
    device: Optional[torch.device] = None,
    max_epochs: Optional[int] = None,
) -> dict:
    """Trains each optimizer in ``names`` with the same data, noise and seed. Returns {run name: history}.

    ``dist`` and ``device``: this process's rank and device under torchrun (``distributed.init_distributed``).
    ``max_epochs``: stop after that many epochs in this call (``--stop-after``)."""
    dist = dist or Dist()
    device = device or resolve_device(cfg.device)
    check_flags(cfg, device, names, dist)
    data, ds, info = prepare_data(cfg, device, log)
    histories = {}
    for name in names:
        label = run_name(name, cfg.variant)
        r = Run(
            cfg,
            name,
            data,
            ds.num_classes,
            ds.in_channels,
            name=label,
            log=log,
            progress=progress,
            extra_header=info,
            dist=dist,
        )
        histories[label] = r.fit(resume=resume, max_epochs=max_epochs)
    return {"histories": histories, "info": info, "device": str(device), "world_size": dist.world_size}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    threads = args.threads if args.threads is not None else DATASET_DEFAULTS[args.dataset]["threads"]
    if threads:
        torch.set_num_threads(threads)
    cfg, names = config_from_args(args)
    if args.stop_after is not None and args.stop_after < 1:
        raise SystemExit(f"--stop-after must be at least 1, got {args.stop_after}")
    dist, device = init_distributed(cfg.device, cfg.ddp_mode)
    try:
        code = _main(args, cfg, names, dist, device)
    except BaseException:
        shutdown(dist, clean=False)
        raise
    shutdown(dist)
    return code


def _main(args, cfg: Config, names: list[str], dist: Dist, device: Optional[torch.device]) -> int:
    main_rank = dist.is_main  # only rank 0 prints and writes
    log = (lambda s: None) if args.quiet or not main_rank else (lambda s: print(s, flush=True))
    t0 = time.time()
    ranks = f", {dist.world_size} processes ({cfg.ddp_mode} mode)" if dist.active else ""
    if main_rank:
        print(
            f"saner-train: {', '.join(names)} on {cfg.dataset} ({cfg.model}, {cfg.epochs} epochs, batch "
            f"{cfg.batch_size}{ranks}, lr {cfg.lr:g}, rho {cfg.rho:g}, alpha {cfg.alpha:g}, k {cfg.k}) -> {cfg.out}",
            flush=True,
        )
    try:
        res = run(
            cfg,
            names,
            resume=args.resume,
            log=log,
            progress=False if args.no_progress else None,
            dist=dist,
            device=device,
            max_epochs=args.stop_after,
        )
    except (DataError, UnsafeCheckpointError) as exc:
        print(f"saner-train: error: {exc}", file=sys.stderr)
        return 2
    if not main_rank:
        return 0
    histories = res["histories"]
    rows = summary_rows(histories)
    table = format_table(rows)
    if not res["info"]["clean_labels"]:
        table += (
            f"\n\nNo clean labels for {cfg.dataset}: which training labels are wrong is unknown, so the "
            f"memorisation columns stay empty; test accuracy only."
        )
    title = run_title(cfg, res["info"])
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "summary.md"), "w") as f:
        f.write(f"{title}\n\n{table}\n")
    plot = plot_curves(histories, os.path.join(cfg.out, "curves.png"), title)
    print()
    print(title)
    print(table)
    print(f"logs: {', '.join(os.path.join(cfg.out, n, 'log.jsonl') for n in histories)}")
    print(f"plot: {plot}" if plot else "plot: skipped (matplotlib not installed: pip install 'saner_kernels[demo]')")
    where = f" ({dist.world_size} processes)" if dist.active else ""
    print(f"total time {time.time() - t0:.0f}s on {res['device']}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
