"""The trackers beside TensorBoard (machinery/trackers.py) hold what TensorBoard holds, the same in the three loops, and
a resumed run goes on in the same CSV file, MLflow run and W&B run with every step once.

Each tracker is read back with its own reader: metrics.csv with the csv module, MLflow's store with MLflow's client,
W&B's offline run files with W&B's (`wandb leet inspect`).
TensorBoard's series are the yardstick: tests/test_equivalence.py and tests/test_resume.py prove them equal across
the loops and through interruptions.
"""

import csv
import json
import random
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import (
    DROPOUT,
    ENV,
    LIGHTNING,
    LONGER,
    ROOT,
    SMALL,
    TINY,
    event_scalars,
    fit,
    interrupted,
    kill_and_resume,
)

EXPERIMENT = "tests"
# The same flags for the three loops: MLflow's parameters are the runs' settings (tests' fit() turns off Lightning's
# model summary).
TRACKED = [
    "--track.to=[csv, mlflow, wandb]",
    f"--track.experiment={EXPERIMENT}",
    "--boundary.every_n_epochs=0",
    "--trainer.enable_model_summary=false",
]
SIDES = {
    "lightning": ("train.py", "last.ckpt"),
    "torch": ("train_torch.py", "last.pt"),
    "fabric": ("train_fabric.py", "last.pt"),
}


