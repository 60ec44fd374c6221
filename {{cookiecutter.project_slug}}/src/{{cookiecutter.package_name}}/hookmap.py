"""The line -> hook map: where each line of the plain loop (loop.py) lives in the Fabric loop and in Lightning.

    python -m {{ cookiecutter.package_name }}.hookmap
    python -m {{ cookiecutter.package_name }}.hookmap side-by-side

The first prints the essay's lines, the table README.md shows; the second every line, docs/side_by_side.md.

tests/test_hookmap.py records what the three loops actually do, in order, and checks every row against it; it
also checks that LOOP holds every line of loop.fit() in order, and its Fabric column every line of
loop_fabric.fit(), that each `code` is a line of the Lightning side, that MACHINERY's lines are in
machinery/plain_run.py, and that README.md and docs/side_by_side.md show these tables.
"""

import sys
from typing import NamedTuple


class Row(NamedTuple):
    line: str  # the line in loop.py (LOOP) or machinery/plain_run.py (MACHINERY)
    lightning: str  # where Lightning does it
    moved: str = "-"  # what happens if you move it
    # The line of module.py, data.py or configs/default.yaml that does it on the Lightning side, if one does.
    code: str | None = None
    # What tests/test_hookmap.py records for this line in a Lightning run: (event, innermost LightningModule hook).
    recorded: tuple[str, str] | None = None
    essay: bool = True  # one of the essay's lines, not one the project adds around them
    # The Fabric loop's lines (loop_fabric.py) for this one: None, the same line; a str, where Fabric does it.
    fabric: tuple[str, ...] | str | None = None
    # What tests/test_hookmap.py records for it in a run of the Fabric loop: (event, the Fabric call it ran in,
    # FABRIC_CALLS, or None outside them).
    fabric_recorded: tuple[str, str | None] | None = None


TRAIN_FORWARD = "forward(train, grad)"
VAL_FORWARD = "forward(eval, no_grad)"
# The same under Trainer(precision="16-mixed"): the forward in autocast's float16.
TRAIN_FP16 = "forward(train, grad, float16)"
VAL_FP16 = "forward(eval, no_grad, float16)"
SPAN = "plain_run.py"  # rows whose work the PlainRun call does: MACHINERY has its lines
# The Fabric loop's calls whose insides tests/test_hookmap.py tells apart, by the names of loop_fabric.py's lines.
FABRIC_CALLS = ("model(...)", "fabric.backward", "fabric.clip_gradients", "optimizer.step()")

