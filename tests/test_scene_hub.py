"""The hub across modalities on the scene world: experts, data, probes, a hub that learns above chance,
and bad input (mismatched rows, constant features, fewer items than the width)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from pentachora.data.scenes import SceneWorld
from pentachora.errors import ConfigError, DataError
from pentachora.hub.model import ConduitHub, ConduitHubConfig
from pentachora.recipes.scene_hub import (
    PixelPCAExpert,
    attribute_negative,
    mutual_knn,
    prepare_scene_hub_data,
)

pytestmark = pytest.mark.usefixtures("one_thread", "offline")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """600 training scenes seen by pixel PCA (images) and LSA (captions): no model to train."""
    cache = tmp_path_factory.mktemp("scene-hub")
    return prepare_scene_hub_data(SceneWorld(), 600, 100, 100, experts=("pixpca", "lsa"), cache=cache), cache


def test_splits_are_disjoint_and_cached(small):
    data, cache = small
    assert data.info["leakage"] == {"test_layouts_in_train": 0, "test_captions_in_train": 0,
                                    "val_layouts_in_train": 0}  # fmt: skip
    assert data.train.n == 600 and data.val.n == data.test.n == 100
    assert data.train.dims == {"pixpca": 32, "lsa": 128}
    assert data.test.item("pixpca", 0).shape == (16, 32)  # one token per 8×8 patch of a 32-px image
    again = prepare_scene_hub_data(SceneWorld(), 600, 100, 100, experts=("pixpca", "lsa"), cache=cache)
    assert again.info["cache_hit"] and torch.equal(again.test.tokens["lsa"], data.test.tokens["lsa"])
    with pytest.raises(ConfigError, match="at least two of"):
        prepare_scene_hub_data(SceneWorld(), 10, 5, 5, experts=("pixpca", "clip"), cache=cache)


def test_hub_learns_image_caption_alignment_above_chance(small):
    """Held-out images and captions (held-out phrasings) find each other well above chance, and a hub
    trained on shuffled pairs — the same features, the pairing destroyed — does not."""
    from pentachora.data.paired import PairedFeatures
    from pentachora.recipes.hub import HubData, hub_config_for, train_hub
    from pentachora.training import TrainConfig

    data, _ = small

    def fit(train: PairedFeatures) -> dict:
        hd = HubData(train, data.test, {})
        tc = TrainConfig(steps=200, batch_size=64, lr=3e-3, warmup_steps=5, seed=0, progress=False,
                         tensorboard=False, out_dir=None, eval_every=0, log_every=100)  # fmt: skip
        return train_hub(hd, hub_config_for(hd, d_hub=32, n_tokens=2), tc, resume=False).evaluation["pairs"]

    chance = 1 / data.test.n
    pair = fit(data.train)["pixpca|lsa"]
    assert pair["r1"] > 4 * chance and pair["r5"] > 2.5 * 5 * chance, pair
    perm = torch.randperm(data.train.n, generator=torch.Generator().manual_seed(0))
    lsa = data.train.tokens["lsa"][perm]  # one LSA token per item: permuting rows re-pairs the items
    shuffled = PairedFeatures({**data.train.tokens, "lsa": lsa}, dict(data.train.offsets))
    control = fit(shuffled)["pixpca|lsa"]
    assert control["r1"] <= 3 * chance and control["r5"] < pair["r5"], control


def test_hub_refuses_mismatched_rows_and_constant_experts_and_handles_few_items():
    hub = ConduitHub(ConduitHubConfig(experts=("img", "txt"), expert_dims=(16, 8), d_hub=8))
    with pytest.raises(DataError, match="row counts differ"):
        hub.fit_aligners({"img": torch.randn(20, 16), "txt": torch.randn(19, 8)})
    with pytest.raises(DataError, match=r"expert 'img'.*same for all 50 rows"):
        hub.fit_aligners({"img": torch.ones(50, 16), "txt": torch.randn(50, 8)})
    x = torch.randn(50, 16)
    x[:, 3] = 5.0  # one constant column among varying ones is fine (shrinkage)
    hub.fit_aligners({"img": x, "txt": torch.randn(50, 8)})
    assert torch.isfinite(hub.embed("img", x[:, None], None)).all()
    few = torch.randn(6, 16)  # fewer items than the expert's width: PCA of rank ≤ N, still finite
    hub.fit_aligners({"img": few, "txt": torch.randn(6, 8)})
    assert torch.isfinite(hub.embed("img", few[:, None], None)).all()


def test_attribute_negatives_change_exactly_one_thing():
    world = SceneWorld()
    rng = np.random.default_rng(0)
    for i in range(20):
        scene = world.scene("test", i, (2, 4))
        for attr in ("colour", "shape", "cell"):
            neg = attribute_negative(world, scene, attr, rng)
            assert neg is not None
            changed = [(a, b) for a, b in zip(scene.objects, neg.objects, strict=True) if a != b]
            assert len(changed) == 1
            a, b = changed[0]
            diffs = {f for f in ("colour", "shape", "cell", "size") if getattr(a, f) != getattr(b, f)}
            assert diffs == {attr}
            if attr == "cell":
                assert b.cell not in {o.cell for o in scene.objects}
    with pytest.raises(ConfigError, match="attribute"):
        attribute_negative(world, world.scene("test", 0, 2), "size", rng)


def test_mutual_knn_and_pixel_pca():
    x = torch.randn(200, 16)
    same = mutual_knn(x, x * 3.0 + 0.0)
    assert same["mknn"] == pytest.approx(1.0) and same["null_max"] < 0.2
    assert mutual_knn(x, torch.randn(200, 16))["mknn"] < 0.2
    imgs = torch.rand(10, 3, 32, 32)
    pca = PixelPCAExpert(dim=8).fit(imgs)
    toks = pca.token_features(imgs)
    assert len(toks) == 10 and toks[0].shape == (16, 8)
    with pytest.raises(ConfigError, match="fit"):
        PixelPCAExpert().token_features(imgs)


@pytest.mark.slow
def test_hub_scenes_benchmark_smoke(tmp_path):
    """``benchmarks/hub_scenes.py --quick`` end to end (trains two tiny autoencoders; about a minute)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "hub_scenes.py"
    spec = importlib.util.spec_from_file_location("bench_hub_scenes", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(
        ["--quick", "--threads", "1", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "h")]
    )
    r = out["results"]["300"]
    assert set(r["contenders"]) >= {"(b) regularised CCA, means", "(f) hub, tokens (full)"}
    for c in r["contenders"].values():
        assert all(0 <= p["r1"] <= 1 for p in c["pairs"].values())
    assert set(r["hard_negatives"]) == {"colour", "shape", "cell"}
    md = (tmp_path / "h.md").read_text()
    assert "Made by `python benchmarks/hub_scenes.py" in md and "Goals (computed" in md
