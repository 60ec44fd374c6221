"""Shared helpers for the tests.

Threads: torch runs single-threaded here, and OMP_NUM_THREADS=1 is passed to every subprocess, because
a model this small trains several times faster on one thread than on many on a small shared CPU.
The equivalence tests run the three loops under the same setting.
"""

import contextlib
import gc
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter
from torch.utils.tensorboard import SummaryWriter

from {{ cookiecutter.package_name }}.machinery.stopping import STOP_SIGNALS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # train.py and train_torch.py

torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
# What a project script runs with in a subprocess: the package importable, installed or not.
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

# The runs the tests make, one family: a test adds what it is about to one of them, by name (DROPOUT) or spelled out.
# Flags the three entry points take to run quietly; tests add their own log directory.
QUIET = ["--trainer.enable_progress_bar=false"]
LIGHTNING = ["--trainer.enable_model_summary=false"]  # Lightning's alone: the plain loop prints no summary
# The equivalence tests' run: 600 points; 360 train in batches of 64, the last of 40 (6 steps an epoch); 120 validate.
SMALL = ["--trainer.max_epochs=3", "--data.dataset.points_per_class=200"]
# The quickest run: 150 points; 90 train in batches of 32, 32 and 26 (3 steps an epoch, 12 in all); 30 validate, in
# one batch; no animation.
TINY_EPOCHS, TINY_STEPS_PER_EPOCH = 4, 3
TINY = [
    *QUIET,
    f"--trainer.max_epochs={TINY_EPOCHS}",
    "--data.dataset.points_per_class=50",
    "--data.batch_size=32",
    "--boundary.every_n_epochs=0",
]
# A run long enough to stop by a signal or a kill at a random moment: the default 1800 training points, 29 steps an
# epoch (15 a process under DDP), 14 epochs.
LONGER = [*QUIET, "--trainer.max_epochs=14", "--boundary.every_n_epochs=0"]
# Random draws in training: a resumed or distributed run that drew other numbers than the reference would show.
DROPOUT = "--model.net.dropout=0.3"

