"""Runs that stop where they can go on from: Ctrl-C, SIGTERM and SIGUSR1 after the batch, a NaN loss at once.

- `StopRequest` / `GracefulStop`: Ctrl-C (SIGINT), SIGTERM or SIGUSR1 (SLURM's signal before a time limit, when a job
  asks for it) finishes the batch, writes a checkpoint of exactly that point (the plain loop: plain_run.py;
  Lightning: the callback), prints how to resume and exits with 130, 143 or 138. Under DDP and FSDP2 the processes
  agree at every optimizer step whether any of them was asked to stop (`StopRequest.agreed`).
- `StopOnNonFiniteLoss`: a NaN or infinite loss stops training, naming the step, before a checkpoint is written
  from it.
"""

import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException

from {{ cookiecutter.package_name }}.machinery.lightning_internals import ask_trainer_to_stop
from {{ cookiecutter.package_name }}.machinery.loaders import distributed, launched_by_torchrun
from {{ cookiecutter.package_name }}.machinery.script import stop_at_once
from {{ cookiecutter.package_name }}.machinery.trackers import TrackersLogger


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the message names the step."""

    def __init__(self, tag: str, value: float, step: int, epoch: int):
        super().__init__(
            f"{tag} is {value} at step {step} (epoch {epoch}): training stopped, no checkpoint was written from it"
        )


def ends_window(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether batch `batch_idx` ended in an optimizer step: the last of a window of accumulate_grad_batches, or the
    epoch's last (the fit loop's `not _should_accumulate()`; the plain loop's `steps`)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or batch_idx + 1 == trainer.num_training_batches


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Ctrl-C (SIGINT), SIGTERM and SIGUSR1 only note that a stop was asked for; the loop stops where it can go on
    from.

    Python's own SIGINT handler raises KeyboardInterrupt wherever the program is, in the middle of Adam's update
    too. Here the first signal sets `signal`, and the loop (plain_run.py, or GracefulStop for Lightning) stops after the
    batch; a second Ctrl-C ends the process at once (`stop_at_once`): a KeyboardInterrupt could land in any code,
    Lightning's too, which turns it into exit 1, or in the handling of the first signal.
    """

    def __init__(self):
        self.signal: signal.Signals | None = None
        self.pid = os.getpid()  # the process that trains
        self.said = os.environ.get("LOCAL_RANK", "0") == "0"  # one line a machine, where several processes train
        self._group = None  # the processes that vote on a stop
        self._pending = None  # the vote of the previous call, and its result to be

    def listen(self) -> dict[int, Any]:
        """Install the handlers; return the ones they replace."""
        self.pid = os.getpid()
        return {signum: signal.signal(signum, self._note) for signum in STOP_SIGNALS}

    def _note(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:  # a DataLoader worker forked since: it stops as it would without this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.signal is not None and signum == signal.SIGINT:
            stop_at_once(signum, frame)
        self.signal = signal.Signals(signum)
        if self.said:
            # Under DDP the processes agree on the step first (agreed); torchrun's processes get no second Ctrl-C.
            when = "after one or two more steps" if distributed() else "after this batch"
            again = "" if launched_by_torchrun() else " (Ctrl-C again: at once)"
            print(f"\n{self.signal.name}: stopping {when}{again}", file=sys.stderr)

    def agreed(self, wait: bool = False) -> bool:
        """Whether to stop here: a signal came to this process, or, under DDP and FSDP2, to any of the processes.

        Every process calls it at the same points, after the same optimizer steps, and gets the same answer, with
        the same signal (the highest-numbered of those that came), so that all save the same step and exit alike: a
        scheduler may signal one process first, or one alone. The vote is an all-reduce of one number on the CPU,
        over a gloo group of its own, so that on GPUs it waits for no GPU work (unchecked on GPUs). It is read at
        the next call, while the next step computes: the processes stop one or two steps after a signal came. With
        `wait` (at an epoch's end) it is read at once, and none is left pending.
        """
        if not distributed():
            return self.signal is not None
        if self._group is None:
            self._group = dist.new_group(backend="gloo")
        answer = self._read()  # the previous call's vote
        if not answer:
            vote = torch.tensor(self.signal or 0)
            self._pending = (dist.all_reduce(vote, dist.ReduceOp.MAX, group=self._group, async_op=True), vote)
            if wait:
                answer = self._read()
        if answer:
            self.signal = signal.Signals(answer)
        return bool(answer)

    def _read(self) -> int:
        """The pending vote's result, once every process has voted; 0 where none is pending."""
        if self._pending is None:
            return 0
        (work, vote), self._pending = self._pending, None
        work.wait()
        return int(vote)


def resume_command(script: str, config: Path, checkpoint: Path) -> str:
    """The command that goes on from `checkpoint`, with the run's `config` where there is one."""
    launcher = "torchrun <its options>" if launched_by_torchrun() else "python"
    return f"{launcher} {script} {f'--config {config} ' if config.is_file() else ''}--ckpt_path {checkpoint}"


class StoppedBySignal(Exception):
    """The plain loop stopped on Ctrl-C, SIGTERM or SIGUSR1 after writing a checkpoint of the point it reached."""

    def __init__(self, signum: signal.Signals, step: int, epoch: int):
        super().__init__(f"{signum.name}: saved at step {step} (epoch {epoch})")
        self.signal, self.step, self.epoch = signum, step, epoch


class GracefulStop(StopRequest, L.Callback):
    """Ctrl-C (SIGINT), SIGTERM or SIGUSR1: finish the batch, write last.ckpt of exactly that point, say how to resume.

    Lightning stops without a checkpoint on a KeyboardInterrupt, and its SIGTERM handler may stop in the middle of
    a validation, whose metrics a checkpoint does not hold. Here the signals only set a flag (StopRequest). After
    the batch's optimizer step (or, on an epoch's last batch, after the epoch's validation) the callback lets
    Lightning raise its SIGTERMException at a point its loops resume from, and writes last.ckpt: at the end of an
    epoch where ModelCheckpoint would, mid-epoch when the exception arrives, after the batch is logged. The process
    exits with 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1. A second Ctrl-C stops at
    once, without a checkpoint. Under DDP and FSDP2 every process stops after the step at which any of them was
    asked to (`agreed`), and all save that step. On SLURM, Lightning answers SIGUSR1 itself (auto_requeue): a
    checkpoint from inside its handler, in the middle of a step, and a requeue that resumes from it; here SIGUSR1 is
    taken over and stops as SIGTERM does.

    A SIGKILL cannot be caught; the run then goes on from its last checkpoint. So that the logged curve has no gap
    up to it, the loggers are flushed with every checkpoint (TensorBoard's writer holds events for up to 2 minutes).
    """

    def __init__(self):
        super().__init__()
        self.saved: Path | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, not earlier: the Trainer installs its own SIGTERM handler (and on SLURM, SIGUSR1's) just before.
        self.signal = signal.SIGTERM if trainer.received_sigterm else None  # one that came in between
        self.saved = None
        self.listen()  # the Trainer restores the previous handlers when it ends

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        # After an optimizer step: a checkpoint holds no accumulated gradients. Not on the epoch's last batch: the
        # scheduler's epoch step and the validation belong to it.
        last = batch_idx + 1 == trainer.num_training_batches
        if ends_window(trainer, batch_idx) and not last and self.agreed():
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.agreed(wait=True):
            self._save(trainer)
            self._stop(trainer)

    @staticmethod
    def _stop(trainer: L.Trainer) -> None:
        # The Trainer's own flag: its loops raise SIGTERMException once this batch is logged (or this epoch is done).
        ask_trainer_to_stop(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["trackers"] = {}  # the MLflow and W&B runs a resumed fit goes on in, W&B's values to write
        for logger in trainer.loggers:
            getattr(logger, "flush", logger.save)()  # machinery/logger.py's flush; Lightning's save flushes too
            if isinstance(logger, TrackersLogger):
                checkpoint["trackers"] = logger.trackers.state()

    def _save(self, trainer: L.Trainer) -> None:
        checkpoint_callback = trainer.checkpoint_callback
        directory = getattr(checkpoint_callback, "dirpath", None) or Path(trainer.log_dir or ".") / "checkpoints"
        self.saved = Path(directory) / "last.ckpt"
        if checkpoint_callback is not None:
            # As ModelCheckpoint does before it saves last.ckpt: the resumed run's ModelCheckpoint overwrites it.
            checkpoint_callback.last_model_path = str(self.saved)
        trainer.save_checkpoint(self.saved, weights_only=False)  # as ModelCheckpoint's: all of it

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.signal is None or not isinstance(exception, SIGTERMException):
            return  # any other exception: no checkpoint from a state that may be broken
        if self.saved is None:
            self._save(trainer)
        exception.code = 128 + self.signal  # the exit status of the SystemExit Lightning re-raises
        command = resume_command("train.py fit", Path(trainer.log_dir or ".") / "config.yaml", self.saved)
        if trainer.is_global_zero:
            print(
                f"{self.signal.name}: saved {self.saved} at step {trainer.global_step} (epoch {trainer.current_epoch});"
                f" resume with: {command}",
                file=sys.stderr,
            )


class StopOnNonFiniteLoss(L.Callback):
    """A NaN or infinite loss stops training at once, naming the step, before any checkpoint is written from it.

    The training loss is checked after each batch, the validation loss after each validation: the
    checkpoint callbacks run later (Lightning calls them last), so the last good checkpoint is never overwritten.
    """

    def __init__(self, val_loss: str = "val/loss"):
        """
        Args:
            val_loss: The logged validation loss to check after each validation.
        """
        self.val_loss = val_loss

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            step = trainer.global_step - ends_window(trainer, batch_idx)  # the step this batch is part of
            raise NonFiniteLossError("train/loss", loss.item(), step, trainer.current_epoch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get(self.val_loss)
        if not trainer.sanity_checking and loss is not None and not torch.isfinite(loss).all():
            raise NonFiniteLossError(self.val_loss, loss.item(), trainer.global_step - 1, trainer.current_epoch)
