"""sweep.py: an Optuna study whose trials are normal runs of the loops. A trial's config.yaml repeats it exactly; a
sweep killed in the middle of a trial and started again ends as an uninterrupted one, trial for trial; a failed trial
is recorded as failed and the study goes on; the three loops give the same study.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from {{ cookiecutter.package_name }}.machinery import sweeping
from {{ cookiecutter.package_name }}.machinery.sweeping import opened_storage

from conftest import ENV, QUIET, ROOT, ended, event_scalars, finished, fit, started

STUDY = "tests"
RUN = [
    "--trainer.max_epochs=6",
    "--data.dataset.points_per_class=50",
    "--data.batch_size=32",
    "--boundary.every_n_epochs=0",
]
SPACE = '{"model.lr": {"low": 0.001, "high": 0.1, "log": true}, "model.net.init_args.hidden": {"choices": [16, 32]}}'


def sweep_command(loop: str, trials: int, space: str = SPACE, run: list[str] = RUN) -> list[str]:
    args = f"--args=[{', '.join(run)}]"
    return [
        sys.executable,
        str(ROOT / "sweep.py"),
        f"--loop={loop}",
        f"--trials={trials}",
        args,
        f"--space={space}",
        f"--study={STUDY}",
    ]


def stored(cwd: Path) -> list:
    """The trials of the study in `cwd`, as Optuna's storage keeps them; its database closed again."""
    with opened_storage(f"sqlite:///{cwd / 'logs' / 'sweep.db'}") as storage:
        return optuna.load_study(study_name=STUDY, storage=storage).trials


def study(cwd: Path) -> list[tuple]:
    """Each trial of the study in `cwd`: its number, state, values and value."""
    return [(t.number, t.state.name, t.params, t.value) for t in stored(cwd)]