# Two CPU processes (gloo), launched as a user launches them: Lightning and Fabric each start their second process
# themselves, the plain loop runs under `torchrun` (torch.distributed.run's console script; the module runs where the
# script is not installed).
TWO_PROCESSES = ["--trainer.devices=2", "--trainer.accelerator=cpu"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# Their run: 180 training points, 90 a process, batches of 32, 32, 26; 60 validation points, 30 a process, batches
# 25, 5, whose metrics torchmetrics reduces over both processes.
HALVES = [
    *QUIET,
    "--trainer.max_epochs=4",
    "--data.dataset.points_per_class=100",
    "--data.batch_size=32",
    "--data.val_batch_size=25",
    DROPOUT,
    "--boundary.every_n_epochs=2",
]
# Windows of 2 of each process's 3 batches an epoch: a full one, then a partial one; clipping that bites.
ACCUMULATING = ["--trainer.accumulate_grad_batches=2", "--trainer.gradient_clip_val=0.05"]


def launch(command: list[str], cwd: Path, side: str) -> Path:
    """Run `command`, one of `side`'s, to its end in `cwd`; the run directory, which rank 0 alone made."""
    cwd.mkdir(exist_ok=True)
    done = finished(command, cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    [directory] = (cwd / "logs" / side).iterdir()
    return directory


# fp16 with a GradScaler: Lightning runs precision="16-mixed" on GPUs alone (on the CPU it warns and switches to
# bf16-mixed), and the entry points refuse it there. torch's fp16 autocast and GradScaler run on the CPU too: the
# tests run them there, Lightning's side through its MixedPrecision plugin, given directly.
PLUGIN = {
    "class_path": "lightning.pytorch.plugins.MixedPrecision",
    "init_args": {"precision": "16-mixed", "device": "cpu"},
}
CPU = "--trainer.accelerator=cpu"  # the plugin's device, also where a GPU is at hand
# train_fabric.py gives Fabric the plugin of the same name, Fabric's.
FP16 = {
    "lightning": [f"--trainer.plugins+={json.dumps(PLUGIN)}", CPU],
    "torch": ["--trainer.precision=16-mixed", CPU],
    "fabric": [f"--trainer.plugins+={json.dumps(PLUGIN)}", CPU],
}


def allow_fp16_on_cpu(monkeypatch) -> None:
    """Lift the plain and Fabric loops' refusal of 16-mixed on the CPU, and that alone, for one test."""
    from {{ cookiecutter.package_name }} import scripts

    refuse = scripts.settings_problem

    def settings_problem(config):
        config = config.clone()
        config.trainer.precision = None  # every other refusal stands
        return refuse(config)

    monkeypatch.setattr(scripts, "settings_problem", settings_problem)


def fit(side: str, args: list[str]):
    """The real entry point of one side, `lightning`, `torch` or `fabric`, in this process:
    `train.main(["fit", ...])` (without the model summary, which the plain loop does not print),
    `train_torch.main` or `train_fabric.main`."""
    import train  # the project's root, on sys.path since above
    import train_fabric
    import train_torch

    if side == "lightning":
        return train.main(["fit", *LIGHTNING, *args])
    return (train_torch if side == "torch" else train_fabric).main(args)


# A run of the tests' small settings that takes longer than this hangs: a defect to find, not a flake to retry.
HANG = 300


def started(command: list[str], cwd: Path, **options) -> subprocess.Popen:
    """`command` started in a session of its own, so that `ended` can end every process it starts."""
    return subprocess.Popen(command, cwd=cwd, env=ENV, start_new_session=True, **options)


def ended(process: subprocess.Popen, timeout: float = HANG) -> tuple:
    """What `process` wrote (stdout, stderr), once it ended. Past `timeout` seconds it and every process it started,
    however deep, are killed by their ids and the test fails: a launcher's workers too, which torchrun starts in
    sessions of their own, and which would otherwise live on, holding the output pipes open."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(process.pid), process.pid]:  # found first: once their parent dies, they move
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"{shlex.join(map(str, process.args))}: hung, killed after {timeout} s\n{stderr!s:.3000}")


def descendants(pid: int) -> list[int]:
    """The processes that `pid` started, and those they started, to any depth."""
    children = defaultdict(list)
    for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        child, parent = map(int, line.split())
        children[parent].append(child)
    found, parents = [], [pid]
    while parents:
        started_by = children[parents.pop()]
        found += started_by
        parents += started_by
    return found


def finished(command: list[str], cwd: Path, timeout: float = HANG) -> subprocess.CompletedProcess:
    """`command` run to its end (see `ended`), what it wrote captured as text."""
    process = started(command, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = ended(process, timeout)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a project script as a user would, in `cwd`."""
    return finished([sys.executable, str(ROOT / script), *args], cwd)


def ctrl_c(command: list[str], cwd: Path, checkpoint: Path) -> tuple[int, str]:
    """Start `command` as a terminal would and press Ctrl-C at a random moment after `checkpoint` first appears: a
    terminal sends SIGINT to every process of the job. The exit code and what it wrote to stderr."""
    process = started(command, cwd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0, 0.5))
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = ended(process, 120)
    return process.returncode, stderr.decode()


CHECKPOINT = {"lightning": "last.ckpt", "torch": "last.pt", "fabric": "last.pt"}  # the Fabric loop's: the plain's
# Where each side's checkpoint keeps the GradScaler's state: Lightning's under its precision plugin's name.
SCALER = {"lightning": "MixedPrecision", "torch": "scaler", "fabric": "scaler"}


def final_state(side: str, directory: Path, name: str | None = None) -> dict:
    """The final weights, optimizer, scheduler and GradScaler state in a run's checkpoint (or in checkpoints/`name`),
    named alike for both."""
    checkpoint = torch.load(directory / "checkpoints" / (name or CHECKPOINT[side]), weights_only=True)
    if side != "lightning":
        return {key: checkpoint[key] for key in ("model", "optimizer", "scheduler", SCALER[side])}
    weights = {name.removeprefix("net."): tensor for name, tensor in checkpoint["state_dict"].items()}
    optimizer, scheduler = checkpoint["optimizer_states"][0], checkpoint["lr_schedulers"][0]
    scaler = checkpoint.get(SCALER[side], {})  # the precision plugin's state, where it has one: 16-mixed
    return {"model": weights, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}


def shut_down_workers() -> None:
    """Stop the DataLoader worker processes that runs in this process left (persistent workers, a stopped run's),
    while their queues are open. Left to the garbage collector, which may close a worker's queue before the
    iterator that shuts the worker down, each worker costs a 5 s timeout."""
    for iterator in [o for o in gc.get_objects() if type(o) is _MultiProcessingDataLoaderIter]:
        iterator._shutdown_workers()
    gc.collect()


def write_points(path: Path, X: torch.Tensor, y: torch.Tensor) -> Path:
    """A user's CSV: a header, then each of X's rows and its label, `x1,...,xn,label`, the values exact."""
    header = ",".join([*(f"x{i}" for i in range(1, X.shape[1] + 1)), "label"])
    rows = [",".join([*map(repr, x), str(label)]) for x, label in zip(X.tolist(), y.tolist(), strict=True)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def points(path: Path, features: int = 2, classes: int = 3) -> list[str]:
    """The flags that train on a CSV of points, `features` and a label in 0..classes-1 a line: the Points dataset,
    and the network's inputs and outputs to match (README's "Your own data")."""
    return [
        "--data.dataset={{ cookiecutter.package_name }}.data.Points",
        f"--data.dataset.path={path}",
        f"--data.dataset.classes={classes}",
        f"--model.classes={classes}",
        f"--model.net.in_features={features}",
        f"--model.net.out_features={classes}",
    ]


def event_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run's TensorBoard event files: tag -> [(step, value)]."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture
def written(monkeypatch) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Every add_scalar call, exactly as passed, by log directory: the loops write through SummaryWriter."""
    calls = defaultdict(lambda: defaultdict(list))
    original = SummaryWriter.add_scalar

    def add_scalar(self, tag, value, global_step=None, *args, **kwargs):
        calls[Path(self.log_dir).parent.name][tag].append((global_step, float(value)))
        return original(self, tag, value, global_step, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar)
    return calls


def mismatches(run: tuple[dict, dict], reference: tuple[dict, dict], skip: frozenset = frozenset()) -> list[str]:
    """Everything in which a run differs from a reference run, each given as (state, scalars): a checkpoint or the
    final weights and optimizer state (`differences`; `skip`: keys left out), and every TensorBoard series, tag ->
    [(step, value)], its steps equal and its values torch.equal. [] when they are identical."""
    (state, scalars), (expected_state, expected_scalars) = run, reference
    found = differences(state, expected_state, skip=skip)
    for tag in sorted(scalars.keys() | expected_scalars.keys()):
        if tag not in scalars or tag not in expected_scalars:
            found.append(f"scalars {tag}: in one run alone")
        elif differences(series(scalars[tag]), series(expected_scalars[tag])):
            found.append(f"scalars {tag}")
    return found


def series(points: list[tuple[int, float]]) -> tuple[list[int], torch.Tensor]:
    """A TensorBoard series as its steps and its values, float64 (which holds every float32 and Python float)."""
    return [step for step, _ in points], torch.tensor([value for _, value in points], dtype=torch.float64)


def differences(a, b, path: str = "", skip: frozenset = frozenset()) -> list[str]:
    """Where two nested structures of tensors, dicts, lists and plain values are not identical (`skip`: dict keys)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path} keys {sorted(map(str, a))} != {sorted(map(str, b))}"]
        return [d for key in a if key not in skip for d in differences(a[key], b[key], f"{path}.{key}", skip)]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]", skip)]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