def csv_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every series in a run's metrics.csv: tag -> [(step, value)], in the file's order."""
    found = defaultdict(list)
    with (run_dir / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            for tag, value in row.items():
                if tag != "step" and value != "":
                    found[tag].append((int(row["step"]), float(value)))
    return dict(found)


def mlflow_runs(logs: Path) -> tuple[MlflowClient, dict]:
    """MLflow's client on the default store in `logs`, and the experiment's runs by name (as many as it holds)."""
    client = MlflowClient(f"sqlite:///{logs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len({run.info.run_name for run in runs}) == len(runs), [run.info.run_name for run in runs]
    return client, {run.info.run_name: run for run in runs}


def mlflow_series(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    """Every value the run holds: tag -> [(step, value)] by step; a step sent twice is there twice."""
    history = {tag: client.get_metric_history(run.info.run_id, tag) for tag in run.data.metrics}
    return {tag: sorted((metric.step, metric.value) for metric in metrics) for tag, metrics in history.items()}


WANDB = Path(sys.executable).parent / "wandb"  # W&B's command line


def wandb_runs(run_dir: Path) -> tuple[set[str], dict[str, str], dict[str, list[tuple[int, float]]]]:
    """What the W&B offline runs in `run_dir` hold, read by W&B's own reader, in the order they were written (by the
    last step each holds): the W&B runs' ids, their config, and every value: tag -> [(step, value)]; a step written
    twice is there twice."""
    ids, config, found = set(), {}, defaultdict(list)
    written = sorted((run_dir / "wandb").glob("offline-run-*"), key=lambda path: int(path.name.rpartition("-step-")[2]))
    for directory in written:
        [path] = directory.glob("run-*.wandb")
        command = [WANDB, "leet", "inspect", "--json", path]
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
        for record in map(json.loads, done.stdout.splitlines()):
            if record["type"] == "run":
                ids.add(record["run"]["run_id"])
                config.update(record["run"]["config"]["update"])
            elif record["type"] == "history":
                step = record["history"]["step"].get("num", 0)
                for tag, value in record["history"]["item"].items():
                    if not tag.startswith("_"):  # W&B's own: _step, _runtime, _timestamp
                        found[tag].append((step, value))
    config.pop("_wandb")
    return ids, config, dict(found)


def as_tensorboard(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """A tracker's series as TensorBoard keeps them: in float32. The trackers keep what the loops log: train/lr, a
    Python float, in float64."""
    return {
        tag: [(step, torch.tensor(value).float().item()) for step, value in points] for tag, points in series.items()
    }


def test_the_trackers_hold_tensorboards_series_the_same_in_the_three_loops(tmp_path):
    logs = tmp_path / "logs"
    for side in SIDES:
        fit(
            side,
            [
                *SMALL,
                DROPOUT,
                *TRACKED,
                "--trainer.enable_progress_bar=false",
                f"--trainer.logger.init_args.save_dir={logs}",
            ],
        )
    client, runs = mlflow_runs(logs)
    assert sorted(runs) == [f"{side}/version_0" for side in sorted(SIDES)]
    for side in SIDES:
        run_dir = logs / side / "version_0"
        expected = event_scalars(run_dir)
        assert sorted(expected) == ["train/loss", "train/lr", "val/acc", "val/loss"]
        assert as_tensorboard(csv_series(run_dir)) == expected, side
        assert runs[f"{side}/version_0"].info.status == "FINISHED"
    # The same file, row for row; in MLflow, the same values; the same settings as the runs' parameters.
    files = {side: (logs / side / "version_0" / "metrics.csv").read_bytes() for side in SIDES}
    assert files["torch"] == files["lightning"] == files["fabric"]
    tracked = {side: mlflow_series(client, runs[f"{side}/version_0"]) for side in SIDES}
    assert tracked["torch"] == tracked["lightning"] == tracked["fabric"] == csv_series(logs / "torch" / "version_0")
    params = {side: runs[f"{side}/version_0"].data.params for side in SIDES}
    assert params["torch"] == params["lightning"] == params["fabric"]
    assert params["torch"]["model.lr"] == "0.001" and params["torch"]["model.net.dropout"] == "0.3"
    # W&B: one run each, the same values as the CSV file, the settings as its config.
    for side in SIDES:
        ids, config, series = wandb_runs(logs / side / "version_0")
        assert len(ids) == 1 and config == params[side], side
        assert series == tracked[side], side


def tracked_as_tensorboard(logs: Path, side: str) -> None:
    """The run's CSV file, its one MLflow run and its one W&B run hold TensorBoard's series: every step once, the
    values equal."""
    run_dir = logs / side / "version_0"
    series = csv_series(run_dir)
    assert as_tensorboard(series) == event_scalars(run_dir)
    client, runs = mlflow_runs(logs)
    assert list(runs) == [f"{side}/version_0"]
    assert mlflow_series(client, runs[f"{side}/version_0"]) == series
    assert runs[f"{side}/version_0"].info.status == "FINISHED"
    ids, _, wandb_series = wandb_runs(run_dir)
    assert len(ids) == 1 and wandb_series == series


@pytest.mark.parametrize("side", SIDES)
def test_a_run_killed_then_resumed_goes_on_in_the_same_tracker_runs_every_step_once(side, tmp_path):
    script, checkpoint = SIDES[side]
    args = [*LONGER, DROPOUT, *TRACKED]
    args = ["fit", *LIGHTNING, *args] if side == "lightning" else args
    seed = random.randrange(2**32)
    history = kill_and_resume(script, args, tmp_path, checkpoint, kills=2, seed=seed)
    assert sum("exit -9" in line for line in history) >= 1, history  # a kill landed
    tracked_as_tensorboard(tmp_path / "logs", side)


@pytest.mark.parametrize("side", SIDES)
def test_a_run_resumed_after_its_trackers_went_past_the_checkpoint_sends_no_step_twice(
    side, tmp_path, monkeypatch, capsys
):
    """The trackers hold steps after the checkpoint the run goes on from: a kill between their writing and the
    checkpoint's, or a run resumed from an earlier checkpoint, as here. Each step stays there once."""
    monkeypatch.chdir(tmp_path)
    args = [*TINY, DROPOUT, *TRACKED]
    interrupted(side, args, signal.SIGTERM, 4, capsys)  # epoch 1, mid-epoch: saved at step 5
    checkpoints = tmp_path / "logs" / side / "version_0" / "checkpoints"
    name = SIDES[side][1]
    earlier = shutil.copy(checkpoints / name, checkpoints / f"earlier-{name}")
    fit(side, [*args, "--ckpt_path=last"])  # to the end: the trackers hold every step
    fit(side, [*args, f"--ckpt_path={earlier}"])  # from step 5 again
    tracked_as_tensorboard(tmp_path / "logs", side)


@pytest.mark.parametrize("side", SIDES)
def test_a_chosen_tracker_that_is_not_installed_is_refused_in_one_line(side, tmp_path):
    hidden = tmp_path / "hidden"
    (hidden / "mlflow").mkdir(parents=True)  # what `import mlflow` finds first: as if it were not installed
    (hidden / "mlflow" / "__init__.py").write_text("raise ImportError('No module named mlflow')\n")
    script, _ = SIDES[side]
    command = [sys.executable, str(ROOT / script), *(["fit"] if side == "lightning" else []), *TINY, *TRACKED]
    env = {**ENV, "PYTHONPATH": f"{hidden}:{ENV['PYTHONPATH']}"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()  # the plain and Fabric loops' parser adds where the options are listed
    assert line.startswith('error: track.to: mlflow is not installed; pip install -e ".[track]"'), line
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("side", SIDES)
def test_a_tracking_uri_that_mlflow_cannot_open_is_said_in_one_line(side, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        fit(side, [*TINY, "--track.to=[mlflow]", "--track.tracking_uri=foo://bar"])
    said = str(stop.value.code)
    assert said.startswith("error: track.tracking_uri='foo://bar': ") and "\n" not in said, said
