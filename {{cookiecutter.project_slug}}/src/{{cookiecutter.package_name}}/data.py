"""The data: a three-class spiral (or your own CSV of points) and the LightningDataModule that serves it.

    data = SpiralDataModule(batch_size=64)
    data.setup("fit")
    X_batch, y_batch = next(iter(data.train_dataloader()))  # (64, 2) float32, (64,) int64

A CSV for `path` has one point per line, `x1,...,xn,label`: any number n of features, the same on every line,
then a label in 0..classes-1; a header line is allowed. The model's in_features is n (`features_in`).
"""

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, OpenUnitInterval, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from {{ cookiecutter.package_name }}.machinery.loaders import loader

FLOAT32_MAX = torch.finfo(torch.float32).max


class DataError(ValueError):
    """A data setting or data file that cannot be used; the message names it."""


def make_spiral(points_per_class: int, classes: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`classes` interleaved arms of `points_per_class` points: X (N, 2) float32, y (N,) int64."""
    y = torch.arange(classes).repeat_interleave(points_per_class)
    radius = torch.linspace(0.0, 1.0, points_per_class).repeat(classes)
    angle = torch.linspace(0.0, 4.0, points_per_class).repeat(classes) + 4.0 * y
    angle = angle + noise * torch.randn(len(y), generator=generator)
    X = torch.stack([radius * torch.sin(angle), radius * torch.cos(angle)], dim=1)
    return X, y


def load_csv(path: Path, classes: int) -> tuple[Tensor, Tensor]:
    """Read `x1,...,xn,label` rows: X (N, n) float32, y (N,) int64; raise DataError naming the file and line of
    the first bad row."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        with open_points(path) as file:
            reader = csv.reader(file)
            return parse_rows(path, reader, classes)
    except csv.Error as error:  # a field longer than csv's limit, a NUL byte
        raise DataError(f"{path}:{reader.line_num}: {error}") from None
    except OSError as error:  # no permission to read it
        raise DataError(f"{path}: {error.strerror}") from None


def open_points(path: Path) -> TextIO:
    """The CSV at `path`, for csv.reader. utf-8-sig: a spreadsheet's byte-order mark would otherwise hide the first
    number; undecodable bytes become U+FFFD, so the row fails with its line number instead of a UnicodeDecodeError."""
    return path.open(newline="", encoding="utf-8-sig", errors="replace")


def filled(rows) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of the rows that are not blank."""
    for line, row in enumerate(rows, start=1):
        if any(cell.strip() for cell in row):
            yield line, row


def features(columns: int) -> str:
    """The names of a row's features: x1,x2 for 3 columns, x1,...,x9 for 10."""
    n = columns - 1
    return ",".join(f"x{i}" for i in range(1, n + 1)) if n <= 3 else f"x1,...,x{n}"


def parse_rows(path: Path, rows, classes: int) -> tuple[Tensor, Tensor]:
    points, labels = [], []
    columns = None  # set by the first row that is not blank, a header or a point
    for line, row in filled(rows):
        is_first, columns = columns is None, columns or len(row)
        if len(row) != columns or columns < 2:
            expected = f"{columns} columns {features(columns)},label" if columns >= 2 else "a feature and a label"
            raise DataError(f"{path}:{line}: expected {expected}, found {len(row)} column{'s' * (len(row) != 1)}")
        try:
            x, label = [float(cell) for cell in row[:-1]], int(row[-1])
        except ValueError:
            if is_first:
                continue  # a header
            names = features(columns)
            raise DataError(f"{path}:{line}: expected numbers {names} and an integer label, found {row}") from None
        if not all(abs(value) <= FLOAT32_MAX for value in x):  # beyond it, inf in the float32 tensor
            raise DataError(f"{path}:{line}: coordinates must be finite in float32, found {','.join(row[:-1])}")
        if not 0 <= label < classes:
            raise DataError(f"{path}:{line}: label {label} is outside 0..{classes - 1} (data.classes={classes})")
        points.append(x)
        labels.append(label)
    if not points:
        raise DataError(f"{path}: no data rows")
    return torch.tensor(points, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


def features_in(path: str | None) -> int:
    """The number of features of the points at `path`, the spiral's 2 without one: the model's in_features,
    which the entry points link to data.path. A file it cannot read counts 2; setup() then says what is wrong."""
    if not path:
        return 2
    try:
        with open_points(Path(path)) as file:
            _, row = next(filled(csv.reader(file)), (0, []))
    except (OSError, csv.Error):
        return 2
    return max(len(row) - 1, 1)


class SpiralDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str | None = None,
        classes: PositiveInt = 3,
        points_per_class: PositiveInt = 1000,
        noise: NonNegativeFloat = 0.2,
        val_fraction: OpenUnitInterval = 0.2,
        test_fraction: OpenUnitInterval = 0.2,
        batch_size: PositiveInt = 64,
        val_batch_size: PositiveInt | None = None,
        num_workers: NonNegativeInt = 0,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        seed: int = 0,
    ):
        """
        Args:
            path: CSV of `x1,...,xn,label` rows (any number n of features) to use instead of the spiral.
            classes: Number of classes (spiral arms).
            points_per_class: Spiral points per class.
            noise: Standard deviation of the noise added to each point's angle.
            val_fraction: Share of the points held out for validation.
            test_fraction: Share of the points held out for testing.
            batch_size: Training batch size.
            val_batch_size: Validation and test batch size; None puts the whole split in one batch.
            num_workers: DataLoader worker processes.
            persistent_workers: Keep the workers alive between epochs (needs num_workers > 0).
            pin_memory: Pin batches in page-locked memory for faster copies to a GPU.
            seed: Seeds the spiral, the split and the shuffle order, apart from `seed_everything`.
        """
        super().__init__()
        if val_fraction + test_fraction >= 1:
            raise DataError(
                f"data.val_fraction + data.test_fraction must be < 1 to leave points for training, "
                f"got {val_fraction} + {test_fraction}"
            )
        if persistent_workers and num_workers == 0:
            raise DataError("data.persistent_workers needs data.num_workers > 0")
        self.save_hyperparameters()
        # Its own generator: drawing from the global RNG here would make the shuffle order depend on
        # everything else that draws from it (dropout, for one).
        self.generator = torch.Generator().manual_seed(seed)
        self.resumed = False  # load_state_dict() was called: the next training DataLoader goes on with a run

    def prepare_data(self) -> None:
        # The Trainer calls this before its logger makes the run directory: a bad data file, or too few points
        # to split, stops the run here with nothing written under logs/. setup() runs again, on every process.
        self.setup("fit")

    def setup(self, stage: str) -> None:
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.seed)
        if hp.path:
            X, y = load_csv(Path(hp.path), hp.classes)
        else:
            X, y = make_spiral(hp.points_per_class, hp.classes, hp.noise, generator)
        order = torch.randperm(len(y), generator=generator)
        n_val, n_test = round(hp.val_fraction * len(y)), round(hp.test_fraction * len(y))
        if min(n_val, n_test, len(y) - n_val - n_test) < 1:
            raise DataError(f"{len(y)} points are too few to split into train, validation and test sets")
        val, test, train = order.split([n_val, n_test, len(y) - n_val - n_test])
        self.train_set = TensorDataset(X[train], y[train])
        self.val_set = TensorDataset(X[val], y[val])
        self.test_set = TensorDataset(X[test], y[test])
        self.all_points = TensorDataset(X, y)

    def train_dataloader(self) -> DataLoader:
        # Shuffled with the module's own generator: no other draw from torch's RNG can move the order.
        loader = self._loader(self.train_set, self.hparams.batch_size, shuffle=self.generator, resumed=self.resumed)
        self.resumed = False
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.val_batch_size or len(self.val_set))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.hparams.val_batch_size or len(self.test_set))

    def predict_dataloader(self) -> DataLoader:
        """Every point of `path` when one is given, else the test split."""
        points = self.all_points if self.hparams.path else self.test_set
        return self._loader(points, self.hparams.val_batch_size or len(points))

    def state_dict(self) -> dict[str, Any]:
        # The shuffle order of the epochs still to come; Lightning saves it in every checkpoint.
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
        self.resumed = True  # the next training DataLoader goes on with the interrupted run

    def _loader(self, dataset: TensorDataset, batch_size: int, **training) -> DataLoader:
        hp = self.hparams
        return loader(
            dataset,
            batch_size,
            num_workers=hp.num_workers,
            persistent_workers=hp.persistent_workers,
            pin_memory=hp.pin_memory,
            **training,
        )
