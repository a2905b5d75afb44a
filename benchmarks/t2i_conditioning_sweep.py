"""Which conditioning lets the miniature T2I model learn *where* things go: a sweep for a lent GPU.

The first CPU trainings of :class:`pentachora.t2i.MiniT2I` learned colours but placed objects
independently of their position words. This sweep trains one model per variant of the conditioning
path — Fourier coordinate maps, the pooled-text time embedding, the token-conv adapter, min-SNR
weighting, learning rate — on one pool of short training captions, with the CPU recipe's settings
(batch 32, AdamW, warm-up 100, cosine), and every ``--every`` steps samples validation prose captions
(1–3 objects) and lets the world's reader score them. Only the validation split is used: the sweep
chose the defaults of ``pentachora train t2i``; the test split stays for the reported ceiling.

Variants run as parallel processes sharing the device (each with 3 CPU threads for its reader).
Meant for a GPU (5 variants × 4000 steps ≈ 5 minutes on one H100); on a CPU pass ``--variants``
with one name and fewer ``--steps``.

Usage::

    python benchmarks/t2i_conditioning_sweep.py                          # the five variants, 4000 steps
    python benchmarks/t2i_conditioning_sweep.py --variants A_8k F_lr2e3 G_adapter256k15
    python benchmarks/t2i_conditioning_sweep.py --collect DIR [DIR ...]  # tables from per-variant logs

Writes ``benchmarks/results/t2i_conditioning_sweep.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: Variant name → overrides of the ``cpu`` preset (``steps``, ``lr``, ``every`` are training settings).
VARIANTS: dict[str, dict[str, Any]] = {
    "A_default": {},
    "B_noadapter": {"text_adapter_kernel": 0},
    "C_old": {"text_adapter_kernel": 0, "pooled_text": False, "coord_frequencies": 0},
    "D_nopooled": {"pooled_text": False},
    "E_snr5": {"snr_gamma": 5.0},
    "A_8k": {"steps": 8000, "every": 2000},
    "F_lr2e3": {"lr": 2e-3},
    "G_adapter256k15": {"text_adapter_width": 256, "text_adapter_kernel": 15},
}
DEFAULT_VARIANTS = ("A_default", "B_noadapter", "C_old", "D_nopooled", "E_snr5")
METRICS = ("object_recall", "position_recall", "binding", "false_objects_per_image")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=sorted(VARIANTS))
    p.add_argument("--steps", type=int, default=4000, help="Steps per variant (unless the variant sets it).")
    p.add_argument("--every", type=int, default=1000, help="Evaluate every N steps.")
    p.add_argument("--pool", type=int, default=12_000, help="Training scenes (short captions).")
    p.add_argument("--val", type=int, default=96, help="Validation prose captions per evaluation.")
    p.add_argument(
        "--logs", type=Path, default=None, help="Folder for per-variant logs (default: a temp dir)."
    )
    p.add_argument("--collect", type=Path, nargs="+", default=None, help="Only tabulate existing logs.")
    p.add_argument("--note", default="", help="Provenance line written above the table (e.g. which device).")
    p.add_argument("--out", type=Path, default=RESULTS / "t2i_conditioning_sweep", help="Output stem.")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_pool(path: Path, n: int, n_val: int) -> None:
    """Render and encode the training pool and the validation captions once, for every variant."""
    from pentachora.data.scenes import SceneWorld
    from pentachora.recipes.t2i import (
        caption_set,
        encode_prompts,
        load_window_encoder,
        scene_pool,
        token_counter,
    )

    world, encoder = SceneWorld(), load_window_encoder()
    encoder.model.float().to(_device())
    pool = scene_pool(world, encoder, n, use_cache=False, progress=False)
    val = caption_set(world, "val", n_val, "prose", token_counter(encoder))
    from safetensors.torch import save_file

    tensors = {
        "images": pool.images, "states": pool.states, "layouts": pool.layouts,
        "val_states": encode_prompts(encoder, [c.text for _, c in val]),
        "val_layouts": torch.from_numpy(world.layouts([s for s, _ in val])),
        "null": encoder.native_sequence([""])[0][0],
    }  # fmt: skip
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)  # no pickle
    path.with_suffix(".captions.json").write_text(json.dumps(list(pool.captions)))


def load_pool(path: Path) -> dict[str, Any]:
    """The tensors of :func:`build_pool` (safetensors) and its captions (JSON)."""
    from safetensors.torch import load_file

    data: dict[str, Any] = load_file(path)
    data["captions"] = json.loads(path.with_suffix(".captions.json").read_text())
    return data


def train_variant(name: str, pool_path: Path, log_path: Path, steps: int, every: int) -> None:
    """Train one variant and append an evaluation record (JSON line) to ``log_path`` every ``every`` steps."""
    from pentachora.data.scenes import ScenePool, ScenePoolSource, SceneWorld
    from pentachora.recipes.t2i import EMAUpdate, default_reader, evaluate_prompts
    from pentachora.t2i import MiniT2I, MiniT2IConfig
    from pentachora.training import TrainConfig, Trainer, default_param_groups
    from pentachora.training.callbacks import Callback

    torch.set_num_threads(3)
    data = load_pool(pool_path)
    pool = ScenePool(data["images"], data["states"], data["layouts"], data["captions"])
    reader = default_reader(SceneWorld().config)
    overrides = dict(VARIANTS[name])
    steps, every = int(overrides.pop("steps", steps)), int(overrides.pop("every", every))
    lr = float(overrides.pop("lr", 1e-3))
    torch.manual_seed(0)
    model = MiniT2I(MiniT2IConfig.preset("cpu", **overrides))
    model.set_null_embedding(data["null"])
    t0 = time.time()

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        s = evaluate_prompts(m, reader, data["val_states"], data["val_layouts"].numpy(), seeds=(0,))[
            "summary"
        ]  # type: ignore[arg-type]
        return {k: round(float(s[k]), 4) for k in METRICS}

    class Log(Callback):
        def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
            record = {"variant": name, "step": step, "t": round(time.time() - t0, 1), **metrics}
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)

    tc = TrainConfig(
        steps=steps, batch_size=32, lr=lr, warmup_steps=100, weight_decay=0.01, eval_every=every,
        progress=False, tensorboard=False,
    )  # fmt: skip
    Trainer(
        model, tc, ScenePoolSource(pool, 32), eval_fn=evaluate, callbacks=[Log(), EMAUpdate()],
        param_groups=default_param_groups(model.unet, 0.01),
    ).fit()  # fmt: skip


def collect(folders: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """``variant → [evaluation records]`` from every ``*.jsonl`` in ``folders``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                out.setdefault(rec["variant"], []).append(rec)
    return out


