"""The data: the spiral, its splits, the shuffle order, and CSV files (good ones load, bad ones are named by line)."""

import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from {{ cookiecutter.package_name }}.data import (
    DataError,
    Points,
    Spiral,
    SpiralDataModule,
    load_csv,
    load_fast,
    load_rows,
    make_spiral,
)
from {{ cookiecutter.package_name }}.machinery import loaders

SPIRAL = ("classes", "points_per_class", "noise")  # the Spiral's settings; the rest are the DataModule's


def prepared(dataset=None, **kwargs) -> SpiralDataModule:
    spiral = {key: kwargs.pop(key) for key in SPIRAL if key in kwargs}
    data = SpiralDataModule(dataset or Spiral(**spiral), **kwargs)
    data.setup("fit")
    return data


def table(X: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float, int]]:
    """The (x1, x2, label) rows of a split or a batch."""
    return list(zip(*X.T.tolist(), y.tolist(), strict=True))


def rows(dataset) -> Counter:
    """The rows of a TensorDataset, as a multiset."""
    return Counter(table(*dataset.tensors))


def epoch(data: SpiralDataModule) -> list[int]:
    """One pass over the training loader: the order it serves the training points in, as indices into train_set."""
    index = {row: i for i, row in enumerate(table(*data.train_set.tensors))}
    assert len(index) == len(data.train_set)  # no two points alike
    return [index[row] for batch in data.train_dataloader() for row in table(*batch)]


# --- the spiral ---


