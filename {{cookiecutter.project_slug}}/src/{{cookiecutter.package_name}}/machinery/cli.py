"""Command lines that say what their user needs: one line for a bad flag or value, no third-party noise.

jsonargparse's parser prints the whole usage (60-odd lines here) before its error; these parsers print the
error alone, on one line, and where the options are listed. train.py: `LightningCLI(parser_class=...)`.
`settings_problem()` is what the three entry points refuse before anything is written, in the same words.
`quiet()` silences what third parties print that says nothing about this run, each by its message and module.
`instantiate()` makes what a config names by class_path and init_args, as LightningCLI does: the plain and Fabric
loops' network and data.
"""

import importlib
import logging
import os
import re
import sys
import warnings
from typing import Any

import torch
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.cli import LightningArgumentParser
from torch import nn
from torch.utils.data import Dataset

from {{ cookiecutter.package_name }}.machinery.lightning_internals import PYTREE_MODULE, JsonargparseDeprecationWarning
from {{ cookiecutter.package_name }}.machinery.loaders import drawing_from
from {{ cookiecutter.package_name }}.machinery.plain_run import DEVICES, device_for
from {{ cookiecutter.package_name }}.machinery.trackers import NEEDS


class OneLineErrors:
    def parse_path(self, cfg_path, *args, **kwargs):
        """A --config file, which must be UTF-8 text: else one line naming it, not a UnicodeDecodeError."""
        try:
            return super().parse_path(cfg_path, *args, **kwargs)
        except UnicodeDecodeError as error:
            self.error(f"{cfg_path}: not UTF-8 text ({error.reason} at byte {error.start})")

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # a caller that handles the error itself
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        reason = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
        # `X | None` (data.dataset, data.augment): the reason X was refused, not the list of every type's.
        reason = re.sub(
            r"Does not validate against any of the Union subtypes .*? Errors: - (.*?)"
            r" - Expected a <class 'NoneType'>.*",
            r"\1",
            reason,
        )
        prog = parser.prog.replace(" [options]", "")
        print(f"error: {reason} (options: {prog} --help)", file=sys.stderr)
        sys.exit(2)


class Parser(OneLineErrors, ArgumentParser):
    """train_torch.py's and train_fabric.py's parser."""


class LightningParser(OneLineErrors, LightningArgumentParser):
    """train.py's parsers, the subcommands' too."""