# Every line of loop.fit(), in order.
LOOP = (
    Row(
        "torch.manual_seed(hp.seed)",
        "`seed_everything` (LightningCLI), before the model is built",
        "after `MLP(...)`, the initial weights come from an unseeded generator",
        "seed_everything: 0",
        essay=False,
        fabric=("fabric.seed_everything(hp.seed)",),
    ),
    Row("device = run.device", "`Trainer(accelerator=...)`", essay=False, fabric=("device = fabric.device",)),
    Row('data.setup("fit")', "`LightningDataModule.setup`", code="def setup(self, stage: str) -> None:", essay=False),
    Row(
        "loader = data.train_dataloader()",
        "`LightningDataModule.train_dataloader`",
        "without its own seeded generator, the shuffle order depends on every other draw from the global RNG",
        "def train_dataloader(self) -> DataLoader:",
    ),
    Row(
        "val_loader = data.val_dataloader()",
        "`LightningDataModule.val_dataloader`",
        code="def val_dataloader(self) -> DataLoader:",
        essay=False,
    ),
    Row(
        "model = MLP(hp.in_features, hp.hidden, hp.classes, hp.dropout)",
        "`LightningModule.__init__`",
        code="self.model = MLP(in_features, hidden, classes, dropout)",
    ),
    Row(
        "model.to(device)",
        "the Trainer (`accelerator`, `precision`), before `configure_optimizers`",
        "after the optimizer, with a dtype change and torch's overwrite-on-conversion flag on, "
        "the optimizer updates discarded tensors",
        fabric="in `fabric.setup`",
    ),
    Row(
        "criterion = nn.CrossEntropyLoss()", "`LightningModule.__init__`", code="self.criterion = nn.CrossEntropyLoss()"
    ),
    Row(
        'val_loss = MeanMetric(nan_strategy="disable").to(device)',
        "`LightningModule.__init__`; the Trainer moves it with the module",
        "a plain mean of the batch losses would weigh a smaller last batch like a full one",
        'self.val_loss = MeanMetric(nan_strategy="disable")',
        essay=False,
    ),
    Row(
        'val_acc = MulticlassAccuracy(hp.classes, average="micro").to(device)',
        "`LightningModule.__init__`",
        code='self.val_acc = MulticlassAccuracy(classes, average="micro")',
        essay=False,
    ),
    Row(
        "optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr)",
        "`configure_optimizers`",
        "it must see the parameters it will update",
        "optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)",
    ),
    Row(
        "scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.max_epochs)",
        "`configure_optimizers`",
        "it must wrap the optimizer it schedules",
        "scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)",
        ("scheduler.step", "configure_optimizers"),
        fabric_recorded=("scheduler.step", None),
    ),
    Row(
        "dtype = AUTOCAST.get(hp.precision)",
        "`Trainer(precision=...)`: `bf16-mixed` and `16-mixed` choose the `MixedPrecision` plugin",
        code="precision: null",
        essay=False,
        fabric="`Fabric(precision=...)`, in train_fabric.py",
    ),
    Row(
        "autocast = torch.autocast(device.type, dtype, enabled=dtype is not None)",
        "`MixedPrecision.forward_context()`, around every `*_step` hook",
        "left out, `bf16-mixed` trains in float32: every loss differs from the first step on",
        essay=False,
        fabric="in the model's forward, once `fabric.setup` has wrapped it",
    ),
    Row(
        'scaler = torch.amp.GradScaler(device.type, enabled=hp.precision == "16-mixed")',
        "`MixedPrecision`'s `scaler`, for `16-mixed` alone: fp16 gradients would underflow unscaled",
        essay=False,
        fabric=("scaler = fabric.strategy.precision",),
    ),
    Row(
        "N = hp.accumulate_grad_batches",
        "`Trainer(accumulate_grad_batches=N)`",
        code="accumulate_grad_batches: 1",
        essay=False,
    ),
    Row(
        "train_model, loader, val_loader = run.distribute(model, loader, val_loader, hp.seed)",
        f'`Trainer(strategy="ddp")`: the DDP wrapper and `DistributedSampler`s ({SPAN})',
        essay=False,
        fabric=(
            "model, optimizer = fabric.setup(model, optimizer)",
            "loader, val_loader = fabric.setup_dataloaders(loader, val_loader)",
        ),
    ),
    Row(
        "start_epoch = run.start(model, optimizer, scheduler, scaler, data, loader)",
        f"`Trainer.fit(ckpt_path=...)`: a checkpoint restored before training starts ({SPAN})",
        essay=False,
    ),
    Row(
        "for epoch in run.progress(range(start_epoch, hp.max_epochs)):",
        "`Trainer(max_epochs=...)`, with its progress bar",
        code="max_epochs: 100",
    ),
    Row(
        "first = run.epoch_start(epoch)",
        f"the fit loop at each epoch's start: `set_epoch`, `LearningRateMonitor`; a resumed run's "
        f"`batch_progress` ({SPAN})",
        essay=False,
    ),
    Row(
        "model.train()",
        "the Trainer, after each validation: it restores each submodule's mode (`on_validation_model_train`)",
        "left out after `model.eval()`, dropout stays off and BatchNorm frozen for the rest of training",
        recorded=(TRAIN_FORWARD, "training_step"),
        fabric_recorded=(TRAIN_FORWARD, "model(...)"),
    ),
    Row(
        "for batch_idx, (X_batch, y_batch) in enumerate(loader, first):",
        "the fit loop, `len(loader)` batches, each hook's `batch_idx`",
    ),
    Row(
        "X_batch, y_batch = X_batch.to(device), y_batch.to(device)",
        "`transfer_batch_to_device`",
        essay=False,
        fabric="in the loader, once `fabric.setup_dataloaders` has wrapped it",
    ),
    Row(
        "steps = (batch_idx + 1) % N == 0 or batch_idx + 1 == len(loader)",
        "the fit loop's `_should_accumulate()`, negated: a window's last batch, or the epoch's",
        "without `or batch_idx + 1 == len(loader)`, an epoch's partial window never steps: the next "
        "epoch's `zero_grad` throws its gradients away",
        essay=False,
    ),
    Row(
        "if batch_idx % N == 0:",
        "the closure: `zero_grad` on a window's first batch alone",
        "left out, `zero_grad` at every batch: each step applies its window's last batch alone (pitfalls 11b)",
        essay=False,
    ),
    Row(
        "optimizer.zero_grad()",
        "`optimizer_zero_grad`",
        "left out, gradients pile up over batches; between `backward` and `step`, it wipes this batch's gradients",
        recorded=("zero_grad", "optimizer_zero_grad"),
        fabric_recorded=("zero_grad", None),
    ),
    Row(
        "with run.no_sync(not steps):",
        f"`DDPStrategy.block_backward_sync()` on the batches the fit loop accumulates ({SPAN})",
        essay=False,
        fabric=("with fabric.no_backward_sync(model, enabled=not steps):",),
    ),
    Row(
        "with autocast:",
        "the precision plugin's `train_step_context()`, around `training_step`",
        recorded=(TRAIN_FP16, "training_step"),
        fabric_recorded=(TRAIN_FP16, "model(...)"),
        essay=False,
        fabric="in the model's forward",
    ),
    Row(
        "logits = train_model(X_batch)",
        "`training_step`",
        code="logits = self(X_batch)",
        recorded=(TRAIN_FORWARD, "training_step"),
        fabric_recorded=(TRAIN_FORWARD, "model(...)"),
        fabric=("logits = model(X_batch)",),
    ),
    Row("loss = criterion(logits, y_batch)", "`training_step`", code="loss = self.criterion(logits, y_batch)"),
    Row(
        "scaler.scale(loss / N).backward()",
        "`backward`: the closure divides the loss by N (`ClosureResult`); `MixedPrecision.pre_backward` scales it",
        "without `/ N`, N times the gradient: Adam, which divides by its scale, sees it only through "
        "the clipping and its eps (pitfalls 11a)",
        recorded=("backward", "backward"),
        fabric_recorded=("backward", "fabric.backward"),
        fabric=("fabric.backward(loss / N)",),
    ),
    Row(
        "if steps:",
        "the fit loop: `optimizer_step` at a window's end, the accumulated gradients' step",
        "left out, a step at every batch: the window's gradients are applied one by one as they add up",
        essay=False,
    ),
    Row(
        "scaler.unscale_(optimizer)",
        "`MixedPrecision.optimizer_step`, before it calls `configure_gradient_clipping`",
        "after the clipping, it clips the gradients times the loss scale: the step applies "
        "max_norm / 2¹⁶ (pitfalls 11d)",
        recorded=("scaler.unscale_", "optimizer_step"),
        fabric_recorded=("scaler.unscale_", "fabric.clip_gradients"),
        essay=False,
        fabric="in `fabric.clip_gradients`, or else in `optimizer.step()`",
    ),
    Row(
        "if hp.gradient_clip_val is not None:",
        "`Trainer(gradient_clip_val=...)`",
        code="gradient_clip_val: 1.0",
        essay=False,
    ),
    Row(
        "torch.nn.utils.clip_grad_norm_(model.parameters(), hp.gradient_clip_val)",
        "`configure_gradient_clipping`",
        "before `backward` there is nothing to clip; after `step` it clips gradients already applied",
        recorded=("clip_grad_norm_", "configure_gradient_clipping"),
        fabric_recorded=("clip_grad_norm_", "fabric.clip_gradients"),
        fabric=("fabric.clip_gradients(model, optimizer, max_norm=hp.gradient_clip_val, error_if_nonfinite=False)",),
    ),
    Row(
        "scaler.step(optimizer)",
        "`optimizer_step`; under `16-mixed`, `scaler.step` skips a step whose gradients hold an inf or NaN",
        recorded=("optimizer.step", "optimizer_step"),
        fabric_recorded=("optimizer.step", "optimizer.step()"),
        fabric=("optimizer.step()",),
    ),
    Row(
        "scaler.update()",
        "`MixedPrecision.optimizer_step`, after the step",
        "left out, not silent: the GradScaler raises at the next step (pitfalls 11e)",
        recorded=("scaler.update", "optimizer_step"),
        fabric_recorded=("scaler.update", "optimizer.step()"),
        essay=False,
        fabric="in `optimizer.step()`",
    ),
    Row(
        "run.batch_end(loss, epoch, steps)",
        f'`self.log("train/loss", loss)`; callbacks\' `on_train_batch_end`: NaN stop, Ctrl-C ({SPAN})',
        "logging `loss` instead of `loss.item()` keeps every step's graph alive",
        'self.log("train/loss", loss, prog_bar=True)',
        essay=False,
    ),
    Row(
        "scheduler.step()",
        "`lr_scheduler_step`, interval `epoch`",
        "inside the batch loop, the learning rate decays len(loader) times per epoch instead of once",
        '"lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "name": "train/lr"},',
        ("scheduler.step", "lr_scheduler_step"),
        fabric_recorded=("scheduler.step", None),
    ),
    Row(
        "model.eval()",
        "the Trainer, before validation",
        "left out, dropout stays on during validation",
        recorded=(VAL_FORWARD, "validation_step"),
        fabric_recorded=(VAL_FORWARD, "model(...)"),
    ),
    Row(
        "with torch.no_grad():",
        "the Trainer, around validation",
        "left out, every validation batch builds an autograd graph",
        recorded=(VAL_FORWARD, "validation_step"),
        fabric_recorded=(VAL_FORWARD, "model(...)"),
    ),
    Row("for X_val, y_val in val_loader:", "the validation loop"),
    Row(
        "X_val, y_val = X_val.to(device), y_val.to(device)",
        "`transfer_batch_to_device`",
        essay=False,
        fabric="in the loader",
    ),
    Row(
        "with autocast:",
        "the precision plugin's `val_step_context()`, around `validation_step`",
        "left out, `bf16-mixed` validates in float32: another `val/loss` than Lightning's",
        recorded=(VAL_FP16, "validation_step"),
        fabric_recorded=(VAL_FP16, "model(...)"),
        essay=False,
        fabric="in the model's forward",
    ),
    Row(
        "val_logits = model(X_val)",
        "`validation_step`",
        code="val_logits = self(X_val)",
        recorded=(VAL_FORWARD, "validation_step"),
        fabric_recorded=(VAL_FORWARD, "model(...)"),
    ),
    Row(
        "val_loss.update(criterion(val_logits, y_val), weight=len(y_val))",
        "`validation_step`",
        code="self.val_loss.update(self.criterion(val_logits, y_val), weight=len(y_val))",
    ),
    Row(
        "val_acc.update(val_logits, y_val)",
        "`validation_step`",
        code="self.val_acc.update(val_logits, y_val)",
        essay=False,
    ),
    Row(
        "run.epoch_end(epoch, val_loss, val_acc)",
        "`self.log` of the epoch metrics; callbacks' `on_validation_end` and `on_train_epoch_end`: "
        f"NaN stop, animation frame, `ModelCheckpoint`, Ctrl-C ({SPAN})",
        code='self.log_dict({"val/loss": self.val_loss, "val/acc": self.val_acc}, prog_bar=True)',
        essay=False,
    ),
)

