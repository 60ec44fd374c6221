"""A Ctrl-C that ends the process at once, in one line, with 130: standard library only, so that train.py and
train_torch.py can install it before they import torch and Lightning (seconds, during which a Ctrl-C would
otherwise print an import's traceback).
"""

import os
import signal
import sys


def stop_at_once(signum: int = signal.SIGINT, frame=None) -> None:
    """A SIGINT handler. Checkpoints are written atomically, so the ones on disk are whole; the last resumes."""
    print("\nSIGINT: stopped at once", file=sys.stderr, flush=True)
    os._exit(128 + signal.SIGINT)
