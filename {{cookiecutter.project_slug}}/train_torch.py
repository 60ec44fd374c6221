"""Run the plain PyTorch loop (loop.py) on the same config as train.py.

    python train_torch.py                     # configs/default.yaml, logs to logs/torch/version_N
    python train_torch.py --trainer.max_epochs 5 --model.lr 3e-3
    python train_torch.py --config configs/smoke.yaml
    python train_torch.py --ckpt_path last    # the newest run's checkpoints/last.pt
    torchrun --standalone --nproc_per_node 2 train_torch.py   # DDP, as --trainer.strategy ddp

It reads the keys train.py reads (seed_everything, model.*, data.*, trainer.*) and refuses a
trainer setting that would change what Lightning computes but the plain loop does not implement.

It writes checkpoints/last.pt at the end of every epoch, atomically. `--ckpt_path` goes on from one
exactly as the run would have gone on, in the run's own log directory; the model's and the data's
settings and trainer.max_epochs are taken from the checkpoint, and a flag that contradicts them is
refused by name. Ctrl-C or SIGTERM finishes the batch, writes last.pt of exactly that point
(mid-epoch too), says how to resume and exits with 130 or 143; a second Ctrl-C stops at once. A NaN
or infinite loss stops the run, naming the step, and leaves the checkpoint as it was.

Launched by torchrun, each process joins a process group (gloo, or nccl on GPUs) and trains on its
share of the data; rank 0 alone logs, draws the animation and writes checkpoints, at the end of
each epoch. A signal then stops the processes at once: the run goes on from the last epoch's
checkpoint.
"""

import signal

if __name__ == "__main__":  # first: a Ctrl-C while the libraries load is one line, no traceback
    from {{ cookiecutter.package_name }}.machinery.interrupt import stop_at_once

    signal.signal(signal.SIGINT, stop_at_once)

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, Namespace
from lightning import Trainer
from torch.utils.tensorboard import SummaryWriter

from {{ cookiecutter.package_name }}.boundary import BoundaryAnimation
from {{ cookiecutter.package_name }}.data import DataError, SpiralDataModule
from {{ cookiecutter.package_name }}.loop import fit
from {{ cookiecutter.package_name }}.machinery.checkpoints import (
    CheckpointError,
    adopt_checkpoint,
    check_shapes,
)
from {{ cookiecutter.package_name }}.machinery.cli import (
    Parser,
    instantiate,
    net_problem,
    one_line_errors,
    plain_numbers,
    settings_problem,
)
from {{ cookiecutter.package_name }}.machinery.plain_run import (
    DEVICES,
    NoWriter,
    PlainRun,
    launched_by_torchrun,
    next_version,
    process_group,
)
from {{ cookiecutter.package_name }}.machinery.stopping import (
    NonFiniteLossError,
    StoppedBySignal,
    StopRequest,
)
from {{ cookiecutter.package_name }}.module import SpiralClassifier

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"

# Trainer settings that change what is computed, and the values the plain loop implements.
PLAIN_LOOP_TRAINER = {
    "check_val_every_n_epoch": [1],
    "gradient_clip_algorithm": [None, "norm"],
    "limit_train_batches": [None, 1.0],
    "limit_val_batches": [None, 1.0],
    "max_steps": [-1],
    "num_sanity_val_steps": [0],
    "precision": [None, 32, "32", "32-true", "bf16-mixed", "16-mixed"],
    "val_check_interval": [None, 1.0],
}


def parse(args: list[str] | None = None, script: str = "train_torch.py", doc: str = __doc__):
    """The config and its parser; train_fabric.py's are these too."""
    loop = "the Fabric loop" if script == "train_fabric.py" else "the plain loop"
    parser = Parser(default_config_files=[str(DEFAULT_CONFIG)], description=doc)
    on_top = "A config file on top of configs/default.yaml."
    parser.add_argument("--config", action=ActionConfigFile, help=on_top)
    parser.add_argument("--seed_everything", type=int, required=True)
    parser.add_class_arguments(SpiralClassifier, "model")
    parser.add_class_arguments(SpiralDataModule, "data")
    untyped = dict(fail_untyped=False, instantiate=False, sub_configs=True)
    parser.add_class_arguments(Trainer, "trainer", **untyped)
    parser.add_class_arguments(BoundaryAnimation, "boundary")
    resume = "last.pt to go on from, or `last`."
    parser.add_argument("--ckpt_path", type=str | None, default=None, help=resume)
    config = plain_numbers(parser.parse_args(args))
    trainer = config.trainer
    for key, allowed in PLAIN_LOOP_TRAINER.items():
        if trainer[key] not in allowed:
            refused = f"is not implemented by {loop} (it does {allowed}); use train.py"
            parser.error(f"trainer.{key}={trainer[key]!r} {refused}")
    problem = settings_problem(config)  # train.py refuses the same
    if problem is not None:
        parser.error(problem)
    if trainer.accelerator not in DEVICES:
        refused = f"{loop} runs on one of {list(DEVICES)}"
        parser.error(f"trainer.accelerator={trainer.accelerator!r}: {refused}")
    if not str(getattr(trainer.logger, "class_path", "")).endswith("TensorBoardLogger"):
        refused = "logs where trainer.logger, a TensorBoardLogger, does; the config has none"
        parser.error(f"{script} {refused}")
    return parser, config


