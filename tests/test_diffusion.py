"""SDXL and SD 1.5 long-prompt conditioning end to end: tiny CLIP towers built in code, tiny UNets from a
config (no weights, nothing downloaded), contextual chunks, the whole-prompt pooled vector."""

from __future__ import annotations

import logging

import pytest
import torch

from pentachora.errors import ConfigError
from pentachora.memory import FrozenTextEncoder, GeometricMemory, MemoryConfig
from pentachora.nn.text_encoder import tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

diffusers = pytest.importorskip("diffusers")

LONG = " ".join(["a silver goblet of wine beside a half peeled lemon"] * 12) + " and pink tulips"
SHORT = "a red cube on a table"
H_L, H_G = 32, 48


def _memory(encoder: FrozenTextEncoder, hidden: int, seed: int, mean_shift: float = 0.0) -> GeometricMemory:
    config = MemoryConfig(
        encoder="tiny-clip", teacher="tiny-clip", extraction_layers=(1, 2), target_layer="penultimate",
        hidden_size=hidden, teacher_dim=hidden, dim=32, n_heads=4, n_anchors=16, ffn_mult=2,
        sequence_mode="residual", contextual_chunks=True, max_tokens=300, mean_shift=mean_shift,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GeometricMemory(config).eval()
    with torch.no_grad():  # stand-in for training: the zero-initialised residual layers get weights
        for layer in (model.reconstructor.out, model.chunker.out):
            layer.weight.normal_(0, 0.3)
    model.attach_encoder(encoder)
    return model


@pytest.fixture(scope="module")
def towers():
    """SDXL-like towers: CLIP-L side (32 wide) and a bigG side with a text projection (48 wide)."""
    import transformers

    native_l = FrozenTextEncoder.from_pretrained("tiny-clip", layers=(1, 2), target_layer="penultimate")
    base, tokenizer = tiny_encoder("clip", hidden=H_G, seed=1)
    with_proj = transformers.CLIPTextModelWithProjection(base.config).eval()
    native_g = FrozenTextEncoder(with_proj, tokenizer, layers=(1, 2), target_layer="penultimate")
    assert native_g.pooling == "projection"
    # the bigG side carries the learned mean shift (the minilm-tiny-long setting), the CLIP-L side does not
    return native_l, native_g, _memory(native_l, H_L, 0), _memory(native_g, H_G, 1, mean_shift=0.75)


def tiny_sdxl_unet():
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=H_L + H_G, attention_head_dim=8, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=H_G + 6 * 8,
    )  # fmt: skip


def run_unet(unet, embeds):
    b = embeds.prompt_embeds.shape[0]
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).expand(b, -1)
    with torch.no_grad():
        out = unet(
            torch.randn(b, 4, 8, 8),
            torch.full((b,), 10),
            encoder_hidden_states=embeds.prompt_embeds,
            added_cond_kwargs={"text_embeds": embeds.pooled_prompt_embeds, "time_ids": time_ids},
        )
    assert out.sample.shape == (b, 4, 8, 8) and torch.isfinite(out.sample).all()


def test_sdxl_memory_towers_drive_a_tiny_unet(towers):
    from pentachora.diffusion import sdxl_long_prompt_embeds

    native_l, native_g, mem_l, mem_g = towers
    embeds = sdxl_long_prompt_embeds(mem_l, mem_g, [LONG, SHORT], negative_prompts="")
    assert embeds.prompt_embeds.shape == (2, 77, H_L + H_G)
    assert embeds.negative_prompt_embeds.shape == (2, 77, H_L + H_G)
    assert embeds.pooled_prompt_embeds.shape == (2, H_G) == embeds.negative_pooled_prompt_embeds.shape
    # the short prompt is the pipeline's own conditioning on both towers, pooled vector included
    native = torch.cat([native_l.native_sequence([SHORT])[0], native_g.native_sequence([SHORT])[0]], -1)
    torch.testing.assert_close(embeds.prompt_embeds[1:], native, atol=1e-5, rtol=1e-5)
    first = sdxl_long_prompt_embeds(native_l, native_g, [LONG, SHORT], pooled="first_window")
    torch.testing.assert_close(
        embeds.pooled_prompt_embeds[1:], first.pooled_prompt_embeds[1:], atol=1e-5, rtol=1e-5
    )
    # the long prompt's pooled vector is drawn from every window, at the windows' norm
    assert not torch.allclose(embeds.pooled_prompt_embeds[0], first.pooled_prompt_embeds[0], atol=1e-4)
    assert int(embeds.n_tokens[0]) > 75
    run_unet(tiny_sdxl_unet(), embeds)


