"""Checkpoints are never torn, a loss that turns NaN stops the run by name, a bad checkpoint is refused in one line.

The entry points, `python train.py fit`, `python train_torch.py` and `python train_fabric.py`, the way a user meets
each failure.
"""

import io
import itertools
import multiprocessing
import os
import signal
import time
import zipfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch import loggers
from torch.nn import functional as F
from torch.utils.tensorboard import SummaryWriter

import train
from {{ cookiecutter.package_name }}.machinery.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    atomic_save,
)
from {{ cookiecutter.package_name }}.machinery.logger import TensorBoardLogger
from {{ cookiecutter.package_name }}.model import MLP
from {{ cookiecutter.package_name }}.module import SpiralClassifier

from conftest import CHECKPOINT, TINY, event_scalars, fit, run

SIDES = {"train.py fit": "lightning", "train_torch.py": "torch", "train_fabric.py": "fabric"}
MAINS = {entry: lambda args, side=side: fit(side, args) for entry, side in SIDES.items()}
CHECKPOINTS = {entry: f"logs/{side}/version_0/checkpoints/{CHECKPOINT[side]}" for entry, side in SIDES.items()}


def refused(entry: str, args: list[str], capsys) -> str:
    """Run in-process, expect a refusal; the one line it gives."""
    with pytest.raises(SystemExit) as stop:
        MAINS[entry](args)
    assert stop.value.code not in (0, None)
    said = capsys.readouterr().err + (stop.value.code if isinstance(stop.value.code, str) else "")
    assert "Traceback" not in said
    return said.strip().splitlines()[-1]


# --- atomic writes ---


