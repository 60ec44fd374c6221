"""Train, validate, test or predict with Lightning; configs/default.yaml holds the experiment.

python train.py fit                              # 100 epochs, logs to logs/lightning/version_N
python train.py fit --trainer.max_epochs 5 --model.lr 3e-3
python train.py fit --config configs/smoke.yaml  # default.yaml, then smoke.yaml on top
python train.py test --ckpt_path logs/lightning/version_0/checkpoints/last.ckpt
python train.py fit --print_config               # every key, resolved

Interrupted runs go on exactly as they would have without the interruption:

python train.py fit --ckpt_path last             # the newest run's checkpoints/last.ckpt
python train.py fit --ckpt_path logs/lightning/version_3/checkpoints/last.ckpt

`last` works for every subcommand. Resuming a fit logs into the checkpoint's own version_N
directory, so TensorBoard shows one curve. The model's and the data's settings are taken from the
checkpoint (and trainer.max_epochs from its learning-rate schedule); a flag or config that
contradicts them is refused by name. Other trainer settings are not in the checkpoint: give the
same ones, e.g. with --config <run>/config.yaml. Ctrl-C (or SIGTERM) stops after the current batch,
writes last.ckpt of exactly that point and prints the command that resumes it; a second Ctrl-C
stops at once. A NaN or infinite loss stops the run, naming the step, and leaves the checkpoints as
they were. Checkpoints are written atomically: a kill never leaves a torn one.
"""

import signal

if __name__ == "__main__":  # first: a Ctrl-C while the libraries load is one line, no traceback
    from {{ cookiecutter.package_name }}.machinery.interrupt import stop_at_once

    signal.signal(signal.SIGINT, stop_at_once)

import os
import sys
import warnings
from pathlib import Path

import torch
from jsonargparse import Namespace
from lightning import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from {{ cookiecutter.package_name }}.boundary import DecisionBoundary
from {{ cookiecutter.package_name }}.data import DataError, SpiralDataModule
from {{ cookiecutter.package_name }}.machinery.checkpoints import (
    CheckpointError,
    adopt_checkpoint,
    check_shapes,
)
from {{ cookiecutter.package_name }}.machinery.cli import (
    LightningParser,
    instantiate,
    net_problem,
    one_line_errors,
    plain_numbers,
    quiet,
    settings_problem,
)
from {{ cookiecutter.package_name }}.machinery.stopping import NonFiniteLossError
from {{ cookiecutter.package_name }}.module import SpiralClassifier

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")  # each reads DEFAULT_CONFIG first


def checkpoint_settings(saved: dict, fitting: bool) -> dict[str, dict]:
    """The settings a Lightning checkpoint was trained with: the model's, and for a fit also the
    data's and the schedule's length."""
    model = saved["hyper_parameters"]
    data = saved.get("datamodule_hyper_parameters", {}) if fitting else {}
    schedule = (saved.get("lr_schedulers") or [{}])[0]
    trainer = {"max_epochs": schedule["T_max"]} if fitting and "T_max" in schedule else {}
    return {"model": model, "data": data, "trainer": trainer}


class CLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(DecisionBoundary, "boundary")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        plain_numbers(self.config)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        # Before LightningCLI seeds; train_torch.py refuses the same.
        problem = settings_problem(config)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
        logger = config.trainer.logger
        if not (isinstance(logger, Namespace) and logger.class_path.endswith("TensorBoardLogger")):
            logger = None  # another logger's directory is its own business
        # Before LightningCLI reads the checkpoint's model settings (a bad file: a traceback).
        try:
            checkpoint, run = self.check_checkpoint(subcommand, config, logger)
        except CheckpointError as error:
            sys.exit(f"error: {error}")
        if logger is not None:
            self.log_into(logger, subcommand, checkpoint, run)

    def check_checkpoint(self, subcommand: str, config: Namespace, logger: Namespace | None):
        """Resolve `last` and refuse a checkpoint this run cannot use; the checkpoint and its run
        directory (None, None without --ckpt_path)."""
        if not config.get("ckpt_path"):
            return None, None
        root = Path("logs/lightning")
        if logger is not None:
            root = Path(logger.init_args.save_dir, logger.init_args.name or "")
        fitting = subcommand == "fit"
        checkpoint, run = adopt_checkpoint(
            config,
            self._parser(subcommand).get_defaults(),
            root,
            ("last.ckpt", ("state_dict", "hyper_parameters"), "a LightningModule (train.py)"),
            lambda saved: checkpoint_settings(saved, fitting),
        )
        # Refused here, before a run directory is made, not when the Trainer loads it.
        model = SpiralClassifier(**vars(instantiate(config.model)))
        check_shapes(checkpoint["state_dict"], model.state_dict(), config.ckpt_path)
        return checkpoint, run

    def log_into(self, logger: Namespace, subcommand: str, checkpoint, run: Path | None):
        """A fit resumed from a run's checkpoint goes on in that run's TensorBoard directory, the
        steps after the checkpoint logged anew; validate, test and predict write beside the run
        whose checkpoint they evaluate, or, without one, into logs/lightning/evaluations."""
        if run is None:
            if subcommand != "fit":
                logger.init_args.version = "evaluations"
                # Its config.yaml is the latest evaluation's.
                self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
            return
        # A number, as the logger's own: the progress bar shows the last 4 characters of a name.
        number = run.name.removeprefix("version_")
        logger.init_args.version = int(number) if number.isdigit() else run.name
        if subcommand == "fit":
            logger.init_args.purge_step = checkpoint["global_step"]
            # ModelCheckpoint warns that checkpoints/ is not empty: they are this run's own.
            not_empty = r"Checkpoint directory .* exists and is not empty"
            module = "lightning.pytorch.callbacks.model_checkpoint"
            warnings.filterwarnings("ignore", not_empty, module=module)
        if (run / "config.yaml").is_file():
            self.save_config_callback = None  # the run keeps the config.yaml it started with

    def check_net(self) -> None:
        """Before fit, validate, test or predict: a network that cannot take the data, refused in
        one line before anything is written (train_torch.py refuses the same)."""
        problem = net_problem(self.model.net, self.datamodule.dataset, self.model.hparams.classes)
        if problem is not None:
            sys.exit(f"error: {problem}")

    before_fit = before_validate = before_test = before_predict = check_net

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.trainer
        if trainer.enable_progress_bar is False:
            # The Trainer refuses enable_progress_bar=False beside a progress bar in its callbacks
            # (default.yaml has one).
            callbacks = trainer.callbacks
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            kept = [c for c in callbacks if c and not isinstance(c, ProgressBar)]
            kwargs.setdefault("callbacks", kept)
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None) -> CLI:
    quiet()
    try:
        cli = CLI(
            SpiralClassifier,
            SpiralDataModule,
            parser_kwargs={c: {"default_config_files": [str(DEFAULT_CONFIG)]} for c in SUBCOMMANDS},
            parser_class=LightningParser,  # errors in one line
            auto_configure_optimizers=False,  # the optimizer is module.py's, as it is loop.py's
            args=args,
        )
        log_dir = cli.trainer.log_dir  # under DDP, every process asks rank 0
        if cli.trainer.is_global_zero and log_dir is not None:
            print(f"logs: {log_dir}")
        return cli
    except (DataError, CheckpointError, NonFiniteLossError) as error:
        sys.exit(f"error: {error}")
    finally:
        # Under DDP: a process group left to the exit may abort the process from its threads.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # this small MLP trains fastest on one thread: docs/performance.md
    with one_line_errors():
        main()
