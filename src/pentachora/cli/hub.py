"""`pentachora train hub`, `pentachora eval-hub RUN`, `pentachora align A B -o DIR`: the Conduit hub.

Every user error (a bad expert, an expert not available offline, unequal pair counts, NaN/inf
features, a width that does not match a saved aligner) is reported in one line with exit code 2, and
is detected before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import typer
from rich.console import Console
from rich.table import Table

from pentachora.cli.app import app, train_app
from pentachora.cli.options import OptionSpec, TrainOptions, check_run_folder, option_group, train_options

#: ``ConduitHubConfig.readout`` values, spelled out so the CLI starts without importing torch (a test
#: checks they equal ``pentachora.hub.model.READOUTS``); typer refuses any other value before the run.
HubReadout = Literal["anchored", "fusion"]
HUB_READOUT_CHOICES: tuple[str, ...] = get_args(HubReadout)

EXPERTS_HELP = (
    "Comma-separated experts: minilm (embedded all-MiniLM-L6-v2, 384-d), lsa[:DIM] (TF-IDF+SVD fitted on "
    "the training split, default 256), w2v[:DIM] (Word2Vec trained on the training split, default 128), "
    "tiny-bert (random, for tests), hf:NAME (a Hugging Face text encoder available offline)."
)
DATA_HELP = (
    "Items: 'wiki' (the embedded Wikipedia excerpt cut into passages, whole articles held out), "
    "'text:PATH' (blank-line separated documents, every 10th held out), 'jsonl:PATH[:FIELD]'."
)


def _retrieval_table(title: str, evaluation: dict) -> Table:
    table = Table(title=title)
    for col in ("pair", "trained", "R@1 A→B", "R@1 B→A", "R@5 A→B", "R@5 B→A", "shuffled R@1", "chance"):
        table.add_column(col, justify="right" if col != "pair" else "left")
    trained = set(evaluation.get("trained_pairs", []))
    for pair, m in evaluation["pairs"].items():
        table.add_row(
            pair,
            "yes" if pair in trained else "no (emergent)",
            *(f"{100 * m[k]:.1f}%" for k in ("r1_ab", "r1_ba", "r5_ab", "r5_ba", "r1_shuffled", "chance_r1")),
        )
    return table


def _print_eval(console: Console, evaluation: dict, title: str) -> None:
    console.print(_retrieval_table(title, evaluation))
    console.print(
        f"mean held-out R@1 {100 * evaluation['mean_r1']:.1f}% · CV hub {evaluation['cv_hub']:.4f} · "
        f"CV midpoints {evaluation['cv_midpoints']:.4f} · target_cv(d_hub) {evaluation['cv_target']:.4f}"
    )


#: The hub's own settings, declared once (``HubModelOptions`` carries them into ``ConduitHubConfig``).
HUB_MODEL_OPTIONS: dict[str, OptionSpec] = {
    "d_hub": OptionSpec(256, int, "Hub width (256: MiniLM is PCA'd down, LSA direct, W2V padded up).", min=4),
    "pairs": OptionSpec("", str, "Trained pairs 'A|B,B|C' (default: every pair)."),
    "reference": OptionSpec("", str, "Expert the aligners rotate onto (default: first of width d_hub)."),
    "n_tokens": OptionSpec(4, int, "Pooled tokens per expert.", min=1),
    "dropout": OptionSpec(0.1, float, "Dropout of pooling and fusion.", min=0.0, max=0.9),
    "shrinkage": OptionSpec(0.2, float, "Covariance shrinkage of the aligners.", min=0.0, max=1.0),
    "w_midpoint": OptionSpec(0.1, float, "Weight of the midpoint pentachoron variance.", min=0.0),
    "w_procrustes": OptionSpec(0.1, float, "Weight of the running Procrustes term.", min=0.0),
    "readout": OptionSpec(
        "anchored",
        HubReadout,
        "'anchored': each read-out is the aligned mean plus a learned gate × the fusion output (training "
        "starts at the frozen aligners); 'fusion': the seed's identity-token read-out.",
    ),
}


@dataclass
class HubModelOptions:
    """The hub settings of ``train hub`` (see :data:`HUB_MODEL_OPTIONS`)."""

    d_hub: int = 256
    pairs: str = ""
    reference: str = ""
    n_tokens: int = 4
    dropout: float = 0.1
    shrinkage: float = 0.2
    w_midpoint: float = 0.1
    w_procrustes: float = 0.1
    readout: str = "anchored"

    def config_kwargs(self) -> dict[str, Any]:
        """These settings as ``ConduitHubConfig`` fields (``pairs`` split into a tuple)."""
        values = dataclasses.asdict(self)
        values["pairs"] = tuple(p for p in self.pairs.split(",") if p)
        return values


hub_model_options = option_group(HUB_MODEL_OPTIONS, HubModelOptions, "hub", "Hub")


@train_app.command("hub")
@train_options(
    exclude=("grad_clip_mode", "grad_clip"),
    steps={"default": 600},
    batch_size={"default": 256, "min": 2, "help": "Items per batch (InfoNCE negatives; at most the training items)."},
    lr={"default": 1e-3, "help": "Peak learning rate (AdamW, cosine); chosen on a validation split (hub_tuning.md)."},
    warmup={"default": 30, "help": "Linear warm-up steps (at most a tenth of --steps)."},
    weight_decay={"default": 0.05},
    eval_every={"default": 0},
    save_every={"default": 0},
    out={"help": "Run folder (default runs/hub). Rerun the same command to resume."},
)  # fmt: skip
@hub_model_options()
def train_hub_cmd(
    train: TrainOptions,
    hub: HubModelOptions,
    experts: str = typer.Option("minilm,lsa,w2v", help=EXPERTS_HELP),
    data: str = typer.Option("wiki", help=DATA_HELP),
    chunks: int = typer.Option(
        8, min=0, help="Items of more tokens become this many chunk means (0 = every token)."
    ),
    cache_dir: Path = typer.Option(None, help="Feature cache root (default $PENTACHORA_CACHE/hub-features)."),
    max_train_items: int = typer.Option(0, min=0, help="Use only the first N training items (0 = all)."),
    max_heldout_items: int = typer.Option(0, min=0, help="Use only the first N held-out items (0 = all)."),
) -> None:
    """Train a Conduit hub over frozen experts (default: MiniLM + LSA + Word2Vec on the embedded corpus).

    Example: pentachora train hub --steps 600 --out runs/hub
    """
    from pentachora.errors import ConfigError
    from pentachora.recipes.hub import hub_config_for, parse_expert_spec, prepare_hub_data, train_hub

    console = Console()
    train.apply_threads()
    specs = [s for s in experts.split(",") if s.strip()]
    out = train.out or Path("runs") / "hub"
    check_run_folder(out)
    fit = train.fit_kwargs(train_hub)  # --fresh / --force-resume, checked before the features are built
    try:
        for s in specs:
            parse_expert_spec(s)
        hdata = prepare_hub_data(specs, corpus=data, cache_dir=cache_dir, seed=train.seed, chunks=chunks,
                                 max_train_items=max_train_items, max_heldout_items=max_heldout_items)  # fmt: skip
        config = hub_config_for(hdata, expert_sources=tuple(specs), **hub.config_kwargs())
    except (ImportError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    tcfg = train.train_config(out=out, batch_size=min(train.batch_size, hdata.train.n),
                              warmup_steps=min(train.warmup, train.steps // 10), log_every=max(1, train.steps // 20))  # fmt: skip
    console.print(
        f"data: {hdata.info['train_items']} training / {hdata.info['heldout_items']} held-out items "
        f"(leakage check {hdata.info['leakage']}); experts {hdata.dims}; d_hub {hub.d_hub}"
    )
    run = train_hub(hdata, config, tcfg, make_callbacks=train.diagnostics_callbacks, **fit)
    _print_run(console, run)


def _print_run(console: Console, run) -> None:
    _print_eval(console, run.evaluation, f"held-out retrieval ({run.out_dir})")
    for name, rep in run.aligners.items():
        if isinstance(rep, dict) and "lift" in rep:
            console.print(
                f"aligner {name} ({rep['mode']}): held-out lift {rep['lift']:.3f} over shuffled floor "
                f"{rep['cos_shuffled']:.3f}; R@1 {100 * rep['r1']:.1f}% vs shuffled {100 * rep['r1_shuffled']:.1f}%"
            )
    console.print(f"saved {run.out_dir}/final (config.json + model.safetensors), eval.json, aligners.json")


@app.command("eval-hub")
def eval_hub_cmd(
    run: Path = typer.Argument(..., help="Run folder (or checkpoint folder) of `pentachora train hub`."),
    cache_dir: Path = typer.Option(None, help="Feature cache root (as used for training)."),
    as_json: bool = typer.Option(False, "--json", help="Print the evaluation as JSON."),
) -> None:
    """Evaluate a trained hub on its held-out split: R@1/R@5 both directions per pair, floors, CV."""
    from pentachora.errors import ConfigError
    from pentachora.recipes.hub import evaluate_hub, load_hub, run_heldout_features

    console = Console()
    model = load_hub(run)
    try:
        evaluation = evaluate_hub(model, run_heldout_features(run, model, cache_dir))
    except ImportError as exc:
        raise ConfigError(str(exc)) from exc
    if as_json:
        console.print_json(json.dumps(evaluation))
    else:
        _print_eval(console, evaluation, f"held-out retrieval ({run})")


@app.command("align")
def align_cmd(
    source: Path = typer.Argument(..., help="safetensors with the (N, D_a) source features."),
    target: Path = typer.Argument(..., help="safetensors with the (N, D_b) target features, rows paired."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Write source/, target/ aligners and report.json here."
    ),
    d_hub: int = typer.Option(0, min=0, help="Shared width (0 = min(D_a, D_b))."),
    shrinkage: float = typer.Option(0.2, min=0.0, max=1.0, help="Covariance shrinkage (0 = plain CCA-like)."),
    rank: int = typer.Option(0, min=0, help="Keep only the top RANK principal directions (0 = all)."),
    no_whiten: bool = typer.Option(False, "--no-whiten", help="Plain (unwhitened) Procrustes."),
    heldout_fraction: float = typer.Option(0.2, min=0.05, max=0.5, help="Rows held out for the report."),
    seed: int = typer.Option(0),
) -> None:
    """Fit, report and save a frozen Procrustes aligner between two paired feature sets.

    Example: pentachora align a.safetensors b.safetensors -o aligner/
    """
    from pentachora.errors import DataError
    from pentachora.recipes.hub import fit_aligner_files

    check_run_folder(out, "--out")  # before the fit: a file or an unwritable folder is refused first
    console = Console()
    try:
        report = fit_aligner_files(
            source,
            target,
            out,
            d_hub=d_hub,
            shrinkage=shrinkage,
            rank=rank,
            whiten=not no_whiten,
            heldout_fraction=heldout_fraction,
            seed=seed,
        )
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    h, f = report["heldout"], report["fit_set"]
    console.print(
        f"{report['d_source']}-d → {report['d_hub']}-d ({report['mode']}), target {report['d_target']}-d "
        f"({report['target_mode']}); {report['rows'] - report['heldout_rows']} fit rows, "
        f"{report['heldout_rows']} held out"
    )
    console.print(
        f"held-out: cosine {h['cos_paired']:.3f} vs shuffled {h['cos_shuffled']:.3f} (lift {h['lift']:.3f}); "
        f"R@1 {100 * h['r1']:.1f}% vs shuffled {100 * h['r1_shuffled']:.1f}% (chance {100 * h['chance_r1']:.1f}%)"
    )
    console.print(f"fit set (optimistic): lift {f['lift']:.3f}, R@1 {100 * f['r1']:.1f}%")
    if out is not None:
        console.print(f"saved {out}/source, {out}/target (config.json + model.safetensors) and report.json")
