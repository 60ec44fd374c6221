"""The MLP: a plain `nn.Module`, shared by the Lightning module and the plain PyTorch loop."""

from torch import Tensor, nn


class MLP(nn.Module):
    """Two hidden layers of `hidden` units with ReLU; dropout after each when `dropout > 0`."""

    def __init__(self, in_features: int = 2, hidden: int = 128, out_features: int = 3, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
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
        return self.net(x)
