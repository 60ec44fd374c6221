"""An interrupted run goes on exactly as it would have gone without the interruption, in all three loops.

Every run here has dropout on, so a resumed run that drew other random numbers than the uninterrupted one would
show. "Exactly": the final checkpoint (weights, optimizer, scheduler, epoch and step, the shuffle generator, the
random state, Lightning's loop counters) is torch.equal to the uninterrupted run's, and so is every scalar the run
directory's TensorBoard files hold, the steps logged after resuming included.
"""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks.progress.progress_bar import get_standard_metrics
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

from conftest import (
    CPU,
    DROPOUT,
    FP16,
    LIGHTNING,
    LONGER,
    QUIET,
    ROOT,
    SCALER,
    TINY,
    allow_fp16_on_cpu,
    ctrl_c,
    ended,
    event_scalars,
    finished,
    fit,
    interrupted,
    kill_and_resume,
    mismatches,
    points,
    register_backward_pre_hook,
    shut_down_workers,
    started,
    write_points,
)

WORKERS = ["--data.num_workers=2", "--data.persistent_workers=true"]
SKIP = {"callbacks", "pytorch-lightning_version"}  # ModelCheckpoint's state holds the run's own paths


def run_dir(cwd: Path, side: str) -> Path:
    """The one run directory a fit wrote: resumed runs go on in the run they resume."""
    [directory] = (cwd / "logs" / side).iterdir()
    return directory


def final(cwd: Path, side: str) -> tuple[dict, dict]:
    """The run's last checkpoint and its TensorBoard scalars."""
    directory = run_dir(cwd, side)
    name = "last.ckpt" if side == "lightning" else "last.pt"
    return torch.load(directory / "checkpoints" / name, weights_only=True), event_scalars(directory)


_references = {}


@pytest.fixture
def reference(tmp_path_factory):
    """The uninterrupted run's final checkpoint and scalars, once per loop and flags."""

    def get(side: str, args: list[str]):
        key = (side, *args)
        if key not in _references:
            cwd = tmp_path_factory.mktemp("reference")
            fit(side, [*args, f"--trainer.logger.init_args.save_dir={cwd / 'logs'}"])
            _references[key] = final(cwd, side)
        return _references[key]

    return get


# --- Ctrl-C, SIGTERM and SIGUSR1 stop after the batch, mid-epoch included ---

# (signal, step it arrives in): the first step, a step mid-epoch, an epoch's last step (then validation runs
# first), the run's last step; SLURM's SIGUSR1 mid-epoch.
STOPS = [(signal.SIGINT, 0), (signal.SIGTERM, 4), (signal.SIGINT, 5), (signal.SIGTERM, 11), (signal.SIGUSR1, 7)]
ENTRY = {
    "lightning": ("python train.py fit", "last.ckpt", "global_step"),
    "torch": ("python train_torch.py", "last.pt", "step"),
    "fabric": ("python train_fabric.py", "last.pt", "step"),
}
SIDES = tuple(ENTRY)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("signum, step", STOPS, ids=[f"{s.name}-step{n}" for s, n in STOPS])
def test_a_signal_stops_after_the_batch_and_resuming_is_bit_identical(
    side, signum, step, tmp_path, monkeypatch, capsys, reference
):
    expected = reference(side, [*TINY, DROPOUT])
    monkeypatch.chdir(tmp_path)
    code, said = interrupted(side, [*TINY, DROPOUT], signum, step, capsys)
    assert code == 128 + signum
    entry, name, step_key = ENTRY[side]
    checkpoint = Path(f"logs/{side}/version_0/checkpoints/{name}")
    assert said.startswith(f"{signum.name}: saved {checkpoint} at step {step + 1} ")
    assert said.endswith(f"resume with: {entry} --config {checkpoint.parents[1]}/config.yaml --ckpt_path {checkpoint}")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved[step_key] == step + 1  # the batch the signal arrived in was finished, no further one
    fit(side, [*TINY, DROPOUT, "--ckpt_path=last"])
    assert mismatches(final(tmp_path, side), expected, SKIP) == []


