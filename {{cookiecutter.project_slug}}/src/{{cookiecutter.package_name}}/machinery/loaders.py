"""The DataLoaders behind SpiralDataModule: shuffled with their own generator, able to stop between two batches.

data.py calls `loader(...)`; nothing here changes what a batch holds, only that every loop draws the same batches in
the same order, with the same random draws in them, and that an interrupted run draws the batches it had still to come.

- `EpochShuffle`: `shuffle=True` whose order is drawn when the epoch starts (a `for` loop and Lightning agree).
- `ResumableLoader`: the training DataLoader; its state is the epoch's order and how far it got.
- `DistributedShare`: under DDP and FSDP2, a process's share of an epoch, seeded, from where a resumed run goes on.
- `Pinned`: the training samples, each drawing its random numbers (augmentation) from a seed of its own.
- `TensorBatches`: one indexing per batch instead of one per point: the same tensors, several times faster.
- `with_sampler`, `distributed`, `launched_by_torchrun`: what Lightning does under DDP, for the plain loop.
"""

import os
import random
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    TensorDataset,
    default_collate,
)

from {{ cookiecutter.package_name }}.machinery.checkpoints import CheckpointError


class EpochShuffle(Sampler[int]):
    """Like `shuffle=True`, but the epoch's whole order is drawn when the epoch starts.

    torch's RandomSampler draws one more permutation when asked for an index past its last. A plain `for` loop
    asks (to hear StopIteration) and Lightning, which stops at len(dataloader), does not: when the training set
    is a multiple of the batch size, the two would shuffle every later epoch differently.

    With `seeded`, each index comes with a seed for the sample's random draws, drawn with the order: (index, seed).

    `replay` makes the next epoch the rest of an interrupted one, without drawing: how a resumed run goes on.
    """

    def __init__(self, size: int, generator: torch.Generator, seeded: bool = False):
        self.size, self.generator, self.seeded = size, generator, seeded
        self.order: list[int] = []  # the current epoch's
        self.seeds: list[int] = []  # its samples' seeds, where seeded
        self._replay: tuple[list[int], list[int], int] | None = None

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        if self._replay is None:
            self.order, start = torch.randperm(self.size, generator=self.generator).tolist(), 0
            if self.seeded:
                self.seeds = torch.randint(2**62, (self.size,), generator=self.generator).tolist()
        else:
            (self.order, self.seeds, start), self._replay = self._replay, None
        if self.seeded:
            return iter(list(zip(self.order, self.seeds, strict=True))[start:])
        return iter(self.order[start:])

    def replay(self, order: list[int], seeds: list[int], start: int) -> None:
        """Make the next epoch `order` (with its samples' `seeds`) from position `start` on."""
        self._replay = (order, seeds, start)


class DistributedShare(Sampler):
    """Under DDP and FSDP2, what a process's DataLoader batches: its DistributedSampler's share of the epoch, each index
    with a seed for the sample's random draws where `seeded`, from position `start` in the next epoch on.

    The DistributedSampler (Lightning's, Fabric's or the plain loop's) decides the order from its seed and epoch: a
    resumed run draws it again, and `start` skips what the interrupted run handed out. The samples' seeds come from
    the same seed and epoch: the same in every loop, whatever the number of workers, before and after an
    interruption.
    """

    def __init__(self, sampler: DistributedSampler, seeded: bool):
        self.sampler, self.seeded, self.start = sampler, seeded, 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        indices, self.start = list(self.sampler)[self.start :], 0
        if not self.seeded:
            return iter(indices)
        generator = torch.Generator().manual_seed(self.sampler.seed + self.sampler.epoch)  # as the sampler's order
        seeds = torch.randint(2**62, (len(self.sampler.dataset),), generator=generator).tolist()
        return iter([(index, seeds[index]) for index in indices])