class SendAt:
    """Sends `signum` to this process from inside the `step`-th call (counted from 0) of what it is hooked to: by
    default the optimizer step."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step, self.calls = signum, step, 0

    def __call__(self, *hooked) -> None:
        if self.calls == self.step:
            os.kill(os.getpid(), self.signum)  # Python runs the handler here, before Adam updates a weight
        self.calls += 1


def register_backward_pre_hook(hook) -> types.SimpleNamespace:
    """register_optimizer_step_pre_hook's like for Tensor.backward: `hook` runs before every backward."""
    original = torch.Tensor.backward

    def backward(tensor, *args, **kwargs):
        hook(tensor, args, kwargs)
        return original(tensor, *args, **kwargs)

    torch.Tensor.backward = backward
    return types.SimpleNamespace(remove=lambda: setattr(torch.Tensor, "backward", original))


def interrupted(
    side: str, args: list[str], signum: int, step: int, capsys, register=register_optimizer_step_pre_hook
) -> tuple[int | str, str]:
    """Run with `signum` arriving in the step-th optimizer step (or what `register` hooks); the exit code and the
    last line on stderr."""
    handle = register(SendAt(signum, step))
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        with pytest.raises(SystemExit) as stop:
            fit(side, args)
    finally:
        handle.remove()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    shut_down_workers()  # the stopped run's, before the next run starts its own
    # TensorBoard reads a run's event files in the order of their names: the second each was opened, then a count
    # of the process's writers, compared as text ("...17.10" before "...17.9"). A resumed run in this process must
    # open its file in a later second, as a resumed run in a new process does.
    time.sleep(1 - time.time() % 1)
    lines = capsys.readouterr().err.strip().splitlines()
    return stop.value.code, lines[-1] if lines else ""


# --- SIGKILL at random moments, as a pre-empted job or the out-of-memory killer would ---


def newest_write(path: Path) -> float:
    return path.stat().st_mtime_ns if path.exists() else 0


def kill_and_resume(script: str, args: list[str], cwd: Path, checkpoint: str, kills: int, seed: int) -> list[str]:
    """SIGKILL the run at a random moment after each new checkpoint, `kills` times; resume each time with
    `--ckpt_path last`; then let it finish. Returns what happened, for the assertion messages."""
    rng, history = random.Random(seed), []
    for attempt in range(kills + 1):
        path = next((cwd / "logs").glob(f"*/version_*/checkpoints/{checkpoint}"), None)
        written = newest_write(path) if path else 0
        resume = ["--ckpt_path=last"] if path else []
        command = [sys.executable, str(ROOT / script), *args, *resume]
        process = started(command, cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if attempt < kills:
            deadline = time.monotonic() + 120
            while process.poll() is None and time.monotonic() < deadline:  # until it writes a checkpoint
                path = next((cwd / "logs").glob(f"*/version_*/checkpoints/{checkpoint}"), None)
                if path and newest_write(path) != written:
                    break
                time.sleep(0.02)
            delay = rng.uniform(0, 0.5)
            time.sleep(delay)
            process.kill()
        _, stderr = ended(process)
        how = f"killed {delay:.2f}s after a checkpoint" if attempt < kills else "to the end"
        history.append(f"run {attempt}: exit {process.returncode}, {how}")
        if attempt < kills and process.returncode != -signal.SIGKILL:
            assert process.returncode == 0, stderr.decode()[-3000:]
            break  # it finished before the kill
    assert process.returncode == 0, stderr.decode()[-3000:]
    return history
