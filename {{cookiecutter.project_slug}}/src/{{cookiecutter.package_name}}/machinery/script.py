"""The frame of train.py, train_torch.py and train_fabric.py, around their main():

    if __name__ == "__main__":  # first: a Ctrl-C while the libraries load is one line
        from {{ cookiecutter.package_name }}.machinery import script

        script.start()
    ...
    if __name__ == "__main__":
        script.run(main)

Standard library only up to run(), so that a script calls start() before it imports torch and Lightning (seconds,
during which a Ctrl-C would otherwise print an import's traceback).
"""

import contextvars
import gc
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def stop_at_once(signum: int = signal.SIGINT, frame=None) -> None:
    """A SIGINT handler. Checkpoints are written atomically, so the ones on disk are whole; the last resumes."""
    print("\nSIGINT: stopped at once", file=sys.stderr, flush=True)
    os._exit(128 + signal.SIGINT)


def start() -> None:
    """A Ctrl-C from now on ends the process at once, in one line, until a run listens for it."""
    signal.signal(signal.SIGINT, stop_at_once)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """What escapes a script's main(), said in one line. A Ctrl-C the run did not catch (a second one while it stops,
    or one before training started) exits with 130; a file or directory it cannot read or write (logs/ a file,
    read-only, a full disk) with 1, naming it."""
    try:
        yield
    except KeyboardInterrupt:
        print("\nSIGINT: stopped at once", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        sys.exit(f"error: {where}{error.strerror or error}")
    finally:
        signal.signal(signal.SIGINT, stop_at_once)  # while the process ends: no traceback from its last steps


def holding_off_sigterm_on_error(main):
    """main(), which on an error ignores SIGTERM from then on, while @record writes the error's file and the process
    exits. Under torchrun, when a process fails, the agent sends SIGTERM to the others, which fail too when a
    collective loses its peer: one killed in the middle of writing its error file leaves it empty, and the agent,
    which reads it, fails with a JSONDecodeError instead of restarting the processes."""

    def guarded():
        try:
            return main()
        except Exception:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise

    return guarded


def run(main) -> None:
    """main() on one thread (unless OMP_NUM_THREADS says), what escapes it said in one line. Under torchrun, an
    error's traceback is also recorded for torchrun's report of the failed process (torch's @record)."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import record

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # these small models train fastest on one thread: docs/performance.md
    with one_line_errors():
        # In a context of its own: jsonargparse leaves its last parser in a context variable, and with it the
        # LightningCLI and all it made, which would otherwise live on into the interpreter's exit.
        contextvars.copy_context().run(record(holding_off_sigterm_on_error(main)))
        # Under DDP and FSDP2: the process group before the exit, main()'s DDP wrapper gone with main(); then what
        # main() made (Lightning's objects hold one another), the sharded model and the stop vote's group with them.
        # A group, or a model that holds one, left to the exit may abort the process from its threads ("terminate
        # called without an active exception"): tests/test_ddp.py checks that none is left.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        gc.collect()
