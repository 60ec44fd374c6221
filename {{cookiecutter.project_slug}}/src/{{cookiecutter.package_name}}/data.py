"""The data: a three-class spiral (or your own CSV of points) and the LightningDataModule that serves it.

    data = SpiralDataModule(batch_size=64)
    data.setup("fit")
    X_batch, y_batch = next(iter(data.train_dataloader()))  # (64, 2) float32, (64,) int64

A CSV for `path` has one point per line, `x1,x2,label`, labels 0..classes-1; a header line is allowed.
"""

import csv
import math
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, OpenUnitInterval, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, Sampler, TensorDataset

from {{ cookiecutter.package_name }}.checkpoints import CheckpointError


class DataError(ValueError):
    """A data setting or data file that cannot be used; the message names it."""


def make_spiral(points_per_class: int, classes: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`classes` interleaved arms of `points_per_class` points: X (N, 2) float32, y (N,) int64."""
    y = torch.arange(classes).repeat_interleave(points_per_class)
    radius = torch.linspace(0.0, 1.0, points_per_class).repeat(classes)
    angle = torch.linspace(0.0, 4.0, points_per_class).repeat(classes) + 4.0 * y
    angle = angle + noise * torch.randn(len(y), generator=generator)
    X = torch.stack([radius * torch.sin(angle), radius * torch.cos(angle)], dim=1)
    return X, y


def load_csv(path: Path, classes: int) -> tuple[Tensor, Tensor]:
    """Read `x1,x2,label` rows; raise DataError naming the file and line of the first bad row."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    points, labels = [], []
    header_allowed = True  # on the first row that is not blank
    # utf-8-sig: a spreadsheet's byte-order mark would otherwise hide the first number; undecodable bytes
    # become U+FFFD, so the row fails below with its line number instead of a UnicodeDecodeError.
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as file:
        for line, row in enumerate(csv.reader(file), start=1):
            if not row or all(not cell.strip() for cell in row):
                continue
            is_first, header_allowed = header_allowed, False
            if len(row) != 3:
                raise DataError(f"{path}:{line}: expected 3 columns x1,x2,label, found {len(row)}")
            try:
                x1, x2, label = float(row[0]), float(row[1]), int(row[2])
            except ValueError:
                if is_first:
                    continue  # a header
                raise DataError(f"{path}:{line}: expected numbers x1,x2 and an integer label, found {row}") from None
            if not (math.isfinite(x1) and math.isfinite(x2)):
                raise DataError(f"{path}:{line}: coordinates must be finite, found {row[0]},{row[1]}")
            if not 0 <= label < classes:
                raise DataError(f"{path}:{line}: label {label} is outside 0..{classes - 1} (data.classes={classes})")
            points.append((x1, x2))
            labels.append(label)
    if not points:
        raise DataError(f"{path}: no data rows")
    return torch.tensor(points, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


class EpochShuffle(Sampler[int]):
    """Like `shuffle=True`, but the epoch's whole order is drawn when the epoch starts.

    torch's RandomSampler draws one more permutation when asked for an index past its last. A plain `for` loop
    asks (to hear StopIteration) and Lightning, which stops at len(dataloader), does not: when the training set
    is a multiple of the batch size, the two would shuffle every later epoch differently.

    `replay` makes the next epoch the rest of an interrupted one, without drawing: how a resumed run goes on.
    """

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator = size, generator
        self.order: list[int] = []  # the current epoch's
        self._replay: tuple[list[int], int] | None = None

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if self._replay is None:
            self.order, start = torch.randperm(self.size, generator=self.generator).tolist(), 0
        else:
            (self.order, start), self._replay = self._replay, None
        return iter(self.order[start:])

    def replay(self, order: list[int], start: int) -> None:
        """Make the next epoch `order` from position `start` on."""
        self._replay = (order, start)


class ResumableLoader(DataLoader):
    """The training DataLoader, able to stop between two batches and go on from there in a new process.

    Its state is the epoch's order and how many batches it has handed out. Lightning saves it in every checkpoint
    and, resuming mid-epoch, loads it back before iterating (a "stateful" DataLoader); loop.py does the same.
    The generator's state, which decides the epochs still to come, is SpiralDataModule's.
    """

    batches = 0  # handed out in the current epoch
    resumed = False  # the next iter() goes on with an interrupted run
    _resume_at = 0  # the batch that iter() starts at

    def __iter__(self):
        shuffle = self.generator
        if self.resumed and (self._resume_at or self.persistent_workers):
            # The interrupted run drew this epoch's worker seed before it saved the generator (mid-epoch), or it
            # would have reused its persistent workers and drawn none: this iterator draws from a spare one.
            self.generator = torch.Generator()
        iterator = super().__iter__()  # a new iterator draws the workers' base seed from self.generator
        self.generator = shuffle
        self.batches, self._resume_at, self.resumed = self._resume_at, 0, False
        return self._count(iterator)

    def _count(self, iterator):
        for batch in iterator:
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        order = getattr(self.sampler, "order", [])  # DDP's DistributedSampler: seed and epoch decide the order
        # Whether the epoch was done, said outright: a run with another number of processes counts other batches.
        done = self.batches == len(self)
        return {"order": torch.tensor(order, dtype=torch.int64), "batches": self.batches, "epoch_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Go on with the saved epoch on the next iter(), or, when it was complete, with the next epoch."""
        self.resumed = True
        batches = int(state_dict["batches"])
        self._resume_at = 0 if state_dict["epoch_done"] else batches
        if self._resume_at:
            if not isinstance(self.sampler, EpochShuffle):
                # Under DDP: a DistributedSampler has no order to replay (a checkpoint from one process, mid-epoch).
                raise CheckpointError(
                    f"the checkpoint stopped {batches} batches into an epoch; only a run in one process can go on from "
                    "there (under DDP, checkpoints are written at the ends of epochs)"
                )
            self.sampler.replay(state_dict["order"].tolist(), start=batches * self.batch_size)


def distributed() -> bool:
    """Whether this process is one of several that train together (DDP: `torchrun`, Trainer(strategy="ddp"))."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def with_sampler(loader: DataLoader, sampler: Sampler) -> DataLoader:
    """`loader` made anew with `sampler`, everything else kept: what Lightning does to inject a DistributedSampler."""
    return type(loader)(
        loader.dataset,
        batch_size=loader.batch_size,
        collate_fn=loader.collate_fn,
        sampler=sampler,
        generator=loader.generator,
        num_workers=loader.num_workers,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
    )


def ignore_interrupts(worker_id: int) -> None:
    """In each DataLoader worker: a terminal sends Ctrl-C to every process of the job, and a worker that died of it
    would fail the main process's graceful stop. The main process decides, then shuts the workers down: SIGTERM
    keeps its default, whatever handler the worker inherited."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class TensorBatches(TensorDataset):
    """A TensorDataset that DataLoader asks for a whole batch at once: one indexing of each tensor, where it would
    index once per point and stack the points (default_collate). The same tensors, several times faster."""

    def __getitems__(self, indices: list[int]) -> list[Tensor]:
        return [tensor[indices] for tensor in self.tensors]  # a list, as default_collate makes of (X, y) pairs


def as_batch(batch: list[Tensor]) -> list[Tensor]:
    """DataLoader's collate_fn for TensorBatches, whose __getitems__ has made the batch already."""
    return batch


class SpiralDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str | None = None,
        classes: PositiveInt = 3,
        points_per_class: PositiveInt = 1000,
        noise: NonNegativeFloat = 0.2,
        val_fraction: OpenUnitInterval = 0.2,
        test_fraction: OpenUnitInterval = 0.2,
        batch_size: PositiveInt = 64,
        val_batch_size: PositiveInt | None = None,
        num_workers: NonNegativeInt = 0,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        seed: int = 0,
    ):
        """
        Args:
            path: CSV of `x1,x2,label` rows to use instead of the spiral.
            classes: Number of classes (spiral arms).
            points_per_class: Spiral points per class.
            noise: Standard deviation of the noise added to each point's angle.
            val_fraction: Share of the points held out for validation.
            test_fraction: Share of the points held out for testing.
            batch_size: Training batch size.
            val_batch_size: Validation and test batch size; None puts the whole split in one batch.
            num_workers: DataLoader worker processes.
            persistent_workers: Keep the workers alive between epochs (needs num_workers > 0).
            pin_memory: Pin batches in page-locked memory for faster copies to a GPU.
            seed: Seeds the spiral, the split and the shuffle order, apart from `seed_everything`.
        """
        super().__init__()
        if val_fraction + test_fraction >= 1:
            raise DataError(
                f"data.val_fraction + data.test_fraction must be < 1 to leave points for training, "
                f"got {val_fraction} + {test_fraction}"
            )
        if persistent_workers and num_workers == 0:
            raise DataError("data.persistent_workers needs data.num_workers > 0")
        self.save_hyperparameters()
        # Its own generator: drawing from the global RNG here would make the shuffle order depend on
        # everything else that draws from it (dropout, for one).
        self.generator = torch.Generator().manual_seed(seed)
        self.resumed = False  # load_state_dict() was called: the next training DataLoader goes on with a run

    def prepare_data(self) -> None:
        # The Trainer calls this before its logger makes the run directory: a bad data file, or too few points
        # to split, stops the run here with nothing written under logs/. setup() runs again, on every process.
        self.setup("fit")

    def setup(self, stage: str) -> None:
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.seed)
        if hp.path:
            X, y = load_csv(Path(hp.path), hp.classes)
        else:
            X, y = make_spiral(hp.points_per_class, hp.classes, hp.noise, generator)
        order = torch.randperm(len(y), generator=generator)
        n_val, n_test = round(hp.val_fraction * len(y)), round(hp.test_fraction * len(y))
        if min(n_val, n_test, len(y) - n_val - n_test) < 1:
            raise DataError(f"{len(y)} points are too few to split into train, validation and test sets")
        val, test, train = order.split([n_val, n_test, len(y) - n_val - n_test])
        self.train_set = TensorDataset(X[train], y[train])
        self.val_set = TensorDataset(X[val], y[val])
        self.test_set = TensorDataset(X[test], y[test])
        self.all_points = TensorDataset(X, y)

    def train_dataloader(self) -> DataLoader:
        if distributed():
            # Under DDP, Lightning re-creates the training DataLoader with a DistributedSampler in place of this
            # RandomSampler (Trainer(use_distributed_sampler=True)), shuffled with seed_everything + epoch; loop.py
            # does the same. EpochShuffle would be wrapped, not replaced.
            sampler = RandomSampler(self.train_set, generator=self.generator)
        else:
            sampler = EpochShuffle(len(self.train_set), self.generator)
        loader = self._loader(self.train_set, self.hparams.batch_size, sampler)
        loader.resumed, self.resumed = self.resumed, False
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.val_batch_size or len(self.val_set))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.hparams.val_batch_size or len(self.test_set))

    def predict_dataloader(self) -> DataLoader:
        """Every point of `path` when one is given, else the test split."""
        points = self.all_points if self.hparams.path else self.test_set
        return self._loader(points, self.hparams.val_batch_size or len(points))

    def _loader(self, dataset: TensorDataset, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        hp = self.hparams
        return (DataLoader if sampler is None else ResumableLoader)(
            TensorBatches(*dataset.tensors),
            batch_size=batch_size,
            collate_fn=as_batch,
            sampler=sampler,
            generator=self.generator if sampler is not None else self._seed_generator(),  # iter() draws from it
            num_workers=hp.num_workers,
            worker_init_fn=ignore_interrupts,
            persistent_workers=hp.persistent_workers,
            pin_memory=hp.pin_memory,
        )

    def _seed_generator(self) -> torch.Generator | None:
        """Where an evaluation DataLoader's iter() draws its workers' base seed: torch's global RNG (None), as any
        DataLoader's, unless its workers persist. Those draw once per process, so a resumed run would draw once more
        than the interrupted run did and shift dropout's masks: they draw from a generator of their own."""
        return torch.Generator() if self.hparams.persistent_workers else None

    def state_dict(self) -> dict[str, Any]:
        # The shuffle order of the epochs still to come; Lightning saves it in every checkpoint.
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
        self.resumed = True
