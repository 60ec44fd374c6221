"""The data: datasets of (input, label) pairs, and the LightningDataModule that splits and serves any of them.

    data = SpiralDataModule(Spiral(points_per_class=1000))
    data.setup("fit")
    X_batch, y_batch = next(iter(data.train_dataloader()))  # (64, 2) float32, (64,) int64

Your own data is a map-style `torch.utils.data.Dataset` whose items are (input, label): inputs of any shape, an int64
label. Name it in the config, `data.dataset: {class_path: ..., init_args: ...}`; the DataModule splits it, shuffles it
with its own generator and serves it through the resumable loaders of machinery/loaders.py, to all three loops.
Random draws in `__getitem__` (augmentation) and in `data.augment` (the training inputs only) are pinned to each
sample: docs/make_it_yours.md says why that keeps runs exact.

`Points` reads a CSV, one point per line, `x1,...,xn,label`: any number n of features, the same on every line, then a
label in 0..classes-1; a header line is allowed.
"""

import csv
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, OpenUnitInterval, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from {{ cookiecutter.package_name }}.machinery.loaders import loader, tensors_of

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


class Spiral(TensorDataset):
    """The essay's data: `classes` interleaved arms of `points_per_class` 2-D points each."""

    def __init__(
        self,
        classes: PositiveInt = 3,
        points_per_class: PositiveInt = 1000,
        noise: NonNegativeFloat = 0.2,
        seed: int = 0,
    ):
        """
        Args:
            classes: Number of classes (spiral arms).
            points_per_class: Points per arm.
            noise: Standard deviation of the noise added to each point's angle.
            seed: Seeds the noise.
        """
        super().__init__(*make_spiral(points_per_class, classes, noise, torch.Generator().manual_seed(seed)))


class Points(TensorDataset):
    """Your own points: a CSV of `x1,...,xn,label` rows; a bad row is named by file and line."""

    def __init__(self, path: str, classes: PositiveInt = 3):
        """
        Args:
            path: The CSV file: any number n of features, the same on every line, then a label in 0..classes-1.
            classes: Number of classes.
        """
        super().__init__(*load_csv(Path(path), classes))


