"""The metrics every loop computes over each validation (and train.py's test), beside the loss: one place for all three.

Each is logged as val/<name> (test/<name>); add yours as one more entry, and the equivalence tests compare it in the
three loops with the rest.
"""

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy


def metrics(classes: int, prefix: str) -> MetricCollection:
    """Metrics of (logits, labels) over `classes` classes, each logged as `prefix` + its name."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(classes, average="micro"),  # the share of points classified right
        },
        prefix=prefix,
    )
