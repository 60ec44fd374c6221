"""The line -> hook map (hookmap.py), checked against what the three loops actually do, in order.

Torch's own hook points record the operations (forward with the model's mode and grad state, zero_grad,
backward, gradient clipping, optimizer step, scheduler step) the same way on every side; on the Lightning side
each event also records the innermost LightningModule hook it ran in.
"""

import functools
import importlib
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from lightning.fabric import Fabric
from lightning.fabric.wrappers import _FabricModule, _FabricOptimizer
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook

import train
from {{ cookiecutter.package_name }} import loop, loop_fabric, module, scripts
from {{ cookiecutter.package_name }}.hookmap import (
    COMMUTING,
    ESSAY,
    FABRIC_CALLS,
    LIGHTNING,
    LOOP,
    MACHINERY,
    ROWS,
    TRAIN_FORWARD,
    TRAIN_FP16,
    VAL_FORWARD,
    VAL_FP16,
    WRITE,
    StaleRow,
    essay_line,
    fabric_keys,
    keyed,
    loop_lines,
    machinery_lines,
    markdown,
    readme_table,
    side_by_side,
    source_lines,
    stand_for_the_essay,
    statements,
)
from {{ cookiecutter.package_name }}.module import SpiralClassifier

from conftest import FP16, ROOT, TINY, allow_fp16_on_cpu, fit

HOOKS = (
    "configure_optimizers",
    "training_step",
    "optimizer_zero_grad",
    "backward",
    "configure_gradient_clipping",
    "optimizer_step",
    "lr_scheduler_step",
    "on_validation_model_zero_grad",
    "validation_step",
)


def configured_net() -> type[torch.nn.Module]:
    """The class of the network configs/default.yaml trains: the MLP, or yours."""
    class_path = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())["model"]["net"]["class_path"]
    module_name, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), name)


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, str | None]] = []
        self.hooks: list[str] = []
        self.paused = False

    def record(self, event: str) -> None:
        if not self.paused:
            self.events.append((event, self.hooks[-1] if self.hooks else None))

    def take(self) -> list[tuple[str, str | None]]:
        events, self.events = self.events, []
        return events

    def within(self, original, name: str):
        """`original`, telling the recorder while it runs: events inside are recorded as in `name`."""

        @functools.wraps(original)
        def tracked(*args, **kwargs):
            self.hooks.append(name)
            try:
                return original(*args, **kwargs)
            finally:
                self.hooks.pop()

        return tracked

    def outside(self, original):
        """`original`, recording nothing while it runs."""

        @functools.wraps(original)
        def unrecorded(*args, **kwargs):
            self.paused = True
            try:
                return original(*args, **kwargs)
            finally:
                self.paused = False

        return unrecorded


@pytest.fixture
def recorder(monkeypatch):
    recorder = Recorder()
    net = configured_net()

    def record_calls(owner, name: str, event: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def recorded(*args, **kwargs):
            recorder.record(event)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)

    def record_forward(module, args) -> None:
        if isinstance(module, net):
            mode = "train" if module.training else "eval"
            if torch.is_grad_enabled():
                grad = "grad"
            else:
                grad = "inference_mode" if torch.is_inference_mode_enabled() else "no_grad"
            device = args[0].device.type
            autocast = f", {str(torch.get_autocast_dtype(device)).removeprefix('torch.')}"
            recorder.record(f"forward({mode}, {grad}{autocast if torch.is_autocast_enabled(device) else ''})")

    def record_scaler(name: str) -> None:
        original = getattr(torch.amp.GradScaler, name)

        @functools.wraps(original)
        def recorded(scaler, *args, **kwargs):
            if scaler.is_enabled():  # the plain loop's scaler is off but for 16-mixed; Lightning's is None
                recorder.record(f"scaler.{name}")
            return original(scaler, *args, **kwargs)

        monkeypatch.setattr(torch.amp.GradScaler, name, recorded)

    record_calls(torch.optim.Optimizer, "zero_grad", "zero_grad")
    record_calls(torch.nn.Module, "zero_grad", "model.zero_grad")
    record_calls(torch.Tensor, "backward", "backward")
    record_calls(torch.nn.utils, "clip_grad_norm_", "clip_grad_norm_")
    record_calls(torch.optim.lr_scheduler.LRScheduler, "step", "scheduler.step")
    record_scaler("unscale_")
    record_scaler("update")
    # The Fabric loop's calls, named as its lines are; the Trainer calls none of them.
    fabric_calls = (
        (_FabricModule, "forward"),
        (Fabric, "backward"),
        (Fabric, "clip_gradients"),
        (_FabricOptimizer, "step"),
    )
    for (owner, name), call in zip(fabric_calls, FABRIC_CALLS, strict=True):
        monkeypatch.setattr(owner, name, recorder.within(getattr(owner, name), call))
    # Each entry point runs one item through the net before training, to refuse one that cannot take the data
    # (scripts.py, for the three): no line of the loop, and nothing of the run changes.
    monkeypatch.setattr(scripts, "net_problem", recorder.outside(scripts.net_problem))
    handles = [
        register_module_forward_pre_hook(record_forward),
        register_optimizer_step_post_hook(lambda *_: recorder.record("optimizer.step")),
    ]
    yield recorder
    for handle in handles:
        handle.remove()


