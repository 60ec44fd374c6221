"""FSDP2: `--trainer.strategy fsdp2` shards the network over the processes in the three loops (model.py's shard()), and
they compute the same run: Lightning's ModelParallelStrategy with configure_model, Fabric's with fabric.setup_module,
the plain loop's fully_shard under torchrun.

Two CPU processes each, with dropout, clipping that bites and accumulation: rank 0's series are equal value for value,
and the checkpoints, whole (the shards gathered), hold torch.equal weights, optimizer and scheduler state. docs/proof.md
says how FSDP2's numbers compare with DDP's.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from conftest import (
    ACCUMULATING,
    CHECKPOINT,
    HALVES,
    LIGHTNING,
    ROOT,
    TORCHRUN,
    TWO_PROCESSES,
    descendants,
    differences,
    ended,
    event_scalars,
    final_state,
    finished,
    launch,
    mismatches,
    started,
)

FSDP2 = "--trainer.strategy=fsdp2"
COMMANDS = {
    "lightning": [sys.executable, str(ROOT / "train.py"), "fit", FSDP2, *TWO_PROCESSES, *LIGHTNING],
    "torch": [*TORCHRUN, str(ROOT / "train_torch.py"), FSDP2],
    "fabric": [sys.executable, str(ROOT / "train_fabric.py"), FSDP2, *TWO_PROCESSES],
}
ARGS = [*HALVES, *ACCUMULATING]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Each loop's run under FSDP2, to its end: its run directory."""
    return {side: launch([*COMMANDS[side], *ARGS], tmp_path_factory.mktemp(side), side) for side in COMMANDS}


def test_the_three_loops_under_fsdp2_are_identical(runs):
    plain = (final_state("torch", runs["torch"]), event_scalars(runs["torch"]))
    assert len(plain[1]["train/loss"]) == 4 * 2  # each process its half: 2 windows an epoch
    assert plain[0]["model"]["layers.0.weight"].shape == (128, 2)  # whole: both processes' rows
    for side in ("lightning", "fabric"):
        assert mismatches((final_state(side, runs[side]), event_scalars(runs[side])), plain) == [], side
    for directory in runs.values():  # each frame drawn by both processes, the sharded model's forward needs both
        with Image.open(directory / "decision_boundary.gif") as gif:
            assert gif.n_frames == 2


def test_fsdp2_computes_what_ddp_computes_unless_clipping_bites(runs, tmp_path):
    """Two processes: DDP all-reduces the gradients, FSDP2 reduce-scatters them, and each element is one addition of
    two halves, exact in either order. The norm that clipping divides by is another sum: over whole gradients under
    DDP, over each process's shards and then the two under FSDP2. Where clipping bites, the last bits differ."""
    unclipped = [*ARGS, "--trainer.gradient_clip_val=null"]
    ddp, fsdp2 = (
        launch([*TORCHRUN, str(ROOT / "train_torch.py"), f"--trainer.strategy={strategy}", *unclipped], cwd, "torch")
        for strategy, cwd in (("ddp", tmp_path / "ddp"), ("fsdp2", tmp_path / "fsdp2"))
    )
    outcome = {run: (final_state("torch", run), event_scalars(run)) for run in (ddp, fsdp2)}
    assert mismatches(outcome[fsdp2], outcome[ddp]) == []

    clipped = launch([*TORCHRUN, str(ROOT / "train_torch.py"), *ARGS], tmp_path / "clipped", "torch")  # DDP
    changed = differences(final_state("torch", clipped), final_state("torch", runs["torch"]))
    assert ".model.layers.0.weight" in changed


