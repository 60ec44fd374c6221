"""Copied into a baked project as tests/test_recipe.py by tests/test_make_it_yours.py, after a recipe of its
docs/make_it_yours.md is applied: the three loops, run on the recipe's flags (RECIPE_FLAGS), write the same scalars
and end with the same weights, buffers, optimizer and scheduler, torch.equal; with RECIPE_RESUME, a run stopped
mid-epoch by SIGTERM or killed by SIGKILL goes on to the uninterrupted run's end, bit for bit.

It runs with the project's own test helpers (tests/conftest.py, tests/test_resume.py), not a copy of them.
"""

import json
import os
import random
import signal

import pytest
from test_resume import SKIP, final, interrupted, kill_and_resume

from conftest import LIGHTNING, QUIET, ROOT, differences, event_scalars, final_state, fit, mismatches

# A config file of the recipe's, by its path from the project's root: the runs below start in other directories.
FLAGS = [
    *QUIET,
    *(str(ROOT / flag) if (ROOT / flag).is_file() else flag for flag in json.loads(os.environ["RECIPE_FLAGS"])),
]
SIDES = ("lightning", "torch", "fabric")


def test_the_three_loops_are_identical(tmp_path):
    for side in SIDES:
        fit(side, [*FLAGS, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    runs = {side: tmp_path / side / "version_0" for side in SIDES}
    scalars = {side: event_scalars(directory) for side, directory in runs.items()}
    assert {"train/loss", "val/loss"} <= scalars["torch"].keys()
    for side in ("lightning", "fabric"):
        assert scalars[side] == scalars["torch"], side
        assert differences(final_state(side, runs[side]), final_state("torch", runs["torch"])) == [], side


def uninterrupted(side: str, tmp_path):
    cwd = tmp_path / "uninterrupted"
    fit(side, [*FLAGS, f"--trainer.logger.init_args.save_dir={cwd / 'logs'}"])
    return final(cwd, side)


@pytest.mark.skipif(not os.environ.get("RECIPE_RESUME"), reason="the recipe's resume checks were not asked for")
@pytest.mark.parametrize("side", ["lightning", "torch"])
def test_a_run_stopped_mid_epoch_goes_on_bit_identical(side, tmp_path, monkeypatch, capsys):
    expected = uninterrupted(side, tmp_path)
    monkeypatch.chdir(tmp_path)
    interrupted(side, FLAGS, signal.SIGTERM, 20, capsys)  # 20 of an epoch's 17 + 17 steps: mid second epoch
    fit(side, [*FLAGS, "--ckpt_path=last"])
    assert mismatches(final(tmp_path, side), expected, SKIP) == []


@pytest.mark.skipif(not os.environ.get("RECIPE_RESUME"), reason="the recipe's resume checks were not asked for")
@pytest.mark.parametrize(
    "script, side, checkpoint", [("train.py", "lightning", "last.ckpt"), ("train_torch.py", "torch", "last.pt")]
)
def test_sigkill_mid_epoch_then_resume_is_bit_identical(script, side, checkpoint, tmp_path):
    expected = uninterrupted(side, tmp_path)
    args = ["fit", *LIGHTNING, *FLAGS] if side == "lightning" else FLAGS
    seed = random.randrange(2**32)
    history = kill_and_resume(script, args, tmp_path, checkpoint, kills=1, seed=seed)
    assert sum("exit -9" in line for line in history) == 1, history  # the kill landed
    assert mismatches(final(tmp_path, side), expected, SKIP) == [], (seed, history)
