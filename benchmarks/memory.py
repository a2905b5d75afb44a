"""Long prompts through a 77-token encoder: what people do today vs the geometric memory.

Same held-out documents (whole Wikipedia articles never trained on), one process, four contenders
built on the same frozen student (all-MiniLM-L6-v2 read through a 77-token window):

(a) ``truncate``     — the first window only (what a plain pipeline does).
(b) ``window_mean``  — the mean of the per-window pooled outputs.
(c) ``concat``       — compel / AUTOMATIC1111 / diffusers-lpw style: every 75-token chunk encoded alone,
                       the sequences concatenated to (B, 77·k, H); its vector is the token mean of the
                       concatenation, its first 77 positions are the native sequence (s_cos = 1 by
                       construction — the trap of docs/findings.md).
(d) ``memory``       — the trained GeometricMemory: pooled (P,) + reconstructed sequence (77, H).

Metrics: m_acc (pooled → teacher, in batches of 32), teacher R@1 among all held-out documents, mean
cosine to the teacher (MiniLM over its full 512-token context), tail R@1 (retrieve the teacher
embedding of each document's text beyond the first window, among all held-out documents), s_cos, the
anchors' CV; throughput (documents/s from raw text, as a ratio to (c) measured in the same run) and
peak resident memory, each contender in a fresh subprocess.

Usage::

    python benchmarks/memory.py                      # trains minilm-tiny (500 steps) then benchmarks
    python benchmarks/memory.py --model runs/memory  # benchmark an already-trained run

Writes ``benchmarks/results/memory.json`` and ``benchmarks/results/memory.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("truncate", "window_mean", "concat", "memory")
LABELS = {
    "truncate": "(a) truncate to first window",
    "window_mean": "(b) mean of per-window pooled",
    "concat": "(c) concat per-chunk sequences (compel)",
    "memory": "(d) geometric memory",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", type=Path, default=None, help="trained memory run/checkpoint (default: train one)"
    )
    p.add_argument("--preset", default="minilm-tiny", help="preset when training here")
    p.add_argument("--steps", type=int, default=500, help="training steps when training here")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--mode", default="joint", help="training mode when training here")
    p.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench-memory", help="where to train")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature-cache root")
    p.add_argument(
        "--throughput-docs", type=int, default=64, help="held-out docs encoded from raw text per method"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in every measurement (1 is fastest on a busy 2-core machine)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory")
    p.add_argument("--no-throughput", action="store_true", help="skip the subprocess timings")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also evaluate another trained memory run (quality only; same architecture ⇒ same throughput)",
    )
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- throughput (subprocess)
def _throughput_worker(
    method: str, model_dir: str, texts: list[str], threads: int, commands, results
) -> None:
    """Load once, then time one pass over ``texts`` per ``"run"`` command (``"stop"`` reports memory)."""
    torch.set_num_threads(threads)
    from pentachora.memory.cache import segment_features
    from pentachora.recipes.memory import load_encoders, load_memory_model

    model = load_memory_model(model_dir)
    encoder, _ = load_encoders(model.config)
    model.attach_encoder(encoder)
    seg = model.segmenter(encoder)
    batch = 16

    def run_once(docs: list[str]) -> int:
        ids, cut = seg.prepare_ids(docs)
        if method == "truncate":
            windows = [encoder.with_specials(t[: encoder.content_window]) for t in ids]
            input_ids, mask = encoder.pad_windows(windows)
            out = encoder.encode_windows(input_ids, mask)
            _ = out.pooled, out.target
            return len(docs)
        if method == "memory":
            enc = model.encode(docs, encoder=encoder, batch_size=batch)
            _ = enc.pooled, enc.sequence
            return len(docs)
        sb = seg.from_ids(ids, cut)
        feats = segment_features(encoder, sb)
        if method == "window_mean":
            m = sb.segment_mask.unsqueeze(-1).float()
            _ = (feats["pooled"] * m).sum(1) / m.sum(1)
        else:  # concat: (B, W·k, H)
            b, s, w, h = feats["target"].shape
            _ = feats["target"].reshape(b, s * w, h)
        return len(docs)

    with torch.no_grad():
        run_once(texts[:4])  # warm-up
        results.put("ready")
        with _RssSampler() as sampler:
            while commands.get() == "run":
                t0 = time.perf_counter()
                n = sum(run_once(texts[i : i + batch]) for i in range(0, len(texts), batch))
                results.put({"docs": n, "seconds": time.perf_counter() - t0})
    results.put(
        {
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mib": sampler.start_mib,
            "peak_rss_increase_mib": sampler.peak_mib - sampler.start_mib,
        }
    )


class _RssSampler:
    """Samples this process's resident set size every 2 ms in a thread (Linux ``/proc/self/statm``)."""

    def __init__(self, interval: float = 0.002) -> None:
        import os
        import threading

        self.interval = interval
        self.page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20
        self.start_mib = self.peak_mib = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page_mib

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self.start_mib = self.peak_mib = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, self._rss())


