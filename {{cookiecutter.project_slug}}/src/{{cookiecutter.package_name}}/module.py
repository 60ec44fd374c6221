"""The LightningModule: the system around the network, a hook per line of the plain loop, loop.py.

    python train.py fit                  # trains it on configs/default.yaml

The hooks come in the order loop.fit() runs their lines, with the same names. Lines of the loop
that have no hook here are the Trainer's, with its defaults: `optimizer.zero_grad()`, `backward`,
`clip_grad_norm_` (Trainer(gradient_clip_val=...)), the optimizer's and the scheduler's steps,
`model.train()`, `model.eval()` and `torch.no_grad()`; autocast and the GradScaler
(Trainer(precision=...)); the windows of Trainer(accumulate_grad_batches=...).
docs/side_by_side.md shows the two files line for line.
"""

import warnings

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from torch import Tensor, nn
from torchmetrics import MeanMetric

from {{ cookiecutter.package_name }}.machinery.checkpoints import ExactResume
from {{ cookiecutter.package_name }}.metrics import metrics
from {{ cookiecutter.package_name }}.model import shard

Batch = tuple[Tensor, Tensor]  # (X, y): (batch, ...) float32 inputs, (batch,) int64 labels


# ExactResume (machinery/checkpoints.py): checkpoints keep the RNG state; other shapes are refused.
class SpiralClassifier(ExactResume, L.LightningModule):
    def __init__(self, net: nn.Module, classes: PositiveInt = 3, lr: PositiveFloat = 1e-3):
        """
        Args:
            net: The network, inputs to `classes` logits: configs/default.yaml's MLP, or your own.
            classes: Number of classes the metrics tell apart.
            lr: Adam's learning rate; cosine annealing takes it to 0 over trainer.max_epochs.
        """
        super().__init__()
        with warnings.catch_warnings():
            # From the config, `net` is kept as its class_path and init_args, which resuming reads
            # back; Lightning's advice to leave it out is for a net passed in as a module.
            warnings.filterwarnings("ignore", "Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters()
        self.net = net
        self.criterion = nn.CrossEntropyLoss()
        # Epoch metrics, as in loop.py: the loss weighted by batch size, the rest over all points.
        # A NaN loss stays NaN (StopOnNonFiniteLoss): nan_strategy=nan, as "disable" would, but
        # "disable" also drops the weights (torchmetrics issue 3434).
        self.val_loss = MeanMetric(nan_strategy=float("nan"))
        self.val_metrics = metrics(classes, "val/")  # metrics.py: val/acc, and yours
        self.test_loss = MeanMetric(nan_strategy=float("nan"))
        self.test_metrics = metrics(classes, "test/")

    def configure_model(self) -> None:
        if self.device_mesh is not None:  # Trainer(strategy="fsdp2"): its processes' device mesh
            shard(self.net, self.device_mesh["data_parallel"])  # model.py: each keeps its shard

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        max_epochs = self.trainer.max_epochs
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "name": "train/lr"},
        }

    def forward(self, X: Tensor) -> Tensor:
        return self.net(X)

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
        self.val_metrics.update(val_logits, y_val)
        self.log_dict({"val/loss": self.val_loss, **self.val_metrics}, prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        X_test, y_test = batch
        test_logits = self(X_test)
        self.test_loss.update(self.criterion(test_logits, y_test), weight=len(y_test))
        self.test_metrics.update(test_logits, y_test)
        self.log_dict({"test/loss": self.test_loss, **self.test_metrics}, prog_bar=True)

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        X, _ = batch
        return self(X).softmax(dim=1)  # (batch, classes) class probabilities
