"""Every private name of Lightning, and of the libraries under it, that the machinery uses: each in one place here.

Lightning promises nothing about these, so a release may move one. Each accessor checks that its attribute is there
and otherwise raises an AttributeError that names the Lightning version, the attribute and what relies on it, rather
than setting an attribute nobody reads. tests/test_lightning_internals.py checks each on real objects, the value
read or written as well as the name.

Checked on lightning 2.5.3 (the floor in pyproject.toml) and 2.6.6, with torch 2.13.0 and jsonargparse 4.53.0:

- `_FabricDataLoader._dataloader` (`unwrapped_dataloader`): the DataLoader that `fabric.setup_dataloaders` wrapped.
  machinery/fabric_run.py hands it to PlainRun.start, which counts its batches, sets its DistributedSampler's epoch
  and restores its position, as the plain loop does with its own DataLoader.
- `_FabricDataLoader._num_iter_calls` (`set_times_iterated`): how often the loader was iterated; each `iter()` sets
  its DistributedSampler's epoch to that number, then adds one. machinery/fabric_run.py sets it to the epoch a
  resumed run starts at, so that the run shuffles its later epochs as the uninterrupted run did.
- `Trainer._signal_connector.received_sigterm` (`ask_trainer_to_stop`): the flag that the public, read-only
  `Trainer.received_sigterm` reports; with it set, Lightning's loops raise SIGTERMException at the end of the batch
  or the epoch they are in. machinery/stopping.py's GracefulStop sets it, for Ctrl-C as well as SIGTERM, where it
  has chosen to stop.
- `ModelParallelStrategy._data_parallel_size` (`set_data_parallel_size`), Lightning's and Fabric's: the number of
  processes its device mesh shards the model over, which its `setup_environment` reads to build the mesh.
  machinery/sharding.py's FSDP2 strategies set it to every process of the run, known only then (the constructor's
  "auto" means the number of nodes).
- `lightning.pytorch.utilities._pytree` (`PYTREE_MODULE`): the module whose `LeafSpec()` draws torch 2.13's
  FutureWarning at every step; machinery/cli.py's quiet() filters that warning by the module's name.
- `jsonargparse._deprecated.JsonargparseDeprecationWarning`: what Lightning's CLI code triggers by calling
  jsonargparse in deprecated ways; quiet() filters it. Imported here, so a jsonargparse that moves it fails at
  import, naming the module. (pyproject.toml's pytest filterwarnings names it too: pytest fails to start then.)

The tests use torch's `_MultiProcessingDataLoaderIter._shutdown_workers` (tests/conftest.py's shut_down_workers), a
test-only shortcut that tests/test_lightning_internals.py checks as well.
"""

from typing import Any

import lightning
from jsonargparse._deprecated import JsonargparseDeprecationWarning
from torch.utils.data import DataLoader

__all__ = [
    "PYTREE_MODULE",
    "JsonargparseDeprecationWarning",
    "ask_trainer_to_stop",
    "set_data_parallel_size",
    "set_times_iterated",
    "unwrapped_dataloader",
]

PYTREE_MODULE = "lightning.pytorch.utilities._pytree"


def _attribute(owner: Any, name: str, user: str, purpose: str) -> None:
    """Raise, naming what relies on it, where this Lightning has no attribute `name` on `owner`."""
    if not hasattr(owner, name):
        raise AttributeError(
            f"lightning {lightning.__version__} moved {type(owner).__name__}.{name}, which {user} relies on for "
            f"{purpose} (see machinery/lightning_internals.py)"
        )


def unwrapped_dataloader(loader: Any) -> DataLoader:
    """The DataLoader that `fabric.setup_dataloaders` wrapped in `loader` (a _FabricDataLoader)."""
    _attribute(loader, "_dataloader", "machinery/fabric_run.py", "the DataLoader that Fabric wrapped")
    return loader._dataloader


def set_times_iterated(loader: Any, count: int) -> None:
    """Make `loader` (a _FabricDataLoader) set its sampler's epoch to `count` at its next `iter()`."""
    _attribute(loader, "_num_iter_calls", "machinery/fabric_run.py", "the sampler's epoch after a resume")
    loader._num_iter_calls = count


def ask_trainer_to_stop(trainer: Any) -> None:
    """Set the flag on which the Trainer's loops raise SIGTERMException once the running batch is done."""
    _attribute(trainer, "_signal_connector", "machinery/stopping.py", "stopping the Trainer after a batch")
    connector = trainer._signal_connector
    _attribute(connector, "received_sigterm", "machinery/stopping.py", "stopping the Trainer after a batch")
    connector.received_sigterm = True


def set_data_parallel_size(strategy: Any, size: int) -> None:
    """Make a ModelParallelStrategy, Lightning's or Fabric's, shard over `size` processes: before its
    setup_environment builds the device mesh."""
    _attribute(strategy, "_data_parallel_size", "machinery/sharding.py", "FSDP2 over every process")
    strategy._data_parallel_size = size