def measure_throughput(
    model_dir: Path, texts: list[str], threads: int, rounds: int = 3
) -> dict[str, dict[str, float]]:
    """Every method in its own process (loaded once), timed in interleaved rounds (one pass per method
    per round) so that all of them see the same load on a shared machine; the median pass counts."""
    import statistics

    ctx = mp.get_context("spawn")
    workers = {}
    for method in METHODS:
        commands, results = ctx.Queue(), ctx.Queue()
        proc = ctx.Process(
            target=_throughput_worker, args=(method, str(model_dir), texts, threads, commands, results)
        )
        proc.start()
        workers[method] = (proc, commands, results)
    for _, _, results in workers.values():
        if results.get() != "ready":
            raise RuntimeError("a throughput worker failed to start")
    passes: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(rounds):
        for method, (_, commands, results) in workers.items():
            commands.put("run")
            res = results.get()
            passes[method].append(res["seconds"])
            n_docs = res["docs"]
    out: dict[str, dict[str, float]] = {}
    for method, (proc, commands, results) in workers.items():
        commands.put("stop")
        memory = results.get()
        proc.join()
        seconds = statistics.median(passes[method])
        out[method] = {
            "docs": n_docs,
            "seconds": seconds,
            "docs_per_s": n_docs / seconds,
            "passes_s": passes[method],
            **memory,
        }
        logging.info(
            "throughput %s: %.2f docs/s (passes %s s), +%.0f MiB RSS while encoding",
            method,
            out[method]["docs_per_s"],
            ", ".join(f"{p:.1f}" for p in passes[method]),
            out[method]["peak_rss_increase_mib"],
        )
    ref = out["concat"]["docs_per_s"]
    for r in out.values():
        r["ratio_to_concat"] = r["docs_per_s"] / ref
    return out


