"""What the Trainer does around the plain loop: DDP, resuming, logging, checkpoints, stops, the progress bar.

loop.fit() calls a `PlainRun` at the places where the Trainer does the same work, each call commented
there with its Lightning counterpart:

    train_model, loader, val_loader = run.distribute(model, loader, val_loader, seed)
    start_epoch = run.start(model, optimizer, scheduler, scaler, data, loader)
    for epoch in run.progress(range(start_epoch, max_epochs)):
        first = run.epoch_start(epoch)
        ...  with run.no_sync(not steps): ...  around each forward and backward
        ...  run.batch_end(loss, epoch, steps)  after each batch, `steps` if it ended in an optimizer step
        ...  run.epoch_end(epoch, val_loss, val_acc)  after each validation

Nothing here changes a number the loop computes, but for `no_sync`, which decides how DDP adds up the gradients of
a window of accumulated batches. What matters is where each call sits: the checkpoint is
written after the scheduler's step and the validation, the random state with it, so that a resumed run
draws what the interrupted run would have drawn next.
"""

import os
import traceback
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics import Metric, MetricCollection
from tqdm import tqdm

from {{ cookiecutter.package_name }}.machinery.checkpoints import atomic_save, rng_state, set_rng_state
from {{ cookiecutter.package_name }}.machinery.loaders import distributed, launched_by_torchrun, with_sampler
from {{ cookiecutter.package_name }}.machinery.monitor import BestK, EarlyStop
from {{ cookiecutter.package_name }}.machinery.sharding import (
    check_optimizer,
    load_whole_state,
    mesh,
    no_gradient_sync,
    sharded,
    whole_state,
)
from {{ cookiecutter.package_name }}.machinery.stopping import (
    NonFiniteLossError,
    StoppedBySignal,
    StopRequest,
)
from {{ cookiecutter.package_name }}.machinery.trackers import Trackers


