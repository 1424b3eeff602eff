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

from .. import available_backends
from .checkpoint import CheckpointError
from .cifar_n import CIFAR_N_FILES, DEFAULT_KEYS, load_human_labels
from .config import DATA, DATASET_DEFAULTS, MODEL, RUN, Config, add_config_arguments, config_values
from .data import DataError, DeviceData, load_dataset
from .distributed import Dist, init_distributed, shutdown
from .engine import Run, resolve_device
from .folders import FOLDER_DATASETS, PRESETS, load_folder_dataset
from .image_check import checked_folder_dataset
from .noise import make_noisy_labels
from .plan import ABLATIONS, OPTIMIZERS, PERTURBED, TWO_PASS, RunSpec, compare_runs, parse_sweep, sweep_runs
from .report import format_table, plot_curves, plot_group_fractions, summary_rows
from .resume import check_resume_target
from .streaming import StreamingData


def build_parser() -> argparse.ArgumentParser:
    """The run's options (one flag per ``Config`` field, ``config.py``) and the invocation's own."""
    p = argparse.ArgumentParser(
        prog="saner-train",
        description="Train on noisy labels with SGD, SAM or SANER and measure memorisation. "
        "No arguments: the digits demo comparing sgd,sam,saner (40% symmetric noise).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    groups = {name: p.add_argument_group(name) for name in (DATA, MODEL, RUN)}
    add_config_arguments(groups)
    m, r = groups[MODEL], groups[RUN]
    m.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help="a single run (default for CIFAR: saner); samwo and samonly are the paper's group ablations (--group)",
    )
    m.add_argument(
        "--compare",
        default=None,
        help="comma-separated optimizers run with the same data, noise and seed (default for digits: sgd,sam,saner)",
    )
    m.add_argument(
        "--sweep",
        default=None,
        metavar="KEY=V1,V2,...",
        help="one run of --optimizer (default saner) per value, with the same initial weights, noisy labels and data "
        "order: alpha=0.25,0.5,0.75,1.0 (the paper's Figure 5) or k=0,25,50,75 (the alpha schedule's epochs); "
        "runs are named saner-alpha0.5, saner-k25",
    )
    r.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 for digits, whose tiny convolutions run slower with more "
        "threads on a busy machine; torch's default otherwise)",
    )
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
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p


def config_from_args(args) -> tuple[Config, list[str]]:
    dd = DATASET_DEFAULTS[args.dataset]
    if args.optimizer and args.compare:
        raise SystemExit("give either --optimizer or --compare, not both")
    if args.sweep and args.compare:
        raise SystemExit("--sweep varies one optimizer's setting: give it with --optimizer, not --compare")
    if args.compare:
        names = [s.strip() for s in args.compare.split(",") if s.strip()]
    elif args.optimizer:
        names = [args.optimizer]
    else:
        names = ["saner"] if args.sweep else (dd["compare"] or "saner").split(",")
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad or len(set(names)) != len(names):
        raise SystemExit(f"--compare: optimizers must be distinct names from {OPTIMIZERS}, got {names}")
    if args.variant != "sam" and not any(n in PERTURBED for n in names):
        raise SystemExit(f"--variant {args.variant} is a perturbation of sam and saner; this run has only {names}")
    ablations = [n for n in names if n in ABLATIONS]
    if args.group and not ablations:
        raise SystemExit(f"--group picks the gradient group of samwo and samonly; this run has only {names}")
    values = config_values(args)
    values["group"] = (args.group or "B") if ablations else ""
    noise, model = values["noise"], values["model"]
    check_data_flags(args, noise)
    values["human_key"] = args.human_key or ""
    values["human_labels"] = ""
    if noise == "human":
        values["human_labels"] = args.human_labels or os.path.join(args.data_dir, CIFAR_N_FILES[args.dataset])
        noise_tag = f"human-{args.human_key or DEFAULT_KEYS[args.dataset]}"
    elif args.dataset in FOLDER_DATASETS and not PRESETS[args.dataset].clean_labels:
        noise_tag = "realnoise"
    else:
        noise_tag = f"{noise}{args.noise_rate:g}"
    values["out"] = args.out or os.path.join("runs", f"{args.dataset}-{noise_tag}-{model}-s{args.seed}")
    return Config(**values), names