def write_slowly(path: Path, how: str, pipe) -> None:
    """In a child process: write a new checkpoint over `path`, stalling halfway until the parent kills it."""
    save = torch.save

    def stalling_save(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(file, "wb") if isinstance(file, (str, Path)) else file as out:
            out.write(data[: len(data) // 2])
            out.flush()
            pipe.send("halfway")
            time.sleep(60)
            out.write(data[len(data) // 2 :])

    torch.save = stalling_save
    new = {"weights": torch.ones(10_000)}
    {"AtomicCheckpointIO": AtomicCheckpointIO().save_checkpoint, "atomic_save": atomic_save, "torch.save": torch.save}[
        how
    ](new, path)


def kill_halfway(path: Path, how: str) -> None:
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=write_slowly, args=(path, how, sender))
    child.start()
    assert receiver.poll(60) and receiver.recv() == "halfway"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL


# What torch.load raises for a file cut short: OSError or RuntimeError from the zip reader, EOFError at its start.
TORN = (OSError, RuntimeError, EOFError)


@pytest.mark.parametrize("how", ["AtomicCheckpointIO", "atomic_save"])
def test_a_kill_in_the_middle_of_a_write_leaves_the_previous_checkpoint(how, tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_save({"weights": torch.zeros(10_000)}, path)
    kill_halfway(path, how)
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.zeros(10_000))
    [torn] = set(tmp_path.iterdir()) - {path}  # the half-written temporary file: the kill was mid-write
    assert torn.name.startswith(".last.ckpt.") and torn.name.endswith(".tmp")
    alive = path.with_name(f".last.ckpt.{os.getppid()}.tmp")  # the negative control: a live writer's, kept
    alive.write_bytes(b"being written")
    atomic_save({"weights": torch.ones(10_000)}, path)  # the next write cleans up after the killed one
    assert set(tmp_path.iterdir()) == {path, alive}
    with pytest.raises(TORN):
        torch.load(torn, weights_only=True)


def test_without_the_rename_a_kill_in_the_middle_of_a_write_tears_the_checkpoint(tmp_path):
    """The negative control: the same kill during a plain torch.save leaves no checkpoint at all."""
    path = tmp_path / "last.ckpt"
    atomic_save({"weights": torch.zeros(10_000)}, path)
    kill_halfway(path, "torch.save")
    with pytest.raises(TORN):
        torch.load(path, weights_only=True)


def test_lightning_writes_its_checkpoints_through_the_atomic_plugin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = MAINS["train.py fit"]([*TINY, "--trainer.max_epochs=1"])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    # One checkpoint, as the plain loop's last.pt, and no temporary file left behind.
    assert [path.name for path in Path("logs/lightning/version_0/checkpoints").iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("logger_class", [TensorBoardLogger, loggers.TensorBoardLogger], ids=["project", "lightning"])
def test_the_logger_flushes_with_a_checkpoint_not_at_every_step(logger_class, tmp_path, monkeypatch):
    """What Lightning does after each logged step, then what GracefulStop does with each checkpoint; Lightning's
    own logger, the negative control, flushes at every step and adds an `epoch` tag (Lightning issue #20551)."""
    flushes = []
    monkeypatch.setattr(SummaryWriter, "flush", lambda writer: flushes.append(writer.log_dir))
    logger = logger_class(tmp_path, name="run")
    for step in range(3):
        logger.log_metrics({"train/loss": 0.5 + step, "epoch": 0}, step)
        logger.save()
    after_steps = len(flushes)
    getattr(logger, "flush", logger.save)()
    assert len(flushes) == after_steps + 1 and (Path(logger.log_dir) / "hparams.yaml").is_file()
    logger.finalize("success")
    tags = set(event_scalars(Path(logger.log_dir)))
    if logger_class is TensorBoardLogger:
        assert after_steps == 0 and tags == {"train/loss"}
    else:
        assert after_steps == 3 and tags == {"train/loss", "epoch"}


# --- a loss that turns NaN ---


@pytest.fixture
def poison(monkeypatch):
    """Make the loss NaN in the `at`-th training step (grad on) or the `at`-th validation (grad off), from 0."""

    def poison(training: bool, at: int) -> None:
        calls, cross_entropy = itertools.count(), F.cross_entropy

        def poisoned(*args, **kwargs):  # nn.CrossEntropyLoss's forward calls it
            loss = cross_entropy(*args, **kwargs)
            if torch.is_grad_enabled() == training and next(calls) == at:
                return loss * float("nan")
            return loss

        # Not nn.CrossEntropyLoss.forward: a class of torch.nn patched makes jsonargparse refuse model.net's arguments.
        monkeypatch.setattr(F, "cross_entropy", poisoned)

    return poison


# (training step or validation, which one counted from 0, what the run says): step 7 is epoch 2's second step;
# epoch 2's validation comes after step 8.
NANS = {
    "in a training step": (True, 7, "error: train/loss is nan at step 7 (epoch 2)"),
    "in a validation": (False, 2, "error: val/loss is nan at step 8 (epoch 2)"),
}


@pytest.mark.parametrize("entry", MAINS)
@pytest.mark.parametrize("name", NANS)
def test_a_nan_loss_stops_the_run_by_step_and_keeps_the_last_good_checkpoint(
    name, entry, tmp_path, monkeypatch, capsys, poison
):
    training, at, message = NANS[name]
    monkeypatch.chdir(tmp_path)
    poison(training, at)
    said = refused(entry, TINY, capsys)
    assert said == f"{message}: training stopped, no checkpoint was written from it"
    checkpoint = torch.load(CHECKPOINTS[entry], weights_only=True)
    assert checkpoint.get("global_step", checkpoint.get("step")) == 6  # epoch 1's, the last good one
    weights = checkpoint.get("state_dict", checkpoint.get("model"))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


@pytest.mark.parametrize("script", ["train.py", "train_torch.py", "train_fabric.py"])
def test_a_learning_rate_that_blows_up_is_one_line_and_no_checkpoint(script, tmp_path):
    """A real divergence, as a user runs it: lr 1e30 makes the second step's loss NaN."""
    subcommand = ["fit"] if script == "train.py" else []
    result = run(script, *subcommand, *TINY, "--model.lr=1e30", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert (
        lines[-1] == "error: train/loss is nan at step 1 (epoch 0): training stopped, no checkpoint was written from it"
    )
    assert not list(tmp_path.glob("logs/*/version_0/checkpoints/*"))


# --- bad checkpoints ---


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A directory holding one tiny Lightning run and one tiny plain-loop run, each with its checkpoint."""
    cwd = tmp_path_factory.mktemp("fitted")
    for main in MAINS.values():
        main([*TINY, "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={cwd / 'logs'}"])
    return cwd


@pytest.fixture
def at_fitted(fitted, tmp_path, monkeypatch) -> Path:
    """A fresh working directory with a copy of both runs' checkpoints in its logs/."""
    for checkpoint in CHECKPOINTS.values():
        (tmp_path / checkpoint).parent.mkdir(parents=True)
        (tmp_path / checkpoint).write_bytes((fitted / checkpoint).read_bytes())
        (tmp_path / checkpoint).parents[1].joinpath("config.yaml").write_bytes(
            (fitted / checkpoint).parents[1].joinpath("config.yaml").read_bytes()
        )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def files(directory: Path) -> set[Path]:
    return {path for path in directory.rglob("*") if path.is_file()}


def truncated(path: Path) -> Path:
    bad = path.with_name("bad" + path.suffix)
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return bad


def text(path: Path) -> Path:
    notes = path.with_name("notes.txt")
    notes.write_text("not a checkpoint\n")
    return notes


def bit_flipped(path: Path) -> Path:
    """One bit flipped in the middle of the largest tensor's bytes: still a zip archive torch.load reads."""
    bad = path.with_name("bad" + path.suffix)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    name_and_extra = int.from_bytes(data[record.header_offset + 26 : record.header_offset + 28], "little")
    name_and_extra += int.from_bytes(data[record.header_offset + 28 : record.header_offset + 30], "little")
    data[record.header_offset + 30 + name_and_extra + record.file_size // 2] ^= 0x10
    bad.write_bytes(data)
    return bad


def settings_edited(path: Path) -> Path:
    """The weights of hidden=128 under settings that say hidden=64 (a checkpoint edited, or put together)."""
    checkpoint = torch.load(path, weights_only=True)
    model = checkpoint["hyper_parameters"] if path.suffix == ".ckpt" else checkpoint["hparams"]["model"]
    model["net"]["init_args"]["hidden"] = 64
    bad = path.with_name("bad" + path.suffix)
    torch.save(checkpoint, bad)
    return bad


def other_loops(path: Path) -> Path:
    return Path(CHECKPOINTS["train_torch.py" if path.suffix == ".ckpt" else "train.py fit"])


BAD = {
    # name: (how to make it from the run's checkpoint, flags, the message's start)
    "a missing file": (lambda path: Path("nope.ckpt"), [], "error: nope.ckpt: no such checkpoint file"),
    "a directory": (lambda path: path.parent, [], "error: {path}: not a file"),
    "a truncated file": (truncated, [], "error: {path}: not a readable checkpoint, truncated or corrupt? ("),
    "a text file": (text, [], "error: {path}: not a readable checkpoint, truncated or corrupt? ("),
    "the other loop's checkpoint": (other_loops, [], "error: {path}: not a checkpoint of "),
    "one bit flipped in a tensor": (bit_flipped, [], "error: {path}: corrupt, its record "),
    "weights that are not its settings' shape": (
        settings_edited,
        [],
        "error: {path} holds a model of another shape: ",
    ),
    "another model shape": (
        lambda path: path,
        ["--model.net.hidden=64"],
        "error: {path} was trained with other settings: model.net.hidden=64 (the checkpoint's: 128); "
        "--config {path.parent.parent}/config.yaml gives the run's own",
    ),
    "another batch size": (
        lambda path: path,
        ["--data.batch_size=16"],
        "error: {path} was trained with other settings: data.batch_size=16 (the checkpoint's: 32)",
    ),
}


@pytest.mark.parametrize("entry", MAINS)
@pytest.mark.parametrize("name", BAD)
def test_a_bad_checkpoint_is_refused_in_one_line_with_nothing_written(name, entry, at_fitted, capsys):
    make, flags, message = BAD[name]
    path = make(Path(CHECKPOINTS[entry]))
    before = files(at_fitted)
    said = refused(entry, [*TINY, "--trainer.max_epochs=1", *flags, f"--ckpt_path={path}"], capsys)
    assert said.startswith(message.format(path=path)), said
    assert files(at_fitted) == before


@pytest.mark.parametrize("entry", MAINS)
def test_ckpt_path_last_without_a_run_is_refused(entry, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    said = refused(entry, [*TINY, "--ckpt_path=last"], capsys)
    side = SIDES[entry]
    assert said == f"error: --ckpt_path last: there is no logs/{side}/version_*/checkpoints/{CHECKPOINT[side]}"
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("entry", MAINS)
def test_ckpt_path_last_refuses_a_newest_run_without_a_checkpoint(entry, at_fitted, capsys):
    """Killed before its first epoch ended, version_1 has its config and no checkpoint: `last` does not pass it
    over for version_0, a run that finished, which would train nothing and exit 0."""
    newest = Path(CHECKPOINTS[entry]).parents[2] / "version_1"
    newest.mkdir()
    (newest / "config.yaml").write_text("seed_everything: 0\n")
    before = files(at_fitted)
    said = refused(entry, [*TINY, "--trainer.max_epochs=1", "--ckpt_path=last"], capsys)
    assert said.startswith(f"error: --ckpt_path last: the newest run, {newest}, stopped before its first checkpoint")
    assert files(at_fitted) == before


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluating_a_checkpoint_with_another_model_shape_is_refused(subcommand, at_fitted, capsys):
    path = CHECKPOINTS["train.py fit"]
    with pytest.raises(SystemExit) as stop:
        train.main([subcommand, *TINY, "--model.net.hidden=64", f"--ckpt_path={path}"])
    assert (
        stop.value.code
        == f"error: {path} was trained with other settings: model.net.hidden=64 (the checkpoint's: 128)"
        + (f"; --config {Path(path).parent.parent}/config.yaml gives the run's own")
    )


def test_a_checkpoint_of_another_shape_is_named_when_it_is_loaded(at_fitted):
    """Past the CLI (load_state_dict in a script, a checkpoint whose hyperparameters were edited): still one line."""
    checkpoint = torch.load(CHECKPOINTS["train.py fit"], weights_only=True)
    with pytest.raises(
        CheckpointError, match=r"another shape: net\.layers\.0\.weight \(128, 2\) \(this model's: \(64, 2\)\)"
    ):
        SpiralClassifier(MLP(hidden=64)).on_load_checkpoint(checkpoint)


@pytest.mark.parametrize("script", ["train.py", "train_torch.py", "train_fabric.py"])
def test_the_entry_points_refuse_a_truncated_checkpoint_without_a_traceback(script, fitted, tmp_path):
    entry = "train.py fit" if script == "train.py" else script
    bad = tmp_path / ("bad" + Path(CHECKPOINTS[entry]).suffix)
    bad.write_bytes((fitted / CHECKPOINTS[entry]).read_bytes()[:1000])
    subcommand = ["fit"] if script == "train.py" else []
    result = run(script, *subcommand, *TINY, f"--ckpt_path={bad}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: not a readable checkpoint")
