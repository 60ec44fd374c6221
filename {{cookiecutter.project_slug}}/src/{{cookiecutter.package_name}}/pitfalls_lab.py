"""The pitfalls lab's loop and what it measures: the essay's loop, run as written or with one line moved.

`train` is loop.py's loop, line for line in the same order, with measuring lines between them. It is its own
copy because what it measures sits between loop.py's lines (the norm `clip_grad_norm_` returns, `.grad` as
`backward` starts) and because several rows need a loop that loop.py cannot be: one that converts the dtype of
its inputs, sums the validation loss itself (loop.py's MeanMetric updates without grad, so leaving out
`torch.no_grad()` there keeps one batch's graph, not all of them), logs the loss tensor, or validates on a tensor.
With `accumulate`, `fp16` and `step_schedule` it is loop.py's loop with accumulate_grad_batches, 16-mixed (on the
CPU: torch's fp16 autocast and GradScaler run there too) and a schedule stepped per optimizer step.

`ddp_allreduces` runs the accumulating loop in two processes, with and without DDP's no_sync.
"""

import contextlib
import tempfile
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from {{ cookiecutter.package_name }}.data import Spiral, SpiralDataModule
from {{ cookiecutter.package_name }}.model import MLP


@dataclass(frozen=True)
class Settings:
    points_per_class: int  # the spiral: 60% of the points train, 20% validate
    epochs: int  # also the cosine schedule's T_max
    clip: float  # clip_grad_norm_'s max_norm
    val_batch_size: int  # several validation batches, so that a graph kept per batch shows
    batch_size: int = 64
    hidden: int = 128
    lr: float = 1e-3
    dropout: float = 0.3  # for the rows about model.train() and model.eval()
    seed: int = 0


# The essay's experiment.
FULL = Settings(points_per_class=1000, epochs=100, clip=1.0, val_batch_size=100)
# For the tests: clipping at 0.05 bites in 4 epochs, where 1.0 would not.
QUICK = Settings(points_per_class=200, epochs=4, clip=0.05, val_batch_size=40)

# Accumulating, the rows take windows of 4 batches: QUICK's 6 batches an epoch make a window of 4 and one of 2.
N = 4

# The places in `train`, in the order the loop passes them. Accumulating, "before the forward" is a window's first
# batch's, "before every forward" every batch's; "after loss.backward()" to "after optimizer.step()" are a
# window's last batch's, "after every batch" every batch's. Without accumulation, every batch passes them all.
PLACES = (
    "before the optimizer",
    "after the optimizer",
    "at epoch start",
    "before every forward",
    "before the forward",
    "after the forward",
    "after loss.backward()",
    "before optimizer.step()",
    "after optimizer.step()",
    "after every batch",
    "after the batches",
    "before validation",
    "after validation",
)
# Where each movable line of the loop sits, in the order lines at one place run. A row moves one of them: another
# place, or None to leave it out.
CORRECT = {
    "model.to(dtype)": "before the optimizer",
    "model.train()": "at epoch start",
    "optimizer.zero_grad()": "before the forward",
    "scaler.unscale_()": "after loss.backward()",
    "clip_grad_norm_()": "after loss.backward()",
    "scaler.update()": "after optimizer.step()",
    "scheduler.step()": "after the batches",
    "model.eval()": "before validation",
}


@dataclass
class Run:
    """What one run of `train` measured. Per-step series have one entry per optimizer step."""

    losses: Tensor  # training loss as logged, every step
    lrs: Tensor  # the learning rate each step used
    leftover: Tensor  # norm of the gradient already in .grad when loss.backward() ran (0: none)
    clip_saw: Tensor  # total norm that clip_grad_norm_ measured, each call
    applied: Tensor  # norm of the gradient that optimizer.step() applied (unscaled, under fp16)
    train_mode: Tensor  # model.training at each training forward
    val_losses: Tensor  # every epoch
    val_accs: Tensor  # every epoch
    kept: Tensor  # (epochs, validation batches): tensors autograd keeps alive after each validation batch
    kept_bytes: Tensor  # (epochs, validation batches): the bytes of their storages
    logged_nodes: int  # autograd graph nodes reachable from what the loop logged, after training
    kept_after: int  # tensors autograd keeps alive after training
    params: dict[str, Tensor]  # the model's weights at the end
    change: float  # how far any weight moved from its initial value
    optimizer_has_model_params: bool  # whether the optimizer updates the model's own Parameter objects
    steps_per_epoch: int  # optimizer steps
    taken: int  # optimizer steps that changed the weights: GradScaler.step skips those with an inf gradient
    scales: Tensor  # the GradScaler's scale after each step


