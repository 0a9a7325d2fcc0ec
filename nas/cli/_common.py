"""What every command shares: the Typer apps, the consoles, tables, one-line errors, the store."""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from search_spaces import InputError

__all__ = ["MAX_SEED", "MAX_SPEC_BYTES", "STORAGE_HELP", "Format", "UsageError", "app", "check_finite", "check_out_dir",
           "check_seed", "emit", "err", "hardware_app", "open_store", "out", "parse_options", "parse_shape",
           "read_arch_file", "say_error", "error_line", "flag_of", "si",
           "storage_url", "study_app", "user_errors", "fmt_value", "opened"]

#: Largest seed: what NumPy's and Optuna's generators take (a study's seed has the same range).
MAX_SEED = 2**32 - 1
#: Largest ArchSpec JSON file (``--enqueue``, ``--spec``): a spec is a few kilobytes.
MAX_SPEC_BYTES = 1 << 20

app = typer.Typer(help="lightnas: neural architecture search for lightweight CNNs under hardware budgets.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
hardware_app = typer.Typer(help="Device profiles, cost reports and host calibration.", no_args_is_help=True)
app.add_typer(hardware_app, name="hardware")

out = Console()
if not out.is_terminal:  # pipes and files: wide tables rather than folded 80-column ones
    out = Console(width=160)
err = Console(stderr=True)


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class UsageError(InputError):
    """Bad command-line input detected by the CLI itself."""


#: The exit status of a command stopped by Ctrl-C after saying what was kept and how to resume
#: (the ``nas`` program then ends by SIGINT: see :func:`nas.cli.entry`).
INTERRUPTED = 130
#: The exit status of a command stopped by SIGTERM after saying what was kept (then ended by SIGTERM).
TERMINATED = 143

def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (exit 2), not a bug."""
    from objectives import BudgetError, DataError, DeviceError
    from search_spaces import SpaceError, SpecError
    from storage import StorageError

    from .._errors import NasError

    return (UsageError, SpecError, SpaceError, BudgetError, DeviceError, DataError, StorageError, NasError)


#: A field whose option is not ``--`` + the field with dashes (``input_size`` is ``--input-size``).
FLAGS = {"space_options": "--option"}


def flag_of(field: str) -> str:
    """The option that fills ``field`` (an argument's name, as errors carry it): ``"to"`` -> ``"--to"``,
    ``"workers_per_device"`` -> ``"--workers-per-device"``."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def error_line(e: object) -> str:
    """An error as the CLI says it: an :class:`InputError` about an argument names its flag
    (``--trials: must be ...``), one about a key of a spec or file names the key (``budget: ...``),
    anything else is its text. The message is never parsed."""
    if isinstance(e, InputError) and e.field and e.argument:
        return f"{flag_of(e.field)}: {e.message}"
    return str(e)


def say_error(message: object) -> None:
    """``error: <message>`` on stderr, one line (the message is text, never markup; an error is said
    by :func:`error_line`)."""
    from rich.markup import escape

    text = " ".join(error_line(message).splitlines())  # one line, whatever the message
    err.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)



def check_seed(seed: int, flag: str = "--seed") -> int:
    """A seed NumPy and Optuna take, or one line (exit 2)."""
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{flag}: got {seed}; accepted: an integer from 0 to {MAX_SEED:,} (2**32 - 1)")
    return seed


def check_finite(value: float, flag: str, least: float, accepted: str) -> float:
    """A finite number of at least ``least``, or one line naming ``flag`` and what is ``accepted``."""
    if not (math.isfinite(value) and value >= least):
        raise UsageError(f"{flag}: got {value}; accepted: {accepted}")
    return value


def check_out_dir(to: str, flag: str = "--to") -> str:
    """An output directory this process can write (``objectives.check_out_dir``: not empty, not
    read-only, no file in the way, ...), refused in one line before the database is opened."""
    from objectives import check_out_dir as check_writable

    check_writable(to, flag, error=UsageError)
    return to


def read_arch_file(path: str, field: str):  # -> ArchSpec
    """An ``ArchSpec`` from a JSON file a user named (``spec.json`` of ``nas export``, or the API's json
    export): a regular file of at most :data:`MAX_SPEC_BYTES` of UTF-8 JSON, else one line about ``field``
    (the option that named it, e.g. ``"spec"``: printed ``--spec``)."""
    from objectives import read_user_text

    from .._errors import NasError
    from ..search import arch_from_doc

    accepted = "an ArchSpec JSON file (spec.json of 'nas export')"
    text = read_user_text(path, field, MAX_SPEC_BYTES, error=NasError, accepted=accepted)
    too_deep = f"{path} is JSON nested too deeply to be an ArchSpec; accepted: {accepted}"
    try:
        doc = json.loads(text)
    except RecursionError:
        raise NasError(too_deep, field=field) from None
    except ValueError:
        raise NasError(f"{path} is not JSON (expected an ArchSpec, e.g. spec.json of 'nas export')",
                       field=field) from None
    try:
        return arch_from_doc(doc)
    except NasError as e:
        raise NasError(f"{path} is {e}", field=field) from None
    except RecursionError:
        raise NasError(too_deep, field=field) from None


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"1x28x28"`` -> ``(1, 28, 28)``."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 3 or min(vals) < 1:
        raise UsageError(f"--input: expected CxHxW with positive integers, e.g. 1x28x28 or 3x32x32; got {text!r}")
    return vals  # type: ignore[return-value]


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``["max_depth=2", "widths=8,16"]`` -> ``{"max_depth": 2, "widths": (8, 16)}``."""
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option: expected key=value, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        opts[key.strip()] = value
    return opts


def emit(rows: list[dict[str, Any]], fmt: Format, title: str | None = None,
         formatters: dict[str, Callable[[Any], str]] | None = None) -> None:
    """Print rows as a Rich table, JSON or CSV."""
    if fmt is Format.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    cols = list(rows[0]) if rows else []
    if fmt is Format.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
        return
    table = Table(title=title)
    for c in cols:
        table.add_column(c, overflow="fold")
    fmts = formatters or {}
    for r in rows:
        table.add_row(*[fmts.get(c, fmt_value)(r[c]) for c in cols])
    out.print(table)


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (tuple, list)):
        return "x".join(map(str, v)) if all(isinstance(x, int) for x in v) else str(list(v))
    return "" if v is None else str(v)


def si(v: float) -> str:
    """Human number: 1.23M, 45.6k."""
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.4g}"



study_app = typer.Typer(help="Create, run, list, show and delete studies.", no_args_is_help=True)
app.add_typer(study_app, name="study")

STORAGE_HELP = "database URL (default $NAS_STORAGE or sqlite:///nas.db); postgresql+psycopg://... for many workers"


#: The stores the command opened: the last is named by a database error's one line, and all are
#: closed when the command ends (so a command run in-process leaves no connection behind).
opened: list[Any] = []


def storage_url(url: str | None) -> str:
    """``storage.normalize_url``, with a SQLite path that is a symbolic link loop as one line (pathlib
    raises RuntimeError for it before Python 3.13)."""
    from storage import normalize_url

    try:
        return normalize_url(url)
    except RuntimeError as e:
        if not str(e).startswith("Symlink loop"):
            raise
        raise UsageError(f"--storage: {url or 'the database path'}: a symbolic link loop (too many levels of "
                         "symbolic links); accepted: sqlite:///PATH to a database file, or a new one in an "
                         "existing directory") from None


def open_store_if_exists(url: str | None):  # -> Store | None
    """The command's store if its lightnas database exists, else None (nothing is created)."""
    from storage import Store

    storage_url(url)  # a symbolic link loop: one line
    store = Store.open_if_exists(url)
    if store is not None:
        opened.append(store)
    return store


def open_store(url: str | None, mode: str = "existing"):  # -> Store
    """The command's store. Every command but creation opens an existing lightnas database only
    (``mode="existing"``): a mistyped path is refused, never created."""
    from storage import Store

    storage_url(url)  # a symbolic link loop: one line
    store = Store(url, mode=mode)
    opened.append(store)
    return store
