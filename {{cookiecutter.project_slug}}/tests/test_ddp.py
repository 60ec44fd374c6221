"""DDP: Lightning's `--trainer.strategy ddp`, the plain loop under `torchrun` and the Fabric loop with Fabric's
`--trainer.strategy ddp` compute the same run.

Two CPU processes each (gloo), launched as a user launches them, on the same flags: Lightning and Fabric each
start their second process themselves. Rank 0's TensorBoard series are equal value for value, and the final
checkpoints hold torch.equal weights, optimizer and scheduler state. Dropout is on, so the processes' random
numbers must line up too.
"""

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
COMMANDS = {
    "lightning": [sys.executable, str(ROOT / "train.py"), "fit", *DDP, *LIGHTNING],
    "torch": [*TORCHRUN, str(ROOT / "train_torch.py")],
    "fabric": [sys.executable, str(ROOT / "train_fabric.py"), *DDP],
}
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


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_ctrl_c_under_ddp_then_resuming_gives_the_uninterrupted_run(strategy, tmp_path):
    """A terminal's Ctrl-C reaches every process; the run goes on from the end of an epoch, bit-identically, under DDP
    and under FSDP2 (whose processes gather the checkpoint from their shards). One uninterrupted run for the three:
    the loops compute the same run (the test above, and tests/test_fsdp2.py)."""
    args = [*LONGER, DROPOUT] if strategy == "ddp" else ["--trainer.strategy=fsdp2", *LONGER, DROPOUT]
    expected = launch([*COMMANDS["torch"], *args], tmp_path / "reference", "torch")
    for side in SIDES:
        cwd = tmp_path / side
        cwd.mkdir(exist_ok=True)
        checkpoint = cwd / "logs" / side / "version_0" / "checkpoints" / CHECKPOINT[side]
        code, stderr = ctrl_c([*COMMANDS[side], *args], cwd, checkpoint)
        assert code != 0, f"{side} finished before Ctrl-C"
        if side == "lightning":  # Lightning's processes agree to stop at the end of the epoch and save it
            assert code == 130, stderr[-3000:]
            assert stderr.strip().splitlines()[-1].startswith("SIGINT: saved ")
        step = torch.load(checkpoint, weights_only=True)["global_step" if side == "lightning" else "step"]
        assert step % 15 == 0  # the end of an epoch

        resumed = launch([*COMMANDS[side], *args, "--ckpt_path=last"], cwd, side)
        outcome = (final_state(side, resumed), event_scalars(resumed))
        assert mismatches(outcome, (final_state("torch", expected), event_scalars(expected))) == [], side


def test_a_checkpoint_from_the_middle_of_an_epoch_is_refused_under_ddp_in_one_line(tmp_path):
    """A run in one process can stop mid-epoch; a DistributedSampler cannot go on from there. Each process says so
    in one line and exits with 1; torchrun then reports the failed processes its own way."""
    args = [*QUIET, "--trainer.max_epochs=1", "--data.dataset.points_per_class=100", "--boundary.every_n_epochs=0"]
    checkpoint = launch([*COMMANDS["torch"], *args], tmp_path, "torch") / "checkpoints" / "last.pt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["loader"].update(batches=1, epoch_done=False)  # as a Ctrl-C after the first batch leaves it
    torch.save(saved, checkpoint)
    done = finished([*COMMANDS["torch"], *args, f"--ckpt_path={checkpoint}"], tmp_path)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert said and said[0].startswith(
        "error: the checkpoint stopped 1 batches into an epoch; only a run in one process"
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
