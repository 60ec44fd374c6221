"""The LightningModule: the system around the MLP, one hook per line of the plain loop in loop.py.

    python train.py fit                  # trains it on configs/default.yaml

Lines of the plain loop that have no hook here are done by the Trainer with its defaults:
`optimiser.zero_grad()` (optimizer_zero_grad), `loss.backward()` (backward),
`clip_grad_norm_` (Trainer(gradient_clip_val=...) -> configure_gradient_clipping),
`optimiser.step()` (optimizer_step), `scheduler.step()` (lr_scheduler_step), and
`model.train()`, `model.eval()`, `torch.no_grad()` around the training and validation loops.
"""

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt, restricted_number_type
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from {{ cookiecutter.package_name }}.checkpoints import CheckpointError, rng_state, set_rng_state, shape_differences
from {{ cookiecutter.package_name }}.model import MLP

Probability = restricted_number_type("Probability", float, [(">=", 0), ("<", 1)])


class SpiralClassifier(L.LightningModule):
    def __init__(
        self, hidden: PositiveInt = 128, dropout: Probability = 0.0, lr: PositiveFloat = 1e-3, classes: PositiveInt = 3
    ):
        """
        Args:
            hidden: Units in each hidden layer.
            dropout: Dropout probability after each hidden layer, in [0, 1).
            lr: Adam's learning rate; cosine annealing takes it to 0 over trainer.max_epochs.
            classes: Number of classes (train.py links it to data.classes).
        """
        super().__init__()
        self.save_hyperparameters()
        self.model = MLP(in_features=2, hidden=hidden, out_features=classes, dropout=dropout)
        self.criterion = nn.CrossEntropyLoss()
        # Epoch metrics, reduced the same way in loop.py: loss weighted by batch size, accuracy over all points.
        self.mean_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self.accuracy = nn.ModuleDict(
            {stage: MulticlassAccuracy(classes, average="micro") for stage in ("val", "test")}
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        X_batch, y_batch = batch
        logits = self(X_batch)
        loss = self.criterion(logits, y_batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        X, _ = batch
        return self(X).softmax(dim=1)  # (batch, classes) class probabilities

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "name": "train/lr"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Dropout draws from torch's global RNG: a resumed run needs its state to draw the same masks.
        checkpoint["rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Before the weights are loaded: a checkpoint of another shape is refused by name, not by a traceback.
        if differences := shape_differences(checkpoint["state_dict"], self.state_dict()):
            raise CheckpointError(f"the checkpoint holds a model of another shape: {', '.join(differences[:3])}")
        # Resuming a fit, not load_from_checkpoint() or a test: go on with the interrupted run's random numbers.
        if self._trainer is not None and self.trainer.state.fn == "fit" and "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        X, y = batch
        logits = self(X)
        loss = self.criterion(logits, y)
        self.mean_loss[stage].update(loss, weight=len(y))
        self.accuracy[stage].update(logits, y)
        self.log(f"{stage}/loss", self.mean_loss[stage], prog_bar=True)
        self.log(f"{stage}/acc", self.accuracy[stage], prog_bar=True)
