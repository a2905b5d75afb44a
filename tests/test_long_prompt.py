"""LongPrompt: weighting grammar, window splits at boundaries, and tiny in-code SD 1.5 / SDXL pipelines
(no weights downloaded) checked against the pipelines' own ``encode_prompt``."""

from __future__ import annotations

import math

import pytest
import torch

from pentachora.diffusion.weighting import (
    MAX_WEIGHT,
    Fragment,
    PromptSyntaxError,
    has_weighting,
    parse_negative,
    parse_prompt,
)
from pentachora.diffusion.windows import prompt_windows, split_windows, word_ends
from pentachora.errors import ConfigError
from pentachora.memory import FrozenTextEncoder, GeometricMemory, MemoryConfig
from pentachora.nn.text_encoder import tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

LONG = ", ".join(["a silver goblet of wine beside a half peeled lemon"] * 8) + " and pink tulips"


def frags(prompt: str, dialect: str = "a1111") -> list[list[tuple[str, float]]]:
    return [[(f.text, round(f.weight, 6)) for f in w] for w in parse_prompt(prompt, dialect)]


# ============================================================================================ grammar
def test_a1111_grammar():
    assert frags("a red cube") == [[("a red cube", 1.0)]]
    assert frags("a (red:1.3) cube") == [[("a ", 1.0), ("red", 1.3), (" cube", 1.0)]]
    assert frags("((red)) [cube]") == [[("red", 1.21), (" ", 1.0), ("cube", round(1 / 1.1, 6))]]
    # nesting multiplies, the explicit weight replaces the group's 1.1
    assert frags("(a (b) c:1.5) d") == [[("a ", 1.5), ("b", 1.65), (" c", 1.5), (" d", 1.0)]]
    # escapes are literal brackets; a colon without a number is text
    assert frags(r"a \(red\) \[x\] back\\slash") == [[(r"a (red) [x] back\slash", 1.0)]]
    assert frags("(word:abc)") == [[("word:abc", 1.1)]]
    assert frags("(x: 0.5 )") == [[("x", 0.5)]]
    assert frags("(x:-1)") == [[("x", -1.0)]]  # A1111 allows negative weights
    # BREAK ends a window; only as a word on its own, in upper case
    assert frags("a red cube BREAK a blue ball") == [[("a red cube ", 1.0)], [(" a blue ball", 1.0)]]
    assert frags("BREAKFAST and break") == [[("BREAKFAST and break", 1.0)]]
    assert frags("BREAK a BREAK BREAK b BREAK") == [[(" a ", 1.0)], [(" b ", 1.0)]]
    assert frags("a (red:1.3) cube", "none") == [[("a (red:1.3) cube", 1.0)]]
    assert has_weighting("a [x]") and has_weighting("a BREAK b") and not has_weighting("a (x:1)")


def test_compel_grammar():
    assert frags("a ball++ and a cat-", "compel") == [
        [("a ", 1.0), ("ball", 1.21), (" and a ", 1.0), ("cat", 0.9)]
    ]
    assert frags("(two words)1.3 (three more words)-- (plain group)", "compel") == [
        [("two words", 1.3), (" ", 1.0), ("three more words", 0.81), (" plain group", 1.0)]
    ]
    assert frags("((nested)+ outer)1.5", "compel") == [[("nested", 1.65), (" outer", 1.5)]]
    # hyphenated words and A1111's colon syntax are text in compel's dialect
    assert frags("a well-known (x:1.3) c", "compel") == [[("a well-known x:1.3 c", 1.0)]]
    with pytest.raises(PromptSyntaxError, match=r"\.blend\(\) .* not supported"):
        parse_prompt('("a cat", "a dog").blend(0.5, 0.5)', "compel")


