"""The MLP: a plain `nn.Module`, shared by the Lightning module and the plain PyTorch loop.

configs/default.yaml names it as model.net; the types of its arguments reject nonsense before training starts.
`shard()` is how FSDP2 (`--trainer.strategy fsdp2`) splits it over the processes, in the three loops.
"""

from jsonargparse.typing import PositiveInt, restricted_number_type
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

Probability = restricted_number_type("Probability", float, [(">=", 0), ("<", 1)])


class MLP(nn.Module):
    """Two hidden layers of `hidden` units with ReLU; dropout after each when `dropout > 0`."""

    def __init__(
        self,
        in_features: PositiveInt = 2,
        hidden: PositiveInt = 128,
        out_features: PositiveInt = 3,
        dropout: Probability = 0.0,
    ):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x: Tensor) -> Tensor:
        # (batch, in_features) -> (batch, out_features) logits
        return self.layers(x)


def shard(net: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """FSDP2: each layer with weights split over the processes of `mesh`, gathered whole for its own forward and
    backward alone, then the rest of `net`. Your network: one fully_shard for each block it repeats (a transformer's
    layers), then the network itself."""
    for layer in net.modules():
        if layer is not net and any(True for _ in layer.parameters(recurse=False)):
            fully_shard(layer, mesh=mesh)
    return fully_shard(net, mesh=mesh)
