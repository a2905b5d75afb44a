"""`pentachora demo`: the main job on the embedded default data."""

from __future__ import annotations

from pentachora.cli import app


@app.command()
def demo() -> None:
    """Run the main job on the embedded default data (CPU, a few minutes, no downloads)."""
    raise NotImplementedError
