"""EarlyStopping and ModelCheckpoint(monitor=..., save_top_k=k) make the same decisions in the three loops: the same
stop epoch, the same k files kept, the same weights in each, the same state for a resumed run to go on with; and
they still do after an interruption. The plain and Fabric loops' versions: machinery/monitor.py.
"""

import re
import signal
import warnings
from pathlib import Path

import pytest
import torch

from {{ cookiecutter.package_name }}.machinery import monitor
from {{ cookiecutter.package_name }}.scripts import CLI

from conftest import (
    CHECKPOINT,
    DROPOUT,
    LIGHTNING,
    QUIET,
    TINY,
    differences,
    event_scalars,
    final_state,
    fit,
    interrupted,
    mismatches,
    run,
)

PATIENCE, K, MAX_EPOCHS = 2, 2, 30
# 360 training points in batches of 64: 6 steps an epoch. val/loss stops improving by 0.01 at about epoch 20; val/acc,
# on 120 points, has ties among the best.
ARGS = [
    *QUIET,
    f"--trainer.max_epochs={MAX_EPOCHS}",
    "--data.dataset.points_per_class=200",
    "--boundary.every_n_epochs=0",
    DROPOUT,
    "--trainer.callbacks+=EarlyStopping",
    "--trainer.callbacks.monitor=val/loss",
    f"--trainer.callbacks.patience={PATIENCE}",
    "--trainer.callbacks.min_delta=0.01",
    "--trainer.callbacks+=ModelCheckpoint",
    "--trainer.callbacks.monitor=val/acc",
    "--trainer.callbacks.mode=max",
    f"--trainer.callbacks.save_top_k={K}",
]
STATE = ("wait_count", "stopped_epoch", "best_score", "patience")  # EarlyStopping.state_dict's, in every release


def decisions(side: str, run_dir: Path) -> dict:
    """What the callbacks decided: the final checkpoint's weights and optimizer, the TensorBoard series, the early
    stop's state, and each kept checkpoint (by name, without its suffix) with its weights and value."""
    checkpoint = torch.load(run_dir / "checkpoints" / CHECKPOINT[side], weights_only=True)
    early, best = checkpoint.get("early_stopping"), checkpoint.get("best")
    for name, state in checkpoint.get("callbacks", {}).items():  # Lightning's, by the callbacks' names
        if name.startswith("EarlyStopping"):
            early = state
        if name.startswith("ModelCheckpoint") and state["monitor"] is not None:
            best = state
    files = {
        path.stem: final_state(side, run_dir, path.name)["model"] for path in (run_dir / "checkpoints").glob("epoch=*")
    }
    return {
        "final": final_state(side, run_dir),
        "scalars": event_scalars(run_dir),
        "early stop": {key: early[key] for key in STATE},
        "kept": {Path(path).stem: value for path, value in best["best_k_models"].items()},
        "kth": Path(best["kth_best_model_path"]).stem,
        "files": files,
    }


_runs = {}


def uninterrupted(side: str, tmp_path_factory) -> dict:
    if side not in _runs:
        logs = tmp_path_factory.mktemp(side) / "logs"
        fit(side, [*ARGS, f"--trainer.logger.init_args.save_dir={logs}"])
        _runs[side] = decisions(side, logs / side / "version_0")
    return _runs[side]


def test_the_three_loops_stop_at_the_same_epoch_and_keep_the_same_best_checkpoints(tmp_path_factory):
    lightning = uninterrupted("lightning", tmp_path_factory)
    epochs = len(lightning["scalars"]["val/loss"])
    assert epochs < MAX_EPOCHS and lightning["early stop"]["wait_count"] == PATIENCE  # it stopped early
    assert len(lightning["files"]) == K and lightning["kept"].keys() == lightning["files"].keys()
    for side in ("torch", "fabric"):
        assert differences(uninterrupted(side, tmp_path_factory), lightning) == [], side


