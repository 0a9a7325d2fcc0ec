"""The ``nas`` command line (Typer + Rich), one module per command group.

Bad input exits with code 2 and one line on stderr naming what was wrong and what is
accepted; tracebacks are reserved for bugs. Heavy imports happen inside the commands, so
``nas --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

# Registered in this order, which is the order of "nas --help".
from . import _demo, _hardware, _proxies, _refine, _results, _serve, _spaces, _study, _supernet, _worker  # noqa: F401, I001
from ._common import INTERRUPTED, TERMINATED, app, err, opened, say_error, user_errors

__all__ = ["app", "entry", "main"]


def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """Click's exception class ``name`` as Typer raises it: Typer 0.29 carries its own copy of
    Click (``typer._click``), older ones use the ``click`` package; both are caught."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if cls is not None:
            found.append(cls)
    return tuple(found)


def _usage_line(e: Any) -> str:
    """A click usage error as one line: what was wrong, and where the accepted forms are listed."""
    message = " ".join(e.format_message().replace("Value error, ", "").split()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    where = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
    return f"{message}{where}"


def _database_line(e: BaseException) -> str | None:
    """One line for a database that answered with an error a user can act on (damaged file,
    read-only file, permissions, disk full, server gone); None for a bug (bad SQL)."""
    from sqlalchemy.exc import DatabaseError, IntegrityError, ProgrammingError

    from storage import error_hint, error_line, is_transient

    cause = e.__cause__ if isinstance(e.__cause__, DatabaseError) else e
    if not isinstance(cause, DatabaseError) or isinstance(cause, (ProgrammingError, IntegrityError)):
        return None
    where = opened[-1].display_url(opened[-1].url) if opened else "the database"
    text = error_line(cause)
    hint = error_hint(text) or (" (the database is unreachable; retry when it is back)" if is_transient(cause)
                                else "")
    return f"storage {where}: {text}{hint}"


def entry() -> None:
    """The ``nas`` program (the console script and ``python -m nas.cli``): :func:`main`, and a
    command stopped by Ctrl-C (status :data:`INTERRUPTED`, its message printed, its state saved)
    then ends the way CPython ends an interrupted program: after a normal shutdown, killed by
    SIGINT (bpo-1054041). A shell reports 130 either way, but only a death by SIGINT tells a
    shell script running ``nas`` that the user pressed Ctrl-C, so that it stops instead of going
    on with its next command (https://www.cons.org/cracauer/sigint.html, "wait and cooperative
    exit"). Ending by ``exit(130)`` was also not reliable: CPython marks a KeyboardInterrupt
    raised inside any ``exec``/``eval`` of a string (a dataclass being defined by a lazy import,
    say) as unhandled even after the command caught it, and then kills the process by SIGINT
    anyway; which of the two ends a run got depended on where the Ctrl-C landed.
    """
    import signal

    try:
        main()
    except SystemExit as e:
        if e.code not in (INTERRUPTED, TERMINATED):
            raise
        # SIGTERM handled as Ctrl-C (``nas study run``) ends by SIGTERM, its status 143, the same way.
        signum = signal.SIGTERM if e.code == TERMINATED else signal.SIGINT
    # Not ``raise KeyboardInterrupt`` for CPython to finalise and kill: CPython does that only when the
    # interrupt leaves code it ran as a file or a string, so ``python -m nas.cli`` (runpy's exec) ended
    # with status 1 instead. The command has closed its stores and said what it saved; end it here.
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``nas`` console script: bad input of any kind (arguments, files,
    databases) ends in one line on stderr and exit code 2; tracebacks are for bugs."""
    try:
        code = _run(argv)
    finally:
        while opened:
            with contextlib.suppress(Exception):
                opened.pop().close()
    sys.exit(code)  # as Typer's standalone mode: always SystemExit


def _run(argv: Sequence[str] | None) -> int:
    """Run the command; the exit code (bad input of any kind: one line, 2)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        code = app(args=list(argv) if argv is not None else None, prog_name="nas", standalone_mode=False)
    except _click_classes("NoArgsIsHelpError") as e:
        e.show()  # type: ignore[attr-defined]
        return int(e.exit_code)  # type: ignore[attr-defined]
    except _click_classes("ClickException") as e:
        say_error(_usage_line(e))
        return int(getattr(e, "exit_code", 2) or 2)
    except _click_classes("Abort"):
        err.print("aborted", highlight=False)
        return 1
    except user_errors() as e:
        say_error(e)
        return 2
    except RuntimeError as e:  # pathlib's resolve() before Python 3.13 on a path that loops: bad input
        if not str(e).startswith("Symlink loop from "):
            raise
        say_error(f"{str(e).removeprefix('Symlink loop from ')}: a symbolic link loop (too many levels of symbolic "
                  "links); accepted: a path that leads to a file or directory")
        return 2
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        line = _database_line(e)
        if line is None:
            raise
        say_error(line)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    main()
