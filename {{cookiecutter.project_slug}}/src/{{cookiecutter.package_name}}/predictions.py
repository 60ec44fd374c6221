"""Write `python train.py predict` results to predictions.csv in the run's log directory."""

import csv
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from {{ cookiecutter.package_name }}.machinery.loaders import stacked


class PredictionWriter(BasePredictionWriter):
    """One row per item of the dataset, in its order: its input's values x1, ..., xn (flattened), its label, the
    probability of each class, the predicted class."""

    def __init__(self, filename: str = "predictions.csv"):
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        X, y = stacked(trainer.predict_dataloaders.dataset)
        X = X.flatten(start_dim=1)
        probabilities = torch.cat(predictions)
        path = Path(trainer.log_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            features = [f"x{i}" for i in range(1, X.shape[1] + 1)]
            writer.writerow([*features, "label", *(f"p{k}" for k in range(probabilities.shape[1])), "predicted"])
            for x, label, p in zip(X.tolist(), y.tolist(), probabilities.tolist(), strict=True):
                writer.writerow([*x, label, *p, max(range(len(p)), key=p.__getitem__)])
        print(f"predictions: {path}")
