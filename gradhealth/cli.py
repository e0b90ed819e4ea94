"""The `gradhealth` command: client commands always, server commands only when called."""

from __future__ import annotations

import argparse
import sys

from gradhealth.sdk.commands import add_analyze_parser, add_check_parser

from .integrations.tensorboard import add_import_parser
from .server_cli import add_server_parsers

# What `pip install "gradhealth[server]"` adds; without it only the client commands work.
SERVER_MODULES = {
    "fastapi", "uvicorn", "celery", "kombu", "redis", "sqlalchemy", "alembic", "psycopg",
    "pydantic_settings", "multipart", "prometheus_client", "starlette",
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """All subcommands; server ones import their dependencies lazily."""
    parser = argparse.ArgumentParser(prog="gradhealth", description="Gradient-health diagnostics for PyTorch models.")
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_analyze_parser(subparsers)
    add_check_parser(subparsers)
    add_import_parser(subparsers)
    add_server_parsers(subparsers)
    return parser


def _version() -> str:
    from gradhealth import __version__

    return f"gradhealth {__version__}"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in SERVER_MODULES:
            raise
        print(
            f"gradhealth: error: `gradhealth {args.command}` needs the server extra "
            f"(missing module {exc.name!r}): pip install 'gradhealth[server]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
