"""`pentachora train memory`, `pentachora encode`, `pentachora eval-memory`: long-prompt geometric memory.

``eval-memory`` is its own command rather than ``eval memory``: ``pentachora eval RUN`` already
evaluates autoencoder runs with a positional argument, and turning ``eval`` into a command group
would break that documented form.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from pentachora.cli.app import app, train_app
from pentachora.cli.options import (
    OptionSpec,
    TrainOptions,
    build_config,
    check_output_file,
    check_run_folder,
    option_group,
    parse_overrides,
    train_options,
)

TEXT_DATA_HELP = (
    "Text corpus: 'wiki' (embedded English Wikipedia excerpt from gensim's test data, CC BY-SA), "
    "'text:PATH' (documents separated by blank lines), 'jsonl:PATH[:FIELD]', 'hf:NAME[:SPLIT[:COLUMN]]'."
)

#: ``--mode`` of ``train memory``, spelled out so ``--help`` needs no torch (a test checks they equal
#: ``pentachora.memory.modes.TRAINING_MODES``); typer refuses any other value before the run.
MemoryMode = Literal["joint", "two-phase", "pooled"]

PRESET_HELP = (
    "minilm-tiny (CPU: d=192), minilm-tiny-long (the same with native-exact short prompts, the mean shift and "
    "contextual chunks: the diffusion setting), minilm (d=384), clip-l (SD 1.5), sdxl-bigg (SDXL; penultimate "
    "layer). Add --set sequence_mode=residual --set contextual_chunks=true --set mean_shift=0.75 to clip-l / "
    "sdxl-bigg for the diffusion setting."
)
MODE_HELP = (
    "joint (all losses from step 1), two-phase (pooled-only → reconstructor only → all with bank LR × "
    "--bank-lr-scale), pooled (bank + pooled output only)."
)
INIT_FROM_HELP = "Start from this trained memory model (run or checkpoint folder); two-phase then skips its pooled-only stage."

#: The text data options of the memory commands: which corpus, where its features are cached, how
#: much of it, and whether the frozen models may be downloaded.
TEXT_DATA_OPTIONS: dict[str, OptionSpec] = {
    "data": OptionSpec("wiki", str, TEXT_DATA_HELP),
    "cache_dir": OptionSpec(
        None, Path, "Feature-cache root (default $PENTACHORA_CACHE or ~/.cache/pentachora/memory-features)."
    ),
    "max_train_docs": OptionSpec(0, int, "Use only the first N training documents (0 = all).", min=0),
    "max_heldout_docs": OptionSpec(0, int, "Use only the first N held-out documents (0 = all).", min=0),
    "online": OptionSpec(False, bool, "Allow downloading encoder/teacher weights from the Hub."),
}


@dataclass
class TextDataOptions:
    """What a memory command reads (see :data:`TEXT_DATA_OPTIONS`)."""

    data: str = "wiki"
    cache_dir: Path | None = None
    max_train_docs: int = 0
    max_heldout_docs: int = 0
    online: bool = False

    def data_kwargs(self) -> dict[str, Any]:
        """These options as keyword arguments of ``recipes.memory.prepare_memory_data``."""
        return {
            "cache_root": self.cache_dir,
            "max_train_docs": self.max_train_docs or None,
            "max_heldout_docs": self.max_heldout_docs or None,
            "local_files_only": not self.online,
        }


text_data_options = option_group(TEXT_DATA_OPTIONS, TextDataOptions, "text", "Data")

METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("m_acc (pooled→teacher, batches of 32) ↑", "m_acc", "{:.3f}"),
    ("teacher R@1 (all held-out) ↑", "teacher_r1", "{:.3f}"),
    ("pooled cosine to teacher ↑", "pooled_cos", "{:.4f}"),
    ("tail R@1 (pooled) ↑", "tail_r1", "{:.3f}"),
    ("tail R@1 (sequence mean) ↑", "seq_tail_r1", "{:.3f}"),
    ("s_cos (first window, per position) ↑", "s_cos", "{:.4f}"),
    ("sequence-mean cosine to teacher ↑", "seq_teacher_cos", "{:.4f}"),
    ("CV of bank anchors", "cv", "{:.4f}"),
    ("CV target (target_cv(d))", "cv_target", "{:.4f}"),
    ("temperature", "temperature", "{:.4f}"),
    ("train wall time (s)", "train_wall_s", "{:.1f}"),
    ("NaN/inf steps skipped", "nonfinite_steps", "{:.0f}"),
)


def metrics_table(title: str, runs: dict[str, dict[str, float]]) -> Table:
    """A rich table with one column per method/run."""
    table = Table(title=title)
    table.add_column("metric")
    for name in runs:
        table.add_column(name, justify="right")
    for label, key, fmt in METRIC_ROWS:
        if not any(key in r for r in runs.values()):
            continue
        cells = []
        for r in runs.values():
            v = r.get(key)
            cells.append("—" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        table.add_row(label, *cells)
    return table


def _model_card(model) -> dict[str, Any]:
    c = model.config
    return {
        "model": model.model_type,
        "parameters": model.num_parameters(),
        "encoder": c.encoder,
        "teacher": c.teacher,
        "window": c.window,
        "max_tokens": c.max_tokens,
        "max_segments": c.max_segments,
        "memory": f"{c.n_memory_tokens} tokens, {c.n_anchors} anchors, d={c.dim}",
        "output": f"pooled ({c.teacher_dim},) + sequence ({c.seq_len}, {c.hidden_size})",
        "cv_target": round(model.cv_target, 5),
    }


# ---------------------------------------------------------------------------- train memory
@train_app.command("memory")
@train_options(
    exclude=("grad_clip_mode", "weight_decay"),
    batch_size={"default": 32, "min": 2, "help": "Documents per batch (InfoNCE negatives)."},
    lr={"default": 2e-3},
    warmup={"default": 30},
    seed={"help": "Seed (data order, init, per-step randomness)."},
    eval_every={"default": 50, "help": "Evaluate every N steps (0 = end only)."},
    save_every={"default": 200},
    bf16={"help": "bf16 autocast (fp32 is the default; the seed's bigG needed fp32)."},
    out={"help": "Run folder (default runs/memory-<preset>). Rerun to resume."},
)
@text_data_options()
def train_memory_cmd(
    train: TrainOptions,
    text: TextDataOptions,
    preset: str = typer.Option("minilm-tiny", help=PRESET_HELP),
    mode: MemoryMode = typer.Option("joint", help=MODE_HELP),
    bank_lr_scale: float = typer.Option(
        0.1, min=0.0, help="Bank-side LR multiplier in two-phase's last stage."
    ),
    init_from: Path = typer.Option(None, help=INIT_FROM_HELP),
    set_: list[str] = typer.Option(None, "--set", help="MemoryConfig override KEY=VALUE (repeatable)."),
    eval_docs: int = typer.Option(128, min=2, help="Held-out documents in the periodic evaluations."),
) -> None:
    """Train the long-prompt geometric memory (frozen encoder + memory bank + sequence reconstructor).

    Example: pentachora train memory --preset minilm-tiny --steps 600 --out runs/memory
    """
    from pentachora.cli.core import set_resume_dir
    from pentachora.errors import ConfigError
    from pentachora.recipes.memory import build_memory_model, prepare_memory_data, train_memory
    from pentachora.training import TrainingDiverged

    console = Console()
    train.apply_threads()
    config, init_model = _memory_config(preset, parse_overrides(set_), init_from)
    with frozen_weights(text.online):
        setup = build_memory_model(config, init_model, local_files_only=not text.online, seed=train.seed)
    model = setup.model
    _print_memory_card(console, model, preset)
    if train.steps == 0:
        console.print_json(json.dumps({**_model_card(model), "config": dataclasses.asdict(model.config)}))
        return
    out = train.out or Path("runs") / f"memory-{preset}"
    check_run_folder(out)
    cfg = train.train_config(out=out)
    with frozen_weights(text.online):
        mdata = prepare_memory_data(model.config, text.data, encoders=setup.encoders, **text.data_kwargs())
    console.print(
        f"data: {mdata.corpus.description} — training on {mdata.train.n_docs} documents, evaluating on "
        f"{mdata.heldout.n_docs} held-out ones ({mdata.corpus.licence.split(' — ')[0]})"
    )
    fit_kwargs = train.fit_kwargs(train_memory)
    set_resume_dir(out)
    try:
        run = train_memory(
            model, mdata, cfg, mode=mode, bank_lr_scale=bank_lr_scale, pretrained_bank=setup.pretrained,
            periodic_eval_docs=eval_docs, callbacks=train.diagnostics_callbacks(model), **fit_kwargs,
        )  # fmt: skip
    except TrainingDiverged as exc:
        raise ConfigError(f"{exc} (lower --lr or raise --warmup)") from exc
    _print_memory_run(console, run, preset, mode, out)


def _print_memory_card(console: Console, model, preset: str) -> None:
    card, config = _model_card(model), model.config
    console.print(
        f"[bold]GeometricMemory[{preset}][/bold]: {card['parameters']:,} trainable parameters; frozen "
        f"{config.encoder} (W={config.window}, layers {list(config.extraction_layers)}) → {card['memory']} → "
        f"{card['output']}; teacher {config.teacher} ({config.teacher_max_length} tokens)"
    )


@contextmanager
def frozen_weights(online: bool) -> Iterator[None]:
    """Frozen encoder/teacher weights that cannot be loaded become one ``CheckpointError`` line."""
    from pentachora.errors import CheckpointError

    try:
        yield
    except OSError as exc:
        hint = "" if online else " offline (pass --online to allow downloads)"
        raise CheckpointError(f"cannot load the frozen encoder/teacher{hint}: {exc}") from exc


def _memory_config(preset: str, overrides: dict[str, Any], init_from: Path | None):
    """The ``MemoryConfig`` to train: the preset's, or the ``--init-from`` model's (and that model),
    with ``--set`` applied."""
    from pentachora.errors import ConfigError
    from pentachora.memory.model import MemoryConfig
    from pentachora.recipes.memory import load_memory_model

    if init_from is None:
        return build_config(MemoryConfig, preset, overrides), None
    init_model = load_memory_model(init_from)
    try:
        return dataclasses.replace(init_model.config, **overrides), init_model
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"MemoryConfig: {exc}") from exc


def _print_memory_run(console: Console, run, preset: str, mode: str, out: Path) -> None:
    from pentachora.recipes.memory import save_memory_curves

    curves = save_memory_curves(run, out / "curves.png")
    console.print(
        metrics_table(
            f"held-out evaluation after {run.result.steps} steps ({mode})", {preset: run.evaluation}
        )
    )
    conv = run.convergence
    console.print(
        "convergence order: "
        + (" → ".join(conv.get("order", [])) or "n/a")
        + f" (CV lock at step {conv.get('cv_lock_step')}, m_acc climb {conv.get('m_acc_climb_step')}, "
        f"s_cos climb {conv.get('s_cos_climb_step')})"
    )
    if curves:
        console.print(f"curves: {curves}")
    console.print(f"run folder: {out}  (model: {out / 'final'}; metrics: {out / 'metrics.jsonl'})")


def read_text_file(path: Path) -> list[str]:
    """The documents of a ``--file``: missing, empty, binary or non-UTF-8 files are a ``DataError``."""
    from pentachora.cli.options import check_input_file
    from pentachora.data.text import load_text_file
    from pentachora.errors import DataError

    check_input_file(path, "--file")
    head = path.read_bytes()[:8192]
    if b"\x00" in head:
        raise DataError(f"--file {path} looks binary (it holds NUL bytes); give a UTF-8 text file")
    try:
        docs = load_text_file(path)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"--file {path} is not UTF-8 text (byte {exc.start}); give a UTF-8 text file"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"--file {path}: {exc}") from exc
    if not docs:
        raise DataError(f"--file {path} holds no text")
    return docs


# ---------------------------------------------------------------------------- encode
@app.command("encode")
def encode_cmd(
    texts: list[str] = typer.Argument(None, help="Text(s) to encode (or use --file)."),
    model_dir: Path = typer.Option(
        ..., "--model", "-m", help="Trained memory model (run or checkpoint folder)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the tensors (.safetensors)."),
    file: Path = typer.Option(
        None, "--file", "-f", help="Read texts from a UTF-8 text file (documents separated by blank lines)."
    ),
    overflow: str = typer.Option("truncate", help="Over max_tokens: 'truncate' (warn) or 'error'."),
    online: bool = typer.Option(False, help="Allow downloading the frozen encoder from the Hub."),
) -> None:
    """Encode long texts: pooled (B, P) + sequence (B, L, H) → safetensors (with n_segments, n_tokens).

    A model with contextual chunks also writes chunks (B, 77·k, H) and chunk_mask (B, 77·k): compel-shaped
    prompt_embeds whose windows read the whole prompt.

    Example: pentachora encode "a long prompt ..." --model runs/memory -o prompt.safetensors
    """
    from pentachora.errors import ConfigError, DataError
    from pentachora.recipes.memory import encode_to_file, load_memory_model

    if overflow not in ("truncate", "error"):
        raise ConfigError(f"--overflow must be 'truncate' or 'error', got {overflow!r}")
    check_output_file(output, "safetensors", "--output")
    console = Console()
    items = list(texts or []) + (read_text_file(file) if file is not None else [])
    if not items:
        raise DataError("give at least one text (argument or --file)")
    model = load_memory_model(model_dir)
    with frozen_weights(online):
        model.load_encoder(local_files_only=not online)
    enc = encode_to_file(model, items, output, on_overflow=overflow, metadata={"model": str(model_dir)})
    for i in range(len(items)):
        cut = " (truncated)" if bool(enc.truncated[i]) else ""
        console.print(
            f"text {i}: {int(enc.n_tokens[i])} tokens in {int(enc.n_segments[i])} segment(s){cut} → pooled "
            f"{tuple(enc.pooled.shape[1:])}, sequence {tuple(enc.sequence.shape[1:])}"
            + (f", chunks {tuple(enc.chunks.shape[1:])}" if enc.chunks is not None else "")
        )
    console.print(f"wrote {output}")


# ---------------------------------------------------------------------------- eval-memory
@app.command("eval-memory")
@text_data_options(include=("data", "cache_dir", "online"))
def eval_memory_cmd(
    text: TextDataOptions,
    run: Path = typer.Argument(
        ..., help="Memory run folder (final/ or latest checkpoint) or checkpoint folder."
    ),
    max_docs: int = typer.Option(0, min=0, help="Evaluate on the first N held-out documents (0 = all)."),
    baselines: bool = typer.Option(
        True, help="Also report the frozen-encoder baselines: truncation, window mean, concatenation."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the metrics as JSON here."),
) -> None:
    """Evaluate a trained memory model on held-out documents (m_acc, s_cos, pooled cosine, CV, tail R@1)."""
    from pentachora.recipes.memory import evaluate_memory_with_baselines, load_memory_model

    check_output_file(json_out, "json", "--json")
    console = Console()
    model = load_memory_model(run)
    with frozen_weights(text.online):
        results, mdata = evaluate_memory_with_baselines(
            model, text.data, cache_root=text.cache_dir, max_heldout_docs=max_docs or None,
            baselines=baselines, local_files_only=not text.online,
        )  # fmt: skip
    console.print(metrics_table(f"held-out evaluation of {run} ({mdata.heldout.n_docs} documents)", results))
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")