class ResumableLoader(DataLoader):
    """The training DataLoader, able to stop between two batches and go on from there in a new process.

    Its state is the epoch's order and how many batches it has handed out. Lightning saves it in every checkpoint
    and, resuming mid-epoch, loads it back before iterating (a "stateful" DataLoader); plain_run.py does the same.
    The generator's state, which decides the epochs still to come, is SpiralDataModule's. Under DDP and FSDP2 the
    DistributedSampler decides the order, and a checkpoint keeps how many processes shared the epoch.
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
        share = self._share()
        if share is not None:
            share.start = self._resume_at * self.batch_size
        iterator = super().__iter__()  # a new iterator draws the workers' base seed from self.generator
        self.generator = shuffle
        self.batches, self._resume_at, self.resumed = self._resume_at, 0, False
        return self._count(iterator)

    def _share(self) -> DistributedShare | None:
        """Under DDP (Lightning and Fabric make the DataLoader anew with a DistributedSampler), what batches it."""
        if not isinstance(self.sampler, DistributedSampler):
            return None
        if not isinstance(self.batch_sampler.sampler, DistributedShare):
            self.batch_sampler.sampler = DistributedShare(self.sampler, seeded=isinstance(self.dataset, Pinned))
        return self.batch_sampler.sampler

    def _count(self, iterator):
        for batch in iterator:
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        # DDP's DistributedSampler: seed and epoch decide the order.
        order, seeds = (torch.tensor(getattr(self.sampler, key, []), dtype=torch.int64) for key in ("order", "seeds"))
        # Whether the epoch was done, said outright: a run with another number of processes counts other batches.
        done = self.batches == len(self)
        epoch = getattr(self.sampler, "epoch", 0)  # a DistributedSampler's
        state = {"order": order, "seeds": seeds, "batches": self.batches, "epoch_done": done}
        return {**state, "processes": processes(), "epoch": epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Go on with the saved epoch on the next iter(), or, when it was complete, with the next epoch."""
        self.resumed = True
        batches = int(state_dict["batches"])
        self._resume_at = 0 if state_dict["epoch_done"] else batches
        if isinstance(self.sampler, DistributedSampler):
            # The epoch to go on with, before iter(): Lightning's workers ask for indices before it sets the epoch.
            self.sampler.set_epoch(int(state_dict.get("epoch", 0)) + (not self._resume_at))
        if not self._resume_at:
            return
        saved = int(state_dict.get("processes", 1))
        if saved != processes():  # the processes' shares of the epoch are other ones
            raise CheckpointError(
                f"the checkpoint stopped {batches} batches into an epoch of a run in {saved} process(es); it goes on "
                f"in {saved}, not {processes()} (a checkpoint from an epoch's end goes on in any number)"
            )
        if isinstance(self.sampler, EpochShuffle):
            order, seeds = state_dict["order"].tolist(), state_dict["seeds"].tolist()
            self.sampler.replay(order, seeds, start=batches * self.batch_size)
        elif not isinstance(self.sampler, DistributedSampler):  # DDP with use_distributed_sampler=False: no order kept
            raise CheckpointError(
                f"the checkpoint stopped {batches} batches into an epoch whose order the {type(self.sampler).__name__} "
                "cannot replay; go on from an epoch's end"
            )


def distributed() -> bool:
    """Whether this process is one of several that train together (DDP: `torchrun`, Trainer(strategy="ddp"))."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def processes() -> int:
    """How many processes train together: 1, or under DDP and FSDP2 the world's size."""
    return torch.distributed.get_world_size() if distributed() else 1


def launched_by_torchrun() -> bool:
    # torchrun sets it, with RANK and WORLD_SIZE, in every process it starts; Lightning's and Fabric's launchers don't
    return "LOCAL_WORLD_SIZE" in os.environ


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
    """In each DataLoader worker: a terminal sends Ctrl-C to every process of the job (and SLURM its SIGUSR1 to every
    process of a job step), and a worker that died of it would fail the main process's graceful stop. The main
    process decides, then shuts the workers down: SIGTERM keeps its default, whatever handler the worker inherited
    (Python's multiprocessing ends the workers left at exit with it, and waits for them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Pinned(Dataset):
    """The training samples, each drawing its random numbers from its own seed: (input, label), `augment`ed.

    A DataLoader worker's random stream starts from the loader's base seed plus the worker's id, and batches go to
    the workers in turn: a draw in `__getitem__` would depend on the number of workers, and a resumed epoch, which
    hands its remaining batches to workers starting afresh, would draw other numbers. Here each sample draws from
    the seed that came with its index (EpochShuffle's, or under DDP DistributedShare's): torch's, numpy's and
    Python's random numbers, the process's own put back after each batch.
    """

    def __init__(self, dataset: Dataset, augment: Callable[[Tensor], Tensor] | None = None):
        self.dataset, self.augment = dataset, augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list:
        """A batch's samples: DataLoader asks for them at once, so the random state is kept once a batch."""
        if not keys or not isinstance(keys[0], tuple):  # bare indices (DDP, use_distributed_sampler=False)
            return [self._drawn(index) for index in keys]
        with kept_random_state():
            return [self._drawn(index, seed) for index, seed in keys]

    def _drawn(self, index: int, seed: int | None = None):
        if seed is not None:
            seed_all(seed)
        X, y = self.dataset[index]
        return (X if self.augment is None else self.augment(X)), y