def markdown(curves: dict[str, list[dict[str, Any]]], note: str = "") -> str:
    lines = [
        "# Which conditioning lets the miniature T2I model learn where things go",
        "",
        *([note, ""] if note else []),
        "Validation prose captions (1–3 objects, val split, 1 seed) sampled with the model's default sampler "
        "and read by the world's reader. Object recall = colour, shape and cell right; position recall = "
        "something in the described cell; binding = colour and shape right where something was placed.",
        "",
        "| variant | overrides | step | object recall | position recall | binding | false objects / image |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, recs in curves.items():
        over = ", ".join(f"{k}={v}" for k, v in VARIANTS.get(name, {}).items()) or "(defaults)"
        for r in sorted(recs, key=lambda r: r["step"]):
            lines.append(
                f"| {name} | {over} | {r['step']} | {r['object_recall']:.3f} | {r['position_recall']:.3f} | "
                f"{r['binding']:.3f} | {r['false_objects_per_image']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="t2i-sweep-"))
    if args.child:
        train_variant(
            args.child, logs / "pool.safetensors", logs / f"{args.child}.jsonl", args.steps, args.every
        )
        return {}
    from pentachora.recipes.reporting import run_meta, write_results

    if args.collect is None:
        logs.mkdir(parents=True, exist_ok=True)
        if not (logs / "pool.safetensors").is_file():
            build_pool(logs / "pool.safetensors", args.pool, args.val)
        base = [
            sys.executable,
            __file__,
            "--logs",
            str(logs),
            "--steps",
            str(args.steps),
            "--every",
            str(args.every),
        ]
        with contextlib.ExitStack() as stack:
            procs = [
                subprocess.Popen(
                    [*base, "--child", name],
                    stdout=stack.enter_context(open(logs / f"{name}.log", "w")),
                    stderr=subprocess.STDOUT,
                )
                for name in args.variants
            ]
            for proc in procs:
                proc.wait()
    curves = collect(args.collect or [logs])
    data = {
        "meta": run_meta("benchmarks/t2i_conditioning_sweep.py", argv), "note": args.note, "variants": VARIANTS,
        "curves": curves,
    }  # fmt: skip
    write_results(args.out, data, markdown(curves, args.note))
    return data


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
