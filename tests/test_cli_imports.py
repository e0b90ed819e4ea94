"""`gradhealth --version` and `gradhealth admin …` start without torch, httpx or the engine (item 9 of issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, sys
from gradhealth.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # argparse's --version
    code = exc.code
heavy = sorted(m for m in ("torch", "httpx", "gradhealth.diagnostics", "alembic") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _probe(*argv: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_version_imports_nothing_heavy() -> None:
    assert _probe("--version") == {"code": 0, "heavy": []}


def test_admin_on_a_current_database_skips_torch_and_alembic(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy", reason="server extra not installed")
    first = _probe("admin", "--data-dir", str(tmp_path), "create-project", "team")  # creates the schema
    assert first["code"] == 0 and "torch" not in first["heavy"]
    again = _probe("admin", "--data-dir", str(tmp_path), "create-key", "team")  # at head: no Alembic
    assert again == {"code": 0, "heavy": []}


def test_installed_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """pyproject reads __version__ (dynamic): the distribution, the package and --version agree."""
    import importlib.metadata

    import gradhealth
    from gradhealth.cli import main

    assert importlib.metadata.version("gradhealth") == gradhealth.__version__
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"gradhealth {gradhealth.__version__}"
