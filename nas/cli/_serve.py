"""``nas serve``: the HTTP API."""

from __future__ import annotations

import sys

import typer

from ._common import STORAGE_HELP, UsageError, app, check_finite, err, storage_url


@app.command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    storage: str = typer.Option(None, "--storage", help=STORAGE_HELP),
    insecure: bool = typer.Option(False, "--insecure", help="accept writes without a token (only when "
                                                            "NAS_API_TOKEN is unset; never on a shared network)"),
    read_only: bool = typer.Option(False, "--read-only", help="refuse every write (403); needs no token"),
    protect_reads: bool = typer.Option(False, "--protect-reads", envvar="NAS_API_PROTECT_READS",
                                       help="reads need a token too (NAS_API_TOKEN or NAS_API_READ_TOKEN)"),
    max_body: int = typer.Option(1 << 20, "--max-body", help="largest request body in bytes (413 above)"),
    data_root: list[str] = typer.Option([], "--data-root", help="directory under which studies may read idx:, "
                                                                "cifar10: and npz: data (repeatable; default: only "
                                                                "digits); also $NAS_API_DATA_ROOT"),
    connect_wait: float = typer.Option(60.0, "--connect-wait", help="how long (s) to wait for the database at start"),
    log_level: str = typer.Option("info", "--log-level", help="critical | error | warning | info | debug"),
) -> None:
    """The HTTP API (FastAPI): studies, Pareto queries, trials, exports, refinement requests.

    Writes need 'Authorization: Bearer TOKEN' with a token of $NAS_API_TOKEN (comma-separated,
    at least 16 characters each); $NAS_API_READ_TOKEN holds read-only tokens. Without a write
    token the server starts only with --read-only or --insecure. The API never trains: workers
    ('nas worker') run the trials and refinements it queues. /docs has the OpenAPI page.
    """
    import logging

    from storage import Store

    from ..serve import ApiSettings, create_app
    from ..workers import wait_for_database

    if not 0 < port < 65536:
        raise UsageError(f"--port: must be 1..65535, got {port}")
    levels = ("critical", "error", "warning", "info", "debug")
    if log_level.lower() not in levels:
        raise UsageError(f"--log-level: must be one of {', '.join(levels)}, got {log_level!r}")
    check_finite(connect_wait, "--connect-wait", 0.0, "a finite number of seconds >= 0")
    url = storage_url(storage)
    settings = ApiSettings.from_env(storage=url, insecure=insecure or None, read_only=read_only or None,
                                    protect_reads=protect_reads or None, max_body_bytes=max_body,
                                    data_roots=tuple(data_root) or None).check()
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn

    store = wait_for_database(lambda: Store(url, mode="serve"), "connecting", max_wait=connect_wait)
    assert isinstance(store, Store)
    mode = ("read-only" if settings.read_only else "INSECURE: anyone may write" if settings.insecure
            else f"{len(settings.tokens)} write token(s)")
    err.print(f"lightnas API on http://{host}:{port} ({Store.display_url(url)}; {mode}); web page at /, docs at /docs",
              highlight=False, soft_wrap=True, markup=False)
    # The access log prints request lines only; tokens travel in the Authorization header, never logged.
    uvicorn.run(create_app(settings, store), host=host, port=port, log_level=log_level.lower(), access_log=True,
                proxy_headers=False, server_header=False)
