"""loop.fit run as written, or with one of its lines moved, left out or changed, and what each run did.

A variant of the loop is a tuple of lab.edits' `Edit`s of loop.py's source, compiled and run as a module: the
real loop with one line moved, not a copy of it. `Recorder` is the `run` that loop.fit calls: plain_run.PlainRun
(which writes nothing here) with hooks that watch the run and change no line of the loop: the optimizer's step
pre-hook, the training forward and its logits' gradient, clip_grad_norm_'s return value, the tensors autograd saves.
"""

import contextlib
import functools
import tempfile
import time
import types
import weakref
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import TensorDataset

from {{ cookiecutter.package_name }} import loop
from {{ cookiecutter.package_name }}.data import Spiral, SpiralDataModule
from {{ cookiecutter.package_name }}.machinery.plain_run import NoWriter, PlainRun
from {{ cookiecutter.package_name }}.model import MLP

from lab.edits import Edit, variant


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

# Seconds a DDP run of the lab may take: past them it hangs, and its processes are killed.
HANG = 300

# Accumulating, the rows take windows of 4 batches: QUICK's 6 batches an epoch make a window of 4 and one of 2.
N = 4


# --- what a run did ---


@dataclass
class Run:
    """What one run of loop.fit did. Per-step series have one entry per optimizer step."""

    losses: Tensor  # training loss as the run logged it, every step
    lrs: Tensor  # the learning rate each step used
    leftover: Tensor  # every batch: norm of the gradient already in .grad as its backward starts (0: none)
    clip_saw: Tensor  # total norm that clip_grad_norm_ measured, each call
    applied: Tensor  # norm of the gradient that each optimizer.step() applied (unscaled, under fp16)
    train_mode: Tensor  # model.training at each training forward
    val_losses: Tensor  # every epoch
    val_accs: Tensor  # every epoch
    kept: Tensor  # (epochs, validation batches): tensors autograd keeps alive after each validation batch
    kept_bytes: Tensor  # (epochs, validation batches): the bytes of their storages
    logged_nodes: int  # autograd graph nodes reachable from what the run logged, after training
    kept_after: int  # tensors autograd keeps alive after training
    params: dict[str, Tensor]  # the model's weights at the end
    change: float  # how far any weight moved from its value when training started
    optimizer_has_model_params: bool  # whether the optimizer updates the model's own Parameter objects
    steps_per_epoch: int  # optimizer steps
    taken: int  # optimizer steps that changed the weights: GradScaler.step skips those with an inf gradient
    scales: Tensor  # the GradScaler's scale after each step
    allreduces: int  # gradient all-reduces under DDP


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