def test_sdxl_contextual_chunks_have_matching_lengths_and_pad_with_the_empty_prompt(towers):
    from pentachora.diffusion import sdxl_long_prompt_embeds

    native_l, native_g, mem_l, mem_g = towers
    embeds = sdxl_long_prompt_embeds(
        mem_l, mem_g, [LONG, SHORT], negative_prompts=["", "blurry"], chunks=True
    )
    k = -(-int(embeds.n_tokens[0]) // 75)
    assert k >= 2 and embeds.prompt_embeds.shape == (2, 77 * k, H_L + H_G)
    assert embeds.negative_prompt_embeds.shape == embeds.prompt_embeds.shape
    empty = torch.cat([native_l.native_sequence([""])[0][0], native_g.native_sequence([""])[0][0]], -1)
    # the short prompt: its window is native, the rest is the empty prompt (compel's padding)
    short = torch.cat([native_l.native_sequence([SHORT])[0][0], native_g.native_sequence([SHORT])[0][0]], -1)
    torch.testing.assert_close(embeds.prompt_embeds[1, :77], short, atol=1e-5, rtol=1e-5)
    for j in range(1, k):
        torch.testing.assert_close(embeds.prompt_embeds[1, 77 * j : 77 * (j + 1)], empty)
    # the long prompt's chunks differ from plain concatenation (they read the whole prompt's memory)
    plain = sdxl_long_prompt_embeds(native_l, native_g, [LONG], chunks=True)  # native: up to 576 tokens
    assert plain.prompt_embeds.shape[1] >= 77 * k
    assert (embeds.prompt_embeds[0] - plain.prompt_embeds[0, : 77 * k]).abs().max() > 1e-2
    run_unet(tiny_sdxl_unet(), embeds)


def test_sd15_chunks_and_clear_errors(towers, caplog):
    from pentachora.diffusion import long_prompt_embeds, sdxl_long_prompt_embeds

    native_l, native_g, mem_l, mem_g = towers
    embeds = long_prompt_embeds(mem_l, [LONG], negative_prompts="", chunks=True)
    assert embeds.prompt_embeds.shape[1] % 77 == 0 and embeds.prompt_embeds.shape[1] >= 154
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=H_L, attention_head_dim=8, norm_num_groups=32,
    )  # fmt: skip
    with torch.no_grad():
        out = unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), encoder_hidden_states=embeds.prompt_embeds)
    assert torch.isfinite(out.sample).all()
    with pytest.raises(ValueError, match="empty"):
        long_prompt_embeds(mem_l, ["   "])
    with pytest.raises(ConfigError, match="pooled must be one of"):
        sdxl_long_prompt_embeds(mem_l, mem_g, [SHORT], pooled="eos")
    with pytest.raises(ConfigError, match="pooled='memory'"):
        sdxl_long_prompt_embeds(native_l, native_g, [SHORT], pooled="memory")
    for alpha in (float("nan"), 1.5, -0.1, "0.5"):
        with pytest.raises(ConfigError, match="alpha must be"):
            long_prompt_embeds(mem_l, [SHORT], alpha=alpha)
        with pytest.raises(ConfigError, match="alpha must be"):
            sdxl_long_prompt_embeds(mem_l, mem_g, [SHORT], alpha=alpha)
    with pytest.raises(ConfigError, match="negative prompts"):
        long_prompt_embeds(mem_l, [SHORT, LONG], negative_prompts=["a", "b", "c"])
    plain = GeometricMemory(MemoryConfig(**{**vars(mem_l.config), "contextual_chunks": False}))
    plain.attach_encoder(native_l)
    with pytest.raises(ConfigError, match="contextual_chunks"):
        long_prompt_embeds(plain, [LONG], chunks=True)
    with caplog.at_level(logging.WARNING, logger="pentachora.diffusion.conditioning"):
        long_prompt_embeds(mem_l, ["a (red:1.3) cube"])
    assert "weighting syntax" in caplog.text and "LongPrompt" in caplog.text
