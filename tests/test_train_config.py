"""saner-train's options are defined once (``saner_kernels/train/config.py``): every Config field is a flag with
its default, the optimizer's and the variants' defaults are read from their sources, resume keys come from the
fields' metadata."""

import dataclasses
import inspect

import pytest

from saner_kernels import SANER
from saner_kernels.train.__main__ import build_parser, config_from_args
from saner_kernels.train.config import DATASET_DEFAULTS, RESUME_KEYS, Config, flag
from saner_kernels.variants import HYPERPARAMETERS


def test_every_field_is_a_flag_with_the_fields_default():
    parser = build_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(Config):
        action = by_dest[f.name]
        assert flag(f.name) in action.option_strings
        assert (action.help or "") == f.metadata["help"], f.name
        if not (f.metadata["per_dataset"] or f.metadata["derived"]):
            assert action.default == f.default, f.name


def test_defaults_are_the_papers_then_the_optimizers_and_the_variants_table():
    cfg, signature = Config(), inspect.signature(SANER.__init__).parameters
    paper = dict(momentum=0.9, weight_decay=5e-4, nesterov=False, dampening=0.0, rho=0.1, alpha=0.5)  # design.md
    assert {name: getattr(cfg, name) for name in paper} == paper
    for name in ("adaptive", "variant", "backend", "ddp_mode"):
        assert getattr(cfg, name) == signature[name].default, name
    assert cfg.eps == signature["ratio_eps"].default  # the tool's --eps is SANER's ratio epsilon
    for table in HYPERPARAMETERS.values():
        for name, value in table.items():
            assert getattr(cfg, name) == value, name


def test_command_line_defaults_per_dataset():
    parse = build_parser().parse_args
    for dataset, defaults in DATASET_DEFAULTS.items():
        cfg, _ = config_from_args(parse(["--dataset", dataset]))
        for name in ("epochs", "k", "batch_size", "augment", "model", "noise", "eval_batch_size"):
            assert getattr(cfg, name) == defaults[name], (dataset, name)
    argv = ["--no-augment", "--milestones", "0.3,0.6", "--theta", "0.5", "--variant", "vasso"]
    cfg, _ = config_from_args(parse(argv))
    assert (cfg.augment, cfg.milestones, cfg.theta) == (False, (0.3, 0.6), 0.5)
    assert config_from_args(parse(["--dataset", "digits", "--augment"]))[0].augment is True
    with pytest.raises(SystemExit):
        parse(["--milestones", "half"])


def test_resume_keys_are_the_options_that_change_the_run():
    assert set(RESUME_KEYS) == {
        "dataset", "model", "width", "noise", "noise_rate", "asym100", "human_key", "image_size", "epochs",
        "batch_size", "lr", "momentum", "weight_decay", "nesterov", "dampening", "rho", "alpha", "k", "adaptive",
        "eps", "milestones", "lr_gamma", "bn_stats", "augment", "seed", "variant", "sigma", "lmbda", "theta",
        "gsam_alpha", "ddp_mode", "group",
    }  # fmt: skip
    # where the data comes from, how fast it runs and where it goes does not change the result
    assert not {"data_dir", "device", "backend", "workers", "out", "compile", "eval_batch_size"} & set(RESUME_KEYS)
