"""notebooks/quickstart.ipynb runs offline, top to bottom, and shows the tutorial's key outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from notebook_run import run_notebook  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the offline path, even on a machine with a key
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text, elapsed = run_notebook(NOTEBOOK)
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
