"""docs/quickstart.ipynb runs end to end against a real `gradhealth serve`, as a reader would run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from .servers import Served

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "quickstart.ipynb"


def test_quickstart_notebook_runs(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, artifacts_dir: Path
) -> None:
    nbformat = pytest.importorskip("nbformat", reason="test dependency: pip install nbformat nbclient ipykernel")
    nbclient = pytest.importorskip("nbclient", reason="test dependency: pip install nbclient ipykernel")
    pytest.importorskip("ipykernel", reason="test dependency: pip install ipykernel")
    monkeypatch.setenv("GRADHEALTH_URL", served.base_url)  # the kernel inherits this process's environment
    monkeypatch.setenv("GRADHEALTH_API_KEY", served.key)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    nbformat.write(notebook, artifacts_dir / "quickstart.executed.ipynb")

    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    assert not [o for cell in outputs.values() for o in cell if o.get("output_type") == "error"]
    texts = "\n".join(o.get("text", "") for cell in outputs.values() for o in cell if o.get("output_type") == "stream")
    assert "[error] vanishing_gradient" in texts
    assert "resolved: ['vanishing_gradient'" in texts and "regressed: False" in texts
    assert "the fixed model passes the gate" in texts
    html = [o["data"]["text/html"] for cell in outputs.values() for o in cell if "text/html" in o.get("data", {})]
    assert any("gh-gradient-chart" in h and "gh-activation-chart" in h for h in html)  # the report displayed itself
    assert "steps logged up to step" in texts  # the watched run's report (the budget may thin out the steps)
    assert any("gh-loss-chart" in h and "gh-layer-chart" in h for h in html)  # updated in place while training
