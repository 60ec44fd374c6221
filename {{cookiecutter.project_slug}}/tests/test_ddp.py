"""DDP: Lightning's `--trainer.strategy ddp`, the plain loop under `torchrun` and the Fabric loop with Fabric's
`--trainer.strategy ddp` compute the same run.

Two CPU processes each (gloo), launched as a user launches them, on the same flags: Lightning and Fabric each
start their second process themselves. Rank 0's TensorBoard series are equal value for value, and the final
checkpoints hold torch.equal weights, optimizer and scheduler state. Dropout is on, so the processes' random
numbers must line up too.
"""

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import (
    ACCUMULATING,
    CHECKPOINT,
    DROPOUT,
    HALVES,
    LIGHTNING,
    LONGER,
    QUIET,
    ROOT,
    TORCHRUN,
    TWO_PROCESSES,
    ctrl_c,
    differences,
    ended,
    event_scalars,
    final_state,
    finished,
    launch,
    mismatches,
    started,
)

DDP = ["--trainer.strategy=ddp", *TWO_PROCESSES]
# Each loop's entry point with its flags, and what launches it: Lightning and Fabric start their second process
# themselves, torchrun the plain loop's two.
ENTRY = {
    "lightning": ["train.py", "fit", *DDP, *LIGHTNING],
    "torch": ["train_torch.py"],
    "fabric": ["train_fabric.py", *DDP],
}
LAUNCHER = {"lightning": [sys.executable], "torch": TORCHRUN, "fabric": [sys.executable]}
COMMANDS = {side: [*LAUNCHER[side], str(ROOT / script), *flags] for side, (script, *flags) in ENTRY.items()}
SIDES = tuple(COMMANDS)
TAGS = {"train/loss", "train/lr", "val/loss", "val/acc"}  # what the essay's experiment logs, at least


def test_lightning_ddp_the_plain_loop_under_torchrun_and_fabric_ddp_are_identical(tmp_path):
    runs = {side: launch([*COMMANDS[side], *HALVES], tmp_path, side) for side in SIDES}
    for directory in runs.values():
        assert len(list(directory.glob("events.out.tfevents.*"))) == 1  # rank 0 alone logs
        with Image.open(directory / "decision_boundary.gif") as gif:
            assert gif.n_frames == 2

    scalars = {side: event_scalars(directory) for side, directory in runs.items()}
    plain_scalars = scalars["torch"]
    assert TAGS <= set(plain_scalars)
    assert len(plain_scalars["train/loss"]) == 4 * 3  # each process trained on its half: 3 steps an epoch
    plain = (final_state("torch", runs["torch"]), plain_scalars)
    for side in ("lightning", "fabric"):  # every tag either writes, yours too
        assert mismatches((final_state(side, runs[side]), scalars[side]), plain) == [], side

    # The control: one process on all the data is another run, so the equality above is DDP's.
    single = finished([sys.executable, str(ROOT / "train_torch.py"), *HALVES], tmp_path)
    assert single.returncode == 0
    single_scalars = event_scalars(tmp_path / "logs" / "torch" / "version_1")
    assert single_scalars["train/loss"][:3] != plain_scalars["train/loss"][:3]


# The negative controls, run under torchrun: the plain loop without DDP's no_sync on the batches it accumulates,
# and the Fabric loop without fabric.no_backward_sync.
WITHOUT_NO_SYNC = """
import runpy
import sys
from contextlib import nullcontext

from lightning.fabric import Fabric
from {{ cookiecutter.package_name }}.machinery.plain_run import PlainRun

PlainRun.no_sync = lambda self, accumulating: nullcontext()
Fabric.no_backward_sync = lambda self, module, enabled=True: nullcontext()
sys.path.insert(0, ROOT)
sys.argv[0] = SCRIPT
runpy.run_path(SCRIPT, run_name="__main__")
"""


