"""The line -> hook map: where each line of the plain loop (loop.py) lives in Lightning (module.py, the Trainer).

    python -m {{ cookiecutter.package_name }}.hookmap          # prints the table README.md shows

tests/test_hookmap.py records what both loops actually do, in order, and checks every row against it.
"""

from typing import NamedTuple


class Row(NamedTuple):
    line: str  # the line in loop.py
    lightning: str  # where Lightning does it
    moved: str  # what happens if you move it
    # What tests/test_hookmap.py records for this line in a Lightning run: (event, innermost LightningModule hook).
    recorded: tuple[str, str] | None = None


TRAIN_FORWARD = "forward(train, grad)"
VAL_FORWARD = "forward(eval, no_grad)"

ROWS = (
    Row(
        "loader = data.train_dataloader()",
        "`LightningDataModule.train_dataloader`",
        "without its own seeded generator, the shuffle order depends on every other draw from the global RNG",
    ),
    Row(
        "model.to(device)",
        "`Trainer(accelerator=...)`, before `configure_optimizers`",
        "after the optimiser, with a dtype change and torch's overwrite-on-conversion flag on, "
        "the optimiser updates discarded tensors",
    ),
    Row(
        "optimiser = torch.optim.Adam(model.parameters(), lr=lr)",
        "`configure_optimizers`",
        "it must see the parameters it will update",
    ),
    Row(
        "scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max_epochs)",
        "`configure_optimizers`",
        "it must wrap the optimiser it schedules",
        ("scheduler.step", "configure_optimizers"),
    ),
    Row(
        "torch.manual_seed(seed)",
        'the second one, under DDP: `Trainer(strategy="ddp")` calls `reset_seed()` as each process joins the '
        "process group",
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
    Row(
        'model.load_state_dict(resume["model"])',
        "`Trainer.fit(ckpt_path=...)`, before training starts",
        "-",
    ),
    Row(
        'data.load_state_dict(resume["data"])',
        "`LightningDataModule.load_state_dict`",
        "left out, the resumed run shuffles its epochs in the order the interrupted run began with",
    ),
    Row(
        'loader.load_state_dict(resume["loader"])',
        "the fit loop, for a DataLoader with `state_dict`/`load_state_dict` (`ResumableLoader`)",
        "left out, with persistent workers the resumed run's new workers draw a seed from the shuffle generator "
        "that the interrupted run's reused ones did not, and every later epoch is shuffled differently",
    ),
    Row(
        'set_rng_state(resume["rng"])',
        "`on_load_checkpoint` in module.py",
        "left out, a resumed run with dropout draws other dropout masks than the interrupted run would have",
    ),
    Row("for epoch in trange(max_epochs, ...)", "`Trainer(max_epochs=...)`", "-"),
    Row("if epoch < start_epoch:", "the fit loop starts at the checkpoint's epoch", "-"),
    Row(
        "loader.sampler.set_epoch(epoch)",
        "the fit loop, at the start of each epoch",
        "left out, a `DistributedSampler` shuffles every epoch in the same order",
    ),
    Row(
        "model.train()",
        "the Trainer, after each validation: it restores each submodule's mode (`on_validation_model_train`)",
        "left out after `model.eval()`, dropout stays off and BatchNorm frozen for the rest of training",
        (TRAIN_FORWARD, "training_step"),
    ),
    Row(
        "optimiser.zero_grad()",
        "`optimizer_zero_grad`",
        "left out, gradients pile up over batches; between `backward` and `step`, it wipes this batch's gradients",
        ("zero_grad", "optimizer_zero_grad"),
    ),
    Row("logits = train_model(X_batch)", "`training_step`", "-", (TRAIN_FORWARD, "training_step")),
    Row("loss.backward()", "`backward`", "-", ("backward", "backward")),
    Row(
        "torch.nn.utils.clip_grad_norm_(model.parameters(), gradient_clip_val)",
        "`configure_gradient_clipping`, set by `Trainer(gradient_clip_val=...)`",
        "before `backward` there is nothing to clip; after `step` it clips gradients already applied",
        ("clip_grad_norm_", "configure_gradient_clipping"),
    ),
    Row("optimiser.step()", "`optimizer_step`", "-", ("optimizer.step", "optimizer_step")),
    Row(
        "if not torch.isfinite(loss):",
        "`StopOnNonFiniteLoss` callback, `on_train_batch_end`",
        "left out, a run whose loss turned NaN trains on to the end of the epoch",
    ),
    Row(
        "if stop is not None and stop.signal and loader.batches < len(loader):",
        "`GracefulStop` callback, `on_train_batch_end` (checkpoints.py)",
        "left out, a Ctrl-C waits for the end of the epoch (the `if stop` after `save(epoch + 1)`)",
    ),
    Row(
        "scheduler.step()",
        "`lr_scheduler_step`, interval `epoch`",
        "inside the batch loop, the learning rate decays len(loader) times per epoch instead of once",
        ("scheduler.step", "lr_scheduler_step"),
    ),
    Row(
        "model.eval()",
        "the Trainer, before validation",
        "left out, dropout stays on during validation",
        (VAL_FORWARD, "validation_step"),
    ),
    Row(
        "with torch.no_grad():",
        "the Trainer, around validation",
        "left out, every validation batch builds an autograd graph",
        (VAL_FORWARD, "validation_step"),
    ),
    Row("val_logits = model(X_val)", "`validation_step`", "-", (VAL_FORWARD, "validation_step")),
    Row(
        "if not torch.isfinite(val_loss.compute()):",
        "`StopOnNonFiniteLoss` callback, `on_validation_end`",
        "after the checkpoint is written, weights that turned NaN on the epoch's last step overwrite the last "
        "good checkpoint",
    ),
    Row(
        "image = boundary.frame(model, ...)",
        "`DecisionBoundary` callback, `on_validation_end`",
        "before the metrics are computed, the frame's title would show the previous epoch's accuracy",
    ),
    Row(
        "atomic_save(",
        "`ModelCheckpoint(save_last=True)`, `on_train_epoch_end`, through `AtomicCheckpointIO`",
        "before `scheduler.step()`, the resumed run repeats the finished epoch's learning rate; with a plain "
        "`torch.save(..., path)`, a kill during the write leaves a torn file where the last checkpoint was",
    ),
)

# Where the two loops differ in order or in extra calls without changing a single number.
COMMUTING = {
    "zero_grad before training": "Lightning clears the model's gradients once before training starts "
    "(`Trainer._run_stage`); there are none yet",
    "zero_grad after the forward": "Lightning calls `optimiser.zero_grad()` after the forward, inside the closure "
    "that `optimizer_step` runs; anywhere between the previous `step` and this `backward` gives the same numbers",
    "zero_grad before validation": "Lightning also frees the gradients before validation "
    "(`on_validation_model_zero_grad`); the next `zero_grad` would clear them anyway",
}


def markdown() -> str:
    """The README's table: the loop's line, where Lightning does it, what happens if you move it."""
    lines = ["| plain loop (`loop.py`) | Lightning | if you move it |", "|---|---|---|"]
    lines += [f"| `{row.line}` | {row.lightning} | {row.moved} |" for row in ROWS]
    lines += ["", "Where Lightning does it in another order, without changing a number:", ""]
    lines += [f"- {why}." for why in COMMUTING.values()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