def check_data_flags(args, noise: str) -> None:
    """The data and noise flags that make sense for ``args.dataset``, or a SystemExit saying what to use."""
    if args.dataset not in FOLDER_DATASETS and (args.image_size or args.workers is not None or args.skip_bad_images):
        raise SystemExit(
            f"--image-size, --workers and --skip-bad-images are for the image-folder datasets; {args.dataset} is "
            f"held in memory"
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


def planned_runs(args, cfg: Config, names: list[str]) -> list[RunSpec]:
    """The runs of the invocation: one per optimizer, or one per value of ``--sweep``."""
    if not args.sweep:
        return compare_runs(cfg, names)
    key, values = parse_sweep(args.sweep)
    return sweep_runs(cfg, names[0], key, values)


def check_flags(cfg: Config, device: torch.device, names: list[str], dist: Optional[Dist] = None) -> None:
    if cfg.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("--amp bf16: this GPU does not support bfloat16; drop --amp")
    if dist is not None and dist.active and cfg.ddp_mode == "local" and cfg.amp == "fp16":
        # each rank's GradScaler would see only its own overflows and back its scale off alone: the ranks'
        # scales would part, and with them the loss scaling of their gradients
        raise SystemExit("--ddp-mode local does not support --amp fp16 (per-rank loss scales); use --amp bf16")
    if cfg.amp == "fp16" and cfg.variant in ("fsam", "vasso") and any(n in PERTURBED for n in names):
        raise SystemExit(
            f"--variant {cfg.variant} keeps an average of past gradients, which fp16's scaled gradients would "
            f"corrupt: use --amp bf16 (or --variant sam/gsam with --amp fp16)"
        )
    if cfg.backend != "auto" and any(n in TWO_PASS for n in names):
        status = available_backends(device)
        if cfg.backend not in status:
            raise SystemExit(f"--backend {cfg.backend!r} unknown; choose auto or one of {sorted(status)}")
        if not status[cfg.backend]:
            raise SystemExit(
                f"--backend {cfg.backend} cannot run on {device.type}: {status[cfg.backend]!r}; available: {status}"
            )


def prepare_data(cfg: Config, device: torch.device, log=print, dist: Optional[Dist] = None):
    folders = cfg.dataset in FOLDER_DATASETS
    if folders:  # every file decoded once now: a bad one stops the run before training, not in an epoch
        ds = load_folder_dataset(cfg.dataset, cfg.data_dir, cfg.image_size)
        ds = checked_folder_dataset(ds, cfg.skip_bad_images, max(1, cfg.workers), log, dist)
    else:
        ds = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed)
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
    runs: list[RunSpec],
    resume: bool = False,
    log=print,
    progress: Optional[bool] = None,
    dist: Optional[Dist] = None,
    device: Optional[torch.device] = None,
    max_epochs: Optional[int] = None,
) -> dict:
    """Trains each run of ``runs`` with the same data, noise and seed. Returns {run name: history}.

    ``dist`` and ``device``: this process's rank and device under torchrun (``distributed.init_distributed``).
    ``max_epochs``: stop after that many epochs in this call (``--stop-after``)."""
    dist = dist or Dist()
    device = device or resolve_device(cfg.device)
    check_flags(cfg, device, [spec.optimizer for spec in runs], dist)
    if resume:  # before the data is read: flags that name another run are refused at once
        check_resume_target(cfg.out, [spec.name for spec in runs], cfg, dist)
    data, ds, info = prepare_data(cfg, device, log, dist)
    histories = {}
    for spec in runs:
        r = Run(
            spec.cfg,
            spec.optimizer,
            data,
            ds.num_classes,
            ds.in_channels,
            name=spec.name,
            log=log,
            progress=progress,
            extra_header=info,
            dist=dist,
        )
        histories[spec.name] = r.fit(resume=resume, max_epochs=max_epochs)
    return {"histories": histories, "info": info, "device": str(device), "world_size": dist.world_size}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    threads = args.threads if args.threads is not None else DATASET_DEFAULTS[args.dataset]["threads"]
    if threads:
        torch.set_num_threads(threads)
    cfg, names = config_from_args(args)
    runs = planned_runs(args, cfg, names)
    if args.stop_after is not None and args.stop_after < 1:
        raise SystemExit(f"--stop-after must be at least 1, got {args.stop_after}")
    dist, device = init_distributed(cfg.device, cfg.ddp_mode)
    try:
        code = _main(args, cfg, runs, dist, device)
    except BaseException:
        shutdown(dist, clean=False)
        raise
    shutdown(dist)
    return code


def _main(args, cfg: Config, runs: list[RunSpec], dist: Dist, device: Optional[torch.device]) -> int:
    main_rank = dist.is_main  # only rank 0 prints and writes
    log = (lambda s: None) if args.quiet or not main_rank else (lambda s: print(s, flush=True))
    t0 = time.time()
    ranks = f", {dist.world_size} processes ({cfg.ddp_mode} mode)" if dist.active else ""
    if main_rank:
        print(
            f"saner-train: {', '.join(spec.name for spec in runs)} on {cfg.dataset} ({cfg.model}, {cfg.epochs} "
            f"epochs, batch {cfg.batch_size}{ranks}, lr {cfg.lr:g}, rho {cfg.rho:g}, alpha {cfg.alpha:g}, k {cfg.k}) "
            f"-> {cfg.out}",
            flush=True,
        )
    try:
        res = run(
            cfg,
            runs,
            resume=args.resume,
            log=log,
            progress=False if args.no_progress else None,
            dist=dist,
            device=device,
            max_epochs=args.stop_after,
        )
    except (DataError, CheckpointError) as exc:
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
    groups_plot = plot_group_fractions(histories, os.path.join(cfg.out, "groups.png"), title)
    print()
    print(title)
    print(table)
    print(f"logs: {', '.join(os.path.join(cfg.out, n, 'log.jsonl') for n in histories)}")
    print(f"plot: {plot}" if plot else "plot: skipped (matplotlib not installed: pip install 'saner_kernels[demo]')")
    if groups_plot:
        print(f"group fractions per layer kind: {groups_plot}")
    where = f" ({dist.world_size} processes)" if dist.active else ""
    print(f"total time {time.time() - t0:.0f}s on {res['device']}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
