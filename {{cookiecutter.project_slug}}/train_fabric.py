"""Run the Fabric loop (loop_fabric.py) on the same config as train.py and train_torch.py.

    python train_fabric.py                    # configs/default.yaml, logs to logs/fabric/version_N
    python train_fabric.py --trainer.max_epochs 5 --model.lr 3e-3
    python train_fabric.py --config configs/smoke.yaml
    python train_fabric.py --ckpt_path last   # the newest run's checkpoints/last.pt
    python train_fabric.py --trainer.strategy ddp --trainer.devices 2   # DDP, 2 processes

It reads the keys train_torch.py reads, and refuses what it refuses; trainer.accelerator,
strategy, devices, num_nodes, precision and plugins go to Fabric. It writes the checkpoints
train_torch.py writes, through fabric.save: checkpoints/last.pt at the end of every epoch,
atomically, and `--ckpt_path` goes on from one exactly as the run would have gone on, in the run's
own log directory. Ctrl-C or SIGTERM finishes the batch, writes last.pt of exactly that point, says
how to resume and exits with 130 or 143; a second Ctrl-C stops at once. A NaN or infinite loss
stops the run, naming the step, and leaves the checkpoint as it was.

Under DDP, Fabric launches the other processes, each running this script; under torchrun
(`torchrun --standalone --nproc_per_node 2 train_fabric.py`) it joins those torchrun started. Rank 0
alone logs, draws the animation and writes checkpoints, at the end of each epoch. A signal then
stops the processes at once: the run goes on from the last epoch's checkpoint.
"""

import signal

if __name__ == "__main__":  # first: a Ctrl-C while the libraries load is one line, no traceback
    from {{ cookiecutter.package_name }}.machinery.interrupt import stop_at_once

    signal.signal(signal.SIGINT, stop_at_once)

import os
from pathlib import Path

import lightning
import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger

from {{ cookiecutter.package_name }}.boundary import BoundaryAnimation
from {{ cookiecutter.package_name }}.loop_fabric import fit
from {{ cookiecutter.package_name }}.machinery.cli import instantiate, named, one_line_errors, quiet
from {{ cookiecutter.package_name }}.machinery.fabric_run import FabricRun
from {{ cookiecutter.package_name }}.machinery.plain_run import launched_by_torchrun
from train_torch import keep_config, loop_settings, parse, prepare, report, stopping

STRATEGIES = ("auto", "ddp")  # what the Fabric loop computes as the Trainer does


def plugin(spec):
    """A trainer.plugins entry of the config, {class_path, init_args}, as the object it names; a
    Trainer's precision plugin as Fabric's of the same name (MixedPrecision: Fabric's)."""
    if issubclass(named(spec.class_path), lightning.pytorch.plugins.Precision):
        spec = spec.clone()
        spec.class_path = f"lightning.fabric.plugins.{spec.class_path.rsplit('.', 1)[1]}"
    return instantiate(spec)


def main(args: list[str] | None = None):
    """Train as configured; return the model, optimizer and scheduler as they end."""
    quiet()
    parser, config = parse(args, "train_fabric.py", __doc__)
    trainer = config.trainer
    if trainer.strategy not in STRATEGIES:
        refused = f"the Fabric loop runs one of {list(STRATEGIES)}"
        parser.error(f"trainer.strategy={trainer.strategy!r}: {refused}")
    root = Path(trainer.logger.init_args.save_dir) / "fabric"
    resume, log_dir, data = prepare(parser, config, root)
    # purge_step: TensorBoard drops what an interrupted run logged after its checkpoint; this run
    # logs it anew.
    purge_step = resume and resume["step"]
    logger = TensorBoardLogger(root, name="", version=log_dir.name, purge_step=purge_step)
    plugins = trainer.plugins if isinstance(trainer.plugins, list) else [trainer.plugins]
    strategy, devices, num_nodes = trainer.strategy, trainer.devices, trainer.num_nodes
    if launched_by_torchrun() and strategy == "auto":  # the processes torchrun started
        strategy, devices = "ddp", int(os.environ["LOCAL_WORLD_SIZE"])
        num_nodes = int(os.environ["WORLD_SIZE"]) // devices
    fabric = Fabric(
        accelerator=trainer.accelerator,
        strategy=strategy,
        devices=devices,
        num_nodes=num_nodes,
        precision=trainer.precision,
        plugins=[plugin(spec) for spec in plugins if spec is not None],
        loggers=logger,
    )
    fabric.launch()  # DDP: starts the other processes, each running this script up to here
    # Rank 0 alone logs and writes checkpoints; the others' log_dir (maybe another) is unused.
    if fabric.is_global_zero:
        keep_config(parser, config, log_dir, resume)
    boundary = BoundaryAnimation(**config.boundary)
    boundary.switch_off_if_undrawable(data.val_set, say=fabric.is_global_zero)
    with stopping("train_fabric.py", log_dir, distributed=fabric.world_size > 1) as stop:
        run = FabricRun(
            writer=logger.experiment,  # rank 0's SummaryWriter; on the others, a stand-in
            hparams={"model": config.model.as_dict(), "data": config.data.as_dict()},
            device=fabric.device,
            progress_bar=fabric.is_global_zero and trainer.enable_progress_bar is not False,
            boundary=boundary if fabric.is_global_zero else None,
            checkpoint=log_dir / "checkpoints" / "last.pt",  # fabric.save writes it from rank 0
            resume=resume,
            stop=stop,
            fabric=fabric,
            resume_path=config.ckpt_path and Path(config.ckpt_path),
        )
        try:
            model, optimizer, scheduler = fit(data, loop_settings(config), fabric, run)
        finally:
            logger.finalize("success")  # closes the event file
    trained = model.module, optimizer, scheduler
    del model  # the DDP wrapper, before its process group: plain_run.py's process_group says why
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    report(boundary, log_dir, fabric.is_global_zero)
    return trained


if __name__ == "__main__":
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # this small MLP trains fastest on one thread: docs/performance.md
    with one_line_errors():
        main()