# What the PlainRun calls do, in machinery/plain_run.py.
MACHINERY = (
    Row(
        "torch.manual_seed(seed)",
        'under DDP, `Trainer(strategy="ddp")` calls `reset_seed()` as each process joins the process group',
        "left out, dropout draws other masks than under Lightning's DDP",
    ),
    Row(
        "train_model = DistributedDataParallel(model)",
        '`Trainer(strategy="ddp")` wraps the LightningModule',
        "left out, each process steps with its own gradients and the copies of the model drift apart",
    ),
    Row(
        "loader = with_sampler(loader, DistributedSampler(loader.dataset, shuffle=True, seed=seed))",
        "`Trainer(use_distributed_sampler=True)` under DDP: the DataLoader made anew with a `DistributedSampler` "
        "seeded with `seed_everything`",
        "left out, every process trains on all the points: an epoch does one process's work once per process",
    ),
    Row('model.load_state_dict(self.resume["model"])', "`Trainer.fit(ckpt_path=...)`, before training starts"),
    Row(
        'scaler.load_state_dict(self.resume["scaler"])',
        "`MixedPrecision.load_state_dict`, where the checkpoint has a `MixedPrecision` key",
        "left out, a resumed `16-mixed` run starts again from the initial loss scale",
    ),
    Row(
        'data.load_state_dict(self.resume["data"])',
        "`LightningDataModule.load_state_dict`",
        "left out, the resumed run shuffles its epochs in the order the interrupted run began with",
    ),
    Row(
        'loader.load_state_dict(self.resume["loader"])',
        "the fit loop, for a DataLoader with `state_dict`/`load_state_dict` (`ResumableLoader`)",
        "left out, with persistent workers the resumed run's new workers draw a seed from the shuffle generator "
        "that the interrupted run's reused ones did not, and every later epoch is shuffled differently",
    ),
    Row(
        'set_rng_state(self.resume["rng"])',
        "`ExactResume.on_load_checkpoint` (machinery/checkpoints.py)",
        "left out, a resumed run with dropout draws other dropout masks than the interrupted run would have",
    ),
    Row(
        "self._loader.sampler.set_epoch(epoch)",
        "the fit loop, at the start of each epoch",
        "left out, a `DistributedSampler` shuffles every epoch in the same order",
    ),
    Row(
        "return ddp.no_sync()",
        "`DDPStrategy.block_backward_sync()`: `no_sync` on the batches the fit loop accumulates",
        "left out, every batch's backward all-reduces: N all-reduces a step instead of one, and other bits "
        "(pitfalls 11f)",
    ),
    Row(
        "if not torch.isfinite(loss):",
        "`StopOnNonFiniteLoss` callback, `on_train_batch_end`",
        "left out, a run whose loss turned NaN trains on to the end of the epoch",
    ),
    Row(
        "if not stepped:",
        "the logger connector and `GracefulStop`: `train/loss` logged, and a stop made, at a window's end",
        "left out, `train/loss` and the step count advance at every batch, and a stop within a window saves a "
        "checkpoint without the window's gradients so far",
    ),
    Row(
        "if self.stop is not None and self.stop.signal and self._loader.batches < len(self._loader):",
        "`GracefulStop` callback, `on_train_batch_end` (machinery/stopping.py)",
        "left out, a Ctrl-C waits for the end of the epoch (the stop check in `epoch_end`)",
    ),
    Row(
        "if not torch.isfinite(val_loss.compute()):",
        "`StopOnNonFiniteLoss` callback, `on_validation_end`",
        "after the checkpoint is written, weights that turned NaN on the epoch's last step overwrite the last "
        "good checkpoint",
    ),
    Row(
        "image = self.boundary.frame(self._model, X_val, y_val, epoch, val_acc.compute().item())",
        "`DecisionBoundary` callback, `on_validation_end`",
        "before the metrics are computed, the frame's title would show the previous epoch's accuracy",
    ),
    Row(
        "atomic_save(checkpoint, self.checkpoint)",
        "`ModelCheckpoint(save_last=True)`, `on_train_epoch_end`, through `AtomicCheckpointIO`",
        "before `scheduler.step()`, the resumed run repeats the finished epoch's learning rate; with a plain "
        "`torch.save(..., path)`, a kill during the write leaves a torn file where the last checkpoint was",
    ),
)
ROWS = LOOP + MACHINERY