def seed_all(seed: int) -> None:
    """torch's (CPU), numpy's and Python's global random numbers drawn from `seed` on."""
    torch.default_generator.manual_seed(seed)  # torch.manual_seed seeds every device too, 100 times slower
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextmanager
def kept_random_state() -> Iterator[None]:
    """torch's (CPU), numpy's and Python's global random numbers, after, as they were before."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


@contextmanager
def drawing_from(seed: int) -> Iterator[None]:
    """Inside, the global random numbers drawn from `seed`; after, as they were."""
    with kept_random_state():
        seed_all(seed)
        yield


class TensorBatches(TensorDataset):
    """A TensorDataset that DataLoader asks for a whole batch at once: one indexing of each tensor, where it would
    index once per point and stack the points (default_collate). The same tensors, several times faster."""

    def __getitems__(self, indices: list[int]) -> list[Tensor]:
        return [tensor[indices] for tensor in self.tensors]  # a list, as default_collate makes of (X, y) pairs


def as_batch(batch: list[Tensor]) -> list[Tensor]:
    """DataLoader's collate_fn for TensorBatches, whose __getitems__ has made the batch already."""
    return batch


def tensors_of(dataset: Dataset) -> tuple[Tensor, ...] | None:
    """The tensors of a TensorDataset that indexes them as TensorDataset does (no draws, no transform), else None."""
    if isinstance(dataset, TensorDataset) and type(dataset).__getitem__ is TensorDataset.__getitem__:
        return dataset.tensors
    return None


def stacked(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """Every (input, label) of `dataset`, in its order, as two tensors: (N, ...) inputs, (N,) labels. A dataset that
    draws random numbers in `dataset[i]` draws them from a pinned seed: the run's own random state is left be."""
    tensors = tensors_of(dataset)
    if tensors is not None:
        return tensors[0], tensors[1]
    with drawing_from(0):
        X, y = default_collate([dataset[i] for i in range(len(dataset))])
    return X, y


def loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: torch.Generator | None = None,
    resumed: bool = False,
    augment: Callable[[Tensor], Tensor] | None = None,
    num_workers: int = 0,
    persistent_workers: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over `dataset`. With `shuffle`, the training one: a ResumableLoader whose order that generator
    decides, each sample's draws pinned (and `augment`ed) unless it is a TensorDataset's; `resumed`: its next iter()
    goes on with an interrupted run."""
    tensors = tensors_of(dataset) if augment is None else None
    settings = dict(
        batch_size=batch_size,
        collate_fn=default_collate if tensors is None else as_batch,
        num_workers=num_workers,
        worker_init_fn=ignore_interrupts,
        persistent_workers=persistent_workers,
        pin_memory=pin_memory,
    )
    if shuffle is None:  # iter() draws the workers' base seed from `generator`
        served = dataset if tensors is None else TensorBatches(*tensors)
        return DataLoader(served, generator=seed_generator(persistent_workers), **settings)
    served = Pinned(dataset, augment) if tensors is None else TensorBatches(*tensors)
    if distributed():
        # Under DDP, Lightning re-creates the training DataLoader with a DistributedSampler in place of this
        # RandomSampler (Trainer(use_distributed_sampler=True)), shuffled with seed_everything + epoch; the plain
        # loop does the same. EpochShuffle would be wrapped, not replaced.
        sampler = RandomSampler(served, generator=shuffle)
    else:
        sampler = EpochShuffle(len(served), shuffle, seeded=tensors is None)
    made = ResumableLoader(served, sampler=sampler, generator=shuffle, **settings)
    made.resumed = resumed
    return made


def seed_generator(persistent_workers: bool) -> torch.Generator | None:
    """Where an evaluation DataLoader's iter() draws its workers' base seed: torch's global RNG (None), as any
    DataLoader's, unless its workers persist. Those draw once per process, so a resumed run would draw once more
    than the interrupted run did and shift dropout's masks: they draw from a generator of their own."""
    return torch.Generator() if persistent_workers else None
