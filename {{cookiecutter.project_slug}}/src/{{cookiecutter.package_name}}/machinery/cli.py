"""Command lines that say what their user needs: one line for a bad flag or value, no third-party noise.

jsonargparse's parser prints the whole usage (60-odd lines here) before its error; these parsers print the
error alone, on one line, and where the options are listed. train.py: `LightningCLI(parser_class=...)`.
`quiet()` silences what third parties print that says nothing about this run, each by its message and module.
"""

import logging
import sys
import warnings

from jsonargparse import ArgumentParser
from jsonargparse._deprecated import JsonargparseDeprecationWarning
from lightning.pytorch.cli import LightningArgumentParser


class OneLineErrors:
    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # a caller that handles the error itself
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        reason = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
        prog = parser.prog.replace(" [options]", "")
        print(f"error: {reason} (options: {prog} --help)", file=sys.stderr)
        sys.exit(2)


class Parser(OneLineErrors, ArgumentParser):
    """train_torch.py's parser."""


class LightningParser(OneLineErrors, LightningArgumentParser):
    """train.py's parsers, the subcommands' too."""


# Lightning's info lines that say nothing about this run (rank_zero_info, to this logger).
NOT_NEWS = (
    "💡 Tip:",  # an advertisement for a cloud logger
    "GPU available: False, used: False",
    "TPU available: False, using: 0 TPU cores",
    "HPU available: False, using: 0 HPUs",  # lightning < 2.6
    "Seed set to",  # the seed is in the run's config.yaml; printed first, it would stand before an error
)


class NotNews(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOT_NEWS)


def quiet() -> None:
    """Silence third-party output that says nothing about this run; each filter names why."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.fabric.utilities.seed",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, NotNews) for f in logger.filters):
            logger.addFilter(NotNews())
    # torch 2.13 deprecates LeafSpec, which Lightning's own pytree helper still builds at every step.
    warnings.filterwarnings(
        "ignore",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        "lightning.pytorch.utilities._pytree",
    )
    # Lightning's CLI code calls jsonargparse in ways jsonargparse has deprecated (skip_none, parse_object).
    warnings.filterwarnings("ignore", category=JsonargparseDeprecationWarning, module="lightning.pytorch.cli")
