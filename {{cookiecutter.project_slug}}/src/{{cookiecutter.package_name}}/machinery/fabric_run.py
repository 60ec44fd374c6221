"""What the Trainer does around the Fabric loop and Fabric leaves to you: logging, resuming, checkpoints, stops.

loop_fabric.fit() calls a `FabricRun` where loop.fit() calls a `PlainRun`, with the same names; plain_run.py says
what each call does. Fabric does the rest of PlainRun's work itself, in lines of the loop: `fabric.setup_module`
wraps the model in DDP (or shards it, under FSDP2), `fabric.setup_dataloaders` gives the DataLoaders their
DistributedSamplers, `fabric.no_backward_sync` is DDP's (or FSDP2's) no_sync. Here the scalars go through `fabric.log`
to Fabric's TensorBoardLogger, and the checkpoints, the same as the plain loop's last.pt, through `fabric.save` (under
FSDP2, the CheckpointIO plugin itself: machinery/sharding.py) and `fabric.load`.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric import Fabric
from lightning.fabric.utilities.seed import reset_seed

from {{ cookiecutter.package_name }}.machinery.checkpoints import set_rng_state
from {{ cookiecutter.package_name }}.machinery.lightning_internals import set_times_iterated, unwrapped_dataloader
from {{ cookiecutter.package_name }}.machinery.plain_run import PlainRun
from {{ cookiecutter.package_name }}.machinery.sharding import sharded


@dataclass
class FabricRun(PlainRun):
    """A PlainRun whose logging and checkpoints go through `fabric`; `resume` is read from `resume_path`."""

    fabric: Fabric | None = None
    resume_path: Path | None = None  # the checkpoint `resume` was read from

    def start(self, model, optimizer, scheduler, scaler, data, loader) -> int:
        """PlainRun.start for the objects fabric.setup_module, setup_optimizers and setup_dataloaders returned."""
        if self.fabric.world_size > 1:
            reset_seed()  # Trainer(strategy="ddp") seeds each process again, after the model is made
        # The frames are drawn from the module itself, outside autocast, as the other loops draw them; the loader's
        # count of batches is the DataLoader's own.
        start_epoch = super().start(model.module, optimizer, scheduler, scaler, data, unwrapped_dataloader(loader))
        # Fabric's DataLoader sets its DistributedSampler's epoch to the number of times it was iterated.
        set_times_iterated(loader, start_epoch)
        return start_epoch

    def _restore(self, model, optimizer, scheduler, scaler, data, loader) -> None:
        """fabric.load: each object's state from the checkpoint, then torch's random state from what is left."""
        objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "data": data}
        if not self.resume["scaler"]:  # a checkpoint of a run without a GradScaler: a new one, as in the others
            del objects["scaler"]
        # `resume` is the same file, read with weights_only=True: it holds tensors and plain values alone.
        rest = self.fabric.load(self.resume_path, {**objects, "loader": loader})
        set_rng_state(rest["rng"])

    def _log(self, values: dict[str, float], step: int) -> None:
        self.fabric.log_dict(values, step)  # to each of its loggers, rank 0's alone, as Fabric's loggers log

    def _write(self, checkpoint: dict[str, Any], path: Path) -> None:
        if not sharded(self._model):
            self.fabric.save(path, checkpoint)  # rank 0 writes, through the AtomicCheckpointIO plugin
        elif self.fabric.is_global_zero:  # fsdp2: fabric.save would write around the plugin (machinery/sharding.py)
            self.fabric.strategy.checkpoint_io.save_checkpoint(checkpoint, path)

    def _delete(self, name: str) -> None:
        if self.fabric.is_global_zero:  # the process that wrote it
            super()._delete(name)
