"""notebooks/quickstart.ipynb runs offline, top to bottom, and shows the tutorial's key outputs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _text_outputs(notebook: "nbformat.NotebookNode") -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output:
                parts.append(output["data"].get("text/plain", ""))
                if "image/png" in output["data"]:
                    parts.append("<image/png>")
    return "\n".join(parts)


def test_quickstart_notebook_runs_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the offline path, even on a machine with a key
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.perf_counter() - started
    assert all(o.get("output_type") != "error" for c in notebook.cells for o in c.get("outputs", []))
    text = _text_outputs(notebook)
    for expected in (
        "20 nodes stored, dimension 384",
        "40 training questions, 20 test questions",
        "---- Evaluating without Deep Memory ----",
        "---- Evaluating with Deep Memory ----",
        "without deep memory",
        "with deep memory",
        "hit_rate",
        "<image/png>",
        "nodes reloaded; active Deep Memory model: model_1",
        "Notebook ran in",
    ):
        assert expected in text, expected
    assert elapsed < 120, f"the quickstart should stay quick; took {elapsed:.0f}s"