# ----------------------------------------------------------------------------- run folders
def run_folder_training(run_dir: Path) -> dict:
    """Steps, wall time, mode, convergence order and the equivalent CLI command of a training run."""
    from pentachora.memory import MemoryConfig

    run_dir = Path(run_dir)
    info: dict = {"dir": str(run_dir)}
    files = {
        name: run_dir / f"{name}.json"
        for name in ("eval", "convergence", "train_config", "data", "model_config")
    }
    loaded = {k: json.loads(p.read_text()) for k, p in files.items() if p.is_file()}
    ev, tc = loaded.get("eval", {}), loaded.get("train_config", {})
    info.update(
        steps=ev.get("train_steps"),
        wall_s=ev.get("train_wall_s"),
        nonfinite_steps=ev.get("nonfinite_steps"),
        mode=loaded.get("data", {}).get("mode"),
        convergence={k: v for k, v in loaded.get("convergence", {}).items() if k != "history"},
    )
    cfg = loaded.get("model_config", {}).get("config")
    if tc and cfg:
        base = vars(MemoryConfig.preset("minilm-tiny"))
        resolved = ("hidden_size", "teacher_dim", "max_segments")
        sets = [
            f"--set {k}={json.dumps(v, separators=(',', ':'))}"
            for k, v in cfg.items()
            if k not in resolved and (list(base[k]) if isinstance(base[k], tuple) else base[k]) != v
        ]
        info["command"] = " ".join(
            [
                "pentachora train memory --preset minilm-tiny",
                f"--steps {tc['steps']} --batch-size {tc['batch_size']} --lr {tc['lr']:g}",
                f"--mode {info['mode']}" if info.get("mode") not in (None, "joint") else "",
                *sets,
                f"--seed {tc['seed']} --threads 1 --out {run_dir}",
            ]
        ).replace("  ", " ")
    return info


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from pentachora.memory import GeometricMemory, MemoryConfig
    from pentachora.recipes.memory import (
        baseline_outputs,
        evaluate_memory,
        fit_student_to_teacher,
        load_memory_model,
        prepare_memory_data,
        resolve_config,
        retrieval_metrics,
        same_space,
        train_memory,
    )
    from pentachora.training import TrainConfig

    t_start = time.perf_counter()
    training: dict = {}
    if args.model is not None:
        model = load_memory_model(args.model)
        config, student, teacher = resolve_config(model.config)
        model_dir = args.model
        data = prepare_memory_data(
            config, "wiki", cache_root=args.cache_dir, encoders=(student, teacher),
            include_train=not same_space(student, teacher),
        )  # fmt: skip
        training = run_folder_training(args.model)
    else:
        config, student, teacher = resolve_config(MemoryConfig.preset(args.preset))
        data = prepare_memory_data(config, "wiki", cache_root=args.cache_dir, encoders=(student, teacher))
        torch.manual_seed(0)
        model = GeometricMemory(config)
        cfg = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=30,
            eval_every=max(1, args.steps // 12),
            save_every=0,
            out_dir=str(args.run_dir),
            log_every=10,
        )
        run = train_memory(model, data, cfg, mode=args.mode, periodic_eval_docs=128)
        model = run.model
        model_dir = args.run_dir
        training = run_folder_training(args.run_dir)
    seq_map = fit_student_to_teacher(data.train, same_space(student, teacher))
    held = data.heldout
    quality: dict[str, dict[str, float]] = {}
    for name, outs in baseline_outputs(held, seq_map).items():
        quality[name] = retrieval_metrics(outs["pooled"], held, outs["seq_mean"])
        quality[name]["s_cos"] = 1.0 if name in ("truncate", "concat") else math.nan
        quality[name]["sequence_positions"] = outs["seq_len"]
    quality["memory"] = evaluate_memory(model, held, seq_map=seq_map)
    quality["memory"]["sequence_positions"] = float(model.config.seq_len)
    variants: dict[str, dict] = {}
    for spec in args.variant:
        label, _, path = spec.partition("=")
        vmodel = load_memory_model(path)
        variants[label] = {
            "dir": path,
            "training": run_folder_training(Path(path)),
            "config_changes": {k: v for k, v in vars(vmodel.config).items() if getattr(model.config, k) != v},
            **evaluate_memory(vmodel, held, seq_map=seq_map),
            "sequence_positions": float(vmodel.config.seq_len),
        }
    throughput = {}
    if not args.no_throughput:
        texts = data.corpus.heldout[: args.throughput_docs]
        throughput = measure_throughput(Path(model_dir), texts, args.threads)
    q = quality
    goals = {
        "memory_beats_window_mean_on_teacher_cosine": q["memory"]["pooled_cos"]
        > q["window_mean"]["pooled_cos"],
        "memory_beats_window_mean_on_teacher_r1": q["memory"]["teacher_r1"] > q["window_mean"]["teacher_r1"],
        "memory_tail_r1_at_least_twice_truncation": q["memory"]["tail_r1"] >= 2 * q["truncate"]["tail_r1"],
        "memory_s_cos_at_least_0.73": q["memory"]["s_cos"] >= 0.73,
    }
    command = "python benchmarks/memory.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    result = {
        "command": command.strip(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": args.threads,
            "device": "cpu",
        },
        "data": {
            "corpus": data.corpus.description,
            "licence": data.corpus.licence,
            "train_documents": len(data.corpus.train),
            "heldout_documents": held.n_docs,
            "heldout_with_tail": int(held.tensors["has_tail"].sum()),
            "heldout_mean_segments": float(held.tensors["seg_counts"].float().mean()),
            "throughput_documents": args.throughput_docs if throughput else 0,
        },
        "model": {
            "dir": str(model_dir),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(model.config).items()},
            "trainable_parameters": model.num_parameters(),
        },
        "training": training,
        "quality": quality,
        "variants": variants,
        "throughput": throughput,
        "goals": goals,
        "benchmark_wall_s": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    args.out.with_suffix(".md").write_text(render_markdown(result))
    print(render_markdown(result))
    return result


