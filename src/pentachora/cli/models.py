"""`pentachora models`: every model family and its presets in one table."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pentachora.cli.app import app


@app.command("models")
def models_cmd(
    family: list[str] = typer.Option(
        [], "--family", "-f", help="Only these model types (repeat), e.g. geovae, patch_svae."
    ),
    params: bool = typer.Option(True, "--params/--no-params", help="Count parameters (builds on 'meta')."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the rows as JSON here."),
) -> None:
    """List every registered model family with its presets (parameters, latent floats per patch).

    Build one with ``Config.preset(name, **overrides)``, e.g. ``GeoVAEConfig.preset("tiny-12")``;
    the `train` commands take ``--preset NAME``. Families without presets are built from their
    config defaults (shown as ``(defaults)``).
    """
    from rich.console import Console

    from pentachora.cli.options import check_output_file
    from pentachora.recipes.loading import preset_rows

    check_output_file(json_out, "json", "--json")
    rows = preset_rows(family, count_params=params)
    Console().print(_presets_table(rows))
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


def _presets_table(rows: list[dict]):
    from rich.table import Table

    table = Table(
        title="pentachora model families and presets",
        caption="params: trainable parameters (memory: without the frozen text encoders)",
    )
    for col, justify in (("family", "left"), ("preset", "left"), ("params", "right"),
                         ("latent floats / patch", "right")):  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        floats = (
            f"{r['latent_floats_per_patch']} per {r['patch']}" if r.get("latent_floats_per_patch") else "—"
        )
        count = f"{r['params']:,}" if r.get("params") is not None else ("n/a" if "error" in r else "—")
        table.add_row(r["model_type"], r["preset"] or "(defaults)", count, floats)
    return table
