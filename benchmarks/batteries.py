"""Battery benchmark: 256 batteries in one batched run, and the transfer claim of the battery container.

One process, one seed set. Sections:

1. **Bank.** Train K = 256 batteries (miniature PatchSVAEs, one regime each) as one batched module
   with the one Trainer; wall time; then, in the same process, train-step time of the batched bank
   against a Python loop over the same 256 batteries (one-battery banks, and standalone PatchSVAEs).
2. **Transfer.** On the same data (photo crops + the 16 noise types), seed and step budget:
   (a) the container with implanted batteries, (b) the same container randomly initialised,
   (c) a plain GeoVAE at the same patch and latent size. Every ``--eval-every`` steps: held-out
   PSNR / MSE (pixel space) on tiles of the held-out photos and MSE per noise tier (model space).
   Reported: the steps and training wall time each needs to reach (b)'s *final* value.
3. **Ablations** (a vs b each): K ∈ {16, 64} (256 is section 2), battery width, routing soft vs
   top-k — on a reduced budget when ``--ablation-steps`` is smaller.
4. **Linear export** of the trained (a): linear-FLOP fraction and max |export − model|.

Usage::

    python benchmarks/batteries.py                 # the full run that wrote results/batteries.*
    python benchmarks/batteries.py --quick         # minutes; a smoke test of the whole pipeline

The machine is shared (2 cores, other jobs running): absolute times are noisy; compare rows of
one run. Results: ``benchmarks/results/batteries.json`` and ``batteries.md`` (with this command).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pentachora.autoencoders.battery import BatteryBank, BatteryConfig
from pentachora.autoencoders.container import BatteryContainer
from pentachora.autoencoders.geovae import GeoVAE, GeoVAEConfig
from pentachora.data import (
    to_model_space,
)
from pentachora.data.regimes import RegimeSource, parse_regimes
from pentachora.recipes.batteries import (
    build_container,
    export_report,
    time_batched_vs_loop,
    train_battery_bank,
)
from pentachora.recipes.benchmarking import (
    PhotoEvalSet,
    TrainEvalSettings,
    machine_info,
    reach,
    strip_models,
    train_eval,
)

RESULTS = Path(__file__).parent / "results"
logger = logging.getLogger("benchmarks.batteries")


# ---------------------------------------------------------------------------------------- evaluation
METRICS = ("psnr", "mse", "tier0_mse", "tier1_mse", "tier2_mse", "tier3_mse", "tier4_mse")


def transfer_table(runs: dict[str, dict[str, Any]], reference: str) -> dict[str, dict[str, Any]]:
    """For every metric: (b)'s final value and each run's steps / seconds to reach it."""
    table: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        target = runs[reference]["final"][metric]
        row: dict[str, Any] = {"target": target}
        for name, run in runs.items():
            step, secs = reach(run["curve"], metric, target)
            row[name] = {"final": run["final"][metric], "steps": step, "train_s": secs}
        table[metric] = row
    return table


# ---------------------------------------------------------------------------------------- sections
def bank_regimes(k: int) -> str:
    """Photo-patch clusters for ¾ of the batteries, noise regimes for the rest (the training mix)."""
    noise = max(1, k // 4)
    return f"patch-clusters:{k - noise}+" + (f"noise-types:{noise}" if noise >= 16 else f"tiers:{noise}")


def train_bank(args: argparse.Namespace, k: int, hidden: int) -> tuple[BatteryBank, dict[str, Any]]:
    config = BatteryConfig(patch_size=args.patch_size, V=args.rows, D=args.dim, hidden=hidden)
    return train_battery_bank(
        bank_regimes(k),
        config,
        steps=args.bank_steps,
        batch_size=args.bank_batch,
        lr=args.bank_lr,
        seed=args.seed,
        progress=args.progress,
        cluster_patches=args.cluster_patches,
    )


def pair(
    args: argparse.Namespace,
    bank: BatteryBank,
    steps: int,
    evaluator: PhotoEvalSet,
    sectors: tuple[str, ...] = ("encoder", "decoder", "anchors"),
    with_b: bool = True,
    **overrides: Any,
) -> dict[str, dict[str, Any]]:
    """(a) implanted (``sectors``) and (b) random containers of the same shape, seed and budget."""
    out = {}
    for name, implant in (("a_implanted", True), ("b_random", False))[: 2 if with_b else 1]:
        model = build_container(
            bank, implant=implant, seed=args.seed, sectors=sectors, latent_dim=args.latent_dim, **overrides
        )
        logger.info("training %s (K=%d, %s)", name, model.config.n_batteries, overrides or "")
        out[name] = train_eval(
            model, TrainEvalSettings.from_namespace(args), steps, evaluator, align_fraction=0.1
        )
        out[name]["model"] = model
    return out


def plain_geovae(args: argparse.Namespace) -> GeoVAE:
    torch.manual_seed(args.seed)
    return GeoVAE(GeoVAEConfig.preset("tiny-12", patch_size=args.patch_size, latent_dim=args.latent_dim))


# ---------------------------------------------------------------------------------------- markdown
def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "not reached"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{nd}f}" if abs(v) >= 0.01 else f"{v:.2e}"
    return str(v)


def verdict(tr: dict[str, Any]) -> list[str]:
    """Generated reading of the transfer table: (a) against (b), and against the plain GeoVAE (c)."""
    runs, table = tr["runs"], tr["table"]
    if not {"a_implanted", "b_random", "c_geovae"} <= set(runs):
        return []
    a, b, c = runs["a_implanted"], runs["b_random"], runs["c_geovae"]
    ra, rc = table["psnr"]["a_implanted"], table["psnr"]["c_geovae"]
    ca = {int(x["step"]): x["psnr"] for x in a["curve"]}
    cc = {int(x["step"]): x["psnr"] for x in c["curve"]}
    lead = [st for st in sorted(ca) if st in cc and ca[st] > cc[st]]
    out = ["**Reading (generated from the numbers above).**", ""]
    out.append(
        f"* (a) vs (b): implanting reaches (b)'s final held-out PSNR after {_f(ra['steps'])} steps instead of "
        f"{table['psnr']['b_random']['steps']}, and ends {a['final']['psnr'] - b['final']['psnr']:+.2f} dB above it."
    )
    beats = a["final"]["psnr"] > c["final"]["psnr"]
    diff = a["final"]["psnr"] - c["final"]["psnr"]
    out.append(
        f"* (a) vs (c): the implanted container ends {abs(diff):.2f} dB {'above' if beats else 'below'} the plain "
        f"GeoVAE ({'it beats it' if beats else 'it does not beat it'}); it reaches (b)'s final PSNR in "
        f"{_f(ra['steps'])} steps ({_f(ra['train_s'], 0)} s) against {_f(rc['steps'])} steps "
        f"({_f(rc['train_s'], 0)} s) for (c); a step of (a) costs {a['s_per_step'] / c['s_per_step']:.1f}× a step "
        "of (c). "
        + (
            f"Per step, (a) is ahead of (c) at {len(lead)} of {len(ca)} evaluations "
            f"(steps {lead[0]}–{lead[-1]})."
            if lead
            else "(a) is never ahead of (c) at equal steps."
        )
    )
    out.append("")
    return out


def markdown(res: dict[str, Any], command: str) -> str:
    lines = ["# Battery container benchmark", "", f"Command: `{command}`", ""]
    m = res["machine"]
    lines += [
        f"Machine: {m['platform']}, {m['cpu_count']} CPU cores shared with other jobs (load average at start "
        f"{', '.join(f'{x:.1f}' for x in m.get('loadavg_at_start', []))}), torch {m['torch']}, "
        f"{m['torch_threads']} threads. Absolute times are noisy; compare rows of this run.",
        "",
    ]
    if "bank_timing" in res:
        b = res["bank"]
        t = res["bank_timing"]
        lines += [
            f"## 1. {b['n_batteries']} batteries in one batched run",
            "",
            f"Regimes `{b['regimes']}`; {b['params_per_battery']:,} parameters per battery "
            f"({b['params_total']:,} in the bank); {b['steps']} steps × {b['batch_size']} patches per battery.",
            "",
            "| quantity | value |",
            "|---|---|",
            f"| wall time, {b['n_batteries']} batteries, {b['steps']} steps (batched, one module) | "
            f"{b['train_wall_s']:.1f} s |",
            f"| k-means + regime setup | {b['source_build_s']:.1f} s |",
            f"| train step, batched bank (median) | {t['s_per_step']['batched']:.3f} s |",
            f"| train step, loop over {t['n_batteries']} one-battery banks | {t['s_per_step']['loop_bank1']:.3f} s |",
            f"| **speed-up batched vs loop (same code)** | **×{t['speedup_vs_loop_bank1']:.1f}** |",
        ]
        if "loop_patchsvae" in t["s_per_step"]:
            lines += [
                f"| train step, loop over {t['n_batteries']} standalone PatchSVAEs | "
                f"{t['s_per_step']['loop_patchsvae']:.3f} s |",
                f"| **speed-up batched vs PatchSVAE loop** | **×{t['speedup_vs_loop_patchsvae']:.1f}** |",
            ]
        lines += [
            f"| final MSE (unit-RMS patches), mean / median / worst | {b['final_mse_mean']:.4f} / "
            f"{b['final_mse_median']:.4f} / {b['final_mse_worst']:.4f} |",
            f"| CV of battery frames (target_cv({res['args']['dim']}) = {b['cv_target']:.3f}) | {b['cv_mean']:.3f} |",
            f"| effective rank of S (of {res['args']['dim']}) | {b['erank_mean']:.2f} |",
            "",
            "Per regime kind: "
            + "; ".join(
                f"{k} (n={v['n']}): MSE {v['final_mse_mean']:.4f}, CV {v['cv_mean']:.3f}"
                for k, v in b["by_kind"].items()
            ),
            "",
        ]
    if "transfer" in res:
        tr = res["transfer"]
        names = list(tr["runs"])
        lines += [
            "## 2. Transfer: steps to reach (b)'s final value",
            "",
            f"(a) container with {tr['K']} implanted batteries, (b) the same container randomly initialised, "
            f"(c) plain GeoVAE (`tiny-12` at patch {res['args']['patch_size']}, d={res['args']['latent_dim']}); "
            f"{tr['steps']} steps each, batch {res['args']['batch_size']} × {res['args']['image_size']}² "
            f"(noise fraction {res['args']['noise_fraction']}), evaluated every {res['args']['eval_early']} steps up to "
            f"step 50, then every {res['args']['eval_every']} (a run reaching a target before its first evaluation "
            "shows that first step). "
            "PSNR/MSE on held-out photo tiles in [0,1] pixels; tier MSE = mean MSE of that tier's noise types.",
            "",
            "| run | params | s/step | final PSNR | final MSE | NaN/inf steps |",
            "|---|---|---|---|---|---|",
        ]
        for n in names:
            r = tr["runs"][n]
            lines.append(
                f"| {n} | {r['params']:,} | {r['s_per_step']:.3f} | {r['final']['psnr']:.2f} | "
                f"{r['final']['mse']:.5f} | {r['nonfinite_steps']} |"
            )
        lines += [
            "",
            "| metric | target = final of (b) | " + " | ".join(f"{n}: steps (train s)" for n in names) + " |",
        ]
        lines.append("|---|---|" + "---|" * len(names))
        for metric, row in tr["table"].items():
            cells = []
            for n in names:
                c = row[n]
                cells.append(
                    "not reached (final " + _f(c["final"], 4) + ")"
                    if c["steps"] is None
                    else f"{c['steps']} ({c['train_s']:.0f} s)"
                )
            lines.append(f"| {metric} | {_f(row['target'], 4)} | " + " | ".join(cells) + " |")
        marks = [s for s in (10, 25, 50, 100, 200, tr["steps"]) if s <= tr["steps"]]
        by_step = {n: {int(c["step"]): c for c in tr["runs"][n]["curve"]} for n in names}
        lines += [
            "",
            "Held-out PSNR (dB) during training:",
            "",
            "| step | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for st in marks:
            cells = [_f(by_step[n][st]["psnr"]) if st in by_step[n] else "—" for n in names]
            lines.append(f"| {st} | " + " | ".join(cells) + " |")
        sp = tr.get("speedup")
        if sp:
            lines += ["", "Transfer speed-up (steps of b / steps of a to reach b's final): " + sp, ""]
        lines += verdict(tr)
    if res["ablations"]:
        lines += ["", "## 3. Ablations (a vs b at each setting)", ""]
        lines += [
            "| setting | K | h | routing | implanted sectors | steps | a: final PSNR | b: final PSNR | "
            "a: steps to b's final PSNR | a: noise MSE | b: noise MSE | a route entropy |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, ab in res["ablations"].items():
            a, bb = ab["runs"]["a_implanted"], ab["runs"]["b_random"]
            st, _ = reach(a["curve"], "psnr", bb["final"]["psnr"])
            lines.append(
                f"| {name} | {ab['K']} | {ab['hidden']} | {ab['routing']} | {'+'.join(ab.get('sectors', ['all']))} | "
                f"{ab['steps']} | {a['final']['psnr']:.2f} | "
                f"{bb['final']['psnr']:.2f} | {_f(st)} | {a['final']['noise_mse']:.4f} | {bb['final']['noise_mse']:.4f} | "
                f"{_f(a['last_scalars'].get('route_entropy'))} |"
            )
    e = res.get("export")
    if e:
        lines += [
            "",
            "## 4. Linear export of (a)",
            "",
            f"Linear maps {e['linear_maps_before_grouped']} → {e['linear_maps_after']} after folding "
            f"({e['linear_maps_before_per_battery']} counting every battery's maps). "
            f"FLOPs in linear maps: **{e['linear_fraction']:.2%}** (1 FLOP per element for non-matmul ops; "
            f"{e['linear_fraction_elementwise_x10']:.2%} if each costs 10). "
            f"Max |export − model| on held-out tiles: **{e['max_abs_diff']:.2e}** "
            f"(outputs up to {e['ref_abs_max']:.2f}). {e['flops_per_patch'] / 1e6:.2f} MFLOP per patch.",
            "",
            "| stage | linear | FLOPs / patch |",
            "|---|---|---|",
        ]
        for s in e["stages"]:
            lines.append(f"| {s['stage']} | {'✓' if s['linear'] else ''} | {s['flops_per_patch']:,.0f} |")
    lines += ["", f"Total benchmark wall time: {res['wall_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="Tiny budgets: a smoke test of every section.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: no oversubscription on a shared box; 0 = default)",
    )
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=8)
    p.add_argument("--latent-dim", type=int, default=15)
    p.add_argument("--K", type=int, default=256)
    p.add_argument("--bank-steps", type=int, default=400)
    p.add_argument("--bank-batch", type=int, default=32)
    p.add_argument("--bank-lr", type=float, default=3e-3)
    p.add_argument("--cluster-patches", type=int, default=32768)
    p.add_argument("--loop-steps", type=int, default=3)
    p.add_argument("--patchsvae-loop-steps", type=int, default=1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--ablation-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--noise-fraction", type=float, default=0.25)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=25, help="evaluate every N steps (after step 50)")
    p.add_argument("--eval-early", type=int, default=5, help="evaluate every N steps up to step 50")
    p.add_argument("--eval-tiles", type=int, default=32, help="held-out tiles per photo")
    p.add_argument("--eval-noise", type=int, default=4, help="noise images per type")
    p.add_argument(
        "--ablations",
        default="K16,K64,h4,h16,topk,enc,dec,anchors",
        help="comma list (empty: none): K<n>, h<n> (width at --ablation-K), topk, and implanted-sector "
        "subsets enc, dec, anchors, enc+dec (at --ablation-K; (b) shared with K<ablation-K>)",
    )
    p.add_argument("--ablation-K", type=int, default=64, help="K of the width and routing ablations")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="", help="results file stem (default batteries / batteries_quick)")
    p.add_argument(
        "--render", type=Path, default=None, help="only re-render the markdown of this results JSON"
    )
    p.add_argument(
        "--sections", default="bank,transfer,export,ablations", help="comma list of sections to run"
    )
    args = p.parse_args(argv)
    if args.render is not None:  # re-render the markdown of an existing results file
        res = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown(res, res["command"]) + "\n")
        return
    if args.quick:
        args.K, args.bank_steps, args.steps, args.ablation_steps = 32, 20, 12, 8
        args.eval_every, args.eval_early, args.eval_tiles, args.eval_noise = 4, 4, 4, 2
        args.cluster_patches = 4096
        args.ablation_K, args.loop_steps, args.ablations = 16, 1, "K16,h4,topk,dec"
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = "python benchmarks/batteries.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t_start = time.perf_counter()
    res: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    res["machine"] = machine_info()
    evaluator = PhotoEvalSet(args.image_size, args.eval_tiles, args.eval_noise, args.seed)

    sections = {x for x in args.sections.split(",") if x}
    unknown = sections - {"bank", "transfer", "export", "ablations"}
    if unknown:
        raise SystemExit(f"unknown section(s) {sorted(unknown)}")
    banks: dict[tuple[int, int], BatteryBank] = {}

    # 1. the bank of K batteries, and batched vs loop
    if sections & {"bank", "transfer", "export"}:
        logger.info("section 1: %d batteries (%s)", args.K, bank_regimes(args.K))
        bank, report = train_bank(args, args.K, args.hidden)
        banks[(args.K, args.hidden)] = bank
        res["bank"] = report
    if "bank" in sections:
        timing_source = RegimeSource(
            parse_regimes(bank_regimes(args.K)),
            args.bank_batch,
            patch_size=args.patch_size,
            seed=args.seed + 1,
            cluster_patches=args.cluster_patches,
        )
        res["bank_timing"] = time_batched_vs_loop(
            bank.config,
            timing_source,
            steps=args.loop_steps,
            seed=args.seed,
            patch_svae_steps=args.patchsvae_loop_steps,
            progress=args.progress,
        )
        logger.info("bank: %.1f s; speed-up %s", report["train_wall_s"], res["bank_timing"]["s_per_step"])

    # 2. transfer at K
    if sections & {"transfer", "export"}:
        logger.info("section 2: transfer at K=%d", args.K)
        runs = pair(args, bank, args.steps, evaluator)
        torch.manual_seed(args.seed)
        runs["c_geovae"] = train_eval(
            plain_geovae(args),
            TrainEvalSettings.from_namespace(args),
            args.steps,
            evaluator,
            align_fraction=0.1,
        )
        table = transfer_table(runs, "b_random")
        st_a, st_b = table["psnr"]["a_implanted"]["steps"], table["psnr"]["b_random"]["steps"]
        speed = (
            f"PSNR ×{st_b / st_a:.2f} ({st_a} vs {st_b} steps)"
            if st_a
            else f"none: (a) did not reach (b)'s final PSNR in {args.steps} steps"
        )
        res["transfer"] = {"K": args.K, "steps": args.steps, "runs": runs, "table": table, "speedup": speed}

        # 4. export of (a)
        x = to_model_space(evaluator.tiles01[:16])
        model_a: BatteryContainer = runs["a_implanted"]["model"]
        res["export"] = export_report(model_a, x)

    # 3. ablations
    res["ablations"] = {}
    wanted = [a for a in args.ablations.split(",") if a] if "ablations" in sections else []
    sector_names = {
        "enc": ("encoder",),
        "dec": ("decoder",),
        "anchors": ("anchors",),
        "enc+dec": ("encoder", "decoder"),
    }
    for name in wanted:
        sectors: tuple[str, ...] = ("encoder", "decoder", "anchors")
        if name.startswith("K"):
            k, h, overrides = int(name[1:]), args.hidden, {}
        elif name.startswith("h"):
            k, h, overrides = args.ablation_K, int(name[1:]), {}
        elif name == "topk":
            k, h, overrides = args.ablation_K, args.hidden, {"routing": "topk", "top_k": 8}
        elif name in sector_names:
            k, h, overrides, sectors = args.ablation_K, args.hidden, {}, sector_names[name]
        else:
            raise SystemExit(f"unknown ablation {name!r}")
        if (k, h) not in banks:
            logger.info("ablation %s: bank K=%d h=%d", name, k, h)
            banks[(k, h)], rep = train_bank(args, k, h)
            res.setdefault("ablation_banks", {})[f"K{k}_h{h}"] = rep
        # sector ablations share (b) with the K ablation of the same shape when it ran
        shared_b = (
            res["ablations"].get(f"K{k}", {}).get("runs", {}).get("b_random")
            if name in sector_names
            else None
        )
        ab = pair(args, banks[(k, h)], args.ablation_steps, evaluator, sectors, shared_b is None, **overrides)
        if shared_b is not None:
            ab["b_random"] = shared_b
        res["ablations"][name] = {
            "K": k,
            "hidden": h,
            "routing": overrides.get("routing", "soft"),
            "sectors": list(sectors),
            "steps": args.ablation_steps,
            "runs": ab,
        }
    res["wall_s"] = time.perf_counter() - t_start
    res["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or ("batteries_quick" if args.quick else "batteries")
    clean = strip_models(res)
    (args.out / f"{name}.json").write_text(json.dumps(clean, indent=2, default=float) + "\n")
    (args.out / f"{name}.md").write_text(markdown(clean, command) + "\n")
    logger.info("wrote %s/%s.{json,md} in %.1f min", args.out, name, res["wall_s"] / 60)


if __name__ == "__main__":
    main()