# Where the two loops differ in order or in extra calls without changing a single number.
COMMUTING = {
    "zero_grad before training": "Lightning clears the model's gradients once before training starts "
    "(`Trainer._run_stage`); there are none yet",
    "zero_grad after the forward": "Lightning calls `optimizer.zero_grad()` after the forward, inside the closure "
    "that `optimizer_step` runs; anywhere between the previous `step` and this `backward` gives the same numbers",
    "zero_grad before validation": "Lightning also frees the gradients before validation "
    "(`on_validation_model_zero_grad`); the next `zero_grad` would clear them anyway",
}


def fabric_lines(row: Row) -> tuple[str, ...]:
    """The lines of loop_fabric.fit() that do a row's work: none where Fabric does it inside another call."""
    if row.fabric is None:
        return (row.line,)
    return () if isinstance(row.fabric, str) else row.fabric


def fabric_cell(row: Row) -> str:
    if row.fabric is None:
        return "the same"
    return row.fabric if isinstance(row.fabric, str) else "<br>".join(f"`{line}`" for line in row.fabric)


def table(rows: tuple[Row, ...], header: str, fabric: bool = False) -> list[str]:
    columns = [header, *(["Fabric (`loop_fabric.py`)"] if fabric else []), "Lightning", "if you move it"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"`{row.line}`", *([fabric_cell(row)] if fabric else []), row.lightning, row.moved]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def commuting() -> list[str]:
    return ["Where Lightning does it in another order, without changing a number:", ""] + [
        f"- {why}." for why in COMMUTING.values()
    ]