class SavedTensors:
    """Counts the tensors autograd keeps for backward (torch.autograd.graph.saved_tensors_hooks).

    Each saved tensor goes into a box that only autograd's graph holds, so the box dies when the graph frees
    it: a count that does not depend on the allocator, the machine or the timing. The box holds the tensor
    detached: a saved output still pointing at its grad_fn would make a reference cycle, and the graph would
    then live until Python's garbage collector runs, not until autograd lets it go.
    """

    class Box:
        __slots__ = ("tensor", "__weakref__")

    def __init__(self):
        self.boxes = weakref.WeakSet()

    def pack(self, tensor: Tensor) -> "SavedTensors.Box":
        box = self.Box()
        box.tensor = tensor.detach()
        self.boxes.add(box)
        return box

    def unpack(self, box: "SavedTensors.Box") -> Tensor:
        return box.tensor

    def count(self) -> tuple[int, int]:
        """(tensors alive, bytes of their distinct storages)."""
        tensors = [box.tensor for box in self.boxes]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return len(tensors), sum(storages.values())


def graph_nodes(values: Iterable) -> int:
    """Autograd nodes reachable from the tensors among `values`: the graph they keep alive."""
    seen, todo = set(), [v.grad_fn for v in values if isinstance(v, Tensor) and v.grad_fn is not None]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += [child for child, _ in node.next_functions if child is not None]
    return len(seen)


