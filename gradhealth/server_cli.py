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
    p.add_argument(
        "--healthcheck",
        action="store_true",
        help="do not start a worker: ping the running worker --name (default: any worker on this host) through "
        "the broker and exit 0 when it answers, 1 otherwise (a container HEALTHCHECK)",
    )
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
    p = sub.add_parser("revoke-key", help="revoke an API key now (by the key, its id or its prefix)")
    p.add_argument("key", help="the key itself, its id, or its prefix as list-keys prints it")
    p.set_defaults(handler=_in_data_dir(_revoke_key))
    p = sub.add_parser("list-keys", help="a project's keys: id, prefix, scopes, created, revoked (never the key)")
    p.add_argument("project", help="project name or id")
    p.set_defaults(handler=_in_data_dir(_list_keys))
    p = sub.add_parser(
        "prune",
        help="delete finished analyses, idle runs, unreferenced uploads and their blobs older than an age",
        description="Retention: deletes analyses (with reports) that finished and belong to no audit, runs not "
        "updated since, and batches/models nothing references, all created before now minus --older-than; "
        "then the blobs no row holds. Each deletion is logged (table deletions).",
    )
    p.add_argument("--older-than", required=True, help="age such as 30d, 12h, 2w (units s, m, h, d, w)")
    p.add_argument("--project", help="only this project (name or id; default: every project)")
    p.add_argument("--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    p.set_defaults(handler=_in_data_dir(_prune))


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


def _revoke_key(args: argparse.Namespace) -> int:
    from gradhealth.store import keys
    from gradhealth.store.db import migrate, session_scope

    settings = _settings()
    migrate(settings)
    try:
        with session_scope(settings) as session:
            row = keys.revoke_key(session, args.key)
            print(f"revoked key {row.id} ({row.prefix}…) at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC", file=sys.stderr)
    except keys.AdminError as exc:
        print(f"gradhealth: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _list_keys(args: argparse.Namespace) -> int:
    from gradhealth.store import keys
    from gradhealth.store.db import migrate, session_scope

    settings = _settings()
    migrate(settings)
    try:
        with session_scope(settings) as session:
            rows = keys.list_keys(session, keys.find_project(session, args.project))
            for row in rows:
                revoked = f"{row.revoked_at:%Y-%m-%dT%H:%M:%S}" if row.revoked_at else "-"
                print(f"{row.id}\t{row.prefix}\t{row.scopes}\t{row.created_at:%Y-%m-%dT%H:%M:%S}\t{revoked}")
    except keys.AdminError as exc:
        print(f"gradhealth: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _prune(args: argparse.Namespace) -> int:
    import json

    from gradhealth.store import keys, retention
    from gradhealth.store.blobs import blob_store
    from gradhealth.store.db import migrate, session_scope

    try:
        age = retention.parse_age(args.older_than)
    except ValueError as exc:
        print(f"gradhealth: error: --older-than: {exc}", file=sys.stderr)
        return 2
    settings = _settings()
    migrate(settings)
    try:
        with session_scope(settings) as session:
            project = keys.find_project(session, args.project).id if args.project else None
            done = retention.prune(session, blob_store(settings), age, "cli:admin prune", project, args.dry_run)
    except keys.AdminError as exc:
        print(f"gradhealth: error: {exc}", file=sys.stderr)
        return 2
    summary = {"cutoff": done.cutoff.isoformat(), "dry_run": done.dry_run, "counts": done.counts()}
    summary |= {k: getattr(done, k) for k in done.counts()}
    print(json.dumps(summary, indent=2))
    return 0


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


def _metrics_dir(workers: int) -> None:
    """Several API processes share Prometheus samples through files (set before any process imports the client)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if workers <= 1 and not folder:
        return
    import shutil
    import tempfile

    if folder:  # samples of a previous run would be summed in: start empty
        os.makedirs(folder, exist_ok=True)
        for entry in os.listdir(folder):
            if entry.endswith(".db"):
                os.unlink(os.path.join(folder, entry))
    else:
        folder = tempfile.mkdtemp(prefix="gradhealth-metrics-")
        import atexit

        atexit.register(shutil.rmtree, folder, True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def _api(args: argparse.Namespace) -> int:
    _metrics_dir(args.workers)
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


def _worker_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when this worker (by --name, else any worker on this host) answers a broker ping within 5 s."""
    from gradhealth.store.celery_app import get_celery

    settings = _settings()
    if settings.embedded_broker:
        print("gradhealth: --healthcheck needs a broker (GRADHEALTH_BROKER_URL)", file=sys.stderr)
        return 1
    try:
        app = get_celery(settings)
        replies = app.control.ping(destination=[args.name] if args.name else None, timeout=5.0)
    except Exception as exc:
        print(f"gradhealth: worker health: broker unreachable: {exc}", file=sys.stderr)
        return 1
    names = [name for reply in replies for name in reply]
    host = "@" + socket.gethostname()
    mine = [n for n in names if n == args.name] if args.name else [n for n in names if n.endswith(host)]
    if not mine:
        print(f"gradhealth: worker health: no answer from {args.name or '*' + host}", file=sys.stderr)
        return 1
    print(f"ok: {', '.join(sorted(mine))}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    if args.healthcheck:
        return _worker_healthcheck(args)
    from gradhealth.store.db import migrate

    from .embedded import exit_with_parent

    exit_with_parent()
    # Only the gpu queue runs uploaded models (store/celery_app.TASK_QUEUES): a cpu-only worker needs no sandbox.
    if "gpu" in {q.strip() for q in args.queues.split(",")} and not _sandbox_ready(args):
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