@dataclass
class Recorder(PlainRun):
    """The `run` loop.fit calls: train_torch.py's PlainRun (DDP, no_sync, the metrics' reset), writing nothing, with
    hooks that watch what the loop does."""

    writer: Any = NoWriter()
    hparams: dict = field(default_factory=dict)
    progress_bar: bool = False
    log_tensors: bool = False  # keep `loss` itself where PlainRun logs `loss.item()`

    def __post_init__(self):
        self.seen = defaultdict(list)
        self.saved = SavedTensors()
        self.logged = []  # what the run keeps of each step's loss
        self.kept: list[list[tuple[int, int]]] = []  # per epoch, per validation batch
        self.allreduces = 0

    def distribute(self, model, loader, val_loader, seed):
        train_model, loader, val_loader = super().distribute(model, loader, val_loader, seed)
        if self._ddp is not None:
            train_model.register_comm_hook(None, self.allreduce)

        def forward(X: Tensor) -> Tensor:  # the loop's training forward, watched
            self.seen["train_mode"].append(model.training)
            logits = train_model(X)
            if logits.requires_grad:  # its gradient comes first in backward, before any weight's
                logits.register_hook(lambda _: self.seen["leftover"].append(grad_norm(model.parameters())))
            return logits

        return forward, loader, Counting(val_loader, self)

    def allreduce(self, state, bucket):
        self.allreduces += 1
        return allreduce_hook(state, bucket)

    def start(self, model, optimizer, scheduler, scaler, data, loader) -> int:
        self.initial = [p.detach().clone() for p in model.parameters()]
        optimizer.register_step_pre_hook(self.before_step)
        return super().start(model, optimizer, scheduler, scaler, data, loader)

    def before_step(self, optimizer, args, kwargs) -> None:
        self.seen["applied"].append(grad_norm(optimizer.param_groups[0]["params"]))
        self.seen["lrs"].append(optimizer.param_groups[0]["lr"])

    def batch_end(self, loss: Tensor, epoch: int, stepped: bool) -> None:
        super().batch_end(loss, epoch, stepped)
        if stepped:
            self.seen["losses"].append(loss.item())
            self.logged.append(loss if self.log_tensors else loss.item())
            self.seen["scales"].append(self._scaler.get_scale())

    def epoch_end(self, epoch, val_loss, val_metrics) -> None:
        self.seen["val_losses"].append(val_loss.compute().item())
        self.seen["val_accs"].append(val_metrics.compute()["val/acc"].item())
        super().epoch_end(epoch, val_loss, val_metrics)

    @contextlib.contextmanager
    def watching(self):
        """Around loop.fit: the tensors autograd saves, and what clip_grad_norm_ returns."""
        clip_grad_norm_ = torch.nn.utils.clip_grad_norm_

        def clip(*args, **kwargs) -> Tensor:
            norm = clip_grad_norm_(*args, **kwargs)
            self.seen["clip_saw"].append(norm.item())
            return norm

        with torch.autograd.graph.saved_tensors_hooks(self.saved.pack, lambda box: box.tensor):
            with mock.patch.object(torch.nn.utils, "clip_grad_norm_", clip):
                yield

    def result(self, model, optimizer) -> Run:
        series = ("losses", "lrs", "leftover", "clip_saw", "applied", "val_losses", "val_accs", "scales")
        counts = torch.tensor(self.kept, dtype=torch.int64).reshape(len(self.kept), -1, 2)
        return Run(
            **{name: torch.tensor(self.seen[name], dtype=torch.float64) for name in series},
            train_mode=torch.tensor(self.seen["train_mode"], dtype=torch.bool),
            kept=counts[..., 0],
            kept_bytes=counts[..., 1],
            logged_nodes=graph_nodes(self.logged),
            kept_after=self.saved.count()[0],
            params={name: p.detach().clone() for name, p in model.state_dict().items()},
            change=max(
                (p.detach().double() - p0.double()).abs().max().item()
                for p, p0 in zip(model.parameters(), self.initial, strict=True)
            ),
            optimizer_has_model_params=all(
                a is b for a, b in zip(optimizer.param_groups[0]["params"], model.parameters(), strict=True)
            ),
            steps_per_epoch=len(self.logged) // len(self.kept),
            taken=max((int(state["step"]) for state in optimizer.state.values()), default=0),
            allreduces=self.allreduces,
        )


class Counting:
    """A validation loader that notes, after each batch, the tensors autograd keeps alive."""

    def __init__(self, loader: Iterable, recorder: Recorder):
        self.loader, self.recorder = loader, recorder

    def __iter__(self):
        counts = []
        self.recorder.kept.append(counts)
        for batch in self.loader:
            yield batch
            counts.append(self.recorder.saved.count())


# --- running a variant ---


@dataclass(frozen=True)
class Setup:
    """How a run differs from the essay's experiment, beside its loop's edits."""

    dropout: float = 0.0  # the MLP's
    accumulate: int = 1  # accumulate_grad_batches
    fp16: bool = False  # precision="16-mixed": torch's fp16 autocast and GradScaler, which run on the CPU too
    float64: bool = False  # the points in float64, for a model converted to float64
    overwrite: bool = False  # torch.__future__.set_overwrite_module_params_on_conversion(True) during the run
    log_tensors: bool = False  # the run keeps `loss`, not `loss.item()`


