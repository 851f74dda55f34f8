"""Run the HTTP server: bind, own the index, record the address for the CLI, clean up."""

from __future__ import annotations

import signal
import socket
import sys

from schemas.settings import Settings


def run_server(settings: Settings) -> None:
    import uvicorn

    from orchestrator.api import create_app
    from orchestrator.api_client import forget_server, new_token, record_server
    from workers.runtime import close_contexts, get_context

    embedded_store = settings.qdrant_url is None
    token = settings.api_token.get_secret_value() if settings.api_token else None
    if token is None and settings.embedded_queue:
        token = new_token()  # for the local CLI and whoever can read the data dir
    # Take the store's lock before binding: a second `serve` (or a running ingest) is told
    # so at once instead of after the port is taken.
    get_context(settings).store  # noqa: B018
    family = socket.AF_INET6 if ":" in settings.api_host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets that do, and without it
    # every keep-alive response waited ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((settings.api_host, settings.api_port))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}"
    config = uvicorn.Config(
        create_app(settings, token=token),
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    if embedded_store:
        record_server(settings, url, token)
    print(f"clamp-index: serving {url} (page: {url}/, API docs: {url}/docs)", file=sys.stderr)
    # uvicorn re-raises the signal that stopped it once it has shut down; an orderly stop
    # must still remove the address file and exit 0, so both signals end up as exceptions.
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if embedded_store:
            forget_server(settings)
        close_contexts()


class _Stopped(Exception):
    pass


def _stop(_signum: int, _frame: object) -> None:
    raise _Stopped
