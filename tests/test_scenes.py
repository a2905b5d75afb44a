"""The scene world: determinism, splits, rendering, layouts and the window accounting of captions."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from pentachora.data.scenes import (
    COLOURS,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    Scene,
    SceneObject,
    ScenePool,
    ScenePoolSource,
    SceneRenderSource,
    SceneWorld,
    SceneWorldConfig,
    degrade,
)
from pentachora.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def world() -> SceneWorld:
    return SceneWorld()


@pytest.fixture(scope="module")
def count():
    from pentachora.data.text import minilm_token_counter

    return minilm_token_counter()


@pytest.fixture(scope="module")
def tokenizer():
    from pentachora.data.text import _minilm_tokenizer

    return _minilm_tokenizer()


def test_same_seed_same_scene_caption_and_pixels(world, count):
    for kind in ("short", "prose", "terse", "long", "ceiling"):
        a = world.sample("test", 5, kind, count)
        b = SceneWorld().sample("test", 5, kind, count)
        assert a == b
        np.testing.assert_array_equal(world.render(a[0]), world.render(b[0]))
    other = SceneWorld(SceneWorldConfig(seed=1)).sample("test", 5, "long", count)
    assert other[1].text != world.sample("test", 5, "long", count)[1].text


def test_splits_are_disjoint_by_layout(world, count):
    keys = {split: {world.sample(split, i, "short", count)[0].layout_key() for i in range(150)}
            for split in ("train", "val", "test")}  # fmt: skip
    assert (
        not keys["train"] & keys["test"]
        and not keys["train"] & keys["val"]
        and not keys["val"] & keys["test"]
    )
    for split in ("train", "val", "test"):
        scene, _ = world.sample(split, 3, "long", count)
        assert world.split_of(scene) == split


def test_short_captions_fit_one_window_and_mention_every_object(world, count, tokenizer):
    for i in range(120):
        scene, cap = world.sample("train", i, "short", count)
        assert cap.n_tokens <= 75 == world.config.window_tokens
        assert count([cap.text])[0] == cap.n_tokens
        assert sorted(cap.order) == list(range(len(scene.objects)))
        for j, obj in enumerate(scene.objects):
            start, end = cap.spans[j]
            words = tokenizer.decode(tokenizer.encode(cap.text, add_special_tokens=False).ids[start:end])
            assert obj.colour in words, (cap.text, words)


def test_long_captions_put_objects_past_token_75_under_the_encoder_tokenizer(world, count, tokenizer):
    windows = set()
    for i in range(60):
        scene, cap = world.sample("test", i, "long", count)
        lo, hi = world.config.long_objects
        assert lo <= len(scene.objects) <= hi
        assert 75 < cap.n_tokens <= 75 * world.config.long_windows[1]
        windows.add(-(-cap.n_tokens // 75))
        ids = tokenizer.encode(cap.text, add_special_tokens=False).ids
        assert len(ids) == cap.n_tokens
        regions = [cap.object_region(j) for j in range(len(scene.objects))]
        assert regions.count("tail") >= world.config.min_tail_objects and "head" in regions
        for j, obj in enumerate(scene.objects):
            start, end = cap.spans[j]
            sentence = tokenizer.decode(ids[start:end])
            assert obj.colour in sentence, (cap.text, sentence)  # the span is the object's own sentence
            if regions[j] == "tail":
                assert start >= 75
            elif regions[j] == "head":
                assert end <= 75
    assert windows == {2, 3, 4}


def test_tail_object_content_is_cut_by_truncation(world, count, tokenizer):
    """What truncation keeps (the first 75 tokens) names no tail object's cell together with it."""
    scene, cap = world.sample("test", 11, "long", count)
    ids = tokenizer.encode(cap.text, add_special_tokens=False).ids
    first = tokenizer.decode(ids[:75])
    tail_spans = [cap.spans[j] for j in range(len(scene.objects)) if cap.object_region(j) == "tail"]
    for start, end in tail_spans:
        assert tokenizer.decode(ids[start:end]) not in first


def test_phrasings_are_split(world, count):
    def pattern(template: str) -> re.Pattern:
        escaped = re.escape(template)
        for key in ("obj", "Obj", "cell", "Cell", "size", "colour", "shape"):
            escaped = escaped.replace(re.escape("{" + key + "}"), ".+?")
        return re.compile("^" + escaped + "$")

    train = [pattern(t) for t in TRAIN_TEMPLATES]
    held = [pattern(t) for t in HELDOUT_TEMPLATES]
    rng = np.random.default_rng(0)
    obj = SceneObject("red", "circle", "small", 4)
    for _ in range(200):
        s = world.object_sentence(obj, rng, "train")
        assert any(p.match(s) for p in train)
        h = world.object_sentence(obj, rng, "heldout")
        assert any(p.match(h) for p in held) and not any(p.match(h) for p in train)