def test_accumulating_under_ddp_is_identical_and_needs_no_sync(tmp_path):
    """The three loops under DDP, accumulating: equal series and final states. Without no_sync, which Lightning
    puts around the batches it accumulates, each batch's gradients are averaged over the processes and then added
    up, where no_sync adds them up in each process and averages once: other bits (the pitfalls lab's row 11f counts
    the all-reduces too)."""
    runs = {side: launch([*COMMANDS[side], *HALVES, *ACCUMULATING], tmp_path / side, side) for side in SIDES}
    plain = runs["torch"]
    assert len(event_scalars(plain)["train/loss"]) == 4 * 2  # 2 steps an epoch
    for side in ("lightning", "fabric"):
        outcome = (final_state(side, runs[side]), event_scalars(runs[side]))
        assert mismatches(outcome, (final_state("torch", plain), event_scalars(plain))) == [], side

    for side in ("torch", "fabric"):  # Fabric under torchrun: the DDP of the processes torchrun started
        cwd = tmp_path / f"without_{side}"
        cwd.mkdir()
        script = cwd / "without_no_sync.py"
        entry = repr(str(ROOT / f"train_{side}.py"))
        script.write_text(WITHOUT_NO_SYNC.replace("ROOT", repr(str(ROOT))).replace("SCRIPT", entry))
        done = finished([*TORCHRUN, str(script), *HALVES, *ACCUMULATING], cwd)
        assert done.returncode == 0, done.stderr[-3000:]
        changed = differences(final_state(side, cwd / "logs" / side / "version_0"), final_state("torch", plain))
        assert ".model.layers.0.weight" in changed and ".optimizer.state.0.exp_avg" in changed, side


# A signal at a chosen batch, as a scheduler would send it: in each process of the command, the training loader,
# handing out batch 5 of epoch 1 in the process of the given LOCAL_RANK, sends the signal to its target and waits;
# under torchrun, in its first attempt alone.
SIGNAL_AT_A_BATCH = """
import importlib
import os
import signal
import sys
import time

from {{ cookiecutter.package_name }}.machinery import script
from {{ cookiecutter.package_name }}.machinery.loaders import ResumableLoader

count = ResumableLoader._count


def counted(self, iterator):
    for batch in count(self, iterator):
        chosen = os.environ.get("LOCAL_RANK", "0") == "%(rank)s" and self.batches == 5 and self.sampler.epoch == 1
        if chosen and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            open("signalled", "w").close()  # the tests' evidence that it was sent
            os.kill(%(target)s, %(signal)s)
            time.sleep(1)  # a signal torchrun's agent passes on reaches the processes meanwhile
        yield batch


ResumableLoader._count = counted
sys.path.insert(0, "%(root)s")
# Imported, not run as __main__: Lightning's and Fabric's launchers start this file again for rank 1.
script.run(importlib.import_module("%(entry)s").main)
"""
# Who gets the signal, the process of LOCAL_RANK 1 alone (a scheduler signals the processes one by one, and may stop
# at one) or all of them, os.kill(0, ...), the process group; torchrun's agent for the plain loop, which passes it on.
SIGNALS = {
    "ddp": {  # with DataLoader workers (DRAWING), which ignore SIGUSR1 (and Ctrl-C), not SIGTERM: docs/ddp.md
        "lightning": ("1", "os.getpid()", "signal.SIGUSR1"),
        "torch": ("0", "os.getppid()", "signal.SIGUSR1"),  # passed on, as the agent is told below
        "fabric": ("0", "0", "signal.SIGUSR1"),
    },
    "fsdp2": {
        "lightning": ("0", "0", "signal.SIGTERM"),
        "torch": ("0", "os.getppid()", "signal.SIGTERM"),
        "fabric": ("1", "os.getpid()", "signal.SIGUSR1"),
    },
}
SIGUSR1_TOO = ["--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"]  # torchrun passes these on
# Under DDP, a sample's random draws (dropout on the inputs, as augmentation) in a worker that persists: each sample
# draws from its own seed, which the resumed run draws again (DistributedShare).
DRAWING = ["--data.augment=torch.nn.functional.dropout", "--data.num_workers=1", "--data.persistent_workers=true"]