# The negative controls, in the two processes torchrun starts: the plain loop that shards the model after building
# the optimizer; the loops that reduce-scatter every batch's gradients, where Lightning sums a window's first.
WITHOUT = """
import runpy
import sys
from contextlib import nullcontext

sys.path.insert(0, ROOT)
from lab.edits import move, variant
from lightning.fabric import Fabric
from {{ cookiecutter.package_name }} import loop
from {{ cookiecutter.package_name }}.machinery.plain_run import PlainRun

if WHAT == "shard after the optimizer":
    loop.fit = variant(loop, (move('if hp.strategy == "fsdp2":', after="optimizer = torch.optim.Adam("),)).fit
else:
    PlainRun.no_sync = lambda self, accumulating: nullcontext()
    Fabric.no_backward_sync = lambda self, module, enabled=True: nullcontext()
sys.argv[0] = SCRIPT
runpy.run_path(SCRIPT, run_name="__main__")
"""


def without(what: str, side: str, cwd) -> subprocess.CompletedProcess:
    """Run `side`'s loop under torchrun with FSDP2, `what` broken on purpose."""
    cwd.mkdir()
    script = cwd / "without.py"
    entry = repr(str(ROOT / f"train_{side}.py"))
    script.write_text(WITHOUT.replace("ROOT", repr(str(ROOT))).replace("SCRIPT", entry).replace("WHAT", repr(what)))
    return finished([*TORCHRUN, str(script), FSDP2, *ARGS], cwd)


def test_an_optimizer_built_before_shard_is_refused_in_one_line(tmp_path):
    """fully_shard replaces each parameter with its shard: the optimizer would update the parameters it replaced,
    and no step would change a weight. Each process says so in one line, before the first batch."""
    done = without("shard after the optimizer", "torch", tmp_path / "torch")
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    refusal = "error: the optimizer holds parameters that are not the model's: under FSDP2, build it after shard()"
    assert said == [refusal, refusal]  # each process's
    assert not (tmp_path / "torch" / "logs" / "torch" / "version_0" / "checkpoints").exists()


def test_accumulating_under_fsdp2_needs_its_no_sync(runs, tmp_path):
    """Without FSDP2's no_sync in the batches a window accumulates, each batch's gradients are reduce-scattered and
    then added up, where the three loops add a window's up in each process and reduce-scatter once."""
    for side in ("torch", "fabric"):
        done = without("no_sync", side, tmp_path / side)
        assert done.returncode == 0, done.stderr[-3000:]
        broken = final_state(side, tmp_path / side / "logs" / side / "version_0")
        changed = differences(broken, final_state(side, runs[side]))
        assert ".model.layers.0.weight" in changed and ".optimizer.state.0.exp_avg" in changed, side


@pytest.mark.parametrize("side", COMMANDS)
def test_sigkill_right_after_a_checkpoint_then_resuming_under_fsdp2_is_bit_identical(side, runs, tmp_path):
    """Every process killed at once, as a pre-empted node; the run goes on from its whole checkpoint, each process
    taking its shard of the weights and of Adam's state."""
    command = [*COMMANDS[side], *ARGS]
    checkpoint = tmp_path / "logs" / side / "version_0" / "checkpoints" / CHECKPOINT[side]
    process = started(command, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    for pid in [*descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):  # a DataLoader worker that ended meanwhile
            os.kill(pid, signal.SIGKILL)
    ended(process)
    assert process.returncode == -signal.SIGKILL
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step" if side == "lightning" else "step"] < 8  # not the end

    resumed = launch([*command, "--ckpt_path=last"], tmp_path, side)
    expected = (final_state(side, runs[side]), event_scalars(runs[side]))
    assert mismatches((final_state(side, resumed), event_scalars(resumed)), expected) == []


def test_validate_and_predict_read_an_fsdp2_checkpoint_in_one_process(runs):
    cwd = runs["lightning"].parents[2]  # where the run was launched: `--ckpt_path last` is its checkpoint
    for subcommand in ("validate", "predict"):
        done = finished([sys.executable, str(ROOT / "train.py"), subcommand, "--ckpt_path=last"], cwd)
        assert done.returncode == 0, done.stderr[-3000:]
    predictions = (runs["lightning"] / "predict" / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 1 + 3 * 100  # a header, then each point's: 100 a class
