"""Long-prompt conditioning for diffusers, checked on a tiny UNet built from a config (no weights)."""

from __future__ import annotations

import pytest
import torch

from pentachora.memory import FrozenTextEncoder, GeometricMemory, MemoryConfig

diffusers = pytest.importorskip("diffusers")

LONG = " ".join(["a silver goblet of wine beside a half peeled lemon"] * 12) + " and pink tulips"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def memory() -> GeometricMemory:
    torch.manual_seed(0)
    config = MemoryConfig(
        encoder="tiny-clip", teacher="tiny-clip", extraction_layers=(1, 2), hidden_size=32, teacher_dim=32,
        dim=32, n_heads=4, n_anchors=16, ffn_mult=2,
    )  # fmt: skip
    return GeometricMemory(config)


def test_sd15_prompt_embeds_drive_a_tiny_unet(memory):
    from pentachora.diffusion import long_prompt_embeds

    embeds = long_prompt_embeds(memory, [LONG, "a red cube"], negative_prompts="")
    assert embeds.prompt_embeds.shape == (2, 77, 32) and embeds.negative_prompt_embeds.shape == (2, 77, 32)
    assert int(embeds.n_tokens[0]) > 75  # the long prompt was read past the 77-token window
    native = long_prompt_embeds(memory, [LONG], alpha=0.0).prompt_embeds
    ref, _ = memory.load_encoder().native_sequence([LONG])
    torch.testing.assert_close(native, ref)  # alpha = 0 is what the pipeline does by itself
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )  # fmt: skip
    kwargs = embeds.pipeline_kwargs()
    assert set(kwargs) == {"prompt_embeds", "negative_prompt_embeds"}
    with torch.no_grad():
        out = unet(
            torch.randn(2, 4, 8, 8), torch.tensor([10, 10]), encoder_hidden_states=kwargs["prompt_embeds"]
        )
    assert out.sample.shape == (2, 4, 8, 8) and torch.isfinite(out.sample).all()


def test_sdxl_concatenates_two_towers(memory):
    from pentachora.diffusion import sdxl_long_prompt_embeds

    native_g = FrozenTextEncoder.from_pretrained("tiny-clip", layers=(1, 2), target_layer="penultimate")
    embeds = sdxl_long_prompt_embeds(memory, native_g, [LONG], negative_prompts=[""])
    assert embeds.prompt_embeds.shape == (1, 77, 64)
    assert embeds.pooled_prompt_embeds.shape == (1, 32) and embeds.negative_pooled_prompt_embeds.shape == (
        1,
        32,
    )
    half = embeds.to(dtype=torch.float16)
    assert half.prompt_embeds.dtype == torch.float16