def grad_norm(params: Iterable[Tensor]) -> float:
    """Total 2-norm of the gradients present; 0 when there are none."""
    norms = [p.grad.detach().double().norm() for p in params if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


def number(value: Tensor | float) -> float:
    """A logged value as a float, without the warning a tensor that requires grad gives."""
    return value.detach().item() if isinstance(value, Tensor) else value


def train(
    s: Settings,
    move: dict[str, str | None] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    dropout: float = 0.0,
    no_grad: bool = True,
    log_item: bool = True,
    loader_generator: bool = True,
    validate_on: str = "loader",
    accumulate: int = 1,
    divide_loss: bool = True,
    fp16: bool = False,
    init_scale: float = 2.0**16,
    step_schedule: bool = False,
) -> Run:
    """The essay's loop, as in loop.py; `move` puts lines of CORRECT at other PLACES (None: nowhere).

    The switches are the rest of the crib sheet: `no_grad=False` leaves `torch.no_grad()` out of validation;
    `log_item=False` logs `loss` instead of `loss.item()`; `loader_generator=False` shuffles the training
    DataLoader without a generator of its own; `validate_on="tensor"` validates on the whole validation tensor, as
    the essay does, instead of iterating a DataLoader, as Lightning does. And the lines after the essay's:
    `accumulate` batches a step, the loss divided by it unless `divide_loss=False`; `fp16`, the forward in
    float16 autocast and the loss scaled by a GradScaler from `init_scale`; `step_schedule`, a cosine schedule
    over all the optimizer steps (`"interval": "step"`), its `scheduler.step()` then "after optimizer.step()".
    """
    for line, place in (move or {}).items():
        if line not in CORRECT or place not in (*PLACES, None):
            raise ValueError(f"cannot put {line!r} {place!r}: the lines are {list(CORRECT)}, the places {PLACES}")
    places = {**CORRECT, **(move or {})}
    torch.manual_seed(s.seed)
    spiral = Spiral(points_per_class=s.points_per_class)
    data = SpiralDataModule(spiral, batch_size=s.batch_size, val_batch_size=s.val_batch_size, seed=s.seed)
    data.setup("fit")
    if loader_generator:
        loader = data.train_dataloader()
    else:
        loader = DataLoader(data.train_set, batch_size=s.batch_size, shuffle=True)
    val_loader = data.val_dataloader() if validate_on == "loader" else [data.val_set.tensors]

    model = MLP(in_features=2, hidden=s.hidden, out_features=3, dropout=dropout)
    criterion = nn.CrossEntropyLoss()
    start = [p.detach().clone() for p in model.parameters()]
    # Lines that append to `seen` or `kept` only measure; every other line is the essay's loop.
    names = ("lrs", "leftover", "clip_saw", "applied", "train_mode", "val_losses", "val_accs", "scales")
    seen = {name: [] for name in names}
    kept = []
    lines = {
        "model.to(dtype)": lambda: model.to(dtype),
        "model.train()": lambda: model.train(),
        "optimizer.zero_grad()": lambda: optimizer.zero_grad(),
        "scaler.unscale_()": lambda: scaler.unscale_(optimizer),
        "clip_grad_norm_()": lambda: seen["clip_saw"].append(
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=s.clip).item()
        ),
        "scaler.update()": lambda: scaler.update(),
        "scheduler.step()": lambda: scheduler.step(),
        "model.eval()": lambda: model.eval(),
    }
    autocast = torch.autocast("cpu", torch.float16, enabled=fp16)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, enabled=fp16)
    steps_per_epoch = -(-len(loader) // accumulate)

    def at(place: str) -> None:
        """Run the movable lines that sit at this place."""
        for line, where in places.items():
            if where == place:
                lines[line]()

    saved = SavedTensors()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        at("before the optimizer")
        optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
        T_max = s.epochs * steps_per_epoch if step_schedule else s.epochs
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=T_max)
        at("after the optimizer")
        log = []  # what a training script keeps of each step's loss, to print or plot later
        for _epoch in range(s.epochs):
            at("at epoch start")
            for batch_idx, (X_batch, y_batch) in enumerate(loader):
                steps = (batch_idx + 1) % accumulate == 0 or batch_idx + 1 == len(loader)
                at("before every forward")
                if batch_idx % accumulate == 0:
                    at("before the forward")
                seen["train_mode"].append(model.training)
                with autocast:
                    logits = model(X_batch.to(dtype))
                    loss = criterion(logits, y_batch)
                at("after the forward")
                seen["leftover"].append(grad_norm(model.parameters()))
                scaler.scale(loss / accumulate if divide_loss else loss).backward()
                if steps:
                    at("after loss.backward()")
                    at("before optimizer.step()")
                    seen["applied"].append(grad_norm(optimizer.param_groups[0]["params"]))
                    seen["lrs"].append(optimizer.param_groups[0]["lr"])
                    scaler.step(optimizer)
                    at("after optimizer.step()")
                    seen["scales"].append(scaler.get_scale())
                    log.append(loss.item() if log_item else loss)
                at("after every batch")
            at("after the batches")

            at("before validation")
            kept.append([])
            with torch.no_grad() if no_grad else contextlib.nullcontext():
                val_loss, hits = 0.0, 0
                for X_val, y_val in val_loader:
                    with autocast:
                        val_logits = model(X_val.to(dtype))
                        # The essay's sum where loop.py has a MeanMetric: without no_grad, it holds every graph.
                        val_loss = val_loss + criterion(val_logits, y_val) * len(y_val)
                    hits += (val_logits.argmax(dim=1) == y_val).sum().item()
                    kept[-1].append(saved.count())
            seen["val_losses"].append(number(val_loss) / len(data.val_set))
            seen["val_accs"].append(hits / len(data.val_set))
            at("after validation")
        kept_after = saved.count()[0]

    counts = torch.tensor(kept, dtype=torch.int64)  # (epochs, validation batches, 2)
    return Run(
        **{name: torch.tensor(values, dtype=torch.float64) for name, values in seen.items() if name != "train_mode"},
        losses=torch.tensor([number(value) for value in log], dtype=torch.float64),
        train_mode=torch.tensor(seen["train_mode"]),
        kept=counts[..., 0],
        kept_bytes=counts[..., 1],
        logged_nodes=graph_nodes(log),
        kept_after=kept_after,
        params={name: p.detach().clone() for name, p in model.state_dict().items()},
        change=max(
            (p.detach().double() - p0.double()).abs().max().item()
            for p, p0 in zip(model.parameters(), start, strict=True)
        ),
        optimizer_has_model_params=all(
            a is b for a, b in zip(optimizer.param_groups[0]["params"], model.parameters(), strict=True)
        ),
        steps_per_epoch=steps_per_epoch,
        taken=max((int(state["step"]) for state in optimizer.state.values()), default=0),
    )