def test_render_and_layout(world):
    c = world.config
    obj = SceneObject("blue", "square", "large", cell=4)
    scene = Scene((obj,), (0.1, 0.1, 0.1))
    img = world.render(scene)
    assert img.shape == (3, c.image_size, c.image_size) and img.dtype == np.float32
    centre = c.image_size // 2
    np.testing.assert_allclose(img[:, centre, centre], COLOURS["blue"], atol=1e-6)
    np.testing.assert_allclose(img[:, 0, 0], (0.1, 0.1, 0.1), atol=1e-6)
    layout = world.layout(scene)
    assert layout.tolist() == [
        0,
        0,
        0,
        0,
        1 + world.colour_index["blue"] * len(c.shapes) + world.shape_index["square"],
        0,
        0,
        0,
        0,
    ]
    assert world.class_name(int(layout[4])) == "blue square"
    assert world.size_layout(scene)[4] == c.sizes.index("large") and world.size_layout(scene)[0] == -1


def test_shapes_differ_in_pixels(world):
    masks = [
        world.render(Scene((SceneObject("white", s, "small", 0),), (0.0, 0.0, 0.0)))[0]
        for s in world.config.shapes
    ]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert np.abs(masks[i] - masks[j]).sum() > 2.0


def test_batch_sources_are_deterministic(world):
    src = SceneRenderSource(world, 4, seed=3)
    a, b = src.batch(7), SceneRenderSource(world, 4, seed=3).batch(7)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert a["pixel_values"].min() >= 0 and a["pixel_values"].max() <= 1
    assert not torch.equal(src.batch(8)["labels"], a["labels"])
    assert src.batch(-1)["labels"].shape == (4, 9)  # negative (evaluation) steps work
    pool = ScenePool(torch.zeros(5, 3, 32, 32, dtype=torch.uint8), torch.randn(5, 77, 8).half(),
                     torch.zeros(5, 9, dtype=torch.long), ["a"] * 5)  # fmt: skip
    p1, p2 = ScenePoolSource(pool, 3, seed=1).batch(2), ScenePoolSource(pool, 3, seed=1).batch(2)
    torch.testing.assert_close(p1["encoder_hidden_states"], p2["encoder_hidden_states"])
    assert p1["encoder_hidden_states"].dtype == torch.float32


def test_degrade_is_deterministic_and_bounded():
    x = torch.rand(4, 3, 16, 16)
    a = degrade(x, torch.Generator().manual_seed(0))
    b = degrade(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)


def test_bad_input_is_refused(world, count):
    with pytest.raises(DataError, match="unknown split"):
        world.scene("holdout", 0, 2)
    with pytest.raises(DataError, match="unknown caption kind"):
        world.sample("test", 0, "poem", count)
    with pytest.raises(DataError, match="n_objects"):
        world.random_scene(np.random.default_rng(0), 10)
    with pytest.raises(DataError, match="do not fit one window"):
        scene = world.scene("test", 0, 9)
        world.caption(scene, "prose", np.random.default_rng(0), count)
    with pytest.raises(DataError, match="long caption needs"):
        world.caption(world.scene("test", 0, 2), "long", np.random.default_rng(0), count)
    with pytest.raises(ConfigError, match="colours"):
        SceneWorldConfig(colours=("red", "mauve"))
    with pytest.raises(ConfigError, match="long_objects"):
        SceneWorldConfig(long_objects=(5, 12))
    with pytest.raises(ConfigError, match="unknown scene world preset"):
        SceneWorldConfig.preset("huge")
    with pytest.raises(DataError, match="as many"):
        ScenePool(
            torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, 77, 8), torch.zeros(2, 9), ["a", "b"]
        )


def test_gpu_world_captions(count):
    world = SceneWorld(SceneWorldConfig.preset("gpu"))
    scene, cap = world.sample("test", 0, "long", count)
    assert world.render(scene).shape == (3, 64, 64) and len(world.layout(scene)) == 16
    assert any(cap.object_region(j) == "tail" for j in range(len(scene.objects)))
    _, terse = world.sample("train", 0, "terse", count)
    assert terse.n_tokens <= 75