def test_spiral_shapes_dtypes_and_balance():
    X, y = make_spiral(points_per_class=100, classes=4, noise=0.2, generator=torch.Generator().manual_seed(0))
    assert X.shape == (400, 2) and X.dtype == torch.float32
    assert y.shape == (400,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [100] * 4
    assert torch.isfinite(X).all()
    assert X.norm(dim=1).max() <= 1 + 1e-6  # the arms end at radius 1


def test_spiral_noise_is_seeded():
    def spiral(seed: int, noise: float = 0.2) -> torch.Tensor:
        return make_spiral(50, 3, noise, torch.Generator().manual_seed(seed))[0]

    assert torch.equal(spiral(0), spiral(0))
    assert not torch.equal(spiral(0), spiral(1))
    assert torch.equal(spiral(0, noise=0.0), spiral(1, noise=0.0))


# --- splits ---


@pytest.mark.parametrize(
    "points_per_class, val_fraction, test_fraction, sizes",
    [(1000, 0.2, 0.2, (1800, 600, 600)), (50, 0.1, 0.3, (90, 15, 45)), (7, 0.25, 0.25, (11, 5, 5))],
)
def test_split_sizes_follow_the_fractions(points_per_class, val_fraction, test_fraction, sizes):
    data = prepared(points_per_class=points_per_class, val_fraction=val_fraction, test_fraction=test_fraction)
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == sizes


def test_splits_are_disjoint_and_cover_every_point():
    data = prepared(points_per_class=200)
    everything = rows(data.dataset)
    assert len(everything) == 600  # every point distinct, so the multiset sum below means "each exactly once"
    assert rows(data.train_set) + rows(data.val_set) + rows(data.test_set) == everything
    assert all(rows(data.train_set)[row] == 0 for row in rows(data.val_set) | rows(data.test_set))


def test_every_split_holds_every_class():
    data = prepared(points_per_class=200)
    for split in (data.train_set, data.val_set, data.test_set):
        assert set(split.tensors[1].tolist()) == {0, 1, 2}


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = prepared(seed=3), prepared(seed=3), prepared(seed=4)
    for split in ("train_set", "val_set", "test_set"):
        for ta, tb, tc in zip(
            getattr(a, split).tensors, getattr(b, split).tensors, getattr(c, split).tensors, strict=True
        ):
            assert torch.equal(ta, tb)
            assert not torch.equal(ta, tc)


def test_setup_again_gives_the_same_splits():
    """The Trainer calls prepare_data and setup, the plain loop calls setup twice: the data must not change."""
    data = prepared()
    before = [t.clone() for split in (data.train_set, data.val_set, data.test_set) for t in split.tensors]
    data.prepare_data()
    data.setup("test")
    after = [t for split in (data.train_set, data.val_set, data.test_set) for t in split.tensors]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


# --- loaders ---


def test_batch_shapes():
    data = prepared(points_per_class=100, batch_size=64)  # 180 training points: 64, 64, 52
    batches = list(data.train_dataloader())
    assert [(X.shape, y.shape) for X, y in batches] == [((n, 2), (n,)) for n in (64, 64, 52)]
    assert all(X.dtype == torch.float32 and y.dtype == torch.int64 for X, y in batches)
    [(X_val, _)] = list(data.val_dataloader())  # val_batch_size None: the whole split in one batch
    assert X_val.shape == (60, 2)
    assert [len(y) for _, y in prepared(points_per_class=100, val_batch_size=25).val_dataloader()] == [25, 25, 10]


def test_shuffle_order_follows_the_data_seed_and_nothing_else():
    a, b, c = prepared(seed=0), prepared(seed=0), prepared(seed=1)
    torch.manual_seed(123)  # the global RNG must not matter
    first_a, second_a = epoch(a), epoch(a)
    torch.manual_seed(456)
    torch.rand(10)
    first_b, second_b = epoch(b), epoch(b)
    assert first_a == first_b and second_a == second_b
    assert first_a != second_a  # a new order every epoch
    assert sorted(first_a) == list(range(len(a.train_set))) != first_a  # every point once, shuffled
    assert first_a != epoch(c)


def test_state_dict_restores_the_next_epochs_order():
    data = prepared(points_per_class=100)
    epoch(data)
    state = data.state_dict()
    expected = [epoch(data), epoch(data)]

    resumed = prepared(points_per_class=100)
    assert epoch(resumed) != expected[0]  # without the state: the first epoch's order
    resumed = prepared(points_per_class=100)
    resumed.load_state_dict(state)
    assert [epoch(resumed), epoch(resumed)] == expected


def test_a_loader_goes_on_mid_epoch_only_from_a_checkpoint_taken_mid_epoch():
    """Whether the epoch was done is saved, not inferred from the count: under DDP an epoch has fewer batches."""
    data = prepared(points_per_class=100, batch_size=32)  # 180 training points: 6 batches
    loader = data.train_dataloader()
    iterator = iter(loader)
    taken = [next(iterator)[1] for _ in range(2)]
    state = loader.state_dict()
    rest = [y for _, y in iterator]
    assert not state["epoch_done"]
    mid = prepared(points_per_class=100, batch_size=32).train_dataloader()
    mid.load_state_dict(state)
    assert [y.tolist() for _, y in mid] == [y.tolist() for y in rest]  # the same epoch, from its third batch
    assert len(taken + rest) == len(loader)

    done = loader.state_dict()
    assert done["epoch_done"] and done["batches"] == 6
    ddp_like = {**done, "order": torch.tensor([], dtype=torch.int64), "batches": 3}  # a DDP process's whole epoch
    after = prepared(points_per_class=100, batch_size=32).train_dataloader()
    after.load_state_dict(ddp_like)
    assert len(list(after)) == 6  # a whole new epoch, not the rest of one


def test_a_distributed_share_goes_on_from_where_an_interrupted_run_stopped_with_the_same_seeds():
    """Under DDP: a process's share of the epoch, which its DistributedSampler orders from its seed and epoch; a
    resumed run skips what was handed out, and each index keeps its seed (the epoch's, not the position's)."""
    sampler = torch.utils.data.DistributedSampler(range(50), num_replicas=2, rank=1, shuffle=True, seed=3)
    sampler.set_epoch(4)
    share = loaders.DistributedShare(sampler, seeded=True)
    whole = list(share)
    assert [index for index, _ in whole] == list(sampler)
    share.start = 10
    assert list(share) == whole[10:]  # the rest of the epoch, the same seeds
    assert list(share) == whole  # the skip happens once: the next epoch is whole
    sampler.set_epoch(5)
    assert list(share) != whole  # another epoch: another order, other seeds


def test_a_mid_epoch_checkpoint_is_refused_where_the_sampler_cannot_replay_its_order():
    """DDP with use_distributed_sampler=False leaves a RandomSampler, whose order is not kept: refused in one line."""
    dataset = loaders.TensorBatches(torch.zeros(40, 2), torch.zeros(40, dtype=torch.int64))
    loader = loaders.ResumableLoader(dataset, batch_size=8, sampler=torch.utils.data.RandomSampler(dataset))
    state = {"order": torch.tensor([]), "seeds": torch.tensor([]), "batches": 2, "epoch_done": False}
    with pytest.raises(loaders.CheckpointError, match="whose order the RandomSampler cannot replay"):
        loader.load_state_dict({**state, "processes": 1})


# --- settings that cannot work ---


@pytest.mark.parametrize("val_fraction, test_fraction", [(0.5, 0.5), (0.6, 0.5), (0.9, 0.1)])
def test_fractions_leaving_no_training_points_are_refused(val_fraction, test_fraction):
    with pytest.raises(DataError, match=r"data\.val_fraction \+ data\.test_fraction must be < 1"):
        SpiralDataModule(Spiral(), val_fraction=val_fraction, test_fraction=test_fraction)


def test_persistent_workers_without_workers_are_refused():
    with pytest.raises(DataError, match=r"data\.persistent_workers needs data\.num_workers > 0"):
        SpiralDataModule(Spiral(), persistent_workers=True, num_workers=0)
    SpiralDataModule(Spiral(), persistent_workers=True, num_workers=1)


def test_too_few_points_to_split_are_refused_in_prepare_data():
    data = SpiralDataModule(Spiral(points_per_class=1, classes=1))
    with pytest.raises(DataError, match="too few to split"):
        data.prepare_data()


# --- CSV files ---

POINTS = [(0.5, -0.25, 0), (-1.0, 2.0, 1), (3.0, 0.125, 2), (0.0, 0.0, 1), (1e-3, -4e2, 0)]


def write(tmp_path: Path, text: str, name: str = "points.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def body(points=POINTS) -> str:
    return "".join(f"{x1},{x2},{label}\n" for x1, x2, label in points)


def assert_loads_points(path: Path, points=POINTS) -> None:
    X, y = load_csv(path, classes=3)
    assert X.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(X, torch.tensor([p[:2] for p in points], dtype=torch.float32))
    assert torch.equal(y, torch.tensor([p[2] for p in points]))


GOOD_FILES = {
    "no header": body(),
    "a header": "x1,x2,label\n" + body(),
    "blank lines around": "\n\n" + body() + "\n\n",
    "blank lines between": "x1,x2,label\n\n" + body().replace("\n", "\n\n", 2) + "   \n",
    "a header after blank lines": "\n\nx,y,class\n" + body(),
    "windows line ends": "\r\n".join(body().splitlines()) + "\r\n",
    "spaces around the commas": body().replace(",", " , "),
    "no newline at the end": body().rstrip("\n"),
}


@pytest.mark.parametrize("name", GOOD_FILES)
def test_csv_loads(tmp_path, name):
    assert_loads_points(write(tmp_path, GOOD_FILES[name]))


def bits(X: torch.Tensor) -> list[int]:
    """float32 bit patterns: -0.0 is not 0.0 here, as it is to torch.equal."""
    return X.contiguous().view(torch.int32).flatten().tolist()


EDGES = ["1e-46", "-1e-46", "1.4e-45", "7e-46", "5e-324", "3.4028234663852886e38", "1.0000000596046448", "-0.0"]


@pytest.mark.parametrize("n", [1, 2, 7])
def test_numpys_reader_gives_the_row_by_row_readers_bits(tmp_path, n):
    """load_fast (numpy) reads a good file; load_rows, Python's float() a cell at a time, is what it must equal."""
    rng = random.Random(n)
    values = [repr(rng.gauss(0, 10 ** rng.randint(-30, 30))) for _ in range(300 * n)] + EDGES * n
    rows = [",".join(values[i : i + n]) + f",{i % 3}" for i in range(0, len(values) - n + 1, n)]
    header = ",".join([*(f"x{i}" for i in range(n)), "label"])
    path = write(tmp_path, "\n".join([header, *rows]) + "\n")
    fast, slow = load_fast(path, classes=3), load_rows(path, classes=3)
    assert fast is not None and bits(fast[0]) == bits(slow[0]) and torch.equal(fast[1], slow[1])
    assert load_csv(path, classes=3)[0].shape == (len(rows), n)


def test_a_file_numpy_will_not_read_is_read_row_by_row(tmp_path):
    """Quoted numbers, a blank line of commas: csv reads them, numpy does not; the points load all the same."""
    path = write(tmp_path, 'x1,x2,label\n"0.5",-0.25,0\n,,\n-1.0,2.0,"1"\n')
    assert load_fast(path, classes=3) is None
    assert load_csv(path, classes=3)[0].tolist() == [[0.5, -0.25], [-1.0, 2.0]]


@pytest.mark.parametrize("n", [1, 3, 7])
def test_a_csv_of_any_number_of_features_loads_and_says_how_many(tmp_path, n):
    rows = [[float(i * n + j) / 8 for j in range(n)] + [i % 3] for i in range(10)]
    header = ",".join([*(f"f{j}" for j in range(n)), "class"])
    path = write(tmp_path, "\n".join([header, *(",".join(map(str, row[:-1])) + f",{row[-1]}" for row in rows)]))
    X, y = load_csv(path, classes=3)
    assert X.shape == (10, n) and torch.equal(X, torch.tensor([row[:-1] for row in rows], dtype=torch.float32))
    assert y.tolist() == [row[-1] for row in rows]


def test_csv_from_a_spreadsheet_keeps_its_first_point(tmp_path):
    """Excel's 'CSV UTF-8' starts with a byte-order mark: the first row must not be taken for a header."""
    assert_loads_points(write(tmp_path, body(), encoding="utf-8-sig"))


def test_a_datamodule_on_a_csv_splits_and_predicts_its_points(tmp_path):
    points = [(i / 10, -i / 10, i % 3) for i in range(20)]
    path = write(tmp_path, "x1,x2,label\n" + body(points))
    data = prepared(Points(str(path)))
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (12, 4, 4)
    assert rows(data.train_set) + rows(data.val_set) + rows(data.test_set) == rows(data.dataset)
    [(X, y)] = list(data.predict_dataloader())  # every point of the file, in the file's order
    assert torch.equal(X, torch.tensor([p[:2] for p in points], dtype=torch.float32))
    assert torch.equal(y, torch.tensor([p[2] for p in points]))


def test_csv_labels_follow_the_number_of_classes(tmp_path):
    path = write(tmp_path, body([(0.0, 0.0, 3), (1.0, 1.0, 0)]))
    assert load_csv(path, classes=4)[1].tolist() == [3, 0]
    with pytest.raises(DataError, match=re.escape(f"{path}:1: label 3 is outside 0..2")):
        load_csv(path, classes=3)


BAD_FILES = {
    # name: (file text, line named, what the message says)
    "two columns": (body() + "1.0,2.0\n", 6, "expected 3 columns x1,x2,label, found 2"),
    "four columns": ("x1,x2,label\n" + body() + "1,2,0,7\n", 7, "expected 3 columns x1,x2,label, found 4"),
    "a header with two columns": ("x1,x2\n" + body(), 2, "expected 2 columns x1,label, found 3 columns"),
    "a non-numeric coordinate": (body() + "0.5,abc,1\n", 6, "expected numbers x1,x2 and an integer label"),
    "a non-integer label": (body() + "0.5,0.5,1.5\n", 6, "expected numbers x1,x2 and an integer label"),
    "an empty cell": (body() + "0.5,,1\n", 6, "expected numbers x1,x2 and an integer label"),
    "a second header": ("x1,x2,label\n" + body() + "x1,x2,label\n", 7, "expected numbers"),
    "a non-numeric first row after data": (body() + "x1,x2,label\n", 6, "expected numbers"),
    "nan": (body() + "nan,0.5,1\n", 6, "coordinates must be finite"),
    "inf": (body() + "0.5,inf,1\n", 6, "coordinates must be finite"),
    "-inf": ("x1,x2,label\n-inf,0.5,1\n" + body(), 2, "coordinates must be finite"),
    "a label too large": (body() + "0.5,0.5,3\n", 6, "label 3 is outside 0..2 (data.dataset.classes=3)"),
    "a negative label": (body() + "0.5,0.5,-1\n", 6, "label -1 is outside 0..2"),
    "beyond float32": (body() + "0.5,1e39,1\n", 6, "coordinates must be finite in float32"),
    "a field beyond csv's limit": (body() + '"' + "1" * 200_000 + '",0.5,1\n', 6, "field larger than field limit"),
    "undecodable bytes": (body().encode() + b"0.5,\xff\xfe,1\n", 6, "expected numbers"),
    "a semicolon file": (body().replace(",", ";"), 1, "expected a feature and a label, found 1 column"),
    "five features, then four": ("1,2,3,4,5,0\n1,2,3,4,1\n", 2, "expected 6 columns x1,...,x5,label, found 5"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_row_is_named_by_file_and_line(tmp_path, name):
    text, line, says = BAD_FILES[name]
    path = write(tmp_path, text)
    with pytest.raises(DataError) as error:
        load_csv(path, classes=3)
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert says in str(error.value)


@pytest.mark.parametrize(
    "text, says",
    [("", "no data rows"), ("\n\n  \n", "no data rows"), ("x1,x2,label\n", "no data rows"), (None, "no such file")],
    ids=["empty", "blank", "header only", "missing"],
)
def test_a_file_without_points_is_named(tmp_path, text, says):
    path = tmp_path / "points.csv" if text is None else write(tmp_path, text)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: {says}$"):
        load_csv(path, classes=3)


@pytest.mark.parametrize("path", ["{tmp_path}", "/dev/zero"], ids=["a directory", "a device"])
def test_what_is_not_a_regular_file_is_named(tmp_path, path):
    path = Path(path.format(tmp_path=tmp_path))
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: not a regular file$"):
        load_csv(path, classes=3)


def test_a_file_it_may_not_read_is_named(tmp_path, monkeypatch):
    """As a file without read permission, for a user other than root (who may read any)."""
    path = write(tmp_path, body())

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: Permission denied$"):
        load_csv(path, classes=3)


def test_a_bad_file_fails_when_the_dataset_is_made(tmp_path):
    """The entry points make the dataset before the Trainer or the plain loop writes anything."""
    with pytest.raises(DataError, match=re.escape("points.csv:6: label 7")):
        Points(str(write(tmp_path, body() + "0.5,0.5,7\n")))


def test_a_file_too_small_to_split_is_named(tmp_path):
    data = SpiralDataModule(Points(str(write(tmp_path, body(POINTS[:2])))))
    with pytest.raises(DataError, match="2 points are too few to split"):
        data.setup("fit")


# --- datasets of your own: random draws pinned to each sample ---


class Noisy(torch.utils.data.Dataset):
    """A dataset that draws in __getitem__ from torch's, numpy's and Python's random numbers, as augmentation does."""

    def __len__(self) -> int:
        return 60  # 36 training items: 5 batches of 8

    def __getitem__(self, index: int):
        draws = [torch.rand(()).item(), float(np.random.rand()), random.random()]
        return torch.tensor([float(index), *draws]), torch.tensor(index % 3)


def batches(loader) -> list[torch.Tensor]:
    return [X for X, _ in loader]


def noisy(**kwargs) -> SpiralDataModule:
    return prepared(Noisy(), batch_size=8, **kwargs)


def test_a_datasets_draws_are_the_same_with_any_number_of_workers():
    serial = batches(noisy().train_dataloader())
    torch.manual_seed(1)  # the main process's random numbers do not matter either
    parallel = batches(noisy(num_workers=2).train_dataloader())
    assert all(torch.equal(a, b) for a, b in zip(parallel, serial, strict=True))
    assert len({X[0, 1].item() for X in serial}) == len(serial)  # and they are random draws, not one constant


def test_a_datasets_draws_leave_the_main_process_random_numbers_alone():
    data = noisy()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    batches(data.train_dataloader())
    after = torch.rand(()), np.random.rand(), random.random()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    assert after == (torch.rand(()), np.random.rand(), random.random())


def test_each_epoch_draws_anew():
    loader = noisy().train_dataloader()
    first, second = (torch.cat(batches(loader)) for _ in range(2))
    assert not torch.equal(first[first[:, 0].argsort()], second[second[:, 0].argsort()])


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_resumed_mid_way_draws_what_it_would_have_drawn(workers):
    """The trap: a resumed epoch hands its remaining batches to workers starting afresh."""
    loader = noisy(num_workers=workers).train_dataloader()
    iterator = iter(loader)
    next(iterator), next(iterator)
    state, rest = loader.state_dict(), list(iterator)
    resumed = noisy(num_workers=workers).train_dataloader()
    resumed.load_state_dict(state)
    assert len(rest) == 3 and all(torch.equal(a, b) for (a, _), (b, _) in zip(resumed, rest, strict=True))


def test_without_pinned_draws_the_workers_change_them(monkeypatch):
    """The negative control: draws from the workers' own streams differ with their number."""
    monkeypatch.setattr(loaders, "seed_all", lambda seed: None)
    serial = batches(noisy().train_dataloader())
    assert not all(
        torch.equal(a, b) for a, b in zip(batches(noisy(num_workers=2).train_dataloader()), serial, strict=True)
    )


def test_augment_applies_to_the_training_inputs_alone():
    def flip(X: torch.Tensor) -> torch.Tensor:
        return -X

    plain, augmented = prepared(points_per_class=20), prepared(points_per_class=20, augment=flip)
    [(X, y)] = list(plain.train_dataloader().__class__(plain.train_set, batch_size=36))
    trained = {tuple(x.tolist()) for X_batch, _ in augmented.train_dataloader() for x in X_batch}
    assert trained == {tuple((-x).tolist()) for x in X}
    for split in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        assert all(
            torch.equal(a[0], b[0]) for a, b in zip(getattr(plain, split)(), getattr(augmented, split)(), strict=True)
        )