def markdown() -> str:
    """The README's table: the essay's lines, the Fabric loop's and Lightning's for each, what happens if you move
    one."""
    essay = tuple(row for row in LOOP if row.essay)
    return "\n".join([*table(essay, "plain loop (`loop.py`)", fabric=True), "", *commuting()])


PAGE = """\
# loop.py beside loop_fabric.py and module.py

<!-- generated by `python -m {{ cookiecutter.package_name }}.hookmap side-by-side`;
tests/test_hookmap.py checks it -->

Every line of `loop.fit()`, in order, beside the lines of `loop_fabric.fit()` that do its work ("the
same" where the line is the same; where Fabric does it inside another call, that call), the line of
the Lightning side that does it (`module.py`, `data.py`, `configs/default.yaml`; empty where the
Trainer does it with its defaults) and the hook or Trainer argument that runs it.
`tests/test_hookmap.py` records what the three loops do, in order, and checks every row that names a
recorded event. Diff the files, `diff -y -W 200 src/{{ cookiecutter.package_name }}/loop.py
src/{{ cookiecutter.package_name }}/loop_fabric.py`: the same names in the same order.

| plain loop (`loop.py`) | Fabric loop (`loop_fabric.py`) | Lightning code | run by |
|---|---|---|---|
{loop}

## What the Trainer does around the loop

The calls `run.distribute`, `run.start`, `run.epoch_start`, `run.no_sync`, `run.batch_end` and
`run.epoch_end` hold
these lines (`src/{{ cookiecutter.package_name }}/machinery/plain_run.py`); but for `no_sync`, nothing in
them changes a number the loop computes, and where each sits keeps a resumed or distributed run
bit-identical. The Fabric loop's `run` is a `FabricRun` (`machinery/fabric_run.py`): the same calls,
except that Fabric's own lines do the work of `run.distribute` and `run.no_sync`; `fabric.log` writes
the scalars, and `fabric.save` and `fabric.load` the checkpoints.

{machinery}

{commuting}"""


def side_by_side() -> str:
    """docs/side_by_side.md: every line of loop.fit() beside the Fabric loop's and the Lightning code and hook
    that do its work."""
    loop = [
        f"| `{row.line}` | {fabric_cell(row)} | {f'`{row.code}`' if row.code else ''} | {row.lightning} |"
        for row in LOOP
    ]
    return PAGE.format(
        loop="\n".join(loop),
        machinery="\n".join(table(MACHINERY, "`machinery/plain_run.py`")),
        commuting="\n".join(commuting()),
    )


if __name__ == "__main__":
    print(side_by_side() if sys.argv[1:] == ["side-by-side"] else markdown())