def ddp_allreduces(s: Settings) -> dict[bool, tuple[int, dict[str, Tensor]]]:
    """The loop accumulating N batches a step, without a schedule, in two CPU processes under DDP, each on its half
    of the points: with DDP's no_sync around the batches before a window's last (True), and without (False). For
    each, how many gradient all-reduces one process made, and the final weights."""
    with tempfile.TemporaryDirectory() as directory:
        torch.multiprocessing.spawn(ddp_process, (s, directory), nprocs=2)
        return torch.load(Path(directory) / "rank0.pt", weights_only=True)


def ddp_process(rank: int, s: Settings, directory: str) -> None:
    """One of ddp_allreduces' two processes."""
    torch.set_num_threads(1)
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=2)
    data = SpiralDataModule(Spiral(points_per_class=s.points_per_class), batch_size=s.batch_size, seed=s.seed)
    data.setup("fit")
    loader = DataLoader(data.train_set, s.batch_size, sampler=DistributedSampler(data.train_set, seed=s.seed))
    criterion = nn.CrossEntropyLoss()
    results = {}
    for no_sync in (True, False):
        torch.manual_seed(s.seed)
        model = DistributedDataParallel(MLP(hidden=s.hidden))
        allreduces = []

        def counted(state, bucket, allreduces=allreduces):  # DDP's own all-reduce, counted
            allreduces.append(bucket.index())
            return allreduce_hook(state, bucket)

        model.register_comm_hook(None, counted)
        optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
        for epoch in range(s.epochs):
            loader.sampler.set_epoch(epoch)
            for batch_idx, (X_batch, y_batch) in enumerate(loader):
                steps = (batch_idx + 1) % N == 0 or batch_idx + 1 == len(loader)
                if batch_idx % N == 0:
                    optimizer.zero_grad()
                with model.no_sync() if no_sync and not steps else contextlib.nullcontext():
                    (criterion(model(X_batch), y_batch) / N).backward()
                if steps:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
                    optimizer.step()
        results[no_sync] = len(allreduces), {name: p.detach().clone() for name, p in model.module.state_dict().items()}
        del model  # with its comm hook, before the process group it holds
    if rank == 0:
        torch.save(results, Path(directory) / "rank0.pt")
    dist.destroy_process_group()


def identical(a: Run, b: Run) -> bool:
    """Every training loss, validation loss and final weight equal, bit for bit."""
    same_params = a.params.keys() == b.params.keys() and all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    return torch.equal(a.losses, b.losses) and torch.equal(a.val_losses, b.val_losses) and same_params


def equal_steps(a: Tensor, b: Tensor) -> int:
    """How many steps two loss curves agree for, from the start."""
    different = (a != b).nonzero()
    return int(different[0]) if len(different) else len(a)


def shuffle_orders(loader: DataLoader, epochs: int, stop_at_len: bool) -> list[Tensor]:
    """Each epoch's order, read by a `for` loop or, as Lightning does, by stopping after len(loader) batches."""
    return [torch.cat(list(islice(loader, len(loader)) if stop_at_len else loader)) for _ in range(epochs)]


@contextlib.contextmanager
def overwrite_params_on_conversion(on: bool):
    """torch.__future__'s flag that makes .to()/.half() create new Parameter objects; restored afterwards."""
    before = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(on)
    try:
        yield
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(before)


class Lab:
    """Runs each variant of `train` once: the rows share the correct loop's run, the unclipped one, ..."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.runs: dict[str, Run] = {}

    def run(self, move: dict[str, str | None] | None = None, *, overwrite: bool = False, **switches) -> Run:
        # Switches left at train's defaults do not make another run.
        changed = sorted((name, value) for name, value in switches.items() if value != train.__kwdefaults__[name])
        key = repr((move or None, overwrite, changed))
        if key not in self.runs:
            with overwrite_params_on_conversion(overwrite):
                self.runs[key] = train(self.s, move, **switches)
        return self.runs[key]

    def ddp(self) -> dict[bool, tuple[int, dict[str, Tensor]]]:
        if "ddp" not in self.runs:
            self.runs["ddp"] = ddp_allreduces(self.s)
        return self.runs["ddp"]