@pytest.mark.parametrize("side", SIDES)
def test_a_signal_within_a_window_stops_at_its_end_and_resuming_is_bit_identical(
    side, tmp_path, monkeypatch, capsys, reference
):
    """Accumulating 2 of an epoch's 3 batches, in fp16 with its GradScaler: a signal in the backward of the second
    epoch's first batch stops after the step of its window, at step 3 (a checkpoint holds no accumulated
    gradients). The resumed run restores the loss scale with the rest."""
    allow_fp16_on_cpu(monkeypatch)
    args = [*TINY, DROPOUT, "--trainer.accumulate_grad_batches=2", *FP16[side]]
    expected = reference(side, args)
    monkeypatch.chdir(tmp_path)
    code, said = interrupted(side, args, signal.SIGTERM, 3, capsys, register_backward_pre_hook)
    assert code == 143
    assert " at step 3 (epoch 1)" in said, said
    fit(side, [*args, "--ckpt_path=last"])
    assert mismatches(final(tmp_path, side), expected, SKIP) == []
    scaler = final(tmp_path, side)[0][SCALER[side]]
    assert scaler["_growth_tracker"] == 4 * 2  # the scaler counted all 8 steps, the 3 before the stop too


@pytest.mark.parametrize("side", SIDES)
def test_a_32_bit_run_goes_on_in_16_mixed_with_a_new_grad_scaler(side, tmp_path, monkeypatch, capsys):
    """A checkpoint without a scaler's state: Lightning starts a new GradScaler (its MixedPrecision entry is
    missing), and so does the plain loop."""
    allow_fp16_on_cpu(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code, _ = interrupted(side, [*TINY, DROPOUT, CPU], signal.SIGTERM, 4, capsys)
    assert code == 143
    fit(side, [*TINY, DROPOUT, *FP16[side], "--ckpt_path=last"])
    scaler = final(tmp_path, side)[0][SCALER[side]]
    assert scaler["_growth_tracker"] == 12 - 5  # the steps after the stop


@pytest.mark.parametrize("side", SIDES)
def test_resuming_mid_epoch_with_persistent_workers(side, tmp_path, monkeypatch, capsys, reference):
    """New worker processes draw a seed the interrupted run's reused ones did not; it must not shift the shuffle."""
    expected = reference(side, [*TINY, DROPOUT, *WORKERS])
    monkeypatch.chdir(tmp_path)
    code, _ = interrupted(side, [*TINY, DROPOUT, *WORKERS], signal.SIGINT, 4, capsys)
    assert code == 130
    fit(side, [*TINY, DROPOUT, *WORKERS, "--ckpt_path=last"])
    shut_down_workers()
    assert mismatches(final(tmp_path, side), expected, SKIP) == []


@pytest.mark.parametrize("side", SIDES)
def test_last_if_any_starts_a_new_run_then_goes_on_with_it(side, tmp_path, monkeypatch, capsys, reference):
    """A job that a cluster starts again runs the same command: `--ckpt_path last-if-any` starts a new run where there
    is nothing to go on from, and goes on with it after a stop, bit-identically."""
    expected = reference(side, [*TINY, DROPOUT])
    monkeypatch.chdir(tmp_path)
    args = [*TINY, DROPOUT, "--ckpt_path=last-if-any"]
    code, _ = interrupted(side, args, signal.SIGTERM, 4, capsys)
    assert code == 143
    fit(side, args)
    assert [run.name for run in Path("logs", side).iterdir()] == ["version_0"]
    assert mismatches(final(tmp_path, side), expected, SKIP) == []


# What makes Lightning take the process for a SLURM task (SLURMEnvironment.detect) and answer SIGUSR1 itself.
SLURM = {
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "train",
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def test_on_slurm_sigusr1_stops_after_the_batch_instead_of_lightnings_requeue(tmp_path, monkeypatch, capsys, reference):
    """Lightning's SLURM auto-requeue answers SIGUSR1 with a checkpoint of its own from inside the handler, mid-step,
    and a requeue: GracefulStop takes the signal over, and the run stops after the batch as on SIGTERM."""
    expected = reference("lightning", [*TINY, DROPOUT])
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    installed = []  # SIGUSR1's handler once the Trainer has set its own: on SLURM, Lightning's requeue
    register = _SignalConnector.register_signal_handlers

    def registered(connector):
        register(connector)
        installed.append(signal.getsignal(signal.SIGUSR1))

    monkeypatch.setattr(_SignalConnector, "register_signal_handlers", registered)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # as in a new process: Lightning adds its handler to none
    code, said = interrupted("lightning", [*TINY, DROPOUT], signal.SIGUSR1, 7, capsys)
    assert callable(installed[0])  # the control: Lightning took this for SLURM and set its handler
    assert code == 128 + signal.SIGUSR1
    assert said.startswith("SIGUSR1: saved logs/lightning/version_0/checkpoints/last.ckpt at step 8 "), said
    assert not list(tmp_path.rglob("hpc_ckpt_*.ckpt"))  # Lightning's requeue checkpoint
    fit("lightning", [*TINY, DROPOUT, "--ckpt_path=last"])
    assert mismatches(final(tmp_path, "lightning"), expected, SKIP) == []


def test_the_stop_checkpoint_holds_the_position_within_the_epoch(tmp_path, monkeypatch, capsys):
    """Mid-epoch, the training DataLoader's state says how far the epoch got and in which order."""
    monkeypatch.chdir(tmp_path)
    interrupted("lightning", [*TINY, DROPOUT], signal.SIGTERM, 4, capsys)  # epoch 1, its second batch
    saved = torch.load("logs/lightning/version_0/checkpoints/last.ckpt", weights_only=True)
    [loader] = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader["batches"] == 2 and sorted(loader["order"].tolist()) == list(range(90))
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 2


def test_without_the_random_state_a_resumed_run_with_dropout_differs(tmp_path, monkeypatch, capsys, reference):
    """The negative control: the checkpoint's random state is what makes the run above identical."""
    expected = reference("lightning", [*TINY, DROPOUT])
    monkeypatch.chdir(tmp_path)
    interrupted("lightning", [*TINY, DROPOUT], signal.SIGINT, 4, capsys)
    path = Path("logs/lightning/version_0/checkpoints/last.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["rng"]
    torch.save(checkpoint, path)
    fit("lightning", [*TINY, DROPOUT, "--ckpt_path=last"])
    assert ".state_dict.net.layers.0.weight" in mismatches(final(tmp_path, "lightning"), expected, SKIP)


@pytest.mark.parametrize("side", SIDES)
def test_ckpt_path_last_alone_goes_on_with_the_runs_own_settings(side, tmp_path, monkeypatch, capsys, reference):
    """The model's and the data's settings and max_epochs come from the checkpoint, not from configs/default.yaml."""
    expected = reference(side, [*TINY, DROPOUT])
    monkeypatch.chdir(tmp_path)
    interrupted(side, [*TINY, DROPOUT], signal.SIGINT, 7, capsys)
    fit(side, [*QUIET, "--boundary.every_n_epochs=0", "--ckpt_path=last"])
    assert mismatches(final(tmp_path, side), expected, SKIP) == []


@pytest.mark.parametrize("side", SIDES)
def test_ckpt_path_last_alone_goes_on_with_the_runs_csv_of_5_features(side, tmp_path, monkeypatch, capsys, reference):
    """data.dataset, a CSV, comes from the checkpoint, and with it model.net of 5 inputs, built to take it."""
    generator = torch.Generator().manual_seed(5)
    X, y = torch.randn(300, 5, generator=generator), torch.arange(300) % 3
    path = write_points(tmp_path / "five.csv", X, y)
    args = [*TINY, DROPOUT, *points(path, features=5)]
    expected = reference(side, args)
    monkeypatch.chdir(tmp_path)
    interrupted(side, args, signal.SIGINT, 7, capsys)
    fit(side, [*QUIET, "--boundary.every_n_epochs=0", "--ckpt_path=last"])
    assert mismatches(final(tmp_path, side), expected, SKIP) == []


def test_a_resumed_run_is_shown_with_its_own_version(tmp_path, monkeypatch, capsys):
    """The progress bar's v_num, from the logger's version: the interrupted run's number, not a new one."""
    monkeypatch.chdir(tmp_path)
    interrupted("lightning", [*TINY, DROPOUT], signal.SIGINT, 4, capsys)
    (tmp_path / "logs" / "lightning" / "version_7").mkdir()  # a later run that left no checkpoint
    cli = fit("lightning", [*TINY, DROPOUT, "--ckpt_path=logs/lightning/version_0/checkpoints/last.ckpt"])
    assert get_standard_metrics(cli.trainer)["v_num"] == 0


def test_the_plain_loops_stop_checkpoint_holds_the_position_within_the_epoch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    interrupted("torch", [*TINY, DROPOUT], signal.SIGTERM, 4, capsys)  # epoch 1, its second batch
    saved = torch.load("logs/torch/version_0/checkpoints/last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["loader"]["batches"] == 2 and not saved["loader"]["epoch_done"]
    assert sorted(saved["loader"]["order"].tolist()) == list(range(90))


# --- SIGKILL at random moments, as a pre-empted job or the out-of-memory killer would ---


KILLS = [
    ("train.py", "lightning", "last.ckpt", 2),
    ("train_torch.py", "torch", "last.pt", 2),
    ("train_fabric.py", "fabric", "last.pt", 2),
]


@pytest.mark.parametrize("script, side, checkpoint, kills", KILLS, ids=[side for _, side, _, _ in KILLS])
def test_sigkill_at_random_moments_then_resume_is_bit_identical(script, side, checkpoint, kills, tmp_path, reference):
    expected = reference(side, [*LONGER, DROPOUT])
    args = ["fit", *LIGHTNING, *LONGER, DROPOUT] if side == "lightning" else [*LONGER, DROPOUT]
    seed = random.randrange(2**32)
    history = kill_and_resume(script, args, tmp_path, checkpoint, kills=kills, seed=seed)
    assert sum("exit -9" in line for line in history) >= 1, history  # a kill landed
    assert mismatches(final(tmp_path, side), expected, SKIP) == [], (seed, history)


def test_ctrl_c_in_a_terminal_reaches_the_workers_too_and_the_run_still_stops_cleanly(tmp_path, reference):
    """A terminal sends Ctrl-C to its whole process group: the DataLoader's worker processes get it too."""
    expected = reference("lightning", [*LONGER, DROPOUT, *WORKERS])
    command = [sys.executable, str(ROOT / "train.py"), "fit", *LIGHTNING, *LONGER, DROPOUT, *WORKERS]
    checkpoint = tmp_path / "logs" / "lightning" / "version_0" / "checkpoints" / "last.ckpt"
    code, stderr = ctrl_c(command, tmp_path, checkpoint)
    assert code == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("SIGINT: saved logs/lightning/version_0/checkpoints")
    resumed = finished([*command, "--ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert mismatches(final(tmp_path, "lightning"), expected, SKIP) == []


@pytest.mark.parametrize(
    "script, side", [("train.py", "lightning"), ("train_torch.py", "torch"), ("train_fabric.py", "fabric")]
)
def test_a_second_ctrl_c_right_after_the_first_stops_at_once_in_one_line(script, side, tmp_path):
    """Within milliseconds of the first, the second can land anywhere: in the stop's own checkpoint write, in the
    handling of the first, in Lightning's code. Exit 130 (or death by SIGINT, which a shell reports as 130)."""
    args = ["fit", *LIGHTNING] if side == "lightning" else []
    command = [sys.executable, str(ROOT / script), *args, *LONGER, DROPOUT]
    process = started(command, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = tmp_path / "logs" / side / "version_0" / "checkpoints" / ENTRY[side][1]
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for _ in range(2):
        process.send_signal(signal.SIGINT)
        time.sleep(0.005)
    _, stderr = ended(process, 120)
    said = stderr.decode()
    assert process.returncode in (130, -signal.SIGINT), said[-3000:]
    assert "Traceback" not in said and said.strip().splitlines()[-1].startswith("SIGINT: "), said[-3000:]
    assert torch.load(checkpoint, weights_only=True)  # whole: the last one written, or the stop's


@pytest.mark.parametrize("script", ["train.py", "train_torch.py", "train_fabric.py"])
def test_ctrl_c_while_the_libraries_load_is_one_line_and_130(script, tmp_path):
    """0.3 s in, the script is still importing torch and Lightning; nothing has been written."""
    command = [sys.executable, str(ROOT / script), *(["fit"] if script == "train.py" else [])]
    process = started(command, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = ended(process, 60)
    assert process.returncode == 130 and stderr.decode().split() == ["SIGINT:", "stopped", "at", "once"], stderr
    assert not any(tmp_path.iterdir())