def resume_from(parser, config, root: Path) -> tuple[dict, Path]:
    """The checkpoint `--ckpt_path` names and the run directory to go on in; config takes the
    run's settings. train_fabric.py writes the same checkpoints."""
    keys = ("model", "optimizer", "scheduler", "scaler", "hparams")
    checkpoint, run = adopt_checkpoint(
        config,
        parser.get_defaults(),
        root,
        ("last.pt", keys, "the plain or the Fabric loop"),
        lambda saved: {**saved["hparams"], "trainer": {"max_epochs": saved["scheduler"]["T_max"]}},
    )
    net = instantiate(config.model.net)
    check_shapes(checkpoint["model"], net.state_dict(), config.ckpt_path)
    return checkpoint, run or next_version(root)


def prepare(parser, config, root: Path) -> tuple[dict | None, Path, SpiralDataModule]:
    """The checkpoint to resume (or None), the run directory and the data, set up; a bad
    checkpoint or data file is one line, before anything is written."""
    try:
        resume, log_dir = None, next_version(root)
        if config.ckpt_path:
            resume, log_dir = resume_from(parser, config, root)
        data = SpiralDataModule(**vars(instantiate(config.data)))
        data.setup("fit")
    except (DataError, CheckpointError) as error:
        sys.exit(f"error: {error}")
    problem = net_problem(instantiate(config.model.net), data.dataset, config.model.classes)
    if problem is not None:
        sys.exit(f"error: {problem}")
    return resume, log_dir, data


def keep_config(parser, config, log_dir: Path, resume: dict | None) -> None:
    """The run directory and its config.yaml; a resumed run keeps the one it started with."""
    log_dir.mkdir(parents=True, exist_ok=resume is not None)
    if not (log_dir / "config.yaml").exists():
        parser.save(config, log_dir / "config.yaml")


def loop_settings(config: Namespace) -> Namespace:
    """What loop.fit() reads: the seed, the model's settings (model.net as a function that makes
    the network), the trainer's the loop implements."""
    return Namespace(
        seed=config.seed_everything,
        **{**vars(config.model), "net": partial(instantiate, config.model.net)},
        max_epochs=config.trainer.max_epochs,
        gradient_clip_val=config.trainer.gradient_clip_val,
        precision=config.trainer.precision,
        accumulate_grad_batches=config.trainer.accumulate_grad_batches,
    )


@contextmanager
def stopping(script: str, log_dir: Path, distributed: bool) -> Iterator[StopRequest | None]:
    """Around the training: Ctrl-C and SIGTERM noted, to stop after the batch; what ends the run
    early said in one line, with the command that resumes it after a signal.

    Distributed, a Ctrl-C stops every process at once: SIGINT's default action, which also ends one
    waiting in a collective for one gone. It goes on from the last checkpoint."""
    stop = None if distributed else StopRequest()
    if stop is not None:
        previous = stop.listen()
    else:
        previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_DFL)}
    checkpoint = log_dir / "checkpoints" / "last.pt"
    try:
        yield stop
    # CheckpointError: a mid-epoch checkpoint under DDP.
    except (NonFiniteLossError, CheckpointError) as error:
        sys.exit(f"error: {error}")
    except StoppedBySignal as stopped:
        command = f"python {script} --config {log_dir / 'config.yaml'} --ckpt_path {checkpoint}"
        where = f"step {stopped.step} (epoch {stopped.epoch})"
        said = f"{stopped.signal.name}: saved {checkpoint} at {where}; resume with: {command}"
        print(said, file=sys.stderr)
        sys.exit(128 + stopped.signal)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def report(boundary: BoundaryAnimation, log_dir: Path, lead: bool) -> None:
    """The animation's file, from the process that drew it, and where the logs are."""
    if boundary.save(log_dir / "decision_boundary.gif"):
        print(f"decision boundary: {log_dir / 'decision_boundary.gif'}")
    if lead:
        print(f"logs: {log_dir}")


def main(args: list[str] | None = None) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    """Train as configured; return the model, optimizer and scheduler as they end."""
    parser, config = parse(args)
    root = Path(config.trainer.logger.init_args.save_dir) / "torch"
    resume, log_dir, data = prepare(parser, config, root)
    # The only process, or torchrun's rank 0: it alone logs and writes checkpoints, as Lightning's
    # loggers (rank_zero_only) and Trainer.save_checkpoint (strategy.is_global_zero) do.
    lead = int(os.environ.get("RANK", 0)) == 0
    if lead:
        keep_config(parser, config, log_dir, resume)
    boundary = BoundaryAnimation(**config.boundary)
    boundary.switch_off_if_undrawable(data.val_set, say=lead)
    with stopping("train_torch.py", log_dir, distributed=launched_by_torchrun()) as stop:
        # purge_step: TensorBoard drops what an interrupted run logged after its checkpoint; this
        # run logs it anew.
        writing = nullcontext(NoWriter())
        if lead:
            writing = SummaryWriter(log_dir, purge_step=resume and resume["step"])
        with process_group(config.trainer.accelerator) as device, writing as writer:
            run = PlainRun(
                writer=writer,
                hparams={"model": config.model.as_dict(), "data": config.data.as_dict()},
                device=device,
                progress_bar=lead and config.trainer.enable_progress_bar is not False,
                boundary=boundary if lead else None,
                checkpoint=log_dir / "checkpoints" / "last.pt" if lead else None,
                resume=resume,
                stop=stop,
            )
            trained = fit(data, loop_settings(config), run)
    report(boundary, log_dir, lead)
    return trained


if __name__ == "__main__":
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # this small MLP trains fastest on one thread: docs/performance.md
    with one_line_errors():
        main()
