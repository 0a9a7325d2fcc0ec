"""``nas spaces``: the registered search spaces and their options."""

from __future__ import annotations

import typer

from ._common import Format, app, emit, fmt_value


@app.command("spaces")
def spaces_cmd(fmt: Format = typer.Option(Format.table, "--format", help="table, json or csv")) -> None:
    """List the registered search spaces and their options."""
    from search_spaces import list_spaces, space_class

    rows = []
    for name in list_spaces():
        cls = space_class(name)
        opts = ", ".join(f"{k}={fmt_value(d) if not isinstance(d, tuple) else list(d)}"
                         for k, d, _ in cls.option_help())
        rows.append({"name": name, "description": cls.description, "options": opts})
    emit(rows, fmt, "search spaces")
