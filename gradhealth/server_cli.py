"""Server subcommands (serve, api, worker, admin); heavy imports happen only when one runs."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from typing import Any


def add_server_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the server commands; parsing them needs nothing beyond the standard library."""
    p = subparsers.add_parser(
        "serve",
        help="API + worker on this machine (SQLite, local files, no other server needed)",
        description="Start the REST API and an embedded worker. Data (database, uploads, queue) lives "
        "in --data-dir (default $GRADHEALTH_DATA_DIR or ~/.local/share/gradhealth).",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--data-dir", help="where to keep the database, uploads and queue")
    _add_unsafe_flag(p)
    p.set_defaults(handler=_serve)

    p = subparsers.add_parser("api", help="run the REST API only (configure with GRADHEALTH_* env vars)")
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="API processes (default 1)")
    p.set_defaults(handler=_api)

    p = subparsers.add_parser("worker", help="run an analysis worker (Celery) against the configured broker")
    p.add_argument("--queues", default="gpu,cpu", help="queues to consume (default gpu,cpu)")
    p.add_argument("--name", default=None, help="worker name (default gradhealth-PID@HOST)")
    p.add_argument("--concurrency", type=int, default=1, help="analyses at once (default 1; one per GPU)")
    _add_unsafe_flag(p)
    p.set_defaults(handler=_worker)

    admin = subparsers.add_parser("admin", help="projects and API keys (keys go to stdout, alone)")
    admin.add_argument(
        "--data-dir", help="the data folder of an embedded `gradhealth serve` (default $GRADHEALTH_DATA_DIR)"
    )
    sub = admin.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    p = sub.add_parser("create-project", help="create a project and print its first key")
    p.add_argument("name")
    p.add_argument("--scope", action="append", choices=["read", "write", "admin"], help="default: admin")
    p.set_defaults(handler=_in_data_dir(_create_project))
    p = sub.add_parser("create-key", help="create an API key for a project and print it")
    p.add_argument("project", help="project name or id")
    p.add_argument("--scope", action="append", choices=["read", "write", "admin"], help="default: write")
    p.set_defaults(handler=_in_data_dir(_create_key))
    p = sub.add_parser("migrate", help="apply database migrations (every server command does this too)")
    p.set_defaults(handler=_in_data_dir(_migrate))
    p = sub.add_parser("sweep", help="re-enqueue analyses whose message was lost or whose worker died")
    p.set_defaults(handler=_in_data_dir(_sweep))


def _in_data_dir(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`gradhealth admin --data-dir D …` acts on the same folder as `gradhealth serve --data-dir D`."""

    def run(args: argparse.Namespace) -> int:
        if args.data_dir:
            os.environ["GRADHEALTH_DATA_DIR"] = os.path.abspath(args.data_dir)
        return handler(args)

    return run


def _add_unsafe_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="run uploaded models without bubblewrap's namespaces (GRADHEALTH_UNSAFE_NO_SANDBOX=1); "
        "only where every uploaded model is trusted",
    )


def _sandbox_ready(args: argparse.Namespace) -> bool:
    """Fail closed: no model may run unconfined unless the operator said so explicitly."""
    if getattr(args, "unsafe_no_sandbox", False):
        os.environ["GRADHEALTH_UNSAFE_NO_SANDBOX"] = "1"  # inherited by an embedded worker
    from gradhealth.workers.sandbox_policy import SandboxUnavailable, check_sandbox

    try:
        check_sandbox(_settings().unsafe_no_sandbox)
    except SandboxUnavailable as exc:
        print(f"gradhealth: refusing to start: {exc}", file=sys.stderr)
        return False
    return True


def _settings() -> Any:
    """Settings from the environment; --data-dir (serve, admin) has set GRADHEALTH_DATA_DIR first."""
    from gradhealth.store.settings import get_settings

    get_settings.cache_clear()
    return get_settings()


def _migrate(_: argparse.Namespace) -> int:
    from gradhealth.store.db import migrate

    settings = _settings()
    migrate(settings)
    print(f"database at head: {settings.resolved_database_url.split('@')[-1]}", file=sys.stderr)
    return 0


def _new_key(project: str, scopes: list[str], create: bool) -> int:
    from gradhealth.store import keys
    from gradhealth.store.db import migrate, session_scope

    settings = _settings()
    migrate(settings)
    try:
        with session_scope(settings) as session:
            row = keys.create_project(session, project) if create else keys.find_project(session, project)
            key = keys.create_key(session, row, scopes)
    except keys.AdminError as exc:
        print(f"gradhealth: error: {exc}", file=sys.stderr)
        return 2
    print(key)
    return 0


def _create_project(args: argparse.Namespace) -> int:
    return _new_key(args.name, args.scope or ["admin"], create=True)


def _create_key(args: argparse.Namespace) -> int:
    return _new_key(args.project, args.scope or ["write"], create=False)


def _sweep(_: argparse.Namespace) -> int:
    from functools import partial

    from gradhealth.store import analyses
    from gradhealth.store.celery_app import enqueue
    from gradhealth.store.db import migrate

    settings = _settings()
    migrate(settings)
    result = analyses.sweep(settings, partial(enqueue, settings=settings))
    print(
        f"re-enqueued {len(result.requeued_lost)} lost and {len(result.requeued_stale)} stale analyses; "
        f"failed {len(result.failed)}",
        file=sys.stderr,
    )
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    uvicorn.run(
        "gradhealth.api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level.lower(),
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from gradhealth.store.db import migrate

    from .embedded import exit_with_parent

    exit_with_parent()
    if not _sandbox_ready(args):
        return 2
    settings = _settings()
    migrate(settings)
    from gradhealth.workers.app import app

    name = args.name or f"gradhealth-{os.getpid()}@{socket.gethostname()}"
    argv = ["worker", "-Q", args.queues, "-n", name, "--concurrency", str(args.concurrency)]
    argv += ["--pool", "solo" if args.concurrency == 1 else "threads", "--loglevel", settings.log_level]
    argv += ["--without-gossip", "--without-mingle"]
    app.worker_main(argv)
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.data_dir:
        os.environ["GRADHEALTH_DATA_DIR"] = os.path.abspath(args.data_dir)
    if not _sandbox_ready(args):
        return 2
    from .embedded import serve

    return serve(_settings(), args.host, args.port)
