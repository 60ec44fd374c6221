"""The LightningModule: the system around the MLP, one hook per line of the plain loop in loop.py.

    python train.py fit                  # trains it on configs/default.yaml

The hooks come in the order loop.fit() runs their lines, with the same names. Lines of the loop
that have no hook here are the Trainer's, with its defaults: `optimizer.zero_grad()`, `backward`,
`clip_grad_norm_` (Trainer(gradient_clip_val=...)), the optimizer's and the scheduler's steps,
`model.train()`, `model.eval()` and `torch.no_grad()`; autocast and the GradScaler
(Trainer(precision=...)); the windows of Trainer(accumulate_grad_batches=...).
docs/side_by_side.md shows the two files line for line.
"""

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt, restricted_number_type
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from {{ cookiecutter.package_name }}.machinery.checkpoints import ExactResume
from {{ cookiecutter.package_name }}.model import MLP

Probability = restricted_number_type("Probability", float, [(">=", 0), ("<", 1)])
Batch = tuple[Tensor, Tensor]  # (X, y): (batch, in_features) float32 points, (batch,) int64 labels


# ExactResume (machinery/checkpoints.py): checkpoints keep the RNG state; other shapes are refused.
class SpiralClassifier(ExactResume, L.LightningModule):
    def __init__(
        self,
        hidden: PositiveInt = 128,
        dropout: Probability = 0.0,
        lr: PositiveFloat = 1e-3,
        classes: PositiveInt = 3,
        in_features: PositiveInt = 2,
    ):
        """
        Args:
            hidden: Units in each hidden layer.
            dropout: Dropout probability after each hidden layer, in [0, 1).
            lr: Adam's learning rate; cosine annealing takes it to 0 over trainer.max_epochs.
            classes: Number of classes (train.py links it to data.classes).
            in_features: Features per point (train.py links it to data.path: the CSV's, or 2).
        """
        super().__init__()
        self.save_hyperparameters()
        self.model = MLP(in_features, hidden, classes, dropout)
        self.criterion = nn.CrossEntropyLoss()
        self.example_input_array = torch.zeros(1, in_features)  # the model summary's sizes, FLOPs
        # Epoch metrics, as in loop.py: loss weighted by batch size, accuracy over all points.
        self.val_loss = MeanMetric(nan_strategy="disable")  # NaN stays NaN: StopOnNonFiniteLoss
        self.val_acc = MulticlassAccuracy(classes, average="micro")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.test_acc = MulticlassAccuracy(classes, average="micro")

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        max_epochs = self.trainer.max_epochs
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "name": "train/lr"},
        }

    def forward(self, X: Tensor) -> Tensor:
        return self.model(X)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        X_batch, y_batch = batch
        logits = self(X_batch)
        loss = self.criterion(logits, y_batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss  # the Trainer runs backward, clipping and optimizer_step on it

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        X_val, y_val = batch
        val_logits = self(X_val)
        self.val_loss.update(self.criterion(val_logits, y_val), weight=len(y_val))
        self.val_acc.update(val_logits, y_val)
        self.log_dict({"val/loss": self.val_loss, "val/acc": self.val_acc}, prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        X_test, y_test = batch
        test_logits = self(X_test)
        self.test_loss.update(self.criterion(test_logits, y_test), weight=len(y_test))
        self.test_acc.update(test_logits, y_test)
        self.log_dict({"test/loss": self.test_loss, "test/acc": self.test_acc}, prog_bar=True)

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        X, _ = batch
        return self(X).softmax(dim=1)  # (batch, classes) class probabilities
