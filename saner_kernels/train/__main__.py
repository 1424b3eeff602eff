"""Command line of ``saner-train`` / ``python -m saner_kernels.train``.

With no arguments it runs the demo: SGD, SAM and SANER compared on the digits with 40% symmetric label
noise and a small conv net (a few minutes on 2 CPU cores, offline; needs scikit-learn). On CIFAR the
defaults are the SANER paper's (200 epochs, batch 128, lr 0.1 x0.1 at 50%/75%, momentum 0.9, wd 5e-4,
rho 0.1, alpha 0.5 reached linearly over k = 50 epochs).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import torch

from .data import DATASETS, DataError, DeviceData, load_dataset
from .engine import OPTIMIZERS, Config, Run, resolve_device
from .noise import CIFAR100_ASYM_DEFAULT, CIFAR100_ASYM_VARIANTS, NOISE_TYPES, make_noisy_labels
from .report import format_table, plot_curves, summary_rows

# Per-dataset defaults for the flags left unset. digits: the demo, sized for a few CPU minutes.
DATASET_DEFAULTS = {
    "digits": dict(model="smallcnn", epochs=60, k=15, batch_size=64, augment=False, compare="sgd,sam,saner", threads=1),
    "cifar10": dict(model="wrn28-10", epochs=200, k=50, batch_size=128, augment=True, compare=None, threads=None),
    "cifar100": dict(model="wrn28-10", epochs=200, k=50, batch_size=128, augment=True, compare=None, threads=None),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saner-train",
        description="Train on noisy labels with SGD, SAM or SANER and measure memorisation. "
                    "No arguments: the digits demo comparing sgd,sam,saner (40% symmetric noise).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument_group("data and noise")
    a.add_argument("--dataset", choices=DATASETS, default="digits")
    a.add_argument("--data-dir", default="data",
                   help="folder holding cifar-10-batches-py/ or cifar-100-python/ (python-pickle release)")
    a.add_argument("--noise", choices=NOISE_TYPES, default="sym",
                   help="sym: exactly int(rate*N) labels moved to a uniformly random other class; asym: CIFAR-10 "
                        "class map / CIFAR-100 next class (see --asym100); idn: instance-dependent (Xia et al. 2020)")
    a.add_argument("--noise-rate", type=float, default=0.4)
    a.add_argument("--asym100", choices=CIFAR100_ASYM_VARIANTS, default=CIFAR100_ASYM_DEFAULT,
                   help="CIFAR-100 asymmetric map: block = next class within each block of 5 (Patrini et al.); "
                        "cyclic = (y+1) mod 100 (the SANER paper's code)")
    a.add_argument("--augment", dest="augment", action="store_true", default=None,
                   help="random crop (4-pixel padding) + horizontal flip on the device (default: on for CIFAR, off for digits)")
    a.add_argument("--no-augment", dest="augment", action="store_false")
    m = p.add_argument_group("model and optimizer")
    m.add_argument("--model", default=None, help="smallcnn, wrn28-10, wrn40-2, wrn16-8 (any wrnD-K), resnet18, resnet34 "
                                                "(default: smallcnn for digits, wrn28-10 for CIFAR)")
    m.add_argument("--width", type=int, default=32, help="smallcnn base width")
    m.add_argument("--dropout", type=float, default=0.0, help="Wide-ResNet dropout")
    m.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="a single run (default for CIFAR: saner)")
    m.add_argument("--compare", default=None, help="comma-separated optimizers run with the same data, noise and seed "
                                                 "(default for digits: sgd,sam,saner)")
    m.add_argument("--backend", default="auto", help="SAM/SANER kernel backend: auto, reference, cpp, cuda, triton")
    m.add_argument("--epochs", type=int, default=None, help="default: 60 digits, 200 CIFAR")
    m.add_argument("--batch-size", type=int, default=None, help="default: 64 digits, 128 CIFAR")
    m.add_argument("--lr", type=float, default=0.1)
    m.add_argument("--milestones", default="0.5,0.75", help="lr decay points as fractions of the epochs")
    m.add_argument("--lr-gamma", type=float, default=0.1)
    m.add_argument("--momentum", type=float, default=0.9)
    m.add_argument("--weight-decay", type=float, default=5e-4)
    m.add_argument("--nesterov", action="store_true")
    m.add_argument("--dampening", type=float, default=0.0)
    m.add_argument("--rho", type=float, default=0.1)
    m.add_argument("--alpha", type=float, default=0.5, help="SANER's Group B weight (target of the schedule)")
    m.add_argument("--k", type=int, default=None, help="epochs of the linear alpha schedule 1 -> alpha (0: target "
                                                     "from the start; default: 15 digits, 50 CIFAR)")
    m.add_argument("--adaptive", action="store_true", help="adaptive (ASAM-style) perturbation")
    m.add_argument("--eps", type=float, default=1e-8)
    m.add_argument("--bn-stats", choices=("first", "second"), default="first",
                   help="which SAM/SANER forward pass updates BatchNorm running statistics "
                        "(second = the paper code's choice)")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    r.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast the forward pass in bfloat16")
    r.add_argument("--channels-last", action="store_true")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 for digits, whose tiny convolutions run slower with more "
                        "threads on a busy machine; torch's default otherwise)")
    r.add_argument("--groups-every", type=int, default=10,
                   help="read the A/B/C group fractions every N steps (a host sync); 0: never")
    r.add_argument("--out", default=None, help="output folder (default: runs/<dataset>-<noise><rate>-<model>-s<seed>)")
    r.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p


def config_from_args(args) -> tuple[Config, list[str]]:
    dd = DATASET_DEFAULTS[args.dataset]
    pick = lambda v, key: dd[key] if v is None else v
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
    if args.noise == "asym" and args.dataset not in ("cifar10", "cifar100"):
        raise SystemExit(f"--noise asym is defined for cifar10 (class map) and cifar100 (next class), "
                         f"not {args.dataset}; use --noise sym or idn")
    if not 0.0 <= args.noise_rate <= 1.0:
        raise SystemExit(f"--noise-rate must be in [0, 1], got {args.noise_rate}")
    model = pick(args.model, "model")
    cfg = Config(
        dataset=args.dataset, data_dir=args.data_dir, model=model, width=args.width, dropout=args.dropout,
        noise=args.noise, noise_rate=args.noise_rate, asym100=args.asym100, epochs=pick(args.epochs, "epochs"),
        batch_size=pick(args.batch_size, "batch_size"), lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, nesterov=args.nesterov, dampening=args.dampening, rho=args.rho,
        alpha=args.alpha, k=pick(args.k, "k"), adaptive=args.adaptive, eps=args.eps,
        milestones=tuple(float(s) for s in args.milestones.split(",") if s.strip()), lr_gamma=args.lr_gamma,
        backend=args.backend, bn_stats=args.bn_stats, augment=pick(args.augment, "augment"), seed=args.seed,
        device=args.device, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
        groups_every=args.groups_every,
        out=args.out or os.path.join("runs", f"{args.dataset}-{args.noise}{args.noise_rate:g}-{model}-s{args.seed}"),
    )
    return cfg, names


def check_flags(cfg: Config, device: torch.device, names: list[str]) -> None:
    if cfg.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("--amp bf16: this GPU does not support bfloat16; drop --amp")
    if cfg.backend != "auto" and any(n in ("sam", "saner") for n in names):
        try:
            from saner_kernels import available_backends
        except ImportError as exc:
            raise SystemExit(f"--backend {cfg.backend}: saner_kernels optimizers are not importable ({exc})")
        status = available_backends(device)
        if cfg.backend not in status:
            raise SystemExit(f"--backend {cfg.backend!r} unknown; choose auto or one of {sorted(status)}")
        if not status[cfg.backend]:
            raise SystemExit(f"--backend {cfg.backend} cannot run on {device.type}: {status[cfg.backend]!r}; "
                             f"available: {status}")


def prepare_data(cfg: Config, device: torch.device, log=print):
    ds = load_dataset(cfg.dataset, cfg.data_dir, cfg.seed)
    feats = ds.normalised_train_features() if cfg.noise == "idn" else None
    noisy = make_noisy_labels(ds.y_train, ds.num_classes, cfg.noise, cfg.noise_rate, cfg.seed,
                              dataset=cfg.dataset, features=feats, asym100=cfg.asym100)
    n_flip = int((noisy != ds.y_train).sum())
    info = {"n_train": int(ds.y_train.numel()), "n_test": int(ds.y_test.numel()), "num_classes": ds.num_classes,
            "noisy_samples": n_flip, "realised_noise_rate": n_flip / ds.y_train.numel()}
    log(f"data: {cfg.dataset} train {info['n_train']} test {info['n_test']} classes {ds.num_classes}; "
        f"noise {cfg.noise} rate {cfg.noise_rate:g}"
        + (f" ({cfg.asym100})" if cfg.noise == "asym" and cfg.dataset == "cifar100" else "")
        + f": {n_flip} labels changed, realised rate {info['realised_noise_rate']:.4f}")
    data = DeviceData(ds, noisy, device, cfg.augment, channels_last=cfg.channels_last)
    return data, ds, info


def run(cfg: Config, names: list[str], resume: bool = False, log=print, progress: Optional[bool] = None) -> dict:
    """Trains each optimizer in ``names`` with the same data, noise and seed. Returns {name: history}."""
    device = resolve_device(cfg.device)
    check_flags(cfg, device, names)
    data, ds, info = prepare_data(cfg, device, log)
    histories = {}
    for name in names:
        r = Run(cfg, name, data, ds.num_classes, ds.in_channels, log=log, progress=progress, extra_header=info)
        histories[name] = r.fit(resume=resume)
    return {"histories": histories, "info": info, "device": str(device)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    threads = args.threads if args.threads is not None else DATASET_DEFAULTS[args.dataset]["threads"]
    if threads:
        torch.set_num_threads(threads)
    cfg, names = config_from_args(args)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    t0 = time.time()
    print(f"saner-train: {', '.join(names)} on {cfg.dataset} ({cfg.model}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
          f"lr {cfg.lr:g}, rho {cfg.rho:g}, alpha {cfg.alpha:g}, k {cfg.k}) -> {cfg.out}", flush=True)
    try:
        res = run(cfg, names, resume=args.resume, log=log, progress=False if args.no_progress else None)
    except DataError as exc:
        print(f"saner-train: error: {exc}", file=sys.stderr)
        return 2
    histories = res["histories"]
    rows = summary_rows(histories)
    table = format_table(rows)
    title = (f"{cfg.dataset} {cfg.noise} {cfg.noise_rate:g} noise (realised {res['info']['realised_noise_rate']:.3f}), "
             f"{cfg.model}, seed {cfg.seed}")
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "summary.md"), "w") as f:
        f.write(f"{title}\n\n{table}\n")
    plot = plot_curves(histories, os.path.join(cfg.out, "curves.png"), title)
    print()
    print(title)
    print(table)
    print(f"logs: {', '.join(os.path.join(cfg.out, n, 'log.jsonl') for n in histories)}")
    print(f"plot: {plot}" if plot else "plot: skipped (matplotlib not installed: pip install 'saner_kernels[demo]')")
    print(f"total time {time.time() - t0:.0f}s on {res['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