def swept(cwd: Path, loop: str, trials: int, space: str = SPACE, run: list[str] = RUN) -> list[tuple]:
    cwd.mkdir(exist_ok=True)
    done = finished(sweep_command(loop, trials, space, run), cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return study(cwd)


_studies = {}


def uninterrupted(tmp_path_factory, loop: str, trials: int = 3) -> tuple[Path, list[tuple]]:
    if (loop, trials) not in _studies:
        cwd = tmp_path_factory.mktemp(f"{loop}-sweep")
        _studies[loop, trials] = cwd, swept(cwd, loop, trials)
    return _studies[loop, trials]


def run_dir(cwd: Path, number: int, loop: str) -> Path:
    [directory] = (cwd / "logs" / "sweep" / STUDY / f"trial_{number}" / loop).iterdir()
    return directory


def test_each_trial_is_a_run_whose_config_repeats_it_exactly(tmp_path, tmp_path_factory):
    cwd, trials = uninterrupted(tmp_path_factory, "torch")
    assert [state for _, state, _, _ in trials] == ["COMPLETE"] * 3
    assert len({str(params) for _, _, params, _ in trials}) == 3  # three points of the space
    for number, _, _, value in trials:
        assert value == event_scalars(run_dir(cwd, number, "torch"))["val/loss"][-1][1]  # the run's last val/loss
    trial = run_dir(cwd, 1, "torch")
    again = subprocess.run(
        [sys.executable, str(ROOT / "train_torch.py"), f"--config={trial / 'config.yaml'}"]
        + [f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}", "--trainer.enable_progress_bar=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert event_scalars(tmp_path / "logs" / "torch" / "version_0") == event_scalars(trial)


def test_a_sweep_killed_in_the_middle_of_a_trial_goes_on_and_ends_as_an_uninterrupted_one(tmp_path, tmp_path_factory):
    _, expected = uninterrupted(tmp_path_factory, "torch")
    process = started(sweep_command("torch", 3), tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = tmp_path / "logs" / "sweep" / STUDY / "trial_1" / "torch" / "version_0" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and the trial's run
    ended(process)
    assert process.returncode == -signal.SIGKILL
    assert torch.load(checkpoint, weights_only=True)["epoch"] < 6  # trial 1 was killed with epochs to go
    assert [state for _, state, _, _ in study(tmp_path)] == ["COMPLETE", "RUNNING"]
    assert swept(tmp_path, "torch", 3) == expected
    run_dir(tmp_path, 1, "torch")  # trial 1 went on in its run: one version_0


def test_a_failed_trial_is_recorded_as_failed_and_the_study_goes_on(tmp_path):
    space = '{"model.lr": {"choices": [0.01, 1.0e+30]}}'  # 1e30: the loss is NaN within a step
    trials = swept(tmp_path, "torch", 4, space)
    assert len(trials) == 4
    states = {params["model.lr"]: state for _, state, params, _ in trials}
    assert states == {0.01: "COMPLETE", 1.0e30: "FAIL"}
    failed = [t for t in stored(tmp_path) if t.state.name == "FAIL"]
    assert all(t.user_attrs["error"].startswith("error: train/loss is nan") for t in failed), failed


def test_the_three_loops_give_the_same_study(tmp_path_factory):
    _, expected = uninterrupted(tmp_path_factory, "torch")
    for loop in ("lightning", "fabric"):
        assert uninterrupted(tmp_path_factory, loop)[1] == expected, loop


def test_without_optuna_the_sweep_says_what_to_install_in_one_line(tmp_path):
    hidden = tmp_path / "hidden" / "optuna"
    hidden.mkdir(parents=True)  # what `import optuna` finds first: as if it were not installed
    (hidden / "__init__.py").write_text("raise ImportError('No module named optuna')\n")
    env = {**ENV, "PYTHONPATH": f"{hidden.parent}:{ENV['PYTHONPATH']}"}
    done = subprocess.run(sweep_command("torch", 3), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ['error: optuna is not installed; pip install -e ".[sweep]"']
    assert not (tmp_path / "logs").exists()


def early_stopping(patience: int, min_delta: float) -> list[str]:
    """An EarlyStopping on val/loss."""
    flags = ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/loss"]
    return [*flags, f"--trainer.callbacks.patience={patience}", f"--trainer.callbacks.min_delta={min_delta}"]


# Early stopping after the second epoch: val/loss falls by less than 0.1 an epoch.
STOPPING = [*RUN, *early_stopping(1, 0.1)]


@pytest.mark.parametrize("loop", ["lightning", "torch"])
def test_a_sweep_killed_after_a_trial_stopped_early_takes_its_value_and_trains_no_more(
    loop, tmp_path, monkeypatch, tmp_path_factory
):
    """Going on from the checkpoint of a run an EarlyStopping ended would train an epoch more."""
    expected = swept(tmp_path_factory.mktemp(f"{loop}-stopping"), loop, 1, run=STOPPING)
    import sweep  # the project's root, on sys.path (conftest)

    def killed(run_dir, tag):
        raise SystemExit("killed")  # after the trial's run ended, before the study was told its value

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweeping, "last_value", killed)
    with pytest.raises(SystemExit, match="killed"):
        sweep.main(sweep_command(loop, 1, run=STOPPING)[2:])
    monkeypatch.undo()
    assert [state for _, state, _, _ in study(tmp_path)] == ["RUNNING"]
    epochs = len(event_scalars(run_dir(tmp_path, 0, loop))["val/loss"])
    assert epochs < 6  # it stopped early
    assert swept(tmp_path, loop, 1, run=STOPPING) == expected
    assert len(event_scalars(run_dir(tmp_path, 0, loop))["val/loss"]) == epochs


@pytest.mark.parametrize(
    "space",
    [
        '{"model.lr": {"low": 0.001}}',
        '{"model.lr": {"low": 0, "high": 1, "log": true}}',
        '{"model.lr": {"low": 0.001, "high": .inf}}',
    ],
)
def test_a_space_entry_the_sweep_cannot_draw_from_is_refused_in_one_line_before_the_study(space, tmp_path):
    done = finished(sweep_command("torch", 3, space), tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("error: space: model.lr: "), line
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("patience, min_delta", [(0, 0.0), (0, 0.1), (1, 0.1), (2, 0.0)])
@pytest.mark.parametrize("side", ["lightning", "torch"])
def test_a_run_counts_as_stopped_early_when_its_early_stopping_ended_it(side, patience, min_delta, tmp_path):
    """sweeping.stopped_early on real runs' checkpoints: true exactly when the run ended before max_epochs."""
    max_epochs = 4
    args = [*QUIET, *RUN[1:], f"--trainer.max_epochs={max_epochs}", *early_stopping(patience, min_delta)]
    args += [f"--trainer.logger.init_args.save_dir={tmp_path}"]
    fit(side, args)
    run = tmp_path / side / "version_0"
    assert sweeping.stopped_early(run) == (len(event_scalars(run)["val/loss"]) < max_epochs)