@pytest.mark.parametrize("dialect", ["a1111", "compel"])
@pytest.mark.parametrize(
    "bad, match",
    [
        ("a (red cube", r"unbalanced '\(' at character 2"),
        ("a red) cube", r"unbalanced '\)' at character 5"),
        ("", "has no words"),
        ("   ", "has no words"),
        ("BREAK", r"only BREAK"),
        ("BREAK BREAK", r"only BREAK"),
    ],
)
def test_malformed_prompts_give_clear_errors(dialect, bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_prompt(bad, dialect)


def test_bad_weights_are_refused():
    for text in ("(x:nan)", "(x:inf)", "(x:1e9)", "(x:11)", "(x:-20)", "time (12:30)"):
        with pytest.raises(PromptSyntaxError, match="outside"):
            parse_prompt(text)
    with pytest.raises(PromptSyntaxError, match="outside"):
        parse_prompt("(" * 30 + "x" + ")" * 30)  # 1.1^30 > MAX_WEIGHT
    for text in ("(x)nan", "(x)1e9", "(x)-0.5", "word" + "+" * 30):
        with pytest.raises(PromptSyntaxError, match="outside"):
            parse_prompt(text, "compel")
    assert 1.1**24 < MAX_WEIGHT < 1.1**25
    with pytest.raises(ConfigError, match="dialect must be one of"):
        parse_prompt("x", "sdxl")
    with pytest.raises(ConfigError, match="must be a string"):
        parse_prompt(None)  # type: ignore[arg-type]
    assert parse_negative("") == [[Fragment("")]]


# ============================================================================================ windows
@pytest.fixture(scope="module")
def clip() -> FrozenTextEncoder:
    """tiny-clip: a byte-level CLIP tokenizer without merges, so every character is one token and the
    last character of each word carries CLIP's ``</w>``."""
    return FrozenTextEncoder.from_pretrained("tiny-clip")


def test_split_policy_prefers_punctuation_then_word_ends():
    ends = [False, True] * 50  # two-token words
    punct = [False] * 100
    assert split_windows(100, ends, punct, content=75) == [(0, 74), (74, 100)]
    punct[59] = True  # punctuation inside the look-back (the last 20 tokens before the edge)
    assert split_windows(100, ends, punct, content=75) == [(0, 60), (60, 100)]
    punct[59], punct[49] = False, True  # outside the look-back: the word end wins
    assert split_windows(100, ends, punct, content=75) == [(0, 74), (74, 100)]
    assert split_windows(100, [False] * 99 + [True], [False] * 100, 75) == [
        (0, 75),
        (75, 100),
    ]  # one huge word
    assert split_windows(75, ends, punct, 75) == [(0, 75)]
    with pytest.raises(ValueError, match="content"):
        split_windows(3, [True] * 3, [False] * 3, 0)


@pytest.mark.parametrize("n_tokens, n_windows", [(1, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
@pytest.mark.parametrize("policy", ["boundary", "fixed"])
def test_window_counts_at_the_edges(clip, n_tokens, n_windows, policy):
    text = " ".join(["x"] * n_tokens)  # one-token words: every token ends a word
    assert len(clip.tokenize([text])[0]) == n_tokens
    pw = prompt_windows(clip, [[Fragment(text)]], max_windows=8, policy=policy)
    assert [len(w) for w in pw.ids] == [75] * (n_windows - 1) + [n_tokens - 75 * (n_windows - 1)]
    assert pw.n_tokens == n_tokens and pw.dropped == 0


def test_windows_never_split_inside_a_word(clip):
    text = " ".join(["abcdefg", "hij", "klmnopqr", "st"] * 12)
    pw = prompt_windows(clip, [[Fragment(text)]], max_windows=8)
    assert len(pw.ids) > 1
    for ids in pw.ids:
        ends, _ = word_ends(clip, ids)
        last = clip.tokenizer.convert_ids_to_tokens([ids[-1]])[0]
        assert last.endswith("</w>") and ends[-1]  # every window ends with a whole word
    assert sum(len(w) for w in pw.ids) == len(clip.tokenize([text])[0])
    # fixed splits cut every 75 tokens, inside words
    fixed = prompt_windows(clip, [[Fragment(text)]], max_windows=8, policy="fixed")
    assert [len(w) for w in fixed.ids[:-1]] == [75] * (len(fixed.ids) - 1)
    # punctuation within the look-back wins over a later word end
    comma = prompt_windows(clip, [[Fragment("ab " * 30 + "x, " + "cd " * 30)]], max_windows=8)
    assert clip.tokenizer.convert_ids_to_tokens(comma.ids[0][-1:]) == [",</w>"]
    # BREAK ends windows; max_windows drops the rest with a count
    broken = prompt_windows(clip, parse_prompt("a b BREAK c d"), max_windows=8)
    assert len(broken.ids) == 2
    capped = prompt_windows(clip, [[Fragment(text)]], max_windows=1)
    assert len(capped.ids) == 1 and capped.dropped == len(clip.tokenize([text])[0]) - len(capped.ids[0])


# ============================================================================================ pipelines
diffusers = pytest.importorskip("diffusers")


def _tiny_vae():
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32), latent_channels=4,
        norm_num_groups=32, sample_size=16,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sd15():
    te, tok = tiny_encoder("clip", hidden=32, seed=0)
    tok.model_max_length = 77
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )  # fmt: skip
    return diffusers.StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=te, tokenizer=tok, unet=unet,
        scheduler=diffusers.DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sdxl():
    import transformers

    te, tok = tiny_encoder("clip", hidden=32, seed=0)
    base, tok2 = tiny_encoder("clip", hidden=48, seed=1)
    tok.model_max_length = tok2.model_max_length = 77
    torch.manual_seed(1)
    te2 = transformers.CLIPTextModelWithProjection(base.config).eval()
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=80, attention_head_dim=8, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=48 + 6 * 8,
    )  # fmt: skip
    return diffusers.StableDiffusionXLPipeline(
        vae=_tiny_vae(), text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(),
    )  # fmt: skip


def test_sd15_from_pipeline_is_the_pipelines_own_encoding(sd15):
    from pentachora.diffusion import LongPrompt

    lp = LongPrompt.from_pipeline(sd15)
    assert lp.encoders[0].model is sd15.text_encoder  # read in place, no second copy
    prompt = "a red cube on a table"
    ours = lp(prompt, negative_prompt="blurry")
    pe, ne = sd15.encode_prompt(prompt, "cpu", 1, True, "blurry")
    torch.testing.assert_close(ours.prompt_embeds, pe, rtol=0, atol=0)
    torch.testing.assert_close(ours.negative_prompt_embeds, ne, rtol=0, atol=0)
    _, ne_default = sd15.encode_prompt(prompt, "cpu", 1, True, None)  # an absent negative is ""
    torch.testing.assert_close(lp(prompt).negative_prompt_embeds, ne_default, rtol=0, atol=0)
    # clip_skip follows diffusers' SD 1.5 rule: final_layer_norm(hidden_states[-(k + 1)])
    ids = sd15.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hs = sd15.text_encoder(ids.input_ids, output_hidden_states=True).hidden_states
        ref = getattr(sd15.text_encoder, "text_model", sd15.text_encoder).final_layer_norm(hs[-2])
    torch.testing.assert_close(LongPrompt.from_pipeline(sd15, clip_skip=1)(prompt).prompt_embeds, ref)
    with pytest.raises(ConfigError, match="clip_skip must be in"):
        LongPrompt.from_pipeline(sd15, clip_skip=5)


def test_sd15_long_weighted_mixed_batch_runs_the_pipeline(sd15):
    from pentachora.diffusion import LongPrompt

    lp = LongPrompt.from_pipeline(sd15)
    embeds = lp([LONG, "a (red:1.4) cube BREAK on a table"], negative_prompt=["", "blurry"])
    k = embeds.prompt_embeds.shape[1] // 77
    assert embeds.prompt_embeds.shape == embeds.negative_prompt_embeds.shape == (2, 77 * k, 32) and k >= 4
    assert int(embeds.n_tokens[0]) > 150
    empty = sd15.encode_prompt("", "cpu", 1, False)[0][0]
    # the short prompt: two windows (BREAK), then the empty prompt's window as padding
    torch.testing.assert_close(embeds.prompt_embeds[1, 154:231], empty)
    torch.testing.assert_close(embeds.negative_prompt_embeds[0, 77:154], empty)
    image = sd15(**embeds.pipeline_kwargs(), num_inference_steps=2, height=16, width=16, output_type="np")
    assert image.images.shape == (2, 16, 16, 3)
    # chunks=False keeps the first window: the pipeline's truncation
    first = LongPrompt.from_pipeline(sd15, chunks=False)(LONG).prompt_embeds
    assert first.shape == (1, 77, 32)


def test_a1111_and_compel_weights_act_on_the_weighted_tokens(sd15):
    from pentachora.diffusion import LongPrompt

    plain = LongPrompt.from_pipeline(sd15)("a red cube").prompt_embeds[0]
    a1111 = LongPrompt.from_pipeline(sd15)("a (red:1.5) cube").prompt_embeds[0]
    # tokens of "red" are at positions 2..4 (BOS, 'a', then 'r','e','d'); the window mean is restored
    torch.testing.assert_close(a1111.mean(), plain.mean())
    ratio = (a1111[2:5] / plain[2:5]).median()
    others = torch.cat([a1111[:2] / plain[:2], a1111[5:] / plain[5:]]).median()
    assert ratio / others == pytest.approx(1.5, rel=1e-3)
    assert torch.equal(LongPrompt.from_pipeline(sd15)("a (red:1) cube").prompt_embeds[0], plain)
    # compel: empty + (z − empty)·w on the weighted tokens, nothing else moves
    compel = LongPrompt.from_pipeline(sd15, dialect="compel")
    up = compel("a (red)1.5 cube").prompt_embeds[0]
    e = compel._empty_window(0)[0]
    torch.testing.assert_close(up[2:5], e[2:5] + (plain[2:5] - e[2:5]) * 1.5)
    torch.testing.assert_close(up[:2], plain[:2])
    torch.testing.assert_close(up[5:], plain[5:])
    # compel's down-weight: w = 0 is the prompt without the fragment
    gone = compel("a cube (red)0").prompt_embeds[0]
    without = compel("a cube ").prompt_embeds[0]
    torch.testing.assert_close(gone, without, atol=1e-3, rtol=1e-3)
    half = compel("a cube (red)0.5").prompt_embeds[0]
    full = LongPrompt.from_pipeline(sd15, dialect="compel")("a cube red").prompt_embeds[0]
    assert 0.1 < (half - full).norm() / (without - full).norm() < 0.9
    with pytest.raises(ConfigError, match="weight_pooled needs"):
        LongPrompt.from_pipeline(sd15, weight_pooled=True)


def test_sdxl_from_pipeline_matches_encode_prompt(sdxl):
    from pentachora.diffusion import LongPrompt

    lp = LongPrompt.from_pipeline(sdxl)
    assert lp.zero_negative  # the pipeline's force_zeros_for_empty_prompt
    ours = lp("a red cube", negative_prompt="bad", prompt_2="a blue ball", negative_prompt_2="worse")
    pe, ne, pp, npp = sdxl.encode_prompt(
        "a red cube", prompt_2="a blue ball", negative_prompt="bad", negative_prompt_2="worse", device="cpu"
    )
    for a, b in zip((ours.prompt_embeds, ours.negative_prompt_embeds, ours.pooled_prompt_embeds,
                     ours.negative_pooled_prompt_embeds), (pe, ne, pp, npp), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6)
    absent = lp("a red cube")
    _, ne, _, npp = sdxl.encode_prompt("a red cube", device="cpu")
    assert torch.equal(absent.negative_prompt_embeds, ne) and torch.equal(
        absent.negative_pooled_prompt_embeds, npp
    )
    # clip_skip: hidden_states[-(k + 2)] on both towers, as diffusers does for SDXL
    pe1, _, _, _ = sdxl.encode_prompt("a red cube", device="cpu", clip_skip=1)
    torch.testing.assert_close(
        LongPrompt.from_pipeline(sdxl, clip_skip=1)("a red cube").prompt_embeds, pe1.detach()
    )


def test_sdxl_long_prompt_pooled_modes_and_the_pipeline(sdxl):
    from pentachora.diffusion import LongPrompt

    lp = LongPrompt.from_pipeline(sdxl)
    embeds = lp([LONG, "a (red:1.2) cube"], negative_prompt="blurry")
    k = embeds.prompt_embeds.shape[1] // 77
    assert k >= 4 and embeds.prompt_embeds.shape == embeds.negative_prompt_embeds.shape == (2, 77 * k, 80)
    first = LongPrompt.from_pipeline(sdxl, pooled="first_window")([LONG, "a (red:1.2) cube"])
    # a one-window prompt: the whole-prompt pooled vector is the pipeline's; a long one differs
    torch.testing.assert_close(embeds.pooled_prompt_embeds[1], first.pooled_prompt_embeds[1])
    assert not torch.allclose(embeds.pooled_prompt_embeds[0], first.pooled_prompt_embeds[0], atol=1e-4)
    # weights stay out of the pooled vector
    _, _, pp, _ = sdxl.encode_prompt("a red cube", device="cpu")
    torch.testing.assert_close(embeds.pooled_prompt_embeds[1], pp[0].detach(), atol=1e-6, rtol=0)
    out = sdxl(**embeds.pipeline_kwargs(), num_inference_steps=2, height=16, width=16, output_type="np")
    assert out.images.shape == (2, 16, 16, 3)
    with pytest.raises(ConfigError, match="pooled='memory' needs"):
        LongPrompt.from_pipeline(sdxl, pooled="memory")


def _memory(encoder: FrozenTextEncoder, target: str = "last", chunks: bool = False) -> GeometricMemory:
    config = MemoryConfig(
        encoder="tiny-clip", teacher="tiny-clip", extraction_layers=(1, 2), target_layer=target,
        hidden_size=32, teacher_dim=32, dim=32, n_heads=4, n_anchors=16, ffn_mult=2, sequence_mode="residual",
        contextual_chunks=chunks, max_tokens=300, mean_shift=0.75,
    )  # fmt: skip
    torch.manual_seed(0)
    model = GeometricMemory(config).eval()
    with torch.no_grad():  # stand-in for training: the zero-initialised residual layers get weights
        model.reconstructor.out.weight.normal_(0, 0.3)
    return model


def test_memory_reads_weighted_windows_and_fixed_splits_match_the_old_path(sd15):
    from pentachora.diffusion import LongPrompt, long_prompt_embeds

    memory = _memory(FrozenTextEncoder.from_pretrained("tiny-clip", layers=(1, 2)))
    lp = LongPrompt.from_pipeline(sd15, memory=memory, split="fixed")
    assert memory.load_encoder().model is sd15.text_encoder  # the pipeline's tower, attached
    ours = lp([LONG, "a red cube"])
    ref = long_prompt_embeds(memory, [LONG, "a red cube"])
    torch.testing.assert_close(ours.prompt_embeds, ref.prompt_embeds)
    short = sd15.encode_prompt("a red cube", "cpu", 1, False)[0]
    torch.testing.assert_close(ours.prompt_embeds[1:], short)  # one window: exactly native
    # a long negative stays one window beside the memory's 77 positions (its first window, natively)
    with_neg = lp([LONG, "a red cube"], negative_prompt=LONG)
    assert with_neg.prompt_embeds.shape == with_neg.negative_prompt_embeds.shape == (2, 77, 32)
    torch.testing.assert_close(with_neg.prompt_embeds, ours.prompt_embeds)
    # a weight on a tail word changes what the memory reads (its shift reads every window)
    mid = ", ".join(["a silver goblet of wine beside a half peeled lemon"] * 3) + " and pink tulips"
    plain, heavy = lp([mid, mid.replace("pink tulips", "(pink tulips:1.5)")]).prompt_embeds
    assert (heavy - plain).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="contextual_chunks"):
        LongPrompt.from_pipeline(sd15, memory=memory, chunks=True)
    with pytest.raises(ConfigError, match="clip_skip"):
        LongPrompt.from_pipeline(sd15, memory=memory, clip_skip=1)
    pen = _memory(FrozenTextEncoder.from_pretrained("tiny-clip", layers=(1, 2)), target="penultimate")
    with pytest.raises(ConfigError, match="'penultimate' layer but this pipeline"):
        LongPrompt.from_pipeline(sd15, memory=pen)
    wide = _memory(FrozenTextEncoder.from_pretrained("tiny-clip", layers=(1, 2)))
    wide.config.window = 40
    with pytest.raises(ConfigError, match="does not fit"):
        LongPrompt.from_pipeline(sd15, memory=wide)


