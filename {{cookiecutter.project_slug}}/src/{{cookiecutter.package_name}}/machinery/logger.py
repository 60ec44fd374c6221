"""Lightning's TensorBoardLogger, writing what the plain loop's SummaryWriter writes, when it writes it.

After every step it logs, Lightning calls `logger.save()`, and TensorBoardLogger.save() flushes the event file,
waiting for the writer's thread, and looks for hparams.yaml on disk: a cost per step that the plain loop does not
pay (Lightning issue #20551, https://github.com/Lightning-AI/pytorch-lightning/issues/20551). Here that call does
nothing. The writer flushes on its own schedule, as the plain loop's does, and `flush()` writes everything out at
the same points as the plain loop: with every checkpoint (GracefulStop.on_save_checkpoint) and at the end.

Lightning also logs an `epoch` scalar at every step; the plain loop has no such tag, and neither has this logger.
`at_step` puts an evaluation's numbers at the step of the checkpoint it evaluates, where Lightning would put them at 0.
"""

from lightning.pytorch import loggers


class TensorBoardLogger(loggers.TensorBoardLogger):
    def __init__(self, save_dir: str, *, at_step: int | None = None, **kwargs):
        """
        Args:
            save_dir: Where the runs' directories go, as TensorBoardLogger's.
            at_step: The step every value is logged at, in place of the Trainer's; None: the Trainer's.
        """
        super().__init__(save_dir, **kwargs)
        self.at_step = at_step

    def log_metrics(self, metrics, step=None) -> None:
        # The `epoch` that Lightning's LoggerConnector adds to every step's metrics.
        metrics = {name: value for name, value in metrics.items() if name != "epoch"}
        super().log_metrics(metrics, step if self.at_step is None else self.at_step)

    def save(self) -> None:
        """Called by Lightning after every logged step: nothing to write yet."""

    def flush(self) -> None:
        """Write out the events logged so far, and hparams.yaml (TensorBoardLogger.save())."""
        if self._experiment is not None:  # else nothing was logged: no directory to make
            super().save()

    def finalize(self, status: str) -> None:
        self.flush()
        super().finalize(status)
