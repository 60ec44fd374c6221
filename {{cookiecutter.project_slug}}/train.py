"""Train, validate, test or predict with Lightning; configs/default.yaml holds the essay's experiment.

python train.py fit                                     # 100 epochs, logs to logs/lightning/version_N
python train.py fit --trainer.max_epochs 5 --model.lr 3e-3
python train.py fit --config configs/smoke.yaml         # default.yaml, then smoke.yaml on top
python train.py test --ckpt_path logs/lightning/version_0/checkpoints/last.ckpt
python train.py fit --print_config                      # every key, resolved

Interrupted runs go on exactly as they would have without the interruption:

python train.py fit --ckpt_path last                    # the newest logs/lightning/version_*/checkpoints/last.ckpt
python train.py fit --ckpt_path logs/lightning/version_3/checkpoints/last.ckpt

`last` works for every subcommand. Resuming a fit logs into the checkpoint's own version_N directory, so
TensorBoard shows one curve. The model's and the data's settings are taken from the checkpoint (and
trainer.max_epochs from its learning-rate schedule); a flag or config that contradicts them is refused by name.
Other trainer settings are not in the checkpoint: give the same ones, e.g. with --config <run>/config.yaml.
Ctrl-C (or SIGTERM) stops after the current batch, writes last.ckpt of exactly that point and prints the command
that resumes it; a second Ctrl-C stops at once. A NaN or infinite loss stops the run, naming the step, and
leaves the checkpoints as they were. Checkpoints are written atomically: a kill never leaves a torn one.
"""

import os
import sys
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from {{ cookiecutter.package_name }}.boundary import DecisionBoundary
from {{ cookiecutter.package_name }}.data import DataError, SpiralDataModule
from {{ cookiecutter.package_name }}.machinery.checkpoints import CheckpointError, adopt_checkpoint
from {{ cookiecutter.package_name }}.machinery.stopping import NonFiniteLossError
from {{ cookiecutter.package_name }}.module import SpiralClassifier

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def checkpoint_settings(saved: dict, fitting: bool, classes: int) -> dict[str, dict]:
    """The settings a Lightning checkpoint was trained with: the model's, and for a fit also the data's and the
    schedule's length (data.classes decides model.classes, linked, in every subcommand)."""
    model = saved["hyper_parameters"]
    data = saved.get("datamodule_hyper_parameters", {}) if fitting else {}
    schedule = (saved.get("lr_schedulers") or [{}])[0]
    trainer = {"max_epochs": schedule["T_max"]} if fitting and "T_max" in schedule else {}
    return {"model": model, "data": {"classes": model.get("classes", classes), **data}, "trainer": trainer}


class CLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.classes", "model.classes")
        parser.add_lightning_class_args(DecisionBoundary, "boundary")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # Before LightningCLI reads the checkpoint's model settings (and would fail on a bad file with a traceback).
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        if config.get("ckpt_path"):
            try:
                self.check_checkpoint(self.config.subcommand, config)
            except CheckpointError as error:
                sys.exit(f"error: {error}")

    def check_checkpoint(self, subcommand: str, config: Namespace) -> None:
        """Resolve `last`, refuse a checkpoint this run cannot use, and let a fit go on in the checkpoint's run."""
        logger = config.trainer.logger
        tensorboard = isinstance(logger, Namespace) and str(logger.get("class_path")).endswith("TensorBoardLogger")
        root = Path(logger.init_args.save_dir, logger.init_args.name or "") if tensorboard else Path("logs/lightning")
        fitting = subcommand == "fit"
        checkpoint, run = adopt_checkpoint(
            config,
            self._parser(subcommand).get_defaults(),
            root,
            ("last.ckpt", ("state_dict", "hyper_parameters"), "a LightningModule (train.py)"),
            lambda saved: checkpoint_settings(saved, fitting, config.data.classes),
        )
        if fitting and run is not None and tensorboard:
            # Go on in the run's own TensorBoard directory, where the steps after the checkpoint are written anew.
            logger.init_args.version = run.name
            logger.init_args.purge_step = checkpoint["global_step"]
            if (run / "config.yaml").is_file():
                self.save_config_callback = None  # the run keeps the config.yaml it started with

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Lightning takes 0 (train nothing) and -1 (forever); the cosine schedule needs T_max = max_epochs >= 1.
        max_epochs = config.trainer.max_epochs
        if not isinstance(max_epochs, int) or max_epochs < 1:
            print(f"error: trainer.max_epochs must be a positive integer, got {max_epochs!r}", file=sys.stderr)
            sys.exit(2)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = (self.config_init[self.subcommand] if self.subcommand else self.config_init).trainer
        if trainer.enable_progress_bar is False:
            # The Trainer refuses enable_progress_bar=False beside a progress bar in callbacks (default.yaml has one).
            callbacks = trainer.callbacks if isinstance(trainer.callbacks, list) else [trainer.callbacks]
            kwargs.setdefault("callbacks", [c for c in callbacks if c and not isinstance(c, ProgressBar)])
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None) -> CLI:
    try:
        return CLI(
            SpiralClassifier,
            SpiralDataModule,
            parser_kwargs={command: {"default_config_files": [str(DEFAULT_CONFIG)]} for command in SUBCOMMANDS},
            args=args,
        )
    except (DataError, CheckpointError, NonFiniteLossError) as error:
        sys.exit(f"error: {error}")
    finally:
        if torch.distributed.is_initialized():  # under DDP: left to the exit, its threads may abort the process
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # this small MLP trains fastest on one thread: docs/performance.md
    main()