def test_an_off_by_one_patience_in_the_plain_loop_is_caught(tmp_path, monkeypatch, tmp_path_factory):
    """Negative control: the plain loop waiting one epoch more than its patience says."""
    update = monitor.EarlyStop.update

    def one_epoch_late(self, values, epoch):
        self.patience += 1
        try:
            return update(self, values, epoch)
        finally:
            self.patience -= 1

    monkeypatch.setattr(monitor.EarlyStop, "update", one_epoch_late)
    fit("torch", [*ARGS, f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}"])
    late = decisions("torch", tmp_path / "logs" / "torch" / "version_0")
    lightning = uninterrupted("lightning", tmp_path_factory)
    assert len(late["scalars"]["val/loss"]) > len(lightning["scalars"]["val/loss"])  # a later stop
    assert mismatches((late["final"], late["scalars"]), (lightning["final"], lightning["scalars"])) != []


# An epoch's last step (the stop comes after its validation and the callbacks), and a step mid-epoch, both after the
# early stop's count and the best files have a history.
@pytest.mark.parametrize("step", [95, 128])
@pytest.mark.parametrize("side", ["lightning", "torch", "fabric"])
def test_a_run_stopped_and_resumed_makes_the_same_decisions(
    side, step, tmp_path, monkeypatch, capsys, tmp_path_factory
):
    monkeypatch.chdir(tmp_path)
    interrupted(side, ARGS, signal.SIGTERM, step, capsys)
    fit(side, [*ARGS, "--ckpt_path=last"])
    found = decisions(side, tmp_path / "logs" / side / "version_0")
    expected = uninterrupted(side, tmp_path_factory)
    assert differences(found, expected) == []


EARLY_STOPPING = ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/loss"]
REFUSED = {
    "an argument the loops do not implement": (
        [*EARLY_STOPPING, "--trainer.callbacks.stopping_threshold=0.1"],
        "trainer.callbacks: EarlyStopping(stopping_threshold=0.1) is not implemented by",
    ),
    "a metric not logged once an epoch": (
        ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor=train/loss"],
        "trainer.callbacks: ModelCheckpoint(monitor='train/loss' (the loops log val/loss, val/acc once an epoch))",
    ),
    "min_epochs, which holds back an early stop": (
        [*EARLY_STOPPING, "--trainer.min_epochs=25"],
        "trainer.min_epochs and min_steps beside an EarlyStopping is not implemented by",
    ),
}


@pytest.mark.parametrize("flags, said", REFUSED.values(), ids=REFUSED)
@pytest.mark.parametrize("side", ["torch", "fabric"])
def test_what_the_loops_would_do_otherwise_is_refused_by_name(side, flags, said, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        fit(side, [*QUIET, *flags])
    assert refused.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {said}"), line
    assert not (tmp_path / "logs").exists()


def test_train_py_refuses_a_monitor_its_module_does_not_log_before_training_naming_what_lightning_would(
    tmp_path, monkeypatch, capsys
):
    """Lightning finds an EarlyStopping's monitor missing at the first epoch's end, and names what is logged;
    train.py refuses it before anything is written, naming the same values."""
    monkeypatch.chdir(tmp_path)
    flags = [*TINY, "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/acc2"]
    with pytest.raises(SystemExit) as refused:
        fit("lightning", flags)
    [line] = capsys.readouterr().err.splitlines()
    said = "error: trainer.callbacks: EarlyStopping(monitor='val/acc2'): it takes "
    assert refused.value.code == 2 and line.startswith(said), line
    assert not (tmp_path / "logs").exists()
    monkeypatch.setattr(CLI, "before_fit", CLI.check_net)  # the negative control: Lightning's own check
    with pytest.raises(RuntimeError, match="`val/acc2` which is not available") as missing:
        fit("lightning", flags)
    available = re.findall(r"`([^`]+)`", str(missing.value).split("following:")[1])
    assert sorted(line.removeprefix(said).split(", ")) == sorted(available)
    monkeypatch.undo()
    (tmp_path / "step").mkdir()
    monkeypatch.chdir(tmp_path / "step")
    # A ModelCheckpoint also takes the epoch and the step, which Lightning adds to what the module logs.
    fit("lightning", [*TINY, "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor=step"])
    kept = Path("logs/lightning/version_0/checkpoints").glob("epoch=*")
    assert [path.name for path in kept] == ["epoch=0-step=3.ckpt"]  # the lowest step, mode="min"


def test_verbose_says_in_the_plain_and_fabric_loops_what_lightning_says(tmp_path):
    """EarlyStopping's and ModelCheckpoint's verbose=True lines: Lightning's words and numbers from the three loops,
    each naming its own checkpoint files."""
    args = [*TINY, "--trainer.max_epochs=8", *EARLY_STOPPING, "--trainer.callbacks.patience=1"]
    args += ["--trainer.callbacks.min_delta=0.01", "--trainer.callbacks.verbose=true"]
    args += ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor=val/acc"]
    args += ["--trainer.callbacks.mode=max", "--trainer.callbacks.save_top_k=2", "--trainer.callbacks.verbose=true"]
    said = {}
    scripts = {"lightning": ["train.py", "fit", *LIGHTNING], "torch": ["train_torch.py"], "fabric": ["train_fabric.py"]}
    for side, script in scripts.items():
        done = run(*script, *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [line for line in done.stderr.splitlines() if line.startswith(("Metric ", "Monitored ", "Epoch "))]
        said[side] = [line.replace(f"logs/{side}/", "logs/").replace(".ckpt'", ".pt'") for line in lines]
    for words in ("improved by", "Signaling Trainer to stop", "was not in top 2", "as top 2"):
        assert any(words in line for line in said["lightning"]), (words, said["lightning"])
    assert said["torch"] == said["lightning"] and said["fabric"] == said["lightning"]


def callbacks(monitor: str, mode: str, save_top_k: int) -> list[str]:
    """An EarlyStopping and a ModelCheckpoint on `monitor`, in `mode`, the second keeping `save_top_k` files."""
    early = ["--trainer.callbacks+=EarlyStopping", f"--trainer.callbacks.monitor={monitor}"]
    early += [f"--trainer.callbacks.mode={mode}", "--trainer.callbacks.patience=3"]
    best = ["--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.monitor={monitor}"]
    best += [f"--trainer.callbacks.mode={mode}", f"--trainer.callbacks.save_top_k={save_top_k}"]
    return [*early, *best]


# A run that kept every epoch's file, resumed from the file of epoch 2 (3 steps an epoch), which holds the record of 3
# files, with the same callbacks or others: the files of the epochs it trains again are there (ModelCheckpoint writes
# epoch=E-step=S-v1 beside them); with save_top_k=3 the file it went on from leaves the record and stays on disk;
# with save_top_k=2, more files than k, none is dropped; another monitor or mode starts the callbacks afresh, as
# Lightning keeps a callback's state under its monitor and mode.
TRAINING = [*TINY, "--trainer.max_epochs=8", DROPOUT]
FIRST = [*TRAINING, *callbacks("val/loss", "min", -1)]
AGAIN = {
    "the same callbacks": callbacks("val/loss", "min", -1),
    "as many files as it kept": callbacks("val/loss", "min", 3),
    "fewer files than it kept": callbacks("val/loss", "min", 2),
    "another monitor and mode": callbacks("val/acc", "max", 2),
}


@pytest.mark.parametrize("callbacks_then", AGAIN)
def test_a_run_going_on_from_a_best_checkpoint_with_other_callbacks_decides_as_lightning(
    callbacks_then, tmp_path, monkeypatch
):
    found = {}
    for side in ("lightning", "torch", "fabric"):
        (tmp_path / side).mkdir()
        monkeypatch.chdir(tmp_path / side)
        fit(side, FIRST)
        run_dir = Path("logs", side, "version_0")
        best = run_dir / "checkpoints" / f"epoch=2-step=9{Path(CHECKPOINT[side]).suffix}"
        spelled = Path("logs", "..", best)  # as a user may write it: Lightning compares paths as written
        again = [*TRAINING, *AGAIN[callbacks_then], f"--ckpt_path={spelled}"]
        if callbacks_then == "another monitor and mode":  # each says that its callbacks start afresh
            said = "callbacks used to create the checkpoint" if side == "lightning" else "starts afresh"
            with warnings.catch_warnings():
                # pytest.warns gives back the other warnings as the warnings module's: pyproject's filter of
                # LightningCLI's, by its module, does not take them.
                warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended", UserWarning)
                with pytest.warns(UserWarning, match=said):
                    fit(side, again)
        else:
            fit(side, again)
        found[side] = decisions(side, run_dir)
        assert best.exists(), side
    assert any(name.endswith("-v1") for name in found["lightning"]["files"])
    if callbacks_then == "as many files as it kept":
        assert "epoch=2-step=9" not in found["lightning"]["kept"]  # dropped from the record, its file kept
    assert differences(found["torch"], found["lightning"]) == []
    assert differences(found["fabric"], found["lightning"]) == []
