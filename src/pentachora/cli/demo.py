"""`pentachora demo`: the main job on the embedded default data (the work is
:mod:`pentachora.recipes.demo`; this module parses and prints).

Trains the CPU-sized autoencoders side by side on the photographs shipped inside scikit-image,
evaluates them on held-out whole photos and on all 16 noise types, and writes a run folder with
metrics, a reconstruction grid and training curves. No downloads; a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from pentachora.cli.app import app
from pentachora.cli.options import MAX_SEED, OptionSpec, option_group

#: The contenders' names, spelled out so ``--help`` needs no torch (a test checks they equal
#: ``pentachora.recipes.demo.DEMO_MODELS``).
DEMO_MODEL_NAMES = ("geovae", "svae", "nosvd")
DEFAULT_MODELS = ("geovae", "svae")


#: The demo's options (declared once; ``DemoOptions`` carries them into the body).
DEMO_OPTIONS: dict[str, OptionSpec] = {
    "steps": OptionSpec(800, int, "Optimizer steps per model (≈2.5 min for both on 2 idle cores).", min=1),
    "models": OptionSpec(
        ",".join(DEFAULT_MODELS), str, f"Comma-separated contenders from: {', '.join(DEMO_MODEL_NAMES)}."
    ),
    "out": OptionSpec(
        Path("runs/demo"), Path, "Run folder (one sub-folder per model).", flags=("--out", "-o")
    ),
    "batch_size": OptionSpec(16, int, "Images per batch.", min=1),
    "image_size": OptionSpec(64, int, "Training crop and evaluation tile side in pixels.", min=8, max=4096),
    "lr": OptionSpec(2e-3, float, "Peak learning rate."),
    "seed": OptionSpec(0, int, "Seed (same data and budget for every model).", min=0, max=MAX_SEED),
    "fresh": OptionSpec(
        True,
        bool,
        "Start fresh (replace the demo's earlier runs in --out; a folder the demo did not write is refused) "
        "instead of resuming.",
    ),
    "eval_tiles": OptionSpec(0, int, "Cap on evaluation tiles per held-out photo (0 = all).", min=0),
    "noise_per_type": OptionSpec(16, int, "Evaluation images per noise type.", min=1),
    "results": OptionSpec(
        None,
        Path,
        "Also write the printed comparison as a results file pair STEM.json + STEM.md (with this command).",
    ),
}


@dataclass
class DemoOptions:
    """What ``pentachora demo`` was asked for (see :data:`DEMO_OPTIONS`)."""

    steps: int = 800
    models: str = ",".join(DEFAULT_MODELS)
    out: Path = Path("runs/demo")
    batch_size: int = 16
    image_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    fresh: bool = True
    eval_tiles: int = 0
    noise_per_type: int = 16
    results: Path | None = None

    def names(self) -> list[str]:
        """The contenders, checked against :data:`DEMO_MODEL_NAMES`."""
        from pentachora.errors import ConfigError

        names = [m.strip() for m in self.models.split(",") if m.strip()]
        unknown = [m for m in names if m not in DEMO_MODEL_NAMES]
        if unknown or not names:
            raise ConfigError(f"--models: unknown model(s) {unknown}; choose from {list(DEMO_MODEL_NAMES)}")
        return names

    def train_config(self, name: str):
        """The ``TrainConfig`` of contender ``name`` (validated here, before the disk is touched)."""
        from pentachora.cli.options import TrainOptions

        return TrainOptions(
            steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup=min(50, self.steps // 10),
            grad_clip=1.0, seed=self.seed, eval_every=max(self.steps // 4, 1), save_every=self.steps,
            out=self.out / name,
        ).train_config()  # fmt: skip

    def check_results(self) -> None:
        """Refuse a ``--results`` stem whose files cannot be written, before the demo trains."""
        from pentachora.cli.options import check_output_file

        if self.results is not None:
            check_output_file(self.results.with_suffix(".json"), "json", "--results")

    def results_files(self) -> tuple[str, ...]:
        """The ``--results`` pair's names when it is written inside ``--out`` (the demo's own files)."""
        stem = self.results.resolve() if self.results is not None else None
        return (stem.name + ".json", stem.name + ".md") if stem and stem.parent == self.out.resolve() else ()

    def command(self) -> str:
        """The command line that reproduces this run (recorded in the results file)."""
        return (
            f"pentachora demo --steps {self.steps} --models {self.models} --out {self.out} --batch-size "
            f"{self.batch_size} --image-size {self.image_size} --lr {self.lr:g} --seed {self.seed} --eval-tiles "
            f"{self.eval_tiles} --noise-per-type {self.noise_per_type} --results {self.results}"
        )


demo_options = option_group(DEMO_OPTIONS, DemoOptions, "opts", "Demo")


@app.command()
@demo_options()
def demo(opts: DemoOptions) -> None:
    """Train and compare the autoencoders on the embedded photos (CPU, a few minutes, no downloads).

    Prints a side-by-side table (held-out PSNR/SSIM in [0,1] pixel space, per-noise-type MSE, CV,
    effective rank, NaN/inf steps, true latent floats per patch) and writes OUT/summary.json,
    OUT/reconstructions.png and OUT/curves.png.
    """
    from pentachora.cli.options import check_run_folder, parse_data
    from pentachora.data.noise import NOISE_TYPES
    from pentachora.recipes import build_eval_data
    from pentachora.recipes.demo import check_demo_folder, check_demo_image_size

    check_run_folder(opts.out)  # before anything is trained or deleted: never the current directory
    names = opts.names()
    check_demo_image_size(names, opts.image_size)
    opts.check_results()
    configs = {name: opts.train_config(name) for name in names}  # every option is checked before the disk
    check_demo_folder(opts.out, opts.results_files())
    t_start, console, spec = time.perf_counter(), Console(), parse_data("images")
    size = opts.image_size
    eval_data = build_eval_data(spec, size, NOISE_TYPES, n_noise_per_type=opts.noise_per_type,
                                max_tiles_per_image=opts.eval_tiles or None)  # fmt: skip
    console.print(
        f"[bold]pentachora demo[/bold]: {len(names)} model(s) × {opts.steps} steps on the embedded photos "
        f"(train: 7 photos, held out: chelsea + coffee → {eval_data.tiles01.shape[0]} tiles of {size}²), "
        f"evaluated on held-out tiles and all {len(NOISE_TYPES)} noise types."
    )
    runs = [
        _train_one(console, name, configs[name], spec, eval_data, size, opts.seed, opts.fresh)
        for name in names
    ]
    summary = {
        "steps": opts.steps, "batch_size": opts.batch_size, "image_size": size, "seed": opts.seed,
        "data": "images (scikit-image sample photos; held out: chelsea, coffee)",
        "wall_time_s": time.perf_counter() - t_start, "models": {r.label: r.result for r in runs},
    }  # fmt: skip
    _report(console, opts.out, runs, summary, eval_data, opts.results, opts.command())


def _train_one(console: Console, name: str, config, spec, eval_data, image_size: int, seed: int, fresh: bool):
    """Train one contender, printing its size and its held-out PSNR curve."""
    from pentachora.cli.autoencoders import describe_model
    from pentachora.cli.core import set_resume_dir
    from pentachora.recipes.demo import train_demo_model

    set_resume_dir(Path(config.out_dir))
    done = train_demo_model(
        name, config, spec, eval_data, image_size, seed, fresh=fresh, describe=describe_model,
        on_built=lambda label, model: console.print(f"→ {label}: {model.num_parameters():,} parameters"),
    )  # fmt: skip
    trace = " → ".join(f"{v:.2f}" for _, v in done.psnr_curve)
    before = done.result["psnr_heldout_before_training"]
    console.print(
        f"  held-out PSNR during training (dB): {float('nan') if before is None else before:.2f} (init) → {trace}"
    )
    return done


def _report(console: Console, out: Path, runs, summary: dict, eval_data, results_stem, command: str) -> None:
    """The comparison table, the pictures, summary.json and (with --results) the results pair."""
    from pentachora.cli.autoencoders import summary_table, write_pictures
    from pentachora.data.noise import NOISE_TYPES
    from pentachora.recipes.demo import write_demo_summary

    title = f"pentachora demo: {summary['steps']} steps each, same data and seed"
    console.print(summary_table(title, summary["models"], NOISE_TYPES))
    pictures = write_pictures(out, {r.label: r.run for r in runs}, eval_data.tiles01)
    write_demo_summary(out, summary, results_stem, command)
    if results_stem is not None:
        console.print(f"results: {results_stem.with_suffix('.md')}")
    for kind, path in pictures.items():
        console.print(f"{kind}: {path}")
    console.print(f"summary: {out / 'summary.json'}   ({summary['wall_time_s']:.0f} s in total)")
