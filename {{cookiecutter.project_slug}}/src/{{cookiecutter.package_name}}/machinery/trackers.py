"""Experiment trackers beside TensorBoard: a CSV file, MLflow and W&B (offline), the same scalars at the same steps in
the three loops.

    python train.py fit --track.to '[csv, mlflow, wandb]'     # mlflow, wandb: pip install -e ".[track]"

configs/default.yaml's `track` chooses them (`Track`). The plain loop hands its scalars to `Trackers.log` where it
hands them to TensorBoard (plain_run.py); train.py and the Fabric loop log through `TrackersLogger`, a Lightning
logger that hands Lightning's calls to the same `Trackers`. Lightning's own CSVLogger deletes metrics.csv from a run
directory that holds anything else (TensorBoard's events), and MLFlowLogger's default store, a directory, is refused
by MLflow 3; neither goes on where a resumed run left off.

They write with every checkpoint, as TensorBoard is flushed. A resumed run goes on in the same file and the same
MLflow and W&B runs, whose ids the checkpoint keeps (`Trackers.state`), every step once: metrics.csv loses its rows
from the checkpoint's step on, as TensorBoard's purge_step drops its events; MLflow and W&B keep every value they
were sent, so the values an interrupted run sent after its checkpoint are not sent again (the resumed run computes
them bit for bit). W&B writes a run's file only as the run finishes, so its values wait in the checkpoints (`WandbRun`).
"""

import csv
import logging
import os
import secrets
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

# Each tracker, and the module it needs beyond this project's own dependencies (`pip install -e ".[track]"`).
NEEDS = {"csv": None, "mlflow": "mlflow", "wandb": "wandb"}


class TrackingError(RuntimeError):
    """A tracker that cannot go on with the checkpoint's run; the message says why, in one line."""


class Track:
    """The trackers the three loops log to beside TensorBoard: configs/default.yaml's `track`."""

    def __init__(
        self,
        to: list[Literal["csv", "mlflow", "wandb"]] | None = None,
        tracking_uri: str | None = None,
        experiment: str = "default",
    ):
        """
        Args:
            to: Trackers beside TensorBoard: csv (metrics.csv in the run directory), mlflow, wandb (offline, in the run
                directory's wandb/; both: pip install -e ".[track]").
            tracking_uri: MLflow's store; null: sqlite:///mlflow.db in the logs' directory (trainer.logger's save_dir).
            experiment: The MLflow experiment and the W&B project the runs go into, each named after its run directory
                (torch/version_3).
        """
        self.to = to or []
        self.tracking_uri = tracking_uri
        self.experiment = experiment

    def open(self, run_dir: Path, save_dir: str, params: dict[str, str], resume: dict | None) -> "Trackers":
        """The trackers of the run logging into `run_dir` (logs/torch/version_3, in `save_dir`: logs) with the config's
        `params`; a resumed run goes on from its checkpoint's `resume`: {"step": its step, "trackers": state()}."""
        resume = resume or {}
        held = resume.get("trackers", {})
        writers = []
        name = f"{run_dir.parent.name}/{run_dir.name}"
        if "csv" in self.to:
            writers.append(CsvFile(run_dir / "metrics.csv", purge_step=resume.get("step")))
        if "wandb" in self.to:
            writers.append(WandbRun(run_dir / "wandb", self.experiment, name, params, held.get("wandb")))
        if "mlflow" in self.to:
            uri = self.tracking_uri
            if uri is None:
                Path(save_dir).mkdir(parents=True, exist_ok=True)
                # Absolute: MLflow keeps one store per URI in a process, a relative path's first directory.
                uri = f"sqlite:///{Path(save_dir).resolve() / 'mlflow.db'}"
            writers.append(MlflowRun(uri, self.experiment, name, params, run_id=held.get("mlflow")))
        return Trackers(writers)


