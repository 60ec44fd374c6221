"""validate, test and predict of a run's checkpoint leave the run's curves as the fit wrote them: read with
TensorBoard's own loader and its defaults, as `tensorboard --logdir logs` reads them. Their numbers stand in a
directory of their own inside the run, at the checkpoint's step."""

import re

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import QUIET, TINY, points, run, write_points

RUN = "logs/lightning/version_0"


def series(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of one TensorBoard run directory, as TensorBoard's default loader keeps them."""
    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_evaluations_leave_the_fits_curves_and_stand_at_the_checkpoints_step(tmp_path):
    fitted = run("train.py", "fit", *TINY, cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    before = series(tmp_path / RUN)
    for subcommand in ("validate", "test"):
        result = run("train.py", subcommand, *TINY, "--ckpt_path=last", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == f"logs: {RUN}/{subcommand}"
        assert not re.search(r"\.py:\d+: ", result.stderr), result.stderr  # no warning
    assert series(tmp_path / RUN) == before  # every tag: its steps and values
    # Lightning logs an epoch's validation at the index of its last step: the checkpoint's global_step - 1.
    step = torch.load(tmp_path / RUN / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] - 1
    assert len(before["val/loss"]) == 4 and before["val/loss"][-1][0] == step  # one a epoch
    validated, tested = (series(tmp_path / RUN / subcommand) for subcommand in ("validate", "test"))
    assert validated == {"val/loss": [before["val/loss"][-1]], "val/acc": [before["val/acc"][-1]]}
    assert set(tested) == {"test/loss", "test/acc"} and [s for s, _ in tested["test/loss"]] == [step]


def test_an_evaluation_takes_the_data_the_checkpoint_was_trained_on(tmp_path):
    """After a fit on a CSV of 5 features, `test --ckpt_path last` with no data flags tests on that CSV, as `fit
    --ckpt_path last` goes on with it; data given on the command line is taken instead."""
    X, y = torch.randn(150, 5, generator=torch.Generator().manual_seed(4)), torch.arange(150) % 3
    fitted = run("train.py", "fit", *TINY, *points(write_points(tmp_path / "my.csv", X, y), 5), cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr
    tested = run("train.py", "test", *QUIET, "--ckpt_path=last", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert set(series(tmp_path / RUN / "test")) == {"test/loss", "test/acc"}
    spiral = run("train.py", "test", *QUIET, "--ckpt_path=last", "--data.dataset.points_per_class=50", cwd=tmp_path)
    assert spiral.returncode != 0 and "model.net cannot take the dataset's inputs, of shape (2,)" in spiral.stderr
