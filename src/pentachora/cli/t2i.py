"""Scene-world commands: the sample sheet, the reader, the miniature text-to-image model, generation.

Commands::

    pentachora scenes --kind long -n 8 -o sheet.png          # scenes with their captions (PNG)
    pentachora train reader --out runs/reader                # the instrument (optional: cached on first use)
    pentachora train t2i --preset cpu --out runs/t2i         # the miniature T2I model (≈ 1 h on 2 CPU cores)
    pentachora generate "a small red circle in the centre." --model runs/t2i -o out.png
    pentachora generate "LONG PROMPT" --model runs/t2i --encoder concat -o out.png
    pentachora read image.png --model runs/t2i               # the layout the reader sees
    pentachora train memory-image --model runs/t2i --init runs/m14 --out runs/mi   # memory through the UNet

The recipes live in :mod:`pentachora.recipes.t2i`; torch and the models are imported in the bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

from pentachora.cli.app import app, train_app
from pentachora.cli.options import (
    MAX_SEED,
    TrainOptions,
    build_config,
    check_input_file,
    check_output_file,
    check_run_folder,
    parse_overrides,
    train_options,
)

CaptionKind = Literal["short", "prose", "terse", "long", "ceiling"]
Split = Literal["train", "val", "test"]
Phrasing = Literal["train", "heldout"]
WorldPreset = Literal["cpu", "gpu"]
Sampler = Literal["ddim", "euler", "ddpm"]

_ENCODER_HELP = (
    "How the prompt reaches the UNet: 'native' (the first 77-token window, as SD), 'concat' (compel-style "
    "77·k positions), 'shift:λ' (training-free mean shift, 77 positions), 'shift-chunks:λ', 'memory:RUN' "
    "(a trained residual memory; 'memory:RUN@α' blends with native), 'chunks:RUN' (its contextual chunks)."
)


# ============================================================================================ scenes
@app.command()
def scenes(
    output: Path = typer.Option(Path("scenes.png"), "-o", "--output", help="Sample sheet to write (PNG)."),
    kind: CaptionKind = typer.Option(
        "long",
        help="Caption kind: 'short' (the training mixture), 'prose' (1–3 objects, one window), 'terse' (up to 9 "
        "objects, one window), 'long' (5–9 objects over 2–4 windows, some past token 75), 'ceiling' (a long "
        "scene as a terse list that fits one window).",
    ),
    n: int = typer.Option(8, "-n", "--num", min=1, max=64, help="Scenes on the sheet."),
    split: Split = typer.Option("test", help="Scene split (splits are by layout)."),
    phrasing: Phrasing = typer.Option(
        "train", help="Object templates: 'train' or 'heldout' (never trained on)."
    ),
    world: WorldPreset = typer.Option("cpu", help="World preset: 'cpu' (32 px, 3×3) or 'gpu' (64 px, 4×4)."),
    start: int = typer.Option(
        0, min=0, max=MAX_SEED, help="Index of the first scene (scenes are random access)."
    ),
    print_captions: bool = typer.Option(
        False, "--print", help="Also print every caption with its token spans."
    ),
) -> None:
    """Render a sample sheet of the scene world: each scene above its caption (PNG).

    Objects described only past the first 75 tokens are named in red. Deterministic: the same
    arguments give the same sheet.
    """
    from pentachora.data.scenes import SceneWorld, SceneWorldConfig
    from pentachora.data.text import minilm_token_counter
    from pentachora.recipes.scene_pictures import save_sample_sheet

    check_output_file(output, "image", "--output")
    w = SceneWorld(SceneWorldConfig.preset(world))
    count = minilm_token_counter()
    samples = [w.sample(split, start + i, kind, count, phrasing) for i in range(n)]
    path = save_sample_sheet(w, samples, output)
    if print_captions:
        for i, (scene, cap) in enumerate(samples):
            typer.echo(
                f"[{start + i}] {cap.kind}, {len(scene.objects)} objects, {cap.n_tokens} tokens: {cap.text}"
            )
            for j, o in enumerate(scene.objects):
                region = cap.object_region(j, w.config.window_tokens)
                typer.echo(
                    f"     {o.size} {o.colour} {o.shape} @ {w.cell_name(o.cell)}: tokens {cap.spans[j]} ({region})"
                )
    typer.echo(f"{n} {kind} scenes of the {split} split ({world} world) → {path}")


# ============================================================================================ reader
@train_app.command("reader")
@train_options(
    include=("steps", "batch_size", "lr", "warmup", "seed", "eval_every", "save_every", "out", "fresh", "force_resume"),
    steps={"default": 3000, "min": 1},
    batch_size={"default": 64},
    lr={"default": 2e-3},
    warmup={"default": 100},
    eval_every={"default": 500},
    save_every={"default": 1000},
)  # fmt: skip
def train_reader_cmd(
    train: TrainOptions,
    world: WorldPreset = typer.Option("cpu", help="World preset the reader reads."),
) -> None:
    """Train the scene reader (image → layout) on degraded renders and test it against ground truth.

    `pentachora train t2i` and the benchmarks train and cache one on first use; this command is for
    inspecting it (its report says its accuracy on clean renders and under noise, and its chance level).
    """
    from pentachora.cli.core import set_resume_dir
    from pentachora.data.scenes import SceneWorldConfig
    from pentachora.recipes.t2i import train_reader
    from pentachora.t2i import SceneReaderConfig

    check_run_folder(train.out)
    set_resume_dir(train.out)
    config = SceneReaderConfig(world=SceneWorldConfig.preset(world))
    run = train_reader(config, train.train_config(), **train.fit_kwargs(train_reader))
    ev = run.evaluation
    table = Table(title=f"scene reader ({world} world) on {ev['n_images']} test renders")
    table.add_column("condition")
    table.add_column("cell accuracy", justify="right")
    table.add_row("clean", f"{ev['clean']['cell_accuracy']:.4f}")
    for sigma, acc in ev["noise"].items():
        table.add_row(f"noise σ={sigma}", f"{acc:.4f}")
    table.add_row("blur + σ=0.05", f"{ev['blur']:.4f}")
    table.add_row("chance (uniform guess)", f"{ev['chance']['uniform_cell']:.4f}")
    Console().print(table)
    typer.echo(
        f"objects read exactly: {ev['clean']['object_accuracy']:.4f}; sizes: {ev['clean']['size_accuracy']:.4f}"
        + (f"; saved to {run.out_dir}/final" if run.out_dir else "")
    )


# ============================================================================================ t2i
@train_app.command("t2i")
@train_options(
    exclude=("audit", "audit_every", "grad_clip_mode"),
    steps={"default": 5000, "min": 0},
    batch_size={"default": 32},
    lr={"default": 1e-3},
    warmup={"default": 100},
    bf16={"default": True},
    eval_every={"default": 1000, "help": "Sample and read validation captions every N steps (the ceiling's curve)."},
    save_every={"default": 500},
)  # fmt: skip
def train_t2i_cmd(
    train: TrainOptions,
    preset: str = typer.Option(
        "cpu", help="MiniT2I preset: 'cpu' (32 px, 3×3), 'tiny' (tests), 'gpu' (64 px, 4×4)."
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a MiniT2IConfig field (KEY=VALUE), repeatable."
    ),
    pool_size: int = typer.Option(
        20_000, min=16, help="Training scenes in the cached pool (captions encoded once)."
    ),
    eval_captions: int = typer.Option(48, min=0, help="Validation captions per periodic evaluation."),
    final_captions: int = typer.Option(
        200, min=0, help="Held-out test captions scored at the end (3 seeds each)."
    ),
    reader: Path = typer.Option(None, help="A trained reader run (default: the world's cached reader)."),
) -> None:
    """Train the miniature text-to-image model (diffusers UNet, DDPM) on short captions only.

    The UNet never sees more than 77 positions in training, as SD's never did. Every --eval-every
    steps it samples validation captions and the reader scores them (object recall = colour, shape
    and cell right). Rerun the same command to resume.
    """
    import torch

    from pentachora.cli.core import set_resume_dir
    from pentachora.recipes.t2i import load_scene_reader, train_t2i
    from pentachora.t2i import MiniT2I, MiniT2IConfig

    check_run_folder(train.out)
    train.apply_threads()
    config = build_config(MiniT2IConfig, preset, parse_overrides(set_))
    torch.manual_seed(train.seed)
    model = MiniT2I(config)
    typer.echo(f"MiniT2I '{preset}': {model.num_parameters():,} parameters, latent {config.latent_channels}×"
               f"{config.latent_size}², encoder {config.encoder}")  # fmt: skip
    if train.steps == 0:
        return
    reader_model = load_scene_reader(reader) if reader is not None else None
    set_resume_dir(train.out)
    run = train_t2i(
        model, train.train_config(), pool_size=pool_size, reader=reader_model, eval_captions=eval_captions,
        final_eval_captions=final_captions, **train.fit_kwargs(train_t2i),
    )  # fmt: skip
    ev = run.evaluation.get("test_short_prose")
    if ev:
        typer.echo(
            f"held-out short captions (test split, 3 seeds): object recall {ev['object_recall']:.3f} "
            f"[{ev['object_recall_lo']:.3f}, {ev['object_recall_hi']:.3f}], binding {ev['binding']:.3f}, "
            f"false objects/image {ev['false_objects_per_image']:.2f}"
        )
    if run.out_dir:
        typer.echo(f"model → {run.out_dir}/final")


# ============================================================================================ memory-image
INIT_HELP = "Start from this trained memory run (its config, with --set applied); default: a fresh --preset."
MEMORY_SET_HELP = (
    "Override a MemoryConfig field (KEY=VALUE), repeatable: e.g. image_weight=1, consumer_output=chunks, "
    "infonce_weight=0."
)
TEXT_LOSSES_HELP = "Keep the text objectives beside the image loss (--no-text-losses: the image loss alone)."
REINIT_HELP = (
    "Re-initialise parameters under this prefix before training (e.g. 'reconstructor.'), repeatable."
)


@train_app.command("memory-image")
@train_options(
    exclude=("audit", "audit_every", "grad_clip_mode", "bf16"),
    steps={"default": 400, "min": 0},
    batch_size={"default": 32, "min": 2},
    lr={"default": 1e-3},
    warmup={"default": 30},
    eval_every={"default": 100, "help": "Validation denoising loss (memory vs truncation) every N steps."},
    save_every={"default": 100},
)  # fmt: skip
def train_memory_image_cmd(
    train: TrainOptions,
    model: Path = typer.Option(..., help="The trained mini-t2i run whose frozen UNet is the consumer."),
    init: Path = typer.Option(None, help=INIT_HELP),
    preset: str = typer.Option("minilm-tiny-image", help="Memory preset when no --init is given."),
    set_: list[str] = typer.Option(None, "--set", help=MEMORY_SET_HELP),
    text_losses: bool = typer.Option(True, help=TEXT_LOSSES_HELP),
    reinit: list[str] = typer.Option(None, help=REINIT_HELP),
    captions: int = typer.Option(2000, min=2, help="Training scenes (train split, long captions)."),
    val_captions: int = typer.Option(128, min=2, help="Validation scenes for the denoising-loss check."),
) -> None:
    """Train the long-prompt memory through the frozen miniature T2I UNet (the consumer in the loop).

    The loss is the UNet's own denoising loss on a scene's image conditioned on the memory's output for
    the scene's long caption (the text objectives stay on unless --no-text-losses). The UNet and the
    window encoder are frozen. The gradient-loudness meter (each loss term's gradient norm at the bank)
    is written to OUT/loudness.json. The result is a memory run: `--encoder memory:OUT` in
    `pentachora generate`. Rerun the same command to resume.
    """
    from pentachora.cli.core import set_resume_dir
    from pentachora.recipes.memory_image import (
        memory_for_consumer,
        scene_caption_splits,
        train_memory_through_unet,
    )
    from pentachora.recipes.t2i import load_t2i_run

    check_run_folder(train.out)
    train.apply_threads()
    t2i = load_t2i_run(model)
    memory = memory_for_consumer(init, parse_overrides(set_), preset=preset, reinit=reinit or (),
                                 seed=train.seed, text_losses=text_losses)  # fmt: skip
    typer.echo(f"memory: {memory.num_parameters():,} parameters ({'from ' + str(init) if init else preset}); "
               f"consumer: the frozen UNet of {model} reading its {memory.config.consumer_output}")  # fmt: skip
    if train.steps == 0:
        return
    train_data, val_data, encoders = scene_caption_splits(t2i, memory.config, captions, val_captions)
    set_resume_dir(train.out)
    run_data = {"t2i": str(model), "init": str(init) if init else None, "preset": None if init else preset,
                "reinit": list(reinit or []), "text_losses": text_losses}  # fmt: skip
    run = train_memory_through_unet(
        memory, t2i, train_data, val_data, train.train_config(), encoder=encoders[0], run_data=run_data,
        **train.fit_kwargs(train_memory_through_unet),
    )  # fmt: skip
    ev, loud = run.evaluation, run.loudness["end"]["unit"]
    typer.echo(f"validation denoising loss {ev['image_val']:.4f} vs truncation {ev['image_val_native']:.4f} "
               f"(gain {ev['image_val_gain']:+.4f})")  # fmt: skip
    typer.echo(
        "loudness at the bank, every term at weight 1 (‖∂L/∂θ‖): "
        + ", ".join(f"{k} {v:.3g}" for k, v in loud.items())
    )
    if run.out_dir:
        typer.echo(f"memory → {run.out_dir}/final (pentachora generate ... --encoder memory:{run.out_dir})")


# ============================================================================================ generate
@app.command()
def generate(
    prompt: str = typer.Argument(
        ..., help="The prompt (any length; see --encoder for how long ones are read)."
    ),
    model: Path = typer.Option(
        ..., "--model", "-m", help="A trained mini-t2i run folder (or checkpoint folder)."
    ),
    output: Path = typer.Option(
        Path("generated.png"), "-o", "--output", help="Image (or grid, with -n > 1) to write."
    ),
    encoder: str = typer.Option("native", help=_ENCODER_HELP),
    weighting: str = typer.Option(
        "none",
        help="Prompt-weighting syntax: 'none' (plain text), 'a1111' ('(word:1.3)', '(word)', '[word]', BREAK) "
        "or 'compel' ('word++', '(words)1.3', BREAK); with a dialect, windows end at word boundaries.",
    ),
    n: int = typer.Option(1, "-n", "--num", min=1, max=64, help="Images (seeds seed .. seed+n−1)."),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed of the first image's noise."),
    steps: int = typer.Option(None, min=1, max=1000, help="Sampling steps (default: the model's)."),
    guidance: float = typer.Option(
        None, min=0.0, max=50.0, help="Classifier-free guidance scale (default: the model's)."
    ),
    sampler: Sampler = typer.Option(None, help="Sampler (default: the model's)."),
    scale: int = typer.Option(8, min=1, max=32, help="Upscale the written image by this factor (nearest)."),
    read: bool = typer.Option(True, help="Print the layout the world's cached reader sees in each image."),
) -> None:
    """Generate images from a prompt with a trained miniature T2I model.

    Example: pentachora generate "A big blue square sits in the centre." --model runs/t2i -o blue.png
    """
    import torch

    from pentachora.diagnostics.plots import save_image_grid
    from pentachora.recipes.t2i import generate_from_prompt

    check_output_file(output, "image", "--output")
    made = generate_from_prompt(model, prompt, encoder, weighting, n=n, seed=seed, steps=steps,
                                guidance=guidance, sampler=sampler, read=read)  # fmt: skip
    big = torch.nn.functional.interpolate(made.images, scale_factor=scale, mode="nearest")
    written = save_image_grid(big, output, nrow=None)
    length = f"{made.n_tokens} tokens, " if made.n_tokens is not None else ""
    typer.echo(
        f"{n} image(s), {length}encoder {encoder}"
        + (f", weighting {weighting}" if weighting != "none" else "")
        + f", positions {made.positions} → {written}"
    )
    if read and made.layouts is None:
        typer.echo(
            "  (no reader of this world is cached yet: `pentachora train t2i` trains one; skipping the reading)"
        )
    for i, found in enumerate(made.layouts or []):
        typer.echo(f"  seed {seed + i}: " + ("; ".join(found) if found else "(nothing drawn)"))


@app.command("read")
def read_image(
    image: Path = typer.Argument(
        ..., help="An image of the scene world (PNG/JPG), at the world's size or a multiple."
    ),
    world: WorldPreset = typer.Option("cpu", help="World preset of the image."),
) -> None:
    """Print the layout the world's reader sees in an image (per cell: empty, or colour + shape)."""
    import torch

    from pentachora.data.images import load_image_file
    from pentachora.data.scenes import SceneWorld, SceneWorldConfig
    from pentachora.errors import DataError
    from pentachora.recipes.t2i import default_reader

    check_input_file(image, "image")
    config = SceneWorldConfig.preset(world)
    x = load_image_file(image)
    size = config.image_size
    if x.shape[-1] != x.shape[-2] or x.shape[-1] % size:
        raise DataError(
            f"{image} is {x.shape[-1]}×{x.shape[-2]}; the {world} world reads squares of {size}·k px"
        )
    if x.shape[-1] != size:
        x = torch.nn.functional.avg_pool2d(x[None], x.shape[-1] // size)[0]
    w = SceneWorld(config)
    reading = default_reader(config).read(x[None])
    for cell, lab in enumerate(reading.labels[0].tolist()):
        conf = float(reading.confidence[0, cell])
        typer.echo(f"{w.cell_name(cell):>14}: {w.class_name(int(lab))} ({conf:.2f})")