def in_hooks(recorder: Recorder) -> type[SpiralClassifier]:
    """SpiralClassifier whose hooks tell the recorder when they run."""
    hooks = {name: recorder.within(getattr(SpiralClassifier, name), name) for name in HOOKS}
    return type("TrackedSpiralClassifier", (SpiralClassifier,), hooks)


def as_plain_loop(events: list[tuple[str, str | None]]) -> tuple[list[str], Counter]:
    """Undo, one by one, the differences hookmap.COMMUTING lists; count how often each applied."""
    applied, plain = Counter(), []
    for event, hook in events:
        if event == "model.zero_grad":
            applied["zero_grad before validation" if hook else "zero_grad before training"] += 1
            continue
        if event == "zero_grad" and plain and plain[-1].startswith("forward(train,"):
            applied["zero_grad after the forward"] += 1
            plain.insert(len(plain) - 1, event)
            continue
        plain.append(event)
    return plain, applied


# TINY as it is, and with fp16 autocast, its GradScaler and windows of 2 of an epoch's 3 batches.
SETTINGS = {"defaults": [], "16-mixed, accumulating 2": ["--trainer.accumulate_grad_batches=2"]}


@pytest.fixture(params=SETTINGS)
def recorded(request, recorder, monkeypatch, tmp_path) -> tuple[str, list, list, list]:
    """The settings' name, then (event, hook) pairs of a Lightning run, of the plain loop and of the Fabric loop,
    on the same tiny config."""
    # conftest's TINY run draws no animation: its forward runs in a callback, not a module hook.
    args = [f"--trainer.logger.init_args.save_dir={tmp_path}", *TINY, *SETTINGS[request.param]]
    own = {"lightning": [], "torch": [], "fabric": []}
    if request.param != "defaults":
        allow_fp16_on_cpu(monkeypatch)
        own = FP16
    monkeypatch.setattr(train, "SpiralClassifier", in_hooks(recorder))
    runs = []
    for side in ("lightning", "torch", "fabric"):
        fit(side, [*args, *own[side]])
        runs.append(recorder.take())
    return request.param, *runs


def test_the_fabric_loop_does_what_the_plain_loop_does_in_the_same_order(recorded):
    """No difference to list: the loop is the plain one, and Fabric's calls do their work where its lines stand."""
    _, _, plain, fabric = recorded
    assert [event for event, _ in fabric] == [event for event, _ in plain]


def test_both_loops_do_the_same_things_in_the_same_order_but_for_the_listed_differences(recorded):
    settings, lightning, plain, _ = recorded
    plain_events = [event for event, _ in plain]
    normalised, applied = as_plain_loop(lightning)
    assert normalised == plain_events
    assert set(applied) == set(COMMUTING), "every listed difference must really occur"
    # TINY: 4 epochs of 3 batches, the scheduler's step, 1 validation batch.
    if settings == "defaults":  # zero_grad, forward, backward, clip, step at every batch
        batch = ["zero_grad", TRAIN_FORWARD, "backward", "clip_grad_norm_", "optimizer.step"]
        epoch = [*batch * 3, "scheduler.step", VAL_FORWARD]
    else:  # zero_grad at a window's start; unscale before the clip; step and update at a window's end
        step = ["scaler.unscale_", "clip_grad_norm_", "optimizer.step", "scaler.update"]
        first, other = ["zero_grad", TRAIN_FP16, "backward"], [TRAIN_FP16, "backward"]
        epoch = [*first, *other, *step, *first, *step, "scheduler.step", VAL_FP16]
    assert plain_events == ["scheduler.step", *epoch * 4]  # the first: the scheduler's constructor