def signalling(cwd: Path, side: str, rank: str, target: str, signum: str) -> str:
    """SIGNAL_AT_A_BATCH around `side`'s entry point, written in `cwd`: its path."""
    script = cwd / "signal_at_a_batch.py"
    entry = ENTRY[side][0].removesuffix(".py")
    script.write_text(SIGNAL_AT_A_BATCH % dict(rank=rank, target=target, signal=signum, root=ROOT, entry=entry))
    return str(script)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_a_signal_under_ddp_stops_every_process_mid_epoch_and_resuming_gives_the_uninterrupted_run(strategy, tmp_path):
    """SIGUSR1 to one process, or SIGTERM to all (through torchrun's agent for the plain loop): the processes agree
    to stop after the same step, in the middle of epoch 1, save it and exit with the signal's code; `--ckpt_path
    last` goes on bit-identically, each process with the rest of its share of the epoch, its samples' random draws
    too (under DDP, from a worker). Under DDP and under FSDP2, whose processes gather the checkpoint from their
    shards. One uninterrupted run for the three: the loops compute the same run (the test above, and
    tests/test_fsdp2.py)."""
    args = [f"--trainer.strategy={strategy}", *LONGER, DROPOUT, *(DRAWING if strategy == "ddp" else [])]
    expected = launch([*COMMANDS["torch"], *args], tmp_path / "reference", "torch")
    for side in SIDES:
        cwd = tmp_path / side
        cwd.mkdir()
        rank, target, signum = SIGNALS[strategy][side]
        launcher = [*LAUNCHER[side], *(SIGUSR1_TOO if side == "torch" else [])]
        done = finished([*launcher, signalling(cwd, side, rank, target, signum), *ENTRY[side][1:], *args], cwd)
        assert done.returncode != 0, f"{side} finished before the signal"
        name = signum.removeprefix("signal.")
        said = [line for line in done.stderr.splitlines() if line.startswith(f"{name}: saved ")]
        assert len(said) == 1, (side, done.stderr[-3000:])  # rank 0 says it
        if side != "torch":  # torchrun reports its failed processes its own way
            assert done.returncode == 128 + getattr(signal, name), (side, done.stderr[-3000:])
        checkpoint = torch.load(cwd / "logs" / side / "version_0" / "checkpoints" / CHECKPOINT[side], weights_only=True)
        step = checkpoint["global_step" if side == "lightning" else "step"]
        assert 15 < step < 30, (side, step)  # in the middle of epoch 1: 15 steps an epoch

        resumed = launch([*COMMANDS[side], *args, "--ckpt_path=last"], cwd, side)
        outcome = (final_state(side, resumed), event_scalars(resumed))
        assert mismatches(outcome, (final_state("torch", expected), event_scalars(expected))) == [], side


# Around an entry point: what of the run is still alive in each process once script.run returns, before the exit.
LEFT_ALIVE = """
import gc
import importlib
import os
import sys

import torch

from {{ cookiecutter.package_name }}.machinery import script
from {{ cookiecutter.package_name }}.machinery.stopping import StopRequest

sys.path.insert(0, "%(root)s")
script.run(importlib.import_module("%(entry)s").main)
alive = sorted({type(o).__name__ for o in gc.get_objects() if isinstance(o, (torch.nn.Module, StopRequest))})
print(f"rank {os.environ.get('LOCAL_RANK', '0')} left alive: {alive}", file=sys.stderr)
"""


def test_each_process_frees_its_model_and_its_process_groups_before_it_exits(tmp_path):
    """Under FSDP2, in the three loops: the model, the trainer's objects and the stop vote's process group
    (StopRequest's) are freed before the interpreter's exit, where a group's threads may abort the process (SIGABRT,
    "terminate called without an active exception", once in a resumed FSDP2 run). jsonargparse keeps its last parser
    in a context variable, and with it the LightningCLI and all it made: script.run runs main() in a context of its
    own."""
    for side in SIDES:
        cwd = tmp_path / side
        cwd.mkdir()
        script = cwd / "left_alive.py"
        script.write_text(LEFT_ALIVE % dict(root=ROOT, entry=ENTRY[side][0].removesuffix(".py")))
        done = finished([*LAUNCHER[side], str(script), *ENTRY[side][1:], "--trainer.strategy=fsdp2", *HALVES], cwd)
        assert done.returncode == 0, done.stderr[-3000:]
        left = sorted(line for line in done.stderr.splitlines() if " left alive: " in line)
        assert left == ["rank 0 left alive: []", "rank 1 left alive: []"], (side, left)