def load_csv(path: Path, classes: int) -> tuple[Tensor, Tensor]:
    """Read `x1,...,xn,label` rows: X (N, n) float32, y (N,) int64; raise DataError naming the file and line of
    the first bad row."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        return load_fast(path, classes) or load_rows(path, classes)
    except OSError as error:  # no permission to read it
        raise DataError(f"{path}: {error.strerror}") from None


def load_fast(path: Path, classes: int) -> tuple[Tensor, Tensor] | None:
    """The points, read by numpy; None where anything in the file is not plainly right, for `load_rows` to name.
    numpy's parser accepts less than parse_rows (no quotes, no blank rows of spaces or commas, no 1_000), never
    more (but for a number longer than csv's field limit, 131072 characters), and reads each number as float()
    does: what it reads, parse_rows would read alike."""
    with open_points(path) as file:
        reader = csv.reader(file)
        try:
            row = first_row(reader)
        except csv.Error:
            return None
        if len(row) < 2:
            return None
        # numpy is to skip the lines before the first point: blank ones and a header
        skip = reader.line_num - 1 if is_point(row) else reader.line_num
    points = np.dtype([("x", np.float64, (len(row) - 1,)), ("label", np.int64)])
    try:
        with warnings.catch_warnings():
            # as errors: numpy < 2 reads a label of 1.5 as 1, with a DeprecationWarning; no points warns too
            warnings.simplefilter("error")
            table = np.loadtxt(
                path, dtype=points, delimiter=",", comments=None, skiprows=skip, ndmin=1, encoding="utf-8-sig"
            )
    except (ValueError, Warning):  # a bad number or column count, undecodable bytes (UnicodeDecodeError)
        return None
    if len(table) == 0:  # no points; numpy warns of it, too
        return None
    X, y = table["x"], table["label"]
    # parse_rows' checks, on float64 as float() reads it (a nan makes min and max nan, which fails them)
    if not (-FLOAT32_MAX <= X.min() and X.max() <= FLOAT32_MAX and 0 <= y.min() and y.max() < classes):
        return None
    # rounded once, float64 to float32, as torch.tensor(floats, dtype=torch.float32) does: the same bits
    return torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y.copy())


def load_rows(path: Path, classes: int) -> tuple[Tensor, Tensor]:
    """Read the rows one by one, in Python: slow, but it names the line of the first bad one."""
    with open_points(path) as file:
        reader = csv.reader(file)
        try:
            return parse_rows(path, reader, classes)
        except csv.Error as error:  # a field longer than csv's limit
            raise DataError(f"{path}:{reader.line_num}: {error}") from None


def open_points(path: Path) -> TextIO:
    """The CSV at `path`, for csv.reader. utf-8-sig: a spreadsheet's byte-order mark would otherwise hide the first
    number; undecodable bytes become U+FFFD, so the row fails with its line number instead of a UnicodeDecodeError."""
    return path.open(newline="", encoding="utf-8-sig", errors="replace")


def filled(rows) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of the rows that are not blank."""
    for line, row in enumerate(rows, start=1):
        if any(cell.strip() for cell in row):
            yield line, row


def first_row(rows) -> list[str]:
    """The first row that is not blank, a header or a point; [] if there is none."""
    return next((row for _, row in filled(rows)), [])


def features(columns: int) -> str:
    """The names of a row's features: x1,x2 for 3 columns, x1,...,x9 for 10."""
    n = columns - 1
    return ",".join(f"x{i}" for i in range(1, n + 1)) if n <= 3 else f"x1,...,x{n}"


def point(row: list[str]) -> tuple[list[float], int]:
    """The features and label of a row; ValueError if they are not numbers and an integer."""
    return [float(cell) for cell in row[:-1]], int(row[-1])


def is_point(row: list[str]) -> bool:
    try:
        point(row)
    except ValueError:
        return False
    return True


def parse_rows(path: Path, rows, classes: int) -> tuple[Tensor, Tensor]:
    points, labels = [], []
    columns = None  # set by the first row that is not blank, a header or a point
    for line, row in filled(rows):
        is_first, columns = columns is None, columns or len(row)
        if len(row) != columns or columns < 2:
            expected = f"{columns} columns {features(columns)},label" if columns >= 2 else "a feature and a label"
            raise DataError(f"{path}:{line}: expected {expected}, found {len(row)} column{'s' * (len(row) != 1)}")
        try:
            x, label = point(row)
        except ValueError:
            if is_first:
                continue  # a header
            names = features(columns)
            raise DataError(f"{path}:{line}: expected numbers {names} and an integer label, found {row}") from None
        if not all(abs(value) <= FLOAT32_MAX for value in x):  # beyond it, inf in the float32 tensor
            raise DataError(f"{path}:{line}: coordinates must be finite in float32, found {','.join(row[:-1])}")
        if not 0 <= label < classes:
            setting = f"data.dataset.classes={classes}"
            raise DataError(f"{path}:{line}: label {label} is outside 0..{classes - 1} ({setting})")
        points.append(x)
        labels.append(label)
    if not points:
        raise DataError(f"{path}: no data rows")
    return torch.tensor(points, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


class SpiralDataModule(L.LightningDataModule):
    def __init__(
        self,
        dataset: Dataset,
        augment: Callable[[Tensor], Any] | None = None,
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
            dataset: (input, label) pairs, split here into training, validation and test sets.
            augment: A random transform of a training input, drawn in the DataLoader's workers, pinned to the sample.
            val_fraction: Share of the dataset held out for validation.
            test_fraction: Share of the dataset held out for testing.
            batch_size: Training batch size.
            val_batch_size: Validation and test batch size; None puts the whole split in one batch.
            num_workers: DataLoader worker processes.
            persistent_workers: Keep the workers alive between epochs (needs num_workers > 0).
            pin_memory: Pin batches in page-locked memory for faster copies to a GPU.
            seed: Seeds the split, the shuffle order and the random draws of each sample.
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
        self.dataset = dataset
        self.augment = augment
        # Its own generator: drawing from the global RNG here would make the shuffle order depend on
        # everything else that draws from it (dropout, for one).
        self.generator = torch.Generator().manual_seed(seed)
        self.resumed = False  # load_state_dict() was called: the next training DataLoader goes on with a run

    def prepare_data(self) -> None:
        # The Trainer calls this before its logger makes the run directory: too few points to split stop the run
        # here with nothing written under logs/. setup() runs again, on every process.
        self.setup("fit")

    def setup(self, stage: str) -> None:
        hp = self.hparams
        n = len(self.dataset)
        n_val, n_test = round(hp.val_fraction * n), round(hp.test_fraction * n)
        if min(n_val, n_test, n - n_val - n_test) < 1:
            raise DataError(f"{n} points are too few to split into train, validation and test sets")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(hp.seed))
        self.val_set, self.test_set, self.train_set = (
            subset(self.dataset, indices) for indices in order.split([n_val, n_test, n - n_val - n_test])
        )

    def train_dataloader(self) -> DataLoader:
        # Shuffled with the module's own generator: no other draw from torch's RNG can move the order.
        loader = self._loader(
            self.train_set, self.hparams.batch_size, shuffle=self.generator, resumed=self.resumed, augment=self.augment
        )
        self.resumed = False
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.val_batch_size or len(self.val_set))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.hparams.val_batch_size or len(self.test_set))

    def predict_dataloader(self) -> DataLoader:
        """Every point of the dataset, in its order."""
        return self._loader(self.dataset, self.hparams.val_batch_size or len(self.dataset))

    def state_dict(self) -> dict[str, Any]:
        # The shuffle order of the epochs still to come; Lightning saves it in every checkpoint.
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])
        self.resumed = True  # the next training DataLoader goes on with the interrupted run

    def _loader(self, dataset: Dataset, batch_size: int, **training) -> DataLoader:
        hp = self.hparams
        return loader(
            dataset,
            batch_size,
            num_workers=hp.num_workers,
            persistent_workers=hp.persistent_workers,
            pin_memory=hp.pin_memory,
            **training,
        )


def subset(dataset: Dataset, indices: Tensor) -> Dataset:
    """The items of `dataset` at `indices`: a TensorDataset of them where it is one (batches index it at once)."""
    tensors = tensors_of(dataset)
    if tensors is not None:
        return TensorDataset(*(tensor[indices] for tensor in tensors))
    return Subset(dataset, indices.tolist())