def test_every_lightning_event_runs_in_the_hook_the_table_names(recorder, monkeypatch, tmp_path):
    seen = set()
    monkeypatch.setattr(train, "SpiralClassifier", in_hooks(recorder))
    for name, settings in SETTINGS.items():  # what the defaults leave out, 16-mixed records, and the other way
        fp16 = FP16["lightning"] if name != "defaults" else []
        fit("lightning", [f"--trainer.logger.init_args.save_dir={tmp_path / name}", *TINY, *settings, *fp16])
        seen |= set(recorder.take())
    table = {row.recorded for row in ROWS if row.recorded}
    assert table <= seen, f"rows whose event never happened where the table says: {table - seen}"
    cleared = {("model.zero_grad", None), ("model.zero_grad", "on_validation_model_zero_grad")}  # see COMMUTING
    beyond = seen - table - cleared
    assert not beyond, f"events in hooks the table does not name: {beyond}"


def test_every_fabric_loop_event_runs_in_the_fabric_call_the_table_names(recorder, monkeypatch, tmp_path):
    seen = set()
    for name, settings in SETTINGS.items():
        if name != "defaults":
            allow_fp16_on_cpu(monkeypatch)
        fp16 = FP16["fabric"] if name != "defaults" else []
        fit("fabric", [f"--trainer.logger.init_args.save_dir={tmp_path / name}", *TINY, *settings, *fp16])
        seen |= set(recorder.take())
    table = {row.fabric_recorded for row in ROWS if row.fabric_recorded}
    assert table <= seen, f"rows whose event never happened where the table says: {table - seen}"
    assert seen - table == set(), "events in Fabric calls the table does not name"


def test_the_table_holds_every_line_of_the_plain_loop_in_order():
    """Each statement starts with its row's key; the rest of the line (another optimizer, another net) may change."""
    keyed(statements(loop.fit), [row.key for row in LOOP], "loop.fit()")  # StaleRow names the first that does not


def test_the_fabric_column_holds_every_line_of_the_fabric_loop_in_order():
    keyed(statements(loop_fabric.fit), [key for row in LOOP for key in fabric_keys(row)], "loop_fabric.fit()")


def test_the_machinery_rows_are_lines_of_plain_run_in_order():
    assert len(machinery_lines()) == len(MACHINERY)  # StaleRow names a row whose line is not there, in order


def test_each_lightning_code_line_is_on_the_lightning_side():
    lines = source_lines(*LIGHTNING)
    assert [row.code for row in ROWS if row.code and sum(line.startswith(row.code) for line in lines) != 1] == []


def test_the_map_is_printable_as_markdown():
    table = markdown()
    assert all(f"| `{line}`" in table for line in ESSAY)  # the first column
    assert all(why in table for why in COMMUTING.values())
    page = side_by_side()
    assert all(f"`{line}`" in page for line in [*(line.code for line in loop_lines()), *machinery_lines()])


def test_the_plain_loop_shows_each_line_of_the_essay_once_in_order():
    found = loop_lines()
    assert [essay_line(line) for line in found if line.essay] == list(ESSAY)  # what loop_lines() checked
    backward = next(line for line in found if essay_line(line) == "loss.backward()")
    assert backward.code.startswith("scaler.scale(") and backward.hook.startswith("backward")
    for left_out in ("loss.backward()", "model.train()"):  # a comment gone, a line gone: each named
        with pytest.raises(StaleRow, match=re.escape(repr(left_out))):
            stand_for_the_essay([line for line in found if essay_line(line) != left_out])


def test_the_readme_shows_the_table_as_it_is():
    shown = readme_table((ROOT / "README.md").read_text())
    if shown is None:  # a README of the user's own, without the table
        pytest.skip("README.md has no <!-- hookmap: ... --> ... <!-- /hookmap --> block")
    assert shown.strip() == markdown().strip(), f"README.md's table is out of date: run `{WRITE}`"


def test_the_side_by_side_page_is_current():
    page = (ROOT / "docs" / "side_by_side.md").read_text()
    assert page.strip() == side_by_side().strip(), f"docs/side_by_side.md is out of date: run `{WRITE}`"


@pytest.mark.parametrize(
    "path",
    [
        Path(loop.__file__),
        Path(loop_fabric.__file__),
        Path(module.__file__),
        ROOT / "train.py",
        ROOT / "train_torch.py",
        ROOT / "train_fabric.py",
    ],
)
def test_the_files_read_side_by_side_fit_in_100_columns(path):
    """Two of them side by side on one screen. Imports are left out: they carry the package's name."""
    wide = [
        line for line in path.read_text().splitlines() if len(line) > 100 and not line.startswith(("from ", "import "))
    ]
    assert wide == []
