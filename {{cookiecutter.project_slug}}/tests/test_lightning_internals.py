"""The private names the machinery relies on (machinery/lightning_internals.py) are still there, and still do what it
relies on them for: checked on real objects, a DataLoader from `fabric.setup_dataloaders` and a Trainer, on the CPU.

A Lightning release that moves one fails here by name, before the runs that need it fail in a less readable way.
"""

import importlib.util
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import lightning
import pytest
import torch
from lightning.fabric import Fabric
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter
from torch.utils.data.distributed import DistributedSampler

from {{ cookiecutter.package_name }}.machinery import lightning_internals


def moved(name: str, user: str, purpose: str) -> str:
    return f"lightning {lightning.__version__} moved {name}, which {user} relies on for {purpose}"


@contextmanager
def named_if_missing() -> Iterator[None]:
    """An accessor's own AttributeError, which names the attribute and its user, as the test's failure alone."""
    try:
        yield
    except AttributeError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def fabric_loader() -> tuple[DataLoader, object]:
    """A DataLoader and what `fabric.setup_dataloaders` makes of it. Its sampler is a DistributedSampler of one
    replica, which needs no process group, so that the epoch Fabric sets on it can be read back."""
    dataset = TensorDataset(torch.arange(8.0))
    dataloader = DataLoader(dataset, batch_size=4, sampler=DistributedSampler(dataset, num_replicas=1, rank=0))
    return dataloader, Fabric(accelerator="cpu", devices=1).setup_dataloaders(dataloader)


def test_the_fabric_dataloader_still_holds_the_dataloader_it_wrapped(fabric_loader):
    dataloader, loader = fabric_loader
    assert loader is not dataloader  # wrapped, or there would be nothing to unwrap
    with named_if_missing():
        unwrapped = lightning_internals.unwrapped_dataloader(loader)
    assert unwrapped is dataloader, moved(
        "_FabricDataLoader._dataloader", "machinery/fabric_run.py", "the DataLoader that Fabric wrapped"
    )


def test_the_fabric_dataloader_still_sets_its_samplers_epoch_from_its_count_of_iterations(fabric_loader):
    dataloader, loader = fabric_loader
    epochs = []
    for count in (3, None):  # the count set, then the count the loader went on to
        if count is not None:
            with named_if_missing():
                lightning_internals.set_times_iterated(loader, count)
        list(loader)
        epochs.append(dataloader.sampler.epoch)
    assert epochs == [3, 4], moved(
        "_FabricDataLoader._num_iter_calls", "machinery/fabric_run.py", "the sampler's epoch after a resume"
    )


def test_the_trainer_still_reports_the_sigterm_flag_the_machinery_sets():
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    assert not trainer.received_sigterm  # a new Trainer: the flag below must be what turns it on
    with named_if_missing():
        lightning_internals.ask_trainer_to_stop(trainer)
    # Lightning's loops read this public property to raise SIGTERMException.
    assert trainer.received_sigterm, moved(
        "Trainer._signal_connector.received_sigterm", "machinery/stopping.py", "stopping the Trainer after a batch"
    )


def test_the_module_whose_warning_quiet_filters_is_still_there():
    assert importlib.util.find_spec(lightning_internals.PYTREE_MODULE) is not None, moved(
        lightning_internals.PYTREE_MODULE, "machinery/cli.py's quiet()", "filtering torch's LeafSpec FutureWarning"
    )


def test_torch_still_has_the_worker_shutdown_the_tests_call():
    # Not the machinery's: tests/conftest.py's shut_down_workers stops a stopped run's DataLoader workers with it.
    assert callable(getattr(_MultiProcessingDataLoaderIter, "_shutdown_workers", None)), (
        f"torch {torch.__version__} moved _MultiProcessingDataLoaderIter._shutdown_workers, which tests/conftest.py's "
        "shut_down_workers relies on for stopping DataLoader workers"
    )


@pytest.mark.parametrize("strategies", [lightning.pytorch.strategies, lightning.fabric.strategies])
def test_model_parallel_strategies_still_build_their_mesh_from_the_size_the_fsdp2_strategies_set(strategies):
    strategy_class = strategies.ModelParallelStrategy
    parallelize = (lambda module, mesh: module,) if strategies is lightning.fabric.strategies else ()
    strategy = strategy_class(*parallelize, data_parallel_size=3, tensor_parallel_size=1)
    where = ("ModelParallelStrategy._data_parallel_size", "machinery/sharding.py", "FSDP2 over every process")
    # The constructor's size is where the setter writes, and what setup_environment builds the device mesh from.
    assert getattr(strategy, "_data_parallel_size", None) == 3, moved(*where)
    assert "self._data_parallel_size" in inspect.getsource(strategy_class.setup_environment)
    with named_if_missing():
        lightning_internals.set_data_parallel_size(strategy, 2)
    assert strategy._data_parallel_size == 2
