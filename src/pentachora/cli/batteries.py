"""Battery commands (the recipes they call live in :mod:`pentachora.recipes.batteries`).

Commands (registered on the existing ``train`` group and on the root app)::

    pentachora train batteries --regimes noise-types|tiers|patch-clusters:K[+...] --out bank.safetensors
    pentachora train container --batteries bank.safetensors --data images --steps 500 --out runs/container
    pentachora train container --layout routed --batteries bank.safetensors ...   # the seed's routed slots
    pentachora export-linear runs/container -o runs/container/linear.safetensors

Recipes (importable, no printing, in :mod:`pentachora.recipes.batteries`): ``train_battery_bank``
(the one Trainer on a ``BatteryBank``), ``time_batched_vs_loop`` (the batched bank against a Python
loop over the same batteries, in one process), ``container_phases`` (geometry-first CV schedule)
and ``build_container``. torch and the models are imported inside the command bodies.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from pentachora.cli.app import app, train_app
from pentachora.cli.autoencoders import print_model_card, train_and_report
from pentachora.cli.options import (
    ImageDataOptions,
    TrainOptions,
    check_output_file,
    check_run_folder,
    image_data_options,
    load_autoencoder,
    parse_overrides,
    train_options,
)

#: ``train batteries --heavy-tails`` choices (:class:`pentachora.data.regimes.RegimeSource`).
HeavyTails = Literal["clamp", "raw"]

#: ``train container --layout`` choices (see :mod:`pentachora.autoencoders.folded`).
ContainerLayout = Literal["folded", "routed"]
LAYOUT_HELP = (
    "'folded': the batteries initialise a plain GeoVAE of their widths (V = K·v, hidden K·h), trained and run "
    "as a GeoVAE; 'routed': the seed's container, every battery a routed slot at run time (8× a GeoVAE step)."
)
SPECTRAL_HELP = (
    "folded: start the bottleneck at the frames' principal subspace (fp64 eigh on the first "
    "--calibration-batches training batches)."
)


# ============================================================================================ CLI
def _bank_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"battery bank: {report['n_batteries']} batteries ({report['regimes']})")
    table.add_column("regime kind")
    for col in ("n", "final MSE (unit-RMS)", "CV", "erank"):
        table.add_column(col, justify="right")
    for kind, row in report["by_kind"].items():
        table.add_row(
            kind,
            f"{row['n']:.0f}",
            f"{row['final_mse_mean']:.4f}",
            f"{row['cv_mean']:.3f}",
            f"{row['erank_mean']:.2f}",
        )
    return table


@train_app.command("batteries")
@train_options(
    include=("steps", "batch_size", "lr", "seed", "threads"),
    steps={"default": 400, "min": 1, "help": "Optimizer steps (every battery steps together)."},
    batch_size={"default": 32, "help": "Patches per battery per step."},
    lr={"default": 3e-3, "help": "Peak learning rate (AdamW, cosine)."},
    seed={"help": "Seed (regimes, init, batches)."},
)
def train_batteries(
    train: TrainOptions,
    regimes: str = typer.Option(
        "patch-clusters:256",
        help="noise-types[:K] | tiers[:K] | patch-clusters:K, '+'-concatenated "
        "(e.g. patch-clusters:192+noise-types:64). K batteries in total.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Bank file to write (one .safetensors)."),
    patch_size: int = typer.Option(8, min=1, max=256, help="Patch side p (the container's patch)."),
    rows: int = typer.Option(8, min=5, help="Frame rows V per battery."),
    dim: int = typer.Option(8, min=4, help="Frame dimension D."),
    hidden: int = typer.Option(8, min=1, help="Hidden width of a battery's encoder/decoder."),
    n_cross: int = typer.Option(1, min=0, help="Spectral self-gate layers on S."),
    cv_weight: float = typer.Option(0.3, min=0.0, help="Weight of the differentiable CV term."),
    heavy_tails: HeavyTails = typer.Option("clamp", help="Noise heavy tails: clamp or raw."),
    cluster_patches: int = typer.Option(32768, min=64, help="Photo patches sampled for the k-means."),
    run_dir: Path = typer.Option(None, help="Optional trainer run folder (metrics, checkpoints, resume)."),
    compare_loop: int = typer.Option(0, min=0, help="Also time N steps of a Python loop over the batteries."),
) -> None:
    """Train K miniature PatchSVAE batteries in ONE batched module and save them as one file.

    Example: pentachora train batteries --regimes patch-clusters:192+noise-types:64 --out bank.safetensors
    """

    from pentachora.cli.core import set_resume_dir
    from pentachora.recipes.batteries import (
        battery_config_for,
        regime_source,
        time_batched_vs_loop,
        train_battery_bank,
    )

    check_output_file(out, "safetensors", "--out")
    check_run_folder(run_dir, "--run-dir")
    console = Console()
    train.apply_threads()
    config = battery_config_for(
        regimes, patch_size=patch_size, V=rows, D=dim, hidden=hidden, n_cross=n_cross, cv_weight=cv_weight
    )
    console.print(
        f"{config.n_batteries} batteries × {config.params_per_battery:,} parameters "
        f"(patch {patch_size}, frame {rows}×{dim}, hidden {hidden}); building regimes…"
    )
    source = regime_source(regimes, config, train.batch_size, train.seed, heavy_tails=heavy_tails,
                           cluster_patches=cluster_patches)  # fmt: skip
    set_resume_dir(run_dir)
    bank, report = train_battery_bank(
        regimes, config, train.steps, train.batch_size, train.lr, seed=train.seed, out_file=out,
        run_dir=run_dir, source=source,
    )  # fmt: skip
    console.print(_bank_table(report))
    console.print(
        f"trained {report['n_batteries']} batteries in one batched module: {report['train_wall_s']:.1f} s for "
        f"{report['steps']} steps ({report['torch_threads']} torch threads); mean final MSE "
        f"{report['final_mse_mean']:.4f}, CV {report['cv_mean']:.3f} (target {report['cv_target']:.3f}) → {out}"
    )
    if compare_loop:
        _print_loop_timing(
            console, time_batched_vs_loop(bank.config, source, steps=compare_loop, progress=True)
        )


def _print_loop_timing(console: Console, timing: dict[str, Any]) -> None:
    per_step = timing["s_per_step"]
    line = (
        f"per step: batched {per_step['batched']:.3f} s, loop of one-battery banks "
        f"{per_step['loop_bank1']:.3f} s (×{timing['speedup_vs_loop_bank1']:.1f})"
    )
    if "speedup_vs_loop_patchsvae" in timing:
        line += f", loop of PatchSVAEs {per_step['loop_patchsvae']:.3f} s (×{timing['speedup_vs_loop_patchsvae']:.1f})"
    console.print(line)


@train_app.command("container")
@train_options(
    exclude=("grad_clip_mode", "weight_decay", "bf16"),
    steps={"help": "Optimizer steps (0 = build and describe only)."},
    lr={"help": "Peak learning rate."},
    warmup={"default": 25, "help": "Warm-up steps."},
    grad_clip={"help": "Fixed gradient-norm clip."},
    seed={"help": "Seed."},
    eval_every={"help": "Evaluate every N steps."},
    save_every={"help": "Checkpoint every N steps."},
    out={"help": "Run folder (default runs/container)."},
)
@image_data_options(
    image_size={"default": 32, "help": "Crop / noise side in pixels (multiple of the patch)."},
    noise_per_type={"default": 8},
    eval_tiles={"default": 16},
)
def train_container(
    train: TrainOptions,
    images: ImageDataOptions,
    batteries: Path = typer.Option(
        None, "--batteries", help="Bank file from `pentachora train batteries` (sets the slot shape)."
    ),
    layout: ContainerLayout = typer.Option("folded", help=LAYOUT_HELP),
    implant: bool = typer.Option(True, help="Implant the batteries (--no-implant: same shape, random init)."),
    spectral: bool = typer.Option(True, help=SPECTRAL_HELP),
    calibration_batches: int = typer.Option(8, min=1, help="folded + --spectral: batches to calibrate on."),
    depth: int = typer.Option(
        2, min=0, help="folded: residual blocks per side (they start as the identity)."
    ),
    sectors: str = typer.Option("encoder,decoder,anchors", help="routed: sectors to implant."),
    n_batteries: int = typer.Option(64, min=1, help="Slots K when no bank is given."),
    latent_dim: int = typer.Option(15, min=1, help="Stochastic latent dims d per patch (+1 magnitude)."),
    routing: str = typer.Option("soft", help="routed: 'soft' or 'topk'."),
    top_k: int = typer.Option(8, min=1, help="routed: batteries per patch for --routing topk."),
    set_: list[str] = typer.Option(None, "--set", help="Model config override KEY=VALUE (repeatable)."),
) -> None:
    """Train a battery container: batteries from `pentachora train batteries` as the starting point.

    Example: pentachora train container --batteries bank.safetensors --data images --steps 500 --out runs/c
    """
    import torch

    from pentachora.recipes.batteries import (
        FOLDED_ALIGN_FRACTION,
        container_phases,
        load_battery_bank,
        make_container,
    )

    console = Console()
    bank = load_battery_bank(batteries) if batteries is not None else None
    calibration = None
    if layout == "folded" and spectral and (bank is not None or not implant):
        images.check_patch(bank.config.patch_size if bank is not None else 8)
        source = images.spec.train_source(train.batch_size, images.image_size, seed=train.seed)
        calibration = torch.cat([source.batch(i) for i in range(calibration_batches)])
    model, label = make_container(
        layout, bank, implant=implant, seed=train.seed, latent_dim=latent_dim, n_batteries=n_batteries,
        calibration=calibration, depth=depth, sectors=tuple(s for s in sectors.split(",") if s),
        routing=routing, top_k=top_k, **parse_overrides(set_),
    )  # fmt: skip
    print_model_card(console, model, label)
    if train.steps == 0:
        return
    train.out = train.out or Path("runs") / "container"
    align = FOLDED_ALIGN_FRACTION if layout == "folded" and implant else 0.1
    phases = container_phases(train.steps, align_fraction=align)
    train_and_report(console, model, label, train, images, callbacks=(phases,))


@app.command("export-linear")
def export_linear(
    run: Path = typer.Argument(..., help="Container run folder (final/ or latest checkpoint) or checkpoint."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the folded model here (.safetensors)."),
    image_size: int = typer.Option(32, min=1, help="Side of the held-out tiles the outputs are compared on."),
    tiles: int = typer.Option(8, min=1, help="Held-out tiles per photo for the comparison."),
    json_out: Path = typer.Option(None, "--json", help="Also write the report as JSON here."),
) -> None:
    """Fold a trained container into linear maps; report linear-FLOP share and max |Δ| vs the model."""
    from pentachora.autoencoders.container import BatteryContainer
    from pentachora.data.images import heldout_tiles, load_sample_photos, to_model_space
    from pentachora.errors import ConfigError
    from pentachora.recipes.batteries import export_report

    check_output_file(output, "safetensors", "--output")
    check_output_file(json_out, "json", "--json")
    console = Console()
    model = load_autoencoder(run)
    if not isinstance(model, BatteryContainer):
        hint = (
            " (a folded container is a plain GeoVAE: it runs as one and has no linear export)"
            if model.model_type == "geovae"
            else ""
        )
        raise ConfigError(f"{run} holds a {model.model_type!r}, not a routed battery container{hint}")
    if image_size % model.patch_size:
        raise ConfigError(f"--image-size {image_size} is not a multiple of the patch size {model.patch_size}")
    x = to_model_space(heldout_tiles(load_sample_photos("heldout"), image_size, max_per_image=tiles))
    rep = export_report(model, x)
    table = Table(title=f"linear export of {run}")
    for col, just in (
        ("stage", "left"),
        ("linear", "center"),
        ("FLOPs / patch", "right"),
        ("share", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    total = sum(r["flops"] for r in rep["stages"])
    for r in rep["stages"]:
        table.add_row(
            r["stage"],
            "✓" if r["linear"] else "",
            f"{r['flops_per_patch']:,.0f}",
            f"{r['flops'] / total:.2%}",
        )
    console.print(table)
    console.print(
        f"linear maps: {rep['linear_maps_before_grouped']} → {rep['linear_maps_after']} after folding "
        f"(grouped per-slot maps count once; {rep['linear_maps_before_per_battery']} counting every battery's); "
        f"FLOPs in linear maps: {rep['linear_fraction']:.2%} "
        f"({rep['linear_fraction_elementwise_x10']:.2%} if every non-linear element costs 10); "
        f"max |export − model| on {x.shape[0]} held-out tiles: {rep['max_abs_diff']:.2e}"
    )
    if output is not None:
        rep["module"].save(output)
        console.print(f"folded model → {output}")
    if json_out is not None:
        payload = {k: v for k, v in rep.items() if k != "module"}
        json_out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    if not math.isfinite(rep["max_abs_diff"]):
        raise typer.Exit(code=1)
