"""The line -> hook map (hookmap.py), checked against what the three loops actually do, in order.

Torch's own hook points record the operations (forward with the model's mode and grad state, zero_grad,
backward, gradient clipping, optimizer step, scheduler step) the same way on every side; on the Lightning side
each event also records the innermost LightningModule hook it ran in.
"""

import ast
import functools
import inspect
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from lightning.fabric import Fabric
from lightning.fabric.wrappers import _FabricModule, _FabricOptimizer
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook

import train
from {{ cookiecutter.package_name }} import data, loop, loop_fabric, module
from {{ cookiecutter.package_name }}.hookmap import (
    COMMUTING,
    FABRIC_CALLS,
    LOOP,
    MACHINERY,
    ROWS,
    TRAIN_FORWARD,
    TRAIN_FP16,
    VAL_FORWARD,
    VAL_FP16,
    fabric_lines,
    markdown,
    side_by_side,
)
from {{ cookiecutter.package_name }}.machinery import plain_run
from {{ cookiecutter.package_name }}.model import MLP
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


class Recorder:
    def __init__(self):
        self.events: list[tuple[str, str | None]] = []
        self.hooks: list[str] = []

    def record(self, event: str) -> None:
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


@pytest.fixture
def recorder(monkeypatch):
    recorder = Recorder()

    def record_calls(owner, name: str, event: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def recorded(*args, **kwargs):
            recorder.record(event)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)

    def record_forward(module, args) -> None:
        if isinstance(module, MLP):
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


def statements(function) -> list[str]:
    """The lines of a function's body that do something: no comments, docstring, blank lines or `return`. A
    statement over several lines, one argument a line, is one line: `f(a, b)`."""
    source = inspect.getsource(function)
    body = ast.parse(source).body[0].body
    first = body[1].lineno if isinstance(body[0], ast.Expr) else body[0].lineno  # after the docstring
    lines = [line.split("  #")[0].strip() for line in source.splitlines()[first - 1 :]]
    joined = []
    for line in lines:
        if joined and joined[-1].count("(") > joined[-1].count(")"):  # an open call goes on
            joined[-1] = re.sub(r"\( | ?,? \)$", lambda m: m.group().strip(" ,"), f"{joined[-1]} {line}")
        else:
            joined.append(line)
    return [line for line in joined if line and not line.startswith(("#", "return "))]


def test_the_table_holds_every_line_of_the_plain_loop_in_order():
    assert [row.line for row in LOOP] == statements(loop.fit)


def test_the_fabric_column_holds_every_line_of_the_fabric_loop_in_order():
    assert [line for row in LOOP for line in fabric_lines(row)] == statements(loop_fabric.fit)


def test_the_machinery_rows_are_lines_of_plain_run_in_order():
    lines = [line.split("  #")[0].strip() for line in Path(plain_run.__file__).read_text().splitlines()]
    found = [lines.index(row.line) for row in MACHINERY]  # ValueError names a row that is not there
    assert found == sorted(found)


def test_each_lightning_code_line_is_on_the_lightning_side():
    lightning = "\n".join(
        path.read_text() for path in (Path(module.__file__), Path(data.__file__), ROOT / "configs" / "default.yaml")
    )
    lines = {line.split("  #")[0].strip() for line in lightning.splitlines()}
    assert [row.code for row in ROWS if row.code and row.code not in lines] == []


def test_the_map_is_printable_as_markdown():
    table = markdown()
    assert all(f"`{row.line}`" in table for row in LOOP if row.essay)
    assert all(why in table for why in COMMUTING.values())
    page = side_by_side()
    assert all(f"`{row.line}`" in page for row in ROWS)


def test_the_readme_shows_the_table_as_it_is():
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("<!-- hookmap:")[1].split("-->", 1)[1].split("<!-- /hookmap -->")[0]
    assert shown.strip() == markdown().strip()


def test_the_side_by_side_page_is_current():
    assert (ROOT / "docs" / "side_by_side.md").read_text().strip() == side_by_side().strip()


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