@dataclass
class PlainRun:
    """How one run of the plain loop is controlled: where it logs and checkpoints, what it resumes, how it stops."""

    writer: Any  # a SummaryWriter: TensorBoardLogger's; NoWriter on the other processes of a DDP run
    hparams: dict[str, Any]  # the config's model and data settings, kept in the checkpoint
    trackers: Trackers = field(default_factory=Trackers)  # CSV, MLflow: the config's other loggers (rank 0's)
    device: torch.device = torch.device("cpu")
    progress_bar: bool = True
    boundary: Any = None  # the DecisionBoundary callback: boundary.py's BoundaryAnimation
    checkpoint: Path | None = None  # last.pt, written at every epoch's end (ModelCheckpoint(save_last=True))
    resume: dict[str, Any] | None = None  # a checkpoint read back: Trainer.fit(ckpt_path=...)
    resumed_from: Path | None = None  # its absolute path, Trainer.ckpt_path: a best checkpoint's is never deleted
    stop: StopRequest | None = None  # Ctrl-C, SIGTERM, SIGUSR1: the GracefulStop callback
    early_stop: EarlyStop | None = None  # the EarlyStopping callback
    best: BestK | None = None  # a ModelCheckpoint(monitor=..., save_top_k=k): the k best checkpoints
    should_stop: bool = False  # Trainer.should_stop: set by early_stop, ends the run after the epoch
    step: int = 0  # optimizer steps so far: Trainer.global_step
    log_every_n_steps: int = 1  # Trainer(log_every_n_steps=...): train/loss at every n-th step
    _bar = None  # the progress bar, where there is one

    def distribute(self, model: nn.Module, loader: DataLoader, val_loader: DataLoader, seed: int):
        """Trainer(strategy="ddp") or "fsdp2", in one of several processes launched by torchrun; else nothing.

        Returns the model that training runs (under DDP its wrapper; a model FSDP2 sharded, itself) and both
        DataLoaders, each process with its share of the points."""
        self._ddp = None
        if not distributed():
            return model, loader, val_loader
        torch.manual_seed(seed)  # setup_distributed: reset_seed() seeds each process again, after the model
        train_model = model  # FSDP2: the sharded model reduce-scatters its gradients itself
        if not sharded(model):
            train_model = DistributedDataParallel(model)  # wraps the module: backward averages the gradients
            self._ddp = weakref.ref(train_model)  # not kept beyond the loop: see process_group
        # use_distributed_sampler=True: both DataLoaders made anew, each process with its share of the points
        loader = with_sampler(loader, DistributedSampler(loader.dataset, shuffle=True, seed=seed))
        val_loader = with_sampler(val_loader, DistributedSampler(val_loader.dataset, shuffle=False, seed=seed))
        return train_model, loader, val_loader

    def mesh(self) -> DeviceMesh:
        """Trainer(strategy="fsdp2"): the processes, in ModelParallelStrategy's device mesh, that shard the model."""
        return mesh(self.device)

    def start(self, model, optimizer, scheduler, scaler, data, loader) -> int:
        """Trainer.fit(ckpt_path=...): restore `resume` into the run's objects; the epoch to start at."""
        check_optimizer(model, optimizer)  # FSDP2: built after shard(), as configure_optimizers after configure_model
        self._model, self._optimizer, self._scheduler, self._scaler = model, optimizer, scheduler, scaler
        self._data, self._loader, self._mid_epoch = data, loader, False
        if self.best is not None and self.checkpoint is not None:  # ModelCheckpoint.setup: its dirpath
            self.best.dirpath = self.checkpoint.parent
        if self.resume is None:
            return 0
        self._restore(model, optimizer, scheduler, scaler, data, loader)
        del self.resume["model"], self.resume["optimizer"]  # restored: under FSDP2 each process keeps its shard alone
        self.step = self.resume["step"]  # the fit loop's progress
        # The callbacks' states, "callbacks" in Lightning's checkpoint: their counts and files go on.
        for callback, key in ((self.early_stop, "early_stopping"), (self.best, "best")):
            if callback is not None and self.resume.get(key):
                callback.load_state_dict(self.resume[key])
        self._mid_epoch = not self.resume["loader"]["epoch_done"]  # stopped by a signal within the epoch
        return self.resume["epoch"]

    def _restore(self, model, optimizer, scheduler, scaler, data, loader) -> None:
        """The checkpoint's state into each object, and torch's random state."""
        # the checkpoint's "state_dict" and "optimizer_states"; FSDP2: each process takes its shard
        load_whole_state(model, optimizer, self.resume["model"], self.resume["optimizer"])
        scheduler.load_state_dict(self.resume["scheduler"])  # its "lr_schedulers"
        if self.resume["scaler"]:  # its "MixedPrecision", from a 16-mixed run: the loss scale
            scaler.load_state_dict(self.resume["scaler"])
        data.load_state_dict(self.resume["data"])  # LightningDataModule.load_state_dict
        loader.load_state_dict(self.resume["loader"])  # the fit loop hands a stateful DataLoader its state
        set_rng_state(self.resume["rng"])  # ExactResume.on_load_checkpoint

    def progress(self, epochs: range) -> Iterator[int]:
        """The epochs, with a progress bar over all of them (the TQDMProgressBar callback), until EarlyStopping asks
        the run to stop (the fit loop, once Trainer.should_stop is set)."""
        if self.progress_bar:
            epochs = self._bar = tqdm(epochs, initial=epochs.start, total=epochs.stop, desc="fit", unit="epoch")
        for epoch in epochs:
            if self.should_stop:
                return
            yield epoch

    def epoch_start(self, epoch: int) -> int:
        """The fit loop at an epoch's start: DistributedSampler.set_epoch; LearningRateMonitor. The index of
        the epoch's first batch: 0, or where a run resumed mid-epoch goes on (the fit loop's batch_progress)."""
        if isinstance(self._loader.sampler, DistributedSampler):
            self._loader.sampler.set_epoch(epoch)
        if not self._mid_epoch:  # resuming mid-epoch, Lightning skips on_train_epoch_start: logged already
            self._log({"train/lr": self._scheduler.get_last_lr()[0]}, self.step)
        first = self.resume["loader"]["batches"] if self._mid_epoch else 0
        self._mid_epoch = False
        return first

    def no_sync(self, accumulating: bool) -> AbstractContextManager:
        """Around a batch's forward and backward. Under DDP, in a batch that does not end its window of
        accumulate_grad_batches, DDP's no_sync: the gradients add up in each process, all-reduced once, in the
        window's last backward (Lightning: strategy.block_backward_sync)."""
        ddp = self._ddp and self._ddp()
        if accumulating and ddp is not None:
            return ddp.no_sync()
        if accumulating and sharded(self._model):  # FSDP2: its own, about to reduce-scatter
            return no_gradient_sync(self._model)
        return nullcontext()

    def batch_end(self, loss: torch.Tensor, epoch: int, stepped: bool) -> None:
        """After each batch: StopOnNonFiniteLoss; after one that ended in an optimizer step (`stepped`) also
        self.log("train/loss") and GracefulStop mid-epoch: Lightning logs, and stops, at a window's end."""
        if not torch.isfinite(loss):
            raise NonFiniteLossError("train/loss", loss.item(), self.step, epoch)
        if not stepped:
            return
        self._loss = loss  # for the progress bar
        if (self.step + 1) % self.log_every_n_steps == 0:  # the logger connector's should_update_logs
            self._log({"train/loss": loss.item()}, self.step)  # the window's last batch's loss
        self.step += 1
        # Not the epoch's last batch: the scheduler's step and the validation belong to it (epoch_end stops then).
        if self.stop is not None and self._loader.batches < len(self._loader) and self.stop.agreed():
            self._save(epoch)  # mid-epoch: the resumed run goes on with this epoch's next batch
            raise StoppedBySignal(self.stop.signal, self.step, epoch)

    def epoch_end(self, epoch: int, val_loss: Metric, val_metrics: MetricCollection) -> None:
        """After validation: self.log("val/..."), StopOnNonFiniteLoss, DecisionBoundary, the metrics' reset,
        ModelCheckpoint(save_last=True), GracefulStop, in the order Lightning runs them."""
        loss = val_loss.compute()
        values = {"val/loss": loss, **val_metrics.compute()}
        # Lightning logs epoch metrics at the step of the epoch's last optimizer step.
        self._log({tag: value.item() for tag, value in values.items()}, self.step - 1)
        if self._bar is not None:  # the latest values, as TQDMProgressBar shows them
            shown = {"train/loss": self._loss, **values}
            self._bar.set_postfix({tag: f"{value.item():.3f}" for tag, value in shown.items()})
        if not torch.isfinite(loss):
            raise NonFiniteLossError("val/loss", loss.item(), self.step - 1, epoch)
        if self.boundary is not None and self.boundary.wants(epoch):
            self.boundary.draw(self._model, self._data.val_set, epoch, loss.item(), self.writer, self.step - 1)
        val_loss.reset()
        val_metrics.reset()
        if self.early_stop is not None:  # EarlyStopping.on_train_epoch_end
            self.should_stop = self.early_stop.update(values, epoch)
        # ModelCheckpoint(monitor=..., save_top_k=k) keeps this epoch's checkpoint or not, then the checkpoint of the
        # config's ModelCheckpoint, last.pt (train.py runs them in this order too).
        kept, dropped = self.best.update(values, epoch, self.step) if self.best is not None else (None, None)
        self._save(epoch + 1, kept)
        if dropped is not None:
            self._delete(dropped)
        if self.stop is not None and self.stop.agreed(wait=True):
            raise StoppedBySignal(self.stop.signal, self.step, epoch)

    def _save(self, epoch_to_go_on_in: int, kept: str | None = None) -> None:
        """Trainer.save_checkpoint, through AtomicCheckpointIO, to last.pt (and to `kept`, one of the best k, in its
        directory); the plain loop's keys for Lightning's."""
        if self.checkpoint is None and not sharded(self._model):
            return
        model, optimizer = whole_state(self._model, self._optimizer)  # FSDP2: gathered, by every process
        if self.checkpoint is None:
            return
        # GracefulStop.on_save_checkpoint, before the file is written: a killed run's curves have no gap up to here
        self.writer.flush()
        self.trackers.flush()
        checkpoint = {
            "epoch": epoch_to_go_on_in,  # "epoch", "loops": where the fit loop goes on
            "step": self.step,  # "global_step"
            "model": model,  # "state_dict"
            "optimizer": optimizer,  # "optimizer_states"
            "scheduler": self._scheduler.state_dict(),  # "lr_schedulers"
            "scaler": self._scaler.state_dict(),  # "MixedPrecision": {} unless 16-mixed
            "data": self._data.state_dict(),  # LightningDataModule.state_dict
            "loader": self._loader.state_dict(),  # the fit loop's "combined_loader": order and position
            "rng": rng_state(),  # ExactResume.on_save_checkpoint
            "hparams": self.hparams,  # "hyper_parameters", "datamodule_hyper_parameters"
            "trackers": self.trackers.state(),  # GracefulStop.on_save_checkpoint: the runs to go on in, W&B's values
            "early_stopping": self.early_stop and self.early_stop.state_dict(),  # its "callbacks" entries
            "best": self.best and self.best.state_dict(),
        }
        if kept is not None:
            self._write(checkpoint, self.checkpoint.parent / kept)
        self._write(checkpoint, self.checkpoint)

    def _log(self, values: dict[str, float], step: int) -> None:
        """self.log_dict: to every logger, one call of its log_metrics."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)  # TensorBoardLogger.log_metrics
        self.trackers.log(values, step)

    def _write(self, checkpoint: dict[str, Any], path: Path) -> None:
        atomic_save(checkpoint, path)  # AtomicCheckpointIO.save_checkpoint

    def _delete(self, name: str) -> None:
        """A checkpoint no longer among the best k, but the one the run went on from, if it is still there:
        ModelCheckpoint._should_remove_checkpoint and _remove_checkpoint."""
        path = self.checkpoint and self.checkpoint.parent / name
        if path is not None and path.absolute() != self.resumed_from:
            path.unlink(missing_ok=True)


# --- the processes of a run ---

DEVICES = {"auto": None, "cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}


def device_for(accelerator: str) -> torch.device:
    """The device Trainer(accelerator=...) would pick for one process."""
    if DEVICES[accelerator]:
        return torch.device(DEVICES[accelerator])
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


@contextmanager
def process_group(accelerator: str) -> Iterator[torch.device]:
    """The device this process trains on; launched by torchrun, in a process group with the others, as
    Trainer(strategy="ddp") sets up."""
    device = device_for(accelerator)
    if not launched_by_torchrun():
        yield device
        return
    if device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # The DDP wrapper must be gone before the process group: freed later, with the group's last reference, it
    # destroys the group while holding the GIL, which a gloo thread may be waiting for, and the process hangs.
    # The loop's frame holds the wrapper: it ends with the loop, or, on an error, the traceback's frames let go.
    try:
        yield device
    except BaseException as error:
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        torch.distributed.destroy_process_group()


class NoWriter:
    """What the other processes of a DDP or FSDP2 run log to: nothing, as Lightning's loggers log from rank 0."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def next_version(root: Path) -> Path:
    """root/version_N with N one past the highest, as Lightning's TensorBoardLogger numbers its runs."""
    numbers = [p.name.removeprefix("version_") for p in root.glob("version_*")]
    return root / f"version_{max((int(n) for n in numbers if n.isdigit()), default=-1) + 1}"