FLOAT32_MAX = torch.finfo(torch.float32).max  # beyond it, a setting is inf in the model's and the data's dtype
SEEDS = range(2**32)  # what seed_everything (numpy's seed) takes
GPUS = {"gpu": torch.cuda.is_available, "cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}


def settings_problem(config: Namespace) -> str | None:
    """The first setting that one loop would refuse, or the two would treat differently, named; None if none.

    The three entry points ask before anything is written, so they refuse the same values in the same words."""
    trainer = config.trainer
    if trainer.barebones:  # Lightning's own refusal names one of the callbacks, logger or checkpoints at a time
        return "trainer.barebones=True turns off the logging and checkpoints that configs/default.yaml sets up"
    max_epochs = trainer.max_epochs
    if not isinstance(max_epochs, int) or max_epochs < 1:  # Lightning takes 0 and -1; T_max must be >= 1
        return f"trainer.max_epochs must be a positive integer, got {max_epochs!r}"
    clip = trainer.gradient_clip_val
    # Lightning skips clipping at 0 (and below); clip_grad_norm_ would zero the gradients (or flip them).
    if clip is not None and not 0 < clip <= FLOAT32_MAX:
        return f"trainer.gradient_clip_val must be positive and finite, or null for no clipping, got {clip!r}"
    accumulate = trainer.accumulate_grad_batches
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        return f"trainer.accumulate_grad_batches must be a positive integer, got {accumulate!r}"
    seed = config.seed_everything
    if isinstance(seed, int) and not isinstance(seed, bool) and seed not in SEEDS:
        return f"seed_everything must be in 0..{SEEDS[-1]}, got {seed}"
    for key, value in vars(Namespace(model=config.model, data=config.data).as_flat()).items():
        if isinstance(value, float) and not abs(value) <= FLOAT32_MAX:
            return f"{key.replace('.init_args', '')} must be finite (in float32, the model's dtype), got {value!r}"
    available = GPUS.get(str(trainer.accelerator))
    if available is not None and not available():
        return f"trainer.accelerator={trainer.accelerator!r}, but torch finds no such device here"
    if trainer.strategy == "fsdp2" and str(trainer.precision) in ("16-mixed", "16"):
        # Lightning's ModelParallelStrategy refuses it: no GradScaler for sharded gradients.
        return f"trainer.precision={trainer.precision!r} does not go with trainer.strategy='fsdp2': use bf16-mixed"
    problem = callback_problem(trainer)
    if problem is not None:
        return problem
    if config.track.to and trainer.logger in (None, False, True):
        return f"track.to={config.track.to} writes beside trainer.logger's run directory; the config has no logger"
    for tracker in config.track.to or ():
        if NEEDS[tracker] is not None and not importable(NEEDS[tracker]):
            return f'track.to: {tracker} is not installed; pip install -e ".[track]"'
    on_cpu = trainer.accelerator in DEVICES and device_for(trainer.accelerator).type == "cpu"
    if str(trainer.precision) in ("16-mixed", "16") and on_cpu:
        # Lightning would warn and train in bf16-mixed instead; the plain loop would train in fp16.
        return f"trainer.precision={trainer.precision!r} needs a GPU; on the CPU, use bf16-mixed"
    return None


def callback_problem(trainer: Namespace) -> str | None:
    """An EarlyStopping's or a ModelCheckpoint's value that Lightning refuses as it makes the callback (with a
    traceback), or one the rest of the config contradicts, named; None if none."""
    for callback in listed(trainer.callbacks):
        kind = str(getattr(callback, "class_path", "")).rsplit(".", 1)[-1]
        if kind not in ("EarlyStopping", "ModelCheckpoint"):
            continue
        mode, top_k = callback.init_args.get("mode", "min"), callback.init_args.get("save_top_k", 1)
        if mode not in ("min", "max"):
            return f"trainer.callbacks: {kind}(mode={mode!r}): it takes 'min' or 'max'"
        if kind == "ModelCheckpoint" and top_k < -1:
            return f"trainer.callbacks: ModelCheckpoint(save_top_k={top_k}): it takes -1 (every file), 0 or more"
        if kind == "ModelCheckpoint" and callback.init_args.get("monitor") and trainer.enable_checkpointing is False:
            return "trainer.enable_checkpointing=False beside a ModelCheckpoint with a monitor, which writes files"
    return None


def listed(entry) -> list:
    """A config entry that takes one item, a list or None (trainer.callbacks, trainer.plugins), as a list."""
    return [item for item in (entry if isinstance(entry, list) else [entry]) if item is not None]


# Lightning's info lines that say nothing about this run (rank_zero_info, to this logger).
NOT_NEWS = (
    "💡 Tip:",  # an advertisement for a cloud logger
    "GPU available: False, used: False",
    "TPU available: False, using: 0 TPU cores",
    "HPU available: False, using: 0 HPUs",  # lightning < 2.6
    "Seed set to",  # the seed is in the run's config.yaml; printed first, it would stand before an error
)


class NotNews(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Under DDP, Fabric's seed_everything starts its line with the process's rank.
        return not re.sub(r"^\[rank: \d+\] ", "", str(record.msg)).startswith(NOT_NEWS)


def quiet() -> None:
    """Silence third-party output that says nothing about this run; each filter names why."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, NotNews) for f in logger.filters):
            logger.addFilter(NotNews())
    # torch 2.13 deprecates LeafSpec, which Lightning's own pytree helper still builds at every step.
    warnings.filterwarnings(
        "ignore",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        PYTREE_MODULE,
    )
    # Lightning's CLI code calls jsonargparse in ways jsonargparse has deprecated (skip_none, parse_object).
    warnings.filterwarnings("ignore", category=JsonargparseDeprecationWarning, module="lightning.pytorch.cli")
    # validate, test and predict of a run's checkpoint write into a directory of the run's own (scripts.py, log_into):
    # ModelCheckpoint, which saves nothing there, says its record of the fit's checkpoints is not restored.
    warnings.filterwarnings(
        "ignore", "The dirpath has changed from", UserWarning, "lightning.pytorch.callbacks.model_checkpoint"
    )


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def plain_numbers(value: Any) -> Any:
    """`value` with jsonargparse's checked numbers (PositiveInt, ...) as plain int and float, in place in a Namespace.

    Checked once, they have done their work; kept, they would reach a checkpoint, which torch.load(weights_only=True)
    refuses, and LightningCLI's YAML dump of the config, which fails on them where a class of yours takes an argument
    of the MLP's name untyped (`--model.net=YourNet` keeps the values it can)."""
    if isinstance(value, Namespace):
        for key, item in vars(value).items():
            setattr(value, key, plain_numbers(item))
        return value
    if isinstance(value, list):
        return [plain_numbers(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (int if isinstance(value, int) else float)(value)
    return value


def normal_paths(config: Namespace) -> Namespace:
    """`ckpt_path` and a TensorBoardLogger's `save_dir` as os.path.normpath writes them (logs, for ./logs or
    logs/../logs), in place: Lightning's ModelCheckpoint compares paths as written, the checkpoint it goes on from (not
    to be deleted) and its own directory with the saved one (else its record starts afresh)."""
    if config.get("ckpt_path"):
        config.ckpt_path = os.path.normpath(config.ckpt_path)
    logger = config.trainer.logger
    if isinstance(logger, Namespace) and logger.class_path.endswith("TensorBoardLogger"):
        logger.init_args.save_dir = os.path.normpath(logger.init_args.save_dir)
    return config


def named(class_path: str) -> type:
    """The class a config names by its dotted path."""
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def instantiate(value: Any) -> Any:
    """`value` with every {class_path, init_args} in it made into the object it names, as LightningCLI makes them
    (a Namespace of the config, or a dict of a config file)."""
    if isinstance(value, dict):
        value = Namespace(**value)
    if isinstance(value, Namespace) and "class_path" in value:
        init_args = instantiate(value.get("init_args") or Namespace())
        return named(value.class_path)(**vars(init_args))
    if isinstance(value, Namespace):
        return Namespace(**{key: instantiate(item) for key, item in vars(value).items()})
    if isinstance(value, list):
        return [instantiate(item) for item in value]
    return value


def net_problem(net: nn.Module, dataset: Dataset, classes: int) -> str | None:
    """Why `net` cannot train on `dataset` for `classes` classes, in one line; None if it can. One item goes
    through it in eval mode, without gradients, its random numbers pinned: nothing of the run changes."""
    with drawing_from(0), torch.no_grad():
        X, _ = dataset[0]
        was_training = net.training
        try:
            logits = net.eval()(torch.as_tensor(X)[None])
        except Exception as error:  # the net's own message says what it expected
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            return f"model.net cannot take the dataset's inputs, of shape {tuple(X.shape)}: {reason}"
        finally:
            net.train(was_training)
    if tuple(logits.shape) != (1, classes):
        made = tuple(logits.shape[1:])
        return f"model.net makes outputs of shape {made} of an input, where model.classes={classes} needs ({classes},)"
    return None
