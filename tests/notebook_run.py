"""Run a notebook top to bottom (nbclient) and read back its text outputs, for the notebook tests."""

from __future__ import annotations

import time
from pathlib import Path


def run_notebook(path: Path, timeout: int = 240) -> tuple[str, float]:
    """Execute ``path`` in its folder; its stream and text outputs joined (``<image/png>`` marks a
    figure), and the seconds it took. Raises ``CellExecutionError`` on the first failing cell."""
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    started = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - started
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", output
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output:
                parts.append(output["data"].get("text/plain", ""))
                if "image/png" in output["data"]:
                    parts.append("<image/png>")
    return "\n".join(parts), elapsed
