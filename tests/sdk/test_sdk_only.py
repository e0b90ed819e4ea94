"""`pip install gradhealth` without the server extra: the client, reports and the local check still work."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from .conftest import ZooFiles

BLOCK_SERVER = textwrap.dedent(
    """
    import importlib.abc, sys
    SERVER = {"fastapi", "starlette", "uvicorn", "celery", "kombu", "sqlalchemy", "alembic", "psycopg",
              "pydantic_settings", "multipart", "python_multipart", "prometheus_client", "redis"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in SERVER:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: SDK-only install)")
            return None

    sys.meta_path.insert(0, Block())
    """
)


def test_client_and_local_check_without_server_packages(zoo_files: ZooFiles) -> None:
    code = BLOCK_SERVER + textwrap.dedent(
        f"""
        import gradhealth
        from gradhealth.sdk.check import main
        client = gradhealth.Client(base_url="http://127.0.0.1:9", api_key="k")
        assert hasattr(client.analyses, "wait") and gradhealth.AsyncClient
        from gradhealth.cli import build_parser
        build_parser()
        code = main(["--model", {str(zoo_files.models["deep_sigmoid_mlp"])!r},
                     "--batch", {str(zoo_files.batches["deep_sigmoid_mlp"])!r}, "--quiet"])
        assert not [m for m in sys.modules if m.split(".")[0] in SERVER], "a server package was imported"
        sys.exit(code)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "FAILED" in done.stdout


def test_server_command_without_server_extra_says_what_to_install() -> None:
    """`gradhealth serve` in an SDK-only install: a one-line fix, exit 2, no traceback."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pydantic_settings'] = None\n"
        "from gradhealth.cli import main\n"
        "sys.exit(main(['serve', '--data-dir', '/nonexistent-gradhealth']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'gradhealth[server]'" in done.stderr and "Traceback" not in done.stderr
