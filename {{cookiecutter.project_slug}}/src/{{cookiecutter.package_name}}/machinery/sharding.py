"""FSDP2 in the three loops: `--trainer.strategy fsdp2` shards the network over the processes, as model.py's shard().

- `FSDP2`, `FabricFSDP2`: Lightning's and Fabric's ModelParallelStrategy as FSDP2 alone (every process one shard, no
  tensor parallelism), registered as "fsdp2"; checkpoints whole, from rank 0, atomically (see below).
- `mesh()`: the plain loop's device mesh, the processes torchrun started in a row, as the strategies make it.
- `no_gradient_sync()`: FSDP2's no_sync, around the batches of a window of accumulated batches but its last.
- `check_optimizer()`: ShardingError where the optimizer was built before the model was sharded.
- `whole_state()`, `load_whole_state()`: a sharded model's and its optimizer's state gathered into the state dicts of
  the same model unsharded, and back: the checkpoints of the three loops are the same file with FSDP2, DDP or one
  process, and any of them loads under another strategy.

Checkpoints are whole, not torch's distributed checkpoint of one file per process: ModelParallelStrategy writes
those itself, around the CheckpointIO plugin, so a kill mid-save could tear the last one. A whole checkpoint goes
through the plugin (Lightning) or `atomic_save` (the loops), at the cost of gathering the model in rank 0's memory
(on the CPU, `cpu_offload`); a model too large for that wants the distributed checkpoint: docs/ddp.md.
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from lightning.fabric.strategies import ModelParallelStrategy as FabricModelParallelStrategy
from lightning.fabric.strategies import Strategy
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule

from {{ cookiecutter.package_name }}.machinery.lightning_internals import set_data_parallel_size

WHOLE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered, into rank 0's CPU memory


class FSDP2(ModelParallelStrategy):
    """Trainer(strategy="fsdp2"): ModelParallelStrategy with every process a shard of the data and the model (its
    data_parallel_size the number of processes, no tensor parallelism); LightningModule.configure_model shards."""

    def __init__(self, **kwargs):
        super().__init__(tensor_parallel_size=1, save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        set_data_parallel_size(self, self.num_nodes * self.num_processes)
        super().setup_environment()

    def block_backward_sync(self) -> AbstractContextManager:
        """Around the batches of a window of accumulate_grad_batches but its last, as under DDP (Lightning's
        ModelParallelStrategy would reduce-scatter each batch's gradients; Fabric's no_backward_sync does not)."""
        return no_gradient_sync(self.model)


StrategyRegistry.register("fsdp2", FSDP2, description="FSDP2: every process one shard")  # --trainer.strategy fsdp2


class FabricFSDP2(FabricModelParallelStrategy):
    """Fabric(strategy="fsdp2"): Fabric's ModelParallelStrategy, as FSDP2; fabric.setup_module calls
    `parallelize_fn(module, mesh)`: model.py's shard()."""

    # The CheckpointIO plugin, configs/default.yaml's AtomicCheckpointIO, taken as any strategy takes it: FabricRun
    # writes the whole checkpoint with it, where Fabric's ModelParallelStrategy would refuse it and save without.
    checkpoint_io = Strategy.checkpoint_io

    def __init__(self, parallelize_fn, **kwargs):
        # The mesh's data-parallel dimension, as LightningModule.configure_model takes it: given the whole mesh of
        # (processes, 1), fully_shard would replicate over the processes (HSDP) and shard over one.
        def parallelize(module: nn.Module, mesh: DeviceMesh) -> nn.Module:
            return parallelize_fn(module, mesh["data_parallel"])

        super().__init__(parallelize, tensor_parallel_size=1, save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        set_data_parallel_size(self, self.num_nodes * self.num_processes)
        super().setup_environment()


def mesh(device: torch.device) -> DeviceMesh:
    """The processes of the run in a row, the data-parallel dimension of ModelParallelStrategy's device mesh."""
    world = torch.distributed.get_world_size()
    return init_device_mesh(device.type, (world,), mesh_dim_names=("data_parallel",))


def sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextmanager
def no_gradient_sync(model: nn.Module) -> Iterator[None]:
    """FSDP2's no_sync: inside, the gradients add up whole in each process; reduce-scattered in the next backward
    outside (fabric.no_backward_sync under Fabric's ModelParallelStrategy)."""
    shards = [module for module in model.modules() if isinstance(module, FSDPModule)]
    for module in shards:
        module.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for module in shards:
            module.set_requires_gradient_sync(True, recurse=False)


class ShardingError(RuntimeError):
    """The optimizer was built before the model was sharded."""


def check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """ShardingError where `model` is sharded and `optimizer` updates parameters that are not its own: fully_shard
    replaces each parameter with its shard, and an optimizer built before would update the replaced ones."""
    if not sharded(model):
        return
    owned = {id(parameter) for parameter in model.parameters()}
    if any(id(parameter) not in owned for group in optimizer.param_groups for parameter in group["params"]):
        raise ShardingError(
            "the optimizer holds parameters that are not the model's: under FSDP2, build it after shard()"
        )


def names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters' names, in the order its state_dict numbers them."""
    name = {parameter: key for key, parameter in model.named_parameters()}
    return [name[parameter] for group in optimizer.param_groups for parameter in group["params"]]


def whole_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the optimizer's state_dict, as the model unsharded has them. Under FSDP2 every process must
    call it (it gathers the shards); rank 0's hold the state, the others' are empty."""
    if not sharded(model):
        return model.state_dict(), optimizer.state_dict()
    model_state = get_model_state_dict(model, options=WHOLE)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=WHOLE)
    if not optimizer_state:  # not rank 0
        return model_state, optimizer_state
    number = {key: i for i, key in enumerate(names(model, optimizer))}  # as one process's state_dict numbers them
    return model_state, rekeyed(optimizer_state, number)


def load_whole_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict):
    """whole_state's dicts into the model and the optimizer, sharded or not."""
    if not sharded(model):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    by_name = rekeyed(optimizer_state, names(model, optimizer))  # as get_optimizer_state_dict keys them
    set_optimizer_state_dict(model, optimizer, by_name, options=options)


def rekeyed(optimizer_state: dict[str, Any], key) -> dict[str, Any]:
    """An optimizer's state_dict with each parameter's key `k` as `key[k]`: names for numbers, or numbers for names."""
    state = {key[k]: value for k, value in optimizer_state["state"].items()}
    groups = [{**group, "params": [key[k] for k in group["params"]]} for group in optimizer_state["param_groups"]]
    return {"state": state, "param_groups": groups}