# torchrun's restarts: its store, shared with the processes, would hand a restarted process the addresses of the
# processes before (pytorch/pytorch#135712, still so with gloo in torch 2.13): a store of their own instead.
RESTARTING = ["env", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", *TORCHRUN, "--max-restarts=1"]


def test_torchrun_restarts_a_failed_run_from_its_checkpoint_and_ends_with_the_uninterrupted_runs_bits(tmp_path):
    """A process killed in the middle of epoch 1 (SIGKILL, as the out-of-memory killer): torchrun ends the others and
    starts them all again, once (`--max-restarts=1`), with the same command, whose `--ckpt_path last-if-any` goes on
    from the checkpoint of epoch 0 in the same run directory, for the plain loop and for Lightning under torchrun."""
    args = ["--trainer.strategy=ddp", *LONGER, DROPOUT, "--ckpt_path=last-if-any"]
    expected = launch([*COMMANDS["torch"], *args], tmp_path / "reference", "torch")
    for side in ("torch", "lightning"):
        cwd = tmp_path / side
        cwd.mkdir()
        entry = [signalling(cwd, side, "1", "os.getpid()", "signal.SIGKILL"), *ENTRY[side][1:]]
        done = finished([*RESTARTING, *entry, *args], cwd)
        # Killed, so ended only by the restart. (Which failure torchrun logs first, the kill's -9 or the peer's lost
        # connection, is a race: not evidence.)
        assert (cwd / "signalled").exists() and done.returncode == 0, (side, done.stderr[-3000:])
        [resumed] = (cwd / "logs" / side).iterdir()
        outcome = (final_state(side, resumed), event_scalars(resumed))
        assert mismatches(outcome, (final_state("torch", expected), event_scalars(expected))) == [], side


def test_ctrl_c_to_torchrun_stops_its_processes_after_the_step(tmp_path):
    """A terminal's Ctrl-C reaches torchrun's agent alone (its processes run in sessions of their own), which passes
    it on: the processes stop after the same step, save it, and rank 0 says which."""
    checkpoint = tmp_path / "logs" / "torch" / "version_0" / "checkpoints" / "last.pt"
    code, stderr = ctrl_c([*COMMANDS["torch"], *LONGER], tmp_path, checkpoint)
    assert code != 0, "finished before Ctrl-C"
    said = [line for line in stderr.splitlines() if line.startswith("SIGINT: saved ")]
    assert len(said) == 1 and "stopped at once" not in stderr, stderr[-3000:]
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert f" at step {step} " in said[0]


VOTE = """
import os
import signal

import torch.distributed as dist

from {{ cookiecutter.package_name }}.machinery.stopping import StopRequest

dist.init_process_group("gloo")
stop = StopRequest()
answers = [stop.agreed()]  # no signal yet
if dist.get_rank() == 1:
    stop.signal = signal.SIGUSR1  # as its handler notes it
answers += [stop.agreed(), stop.agreed()]  # the vote is read at the next call
said = repr(stop.signal)
stop.signal = None
answers += [stop.agreed(wait=True)]  # read at once; and the vote that said to stop left none pending
os.write(1, f"rank {dist.get_rank()}: {answers} {said}\\n".encode())  # one write: the other rank's cannot cut in
dist.destroy_process_group()
"""


def test_processes_agree_to_stop_when_one_of_them_was_signalled(tmp_path):
    """StopRequest.agreed, the vote behind the test above: a signal to rank 1 alone stops rank 0 too, with rank 1's
    signal (rank 0 would otherwise train on and wait for rank 1 in its next collective, for ever)."""
    script = tmp_path / "vote.py"
    script.write_text(VOTE)
    done = finished([*TORCHRUN, str(script)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    said = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
    assert said == [f"rank {rank}: [False, False, True, False] <Signals.SIGUSR1: 10>" for rank in (0, 1)]


def test_a_checkpoint_from_the_middle_of_an_epoch_goes_on_in_as_many_processes_alone(tmp_path):
    """A run stopped mid-epoch goes on with each process's share of that epoch, so in as many processes: a checkpoint
    of one process's mid-epoch stop is refused under DDP, each process saying so in one line and exiting with 1;
    torchrun then reports the failed processes its own way."""
    args = [*QUIET, "--trainer.max_epochs=1", "--data.dataset.points_per_class=100", "--boundary.every_n_epochs=0"]
    checkpoint = launch([*COMMANDS["torch"], *args], tmp_path, "torch") / "checkpoints" / "last.pt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["loader"].update(batches=1, epoch_done=False, processes=1)  # as a stop after one process's first batch
    torch.save(saved, checkpoint)
    done = finished([*COMMANDS["torch"], *args, f"--ckpt_path={checkpoint}"], tmp_path)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert said and said[0].startswith(
        "error: the checkpoint stopped 1 batches into an epoch of a run in 1 process(es); it goes on in 1, not 2"
    )
    assert f'File "{ROOT}' not in done.stderr  # no traceback through the project's code (torchrun adds its own)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Two nodes of one process each, on this machine: two torchrun agents that meet at a c10d rendezvous (on a cluster,
# at the first node's address), and the entry point on each. Lightning is told the nodes and the processes a node.
NODE = {
    "lightning": [str(ROOT / "train.py"), "fit", *LIGHTNING, "--trainer.accelerator=cpu"]
    + ["--trainer.num_nodes=2", "--trainer.devices=1"],
    "torch": [str(ROOT / "train_torch.py")],
    "fabric": [str(ROOT / "train_fabric.py")],  # under torchrun it takes the nodes and processes torchrun gives it
}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_nodes_of_one_process_compute_what_one_node_of_two_computes(strategy, tmp_path):
    """The ranks are what the numbers depend on, not the nodes they run on: each loop on two simulated nodes ends
    with the weights, optimizer state and series of the plain loop on one node of two processes, under DDP and
    under FSDP2 (accumulating, with clipping that bites: where FSDP2's bits are not DDP's, docs/proof.md)."""
    args = [f"--trainer.strategy={strategy}", *HALVES, *ACCUMULATING]
    one_node = launch([*TORCHRUN, str(ROOT / "train_torch.py"), *args], tmp_path / "one_node", "torch")
    expected = (final_state("torch", one_node), event_scalars(one_node))
    for side in SIDES:
        cwd, port = tmp_path / side, free_port()
        cwd.mkdir()
        agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
        agent += ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={side}"]
        nodes = [started([*agent, *NODE[side], *args], cwd, stderr=subprocess.PIPE) for _ in range(2)]
        for node in nodes:
            _, stderr = ended(node)
            assert node.returncode == 0, (side, stderr.decode()[-3000:])
        [directory] = (cwd / "logs" / side).iterdir()
        assert mismatches((final_state(side, directory), event_scalars(directory)), expected) == [], side


# An error in one process's loop: a bug, not a bad setting (those are one line, before anything runs).
FAILING = """
import os
import runpy
import sys

from {{ cookiecutter.package_name }} import loop


def fit(*args):
    raise RuntimeError(f"a bug in rank {os.environ['RANK']}'s loop")


loop.fit = fit
sys.argv[0] = SCRIPT
runpy.run_path(SCRIPT, run_name="__main__")
"""


def test_under_torchrun_a_failed_process_says_why_in_torchruns_report(tmp_path):
    """torchrun ends with a report of the processes that failed, their error read from the file that torch's
    @record writes (without it, the report's traceback is a link to the docs)."""
    script = tmp_path / "failing.py"
    script.write_text(FAILING.replace("SCRIPT", repr(str(ROOT / "train_torch.py"))))
    done = finished([*TORCHRUN, str(script), *HALVES], tmp_path)
    assert done.returncode != 0
    report = done.stderr[done.stderr.index("Root Cause") :]
    assert "error_file: <N/A>" not in report and "RuntimeError: a bug in rank " in report, report


def test_a_hung_run_under_torchrun_is_ended_with_its_workers(tmp_path):
    """The tests' guard against a hang: past its timeout, torchrun and the workers it started in sessions of their
    own are killed by their ids, and the test fails at once instead of waiting on the workers' open pipes."""
    script = tmp_path / "hangs.py"
    script.write_text("import os, pathlib, time\npathlib.Path(f'{os.getpid()}.pid').touch()\ntime.sleep(600)\n")
    process = started([*TORCHRUN, str(script)], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with pytest.raises(pytest.fail.Exception, match="hung, killed after 10 s"):
        ended(process, timeout=10)
    workers = [int(path.stem) for path in tmp_path.glob("*.pid")]
    assert len(workers) == 2
    for pid in workers:  # gone, or dead and not yet reaped by the process that adopted it
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", pid


MONITORED = [
    *QUIET,
    "--trainer.max_epochs=30",
    "--data.dataset.points_per_class=200",
    "--boundary.every_n_epochs=0",
    "--track.to=[csv]",
    "--trainer.callbacks+=EarlyStopping",
    "--trainer.callbacks.monitor=val/loss",
    "--trainer.callbacks.patience=2",
    "--trainer.callbacks.min_delta=0.01",
    "--trainer.callbacks+=ModelCheckpoint",
    "--trainer.callbacks.monitor=val/acc",
    "--trainer.callbacks.mode=max",
    "--trainer.callbacks.save_top_k=2",
]


def test_early_stopping_the_best_checkpoints_and_the_csv_tracker_under_ddp_are_the_same_in_the_three_loops(tmp_path):
    runs = {side: launch([*COMMANDS[side], *MONITORED], tmp_path, side) for side in SIDES}
    kept = {side: sorted(path.stem for path in (run / "checkpoints").glob("epoch=*")) for side, run in runs.items()}
    assert len(kept["torch"]) == 2 and kept["lightning"] == kept["torch"] == kept["fabric"]
    plain = runs["torch"]
    assert len(event_scalars(plain)["val/loss"]) < 30  # it stopped early
    for side in ("lightning", "fabric"):
        outcome = (final_state(side, runs[side]), event_scalars(runs[side]))
        assert mismatches(outcome, (final_state("torch", plain), event_scalars(plain))) == [], side
        for name in kept["torch"]:
            weights = final_state(side, runs[side], f"{name}{Path(CHECKPOINT[side]).suffix}")["model"]
            assert differences(weights, final_state("torch", plain, f"{name}.pt")["model"]) == [], (side, name)
        assert (runs[side] / "metrics.csv").read_bytes() == (plain / "metrics.csv").read_bytes(), side