@contextlib.contextmanager
def overwrite_params_on_conversion(on: bool):
    """torch.__future__'s flag that makes .to()/.half() create new Parameter objects; restored afterwards."""
    before = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(on)
    try:
        yield
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(before)


def train(s: Settings, edits: tuple[Edit, ...] = (), setup: Setup = Setup()) -> Run:
    """loop.fit with `edits`, on the spiral of `s`, as `setup` says."""
    spiral = Spiral(points_per_class=s.points_per_class)
    points = TensorDataset(spiral.tensors[0].double(), spiral.tensors[1]) if setup.float64 else spiral
    data = SpiralDataModule(points, batch_size=s.batch_size, val_batch_size=s.val_batch_size, seed=s.seed)
    hp = types.SimpleNamespace(  # what train_torch.py's config gives loop.fit
        seed=s.seed,
        net=functools.partial(MLP, hidden=s.hidden, dropout=setup.dropout),
        classes=3,
        lr=s.lr,
        max_epochs=s.epochs,
        strategy="auto",
        gradient_clip_val=s.clip,
        precision="16-mixed" if setup.fp16 else "32-true",
        accumulate_grad_batches=setup.accumulate,
    )
    recorder = Recorder(log_tensors=setup.log_tensors)
    with overwrite_params_on_conversion(setup.overwrite), recorder.watching():
        model, optimizer, _ = variant(loop, edits).fit(data, hp, recorder)
    return recorder.result(model, optimizer)


def ddp_process(rank: int, s: Settings, variants: tuple[tuple[Edit, ...], ...], directory: str) -> None:
    """One of Lab.ddp's two processes; rank 0 writes what it measured to `directory`."""
    torch.set_num_threads(1)  # two processes share the CPU
    torch.distributed.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=2)
    results = []
    for edits in variants:
        run = train(s, edits, Setup(accumulate=N))
        results.append((run.allreduces, run.params))
    if rank == 0:
        torch.save(results, Path(directory) / "rank0.pt")
    torch.distributed.destroy_process_group()


class Lab:
    """Runs each variant once: the rows share the correct loop's run, the unclipped one, ..."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.runs: dict[Any, Any] = {}

    def run(self, *edits: Edit, **setup) -> Run:
        key = (edits, Setup(**setup))
        if key not in self.runs:
            self.runs[key] = train(self.s, *key)
        return self.runs[key]

    def ddp(self, *variants: tuple[Edit, ...]) -> list[tuple[int, dict[str, Tensor]]]:
        """Each variant accumulating N batches a step, in two CPU processes under DDP (PlainRun's, each process on
        its half of the points): how many gradient all-reduces one process made, and the final weights."""
        if variants not in self.runs:
            with tempfile.TemporaryDirectory() as directory:
                processes = torch.multiprocessing.spawn(ddp_process, (self.s, variants, directory), 2, join=False)
                deadline = time.monotonic() + HANG
                while not processes.join(timeout=1):  # raises where a process failed
                    if time.monotonic() > deadline:  # a hang is a defect: end both, by their ids
                        for process in processes.processes:
                            process.kill()
                        raise TimeoutError(f"the DDP run of {variants} hung: its processes killed after {HANG} s")
                self.runs[variants] = torch.load(Path(directory) / "rank0.pt", weights_only=True)
        return self.runs[variants]


def identical(a: Run, b: Run) -> bool:
    """Every training loss, validation loss and final weight equal, bit for bit."""
    same_params = a.params.keys() == b.params.keys() and all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    return torch.equal(a.losses, b.losses) and torch.equal(a.val_losses, b.val_losses) and same_params


def equal_steps(a: Tensor, b: Tensor) -> int:
    """How many steps two loss curves agree for, from the start."""
    different = (a != b).nonzero()
    return int(different[0]) if len(different) else len(a)