def _fmt(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return fmt.format(v)


def render_markdown(r: dict) -> str:
    q, t = dict(r["quality"]), r["throughput"]
    methods = list(METHODS)
    labels = dict(LABELS)
    for name, v in r.get("variants", {}).items():
        q[name] = v
        methods.append(name)
        changes = ", ".join(f"{k}={val}" for k, val in v.get("config_changes", {}).items())
        labels[name] = f"(d′) {name}" + (f" ({changes})" if changes else "")
    rows = [
        ("teacher cosine (pooled) ↑", "pooled_cos", "{:.4f}"),
        ("teacher R@1 (all held-out) ↑", "teacher_r1", "{:.3f}"),
        ("m_acc (batches of 32) ↑", "m_acc", "{:.3f}"),
        ("tail R@1 (pooled) ↑", "tail_r1", "{:.3f}"),
        ("tail R@1 (sequence mean) ↑", "seq_tail_r1", "{:.3f}"),
        ("s_cos vs native first window ↑", "s_cos", "{:.3f}"),
        ("sequence-mean cosine to teacher ↑", "seq_teacher_cos", "{:.4f}"),
        ("sequence positions (mean)", "sequence_positions", "{:.0f}"),
        ("CV of bank anchors (target)", "cv", "{:.4f}"),
    ]
    lines = [
        "# Long prompts through a 77-token encoder (`benchmarks/memory.py`)",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Data: {r['data']['corpus']}. Held-out: {r['data']['heldout_documents']} documents "
        f"({r['data']['heldout_with_tail']} with a tail beyond the first window; "
        f"{r['data']['heldout_mean_segments']:.2f} windows on average). {r['data']['licence']}",
        "",
        f"Student: all-MiniLM-L6-v2 through a 77-token window; teacher: the same model over its full 512-token "
        f"context, mean pooled. Memory model: {r['model']['trainable_parameters']:,} trainable parameters "
        f"(d={r['model']['config']['dim']}, {r['model']['config']['n_memory_tokens']} memory tokens, "
        f"{r['model']['config']['n_anchors']} anchors).",
        "",
        "| metric | " + " | ".join(labels[m] for m in methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for label, key, fmt in rows:
        cells = []
        for m in methods:
            v = q[m].get(key)
            if key == "cv" and "cv_target" in q[m]:
                cells.append(f"{v:.4f} ({q[m]['cv_target']:.4f})")
            else:
                cells.append(_fmt(v, fmt))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if t:
        t = {**t, **{m: t["memory"] for m in methods if m not in t}}  # variants share (d)'s architecture
        lines.append(
            "| docs/s from raw text (ratio to (c)) | "
            + " | ".join(f"{t[m]['docs_per_s']:.2f} ({t[m]['ratio_to_concat']:.2f}×)" for m in methods)
            + " |"
        )
        lines.append(
            "| peak RSS while encoding, above the loaded process (MiB) | "
            + " | ".join(f"+{t[m]['peak_rss_increase_mib']:.0f}" for m in methods)
            + " |"
        )
        lines.append(
            "| peak RSS of the whole process (MiB) | "
            + " | ".join(f"{t[m]['peak_rss_mib']:.0f}" for m in methods)
            + " |"
        )
    lines += [
        "",
        "Reading the table. The default teacher is the student model itself over 512 tokens, mean pooled — so "
        "(b) and (c), which average the same model's per-window outputs, are near-oracles of the teacher; "
        "(c)'s token-weighted mean is closest to the teacher's token mean. The memory model has to learn that "
        "function from 1,979 training documents, and its held-out teacher cosine stays well below theirs "
        "(training documents reach ≈0.87; held-out articles are unseen topics). Retrieval (m_acc, R@1) "
        "saturates for (b), (c) and (d). s_cos of (a) and (c) is 1 by construction (their first 77 positions "
        "are the native sequence) and says nothing about the rest of the text; *tail R@1 (sequence mean)* "
        "asks whether the 77-position sequence itself carries the text beyond the first window: with the "
        "seed's loss (d) it barely does (≈ truncation); the sequence-mean loss of (d′) makes it carry the "
        "tail at a cost in s_cos. m_acc is measured on consecutive held-out documents (runs of the same "
        "article), harder than random training batches.",
    ]
    lines += ["", "Goals (from issue 6):", ""]
    for goal, ok in r["goals"].items():
        lines.append(f"- {goal.replace('_', ' ')}: **{'met' if ok else 'NOT met'}**")
    trainings = {
        "(d)": r["training"],
        **{f"(d′) {k}": v.get("training", {}) for k, v in r.get("variants", {}).items()},
    }
    lines += ["", "Training (CPU, 1 thread, shared 2-core machine):", ""]
    for name, tr in trainings.items():
        if not tr or tr.get("wall_s") is None:
            continue
        conv = tr.get("convergence", {})
        lines.append(
            f"- {name}: {tr.get('steps'):.0f} steps ({tr.get('mode')}) in {tr['wall_s']:.0f} s, "
            f"{tr.get('nonfinite_steps') or 0:.0f} non-finite steps; convergence order "
            f"{' → '.join(conv.get('order', [])) or 'n/a'} (CV lock step {conv.get('cv_lock_step')}, m_acc climb "
            f"{conv.get('m_acc_climb_step')}, s_cos climb {conv.get('s_cos_climb_step')}). "
            f"Command: `{tr.get('command', '?')}`"
        )
    lines += [
        "",
        f"Machine: {r['machine']['platform']}, torch {r['machine']['torch']}, {r['machine']['threads']} threads, CPU. "
        "Throughput is measured from raw text (tokenisation + frozen encoder + method) on the first "
        f"{r['data']['throughput_documents']} held-out documents in batches of 16; every method runs in its own "
        "process (loaded once) and the methods are timed in 3 interleaved rounds (median pass), so they share "
        "the machine's load; only the ratios are meaningful on this shared machine. Peak RSS above the loaded "
        "process is sampled every 2 ms during the timed passes. (b) and (c) do the same encoder work, so their "
        "ratio shows the remaining noise.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
