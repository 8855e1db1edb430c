"""The training CLI as a package: ``python -m swin_ext.train`` / ``swin-ext-train``.

Rooms: :mod:`.cli` (arguments, ``train(args)``, ``main``), :mod:`.loop` (the
:class:`Trainer`), :mod:`.presets` (the ``--model`` names, built with
:func:`swin_ext.create_model`), :mod:`.data`, :mod:`.distributed` (ranks and
samplers), :mod:`.checkpointing` (atomic saves, checked loads, RNG states),
:mod:`.optim` (parameter groups, the schedule), :mod:`.finetune` (``--pretrained``, the
``--eval-only`` report), :mod:`.plot`.  ``python -m swin_ext.predict`` classifies images with a
checkpoint.
"""
from .checkpointing import (
    CHECKPOINT_FORMAT,
    check_output_dir,
    checkpoint_problems,
    load_checkpoint,
    remove_stale_temporaries,
    resume_differences,
    save_checkpoint,
    state_dict_sha256,
)
from .cli import build_parser, cli, main, train, validate_args
from .errors import TrainArgumentError, TrainError
from .loop import Trainer
from .optim import lr_factor, param_groups
from .presets import PRESETS, build_model, run_config

__all__ = [
    "PRESETS",
    "TrainError",
    "TrainArgumentError",
    "Trainer",
    "build_parser",
    "validate_args",
    "build_model",
    "run_config",
    "param_groups",
    "lr_factor",
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "state_dict_sha256",
    "checkpoint_problems",
    "resume_differences",
    "check_output_dir",
    "train",
    "main",
    "cli",
]