def test_bad_input(sd15, sdxl):
    from pentachora.diffusion import LongPrompt, PromptSyntaxError

    lp = LongPrompt.from_pipeline(sd15)
    for bad in ("a (red cube", "a red) cube", "(x:nan)", "(x:1e9)"):
        with pytest.raises(PromptSyntaxError):
            lp(bad)
    for bad in ("", "BREAK", "  BREAK  "):
        with pytest.raises(ConfigError, match="no words"):
            lp(bad)
    with pytest.raises(ConfigError, match="2 negative_prompts for 3 prompts"):
        lp(["a", "b", "c"], negative_prompt=["x", "y"])
    with pytest.raises(ConfigError, match="second text tower"):
        lp("a", prompt_2="b")
    with pytest.raises(ConfigError, match="empty list"):
        lp([])
    with pytest.raises(ConfigError, match="cannot read text towers"):
        LongPrompt.from_pipeline(object())
    with pytest.raises(ConfigError, match="dialect must be"):
        LongPrompt.from_pipeline(sd15, dialect="webui")
    with pytest.raises(ConfigError, match="alpha"):
        LongPrompt.from_pipeline(sd15, alpha=math.nan)
    with pytest.raises(ConfigError, match="split must be"):
        LongPrompt.from_pipeline(sd15, split="words")
    with pytest.raises(ConfigError, match="max_windows"):
        LongPrompt.from_pipeline(sd15, max_windows=0)
    with pytest.raises(ConfigError, match="two text towers"):
        LongPrompt.from_pipeline(sdxl, memory=[None, None, None])
    assert lp("BREAK a red cube BREAK").prompt_embeds.shape == (1, 77, 32)  # BREAK at the edges: one window


def test_sdxl_pooled_vector_takes_compel_down_weights_only_when_asked(sdxl):
    from pentachora.diffusion import LongPrompt

    prompt = "a red cube (on a wooden table)0.2"
    kept = LongPrompt.from_pipeline(sdxl, dialect="compel")(prompt).pooled_prompt_embeds
    moved = LongPrompt.from_pipeline(sdxl, dialect="compel", weight_pooled=True)(prompt).pooled_prompt_embeds
    plain = LongPrompt.from_pipeline(sdxl, dialect="compel")(
        "a red cube on a wooden table"
    ).pooled_prompt_embeds
    without = LongPrompt.from_pipeline(sdxl, dialect="compel")("a red cube ").pooled_prompt_embeds
    torch.testing.assert_close(kept, plain)  # weights stay out of the pooled vector by default
    # asked: the pooled vector moves most of the way toward the prompt without the fragment
    assert (moved - without).norm() < 0.5 * (plain - without).norm()