class Trackers:
    """The chosen trackers of one run, as one: `log` and `flush` as a SummaryWriter's add_scalar and flush."""

    def __init__(self, writers: list | None = None):
        self.writers = writers or []

    def log(self, values: dict[str, float], step: int) -> None:
        """One logging call's values (self.log_dict's), at the step Lightning logs them at."""
        for writer in self.writers:
            writer.log(values, step)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self, status: str = "success") -> None:
        """At the run's end; `status` as Lightning's Logger.finalize takes it: success, failed."""
        for writer in self.writers:
            writer.close(status)

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.close("success" if error_type is None else "failed")

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run goes on in the same tracker runs: {"mlflow": its run id,
        "wandb": WandbRun.state()}."""
        return {writer.name: writer.state() for writer in self.writers if hasattr(writer, "state")}


class CsvFile:
    """metrics.csv as Lightning's CSVLogger writes it: a row per logging call, a `step` column and a column per tag,
    sorted, empty where a row has no value. Rewritten whole at each flush, through a temporary file: a kill leaves the
    previous file or the new one."""

    def __init__(self, path: Path, purge_step: int | None = None):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if purge_step is not None and path.is_file():  # a resumed run: the rows up to its checkpoint
            with path.open(newline="") as file:
                self.rows = [row for row in csv.DictReader(file) if int(row["step"]) < purge_step]

    def log(self, values: dict[str, float], step: int) -> None:
        self.rows.append({**values, "step": step})

    def flush(self) -> None:
        if not self.rows:
            return
        keys = sorted(set().union(*self.rows))
        part = self.path.with_name(self.path.name + ".part")
        with part.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(part, self.path)

    def close(self, status: str) -> None:
        self.flush()


class MlflowRun:
    """One MLflow run: the run's values sent with each flush, in batches; the config's settings as its parameters."""

    name = "mlflow"
    STATUS = {"success": "FINISHED", "failed": "FAILED"}  # else KILLED

    def __init__(self, uri: str, experiment: str, run_name: str, params: dict[str, str], run_id: str | None):
        # MLflow's store says so when it makes its tables, at each new database: nothing about this run.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        # MLflow 3's SQL store asks SQLAlchemy 2.1 for a loading strategy SQLAlchemy has deprecated.
        store = "mlflow.store.tracking.sqlalchemy_store"
        warnings.filterwarnings("ignore", "The ``noload`` loader strategy", module=store)
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException

        self.Metric = Metric  # for `log`, at every step: imported here, where mlflow is chosen
        try:  # a URI MLflow has no store for: refused here, or by the store's first answer
            self.client = MlflowClient(uri)
            found = self.client.get_experiment_by_name(experiment)
        except MlflowException as error:
            raise TrackingError(f"track.tracking_uri={uri!r}: {str(error).strip().splitlines()[0]}") from error
        self.held: dict[str, int] = {}  # per tag, the last step the run has already
        self.pending: list = []
        if run_id is None:
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            self.client.log_batch(self.run_id, params=[Param(key, value[:6000]) for key, value in params.items()])
            return
        try:
            run = self.client.get_run(run_id)
        except MlflowException as error:
            raise TrackingError(f"track: the checkpoint's MLflow run {run_id} is not in {uri}") from error
        self.run_id = run_id
        for tag in run.data.metrics:
            self.held[tag] = max(metric.step for metric in self.client.get_metric_history(run_id, tag))
        self.client.update_run(run_id, status="RUNNING")

    def log(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending += [self.Metric(tag, v, now, step) for tag, v in values.items() if step > self.held.get(tag, -1)]

    def flush(self) -> None:
        while self.pending:  # MLflow takes up to 1000 values a call
            self.client.log_batch(self.run_id, metrics=self.pending[:1000])
            del self.pending[:1000]

    def close(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "KILLED"))

    def state(self) -> str:
        return self.run_id


class WandbRun:
    """One W&B run, offline (no account, no network): directories in the run directory's wandb/, which `wandb sync`
    uploads later. W&B writes a run's file only as the run finishes; a killed process leaves it empty. So the values
    wait, in each checkpoint too, and are written at the end of the process, or at a checkpoint that would hold more
    than HELD_BACK: each time one W&B offline run directory, written whole and then moved into place, named after
    the last step it holds (`offline-run-<time>-<id>-step-<step>`). A resumed run writes the values its checkpoint
    held and goes on after the last step the directories hold."""

    name = "wandb"
    HELD_BACK = 10_000  # values a checkpoint holds at most

    def __init__(self, directory: Path, project: str, run_name: str, params: dict[str, str], resume: dict | None):
        self.project, self.run_name, self.config = project, run_name, params
        # Absolute: W&B's service, started once a process, takes a relative path from its own working directory.
        self.directory = directory.absolute()
        self.run_id, held_back = (resume["id"], resume["pending"]) if resume else (secrets.token_hex(4), [])
        for unfinished in self.directory.glob(".writing-*"):  # a process killed while it wrote
            shutil.rmtree(unfinished)
        written = self.directory.glob(f"offline-run-*-{self.run_id}-step-*")
        self.written = max((int(path.name.rpartition("-step-")[2]) for path in written), default=-1)
        self.pending = [(step, values) for step, values in held_back if step > self.written]

    def log(self, values: dict[str, float], step: int) -> None:
        if step > self.written:
            self.pending.append((step, values))

    def flush(self) -> None:
        if sum(len(values) for _, values in self.pending) > self.HELD_BACK:
            self.write()

    def close(self, status: str) -> None:
        self.write(exit_code=0 if status == "success" else 1)

    def state(self) -> dict[str, Any]:
        return {"id": self.run_id, "pending": self.pending}

    def write(self, exit_code: int = 0) -> None:
        """The values waiting, as one offline run directory of the run."""
        if not self.pending:
            return
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        last = self.pending[-1][0]
        with tempfile.TemporaryDirectory(dir=self.directory, prefix=".writing-") as writing:
            run = wandb.init(
                dir=writing,
                mode="offline",
                project=self.project,
                name=self.run_name,
                id=self.run_id,
                resume="allow",
                config=self.config,
                settings=wandb.Settings(silent=True, console="off"),
            )
            for step, values in self.pending:
                run.log(values, step=step)
            run.finish(exit_code=exit_code)
            [made] = Path(writing, "wandb").glob("offline-run-*")
            os.replace(made, self.directory / f"{made.name}-step-{last}")
        self.written, self.pending = last, []


class TrackersLogger(Logger):
    """train.py's and the Fabric loop's way to the trackers: Lightning's logging calls handed to `Trackers`, opened
    on rank 0 by `open` when first needed (the run directory is known by then)."""

    def __init__(self, open: Callable[[], Trackers]):
        super().__init__()
        self._open = open

    @cached_property
    def trackers(self) -> Trackers:
        return self._open() if rank_zero_only.rank == 0 else Trackers()

    @property
    def name(self) -> str:
        return "trackers"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """The config's settings went to MLflow and W&B with their runs: the same in the three loops."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        # Without the `epoch` that Lightning's LoggerConnector adds to every step's metrics: the plain loop has none.
        self.trackers.log({tag: float(value) for tag, value in metrics.items() if tag != "epoch"}, step)

    def save(self) -> None:
        """Called by Lightning after every logged step: the trackers write with each checkpoint, by `flush`."""

    def flush(self) -> None:
        self.trackers.flush()

    def finalize(self, status: str) -> None:
        self.trackers.close(status)
