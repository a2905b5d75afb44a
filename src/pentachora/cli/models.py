"""`pentachora models`: every model family and its presets in one table."""

from __future__ import annotations

import contextlib
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
    from rich.table import Table

    from pentachora.cli.options import check_output_file

    check_output_file(json_out, "json", "--json")

    import pentachora.autoencoders
    from pentachora.errors import ConfigError
    from pentachora.modeling import describe_preset, list_presets

    with contextlib.suppress(ImportError):  # without the memory extra, its family is not listed
        import pentachora.memory  # noqa: F401  (registers the memory family)
    listing = list_presets()
    unknown = sorted(set(family) - set(listing))
    if unknown:
        raise typer.BadParameter(
            f"unknown model type(s) {unknown}; known: {sorted(listing)}", param_hint="--family"
        )
    rows = []
    for model_type, names in listing.items():
        if family and model_type not in family:
            continue
        for name in names or [None]:
            try:
                rows.append(describe_preset(model_type, name, count_params=params))
            except (ConfigError, ImportError) as exc:  # e.g. AutoencoderKL without diffusers
                rows.append({"model_type": model_type, "model": "?", "preset": name, "error": str(exc)})
    table = Table(
        title="pentachora model families and presets",
        caption="params: trainable parameters (memory: without the frozen text encoders)",
    )
    for col, justify in (
        ("family", "left"),
        ("preset", "left"),
        ("params", "right"),
        ("latent floats / patch", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        floats = (
            f"{r['latent_floats_per_patch']} per {r['patch']}" if r.get("latent_floats_per_patch") else "—"
        )
        count = f"{r['params']:,}" if r.get("params") is not None else ("n/a" if "error" in r else "—")
        table.add_row(r["model_type"], r["preset"] or "(defaults)", count, floats)
    Console().print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")
