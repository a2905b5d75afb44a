"""Contract tests of latent quantisation and bit counting (pentachora.autoencoders.quantize)."""

from __future__ import annotations

import lzma
import zlib

import pytest
import torch

from pentachora.autoencoders.geovae import GeoVAE, GeoVAEConfig
from pentachora.autoencoders.quantize import SIDE_BITS_PER_CHANNEL, latent_roundtrip, quantize
from pentachora.autoencoders.svae import PatchSVAE, PatchSVAEConfig


@pytest.mark.parametrize("bits", [2, 4, 8, 12])
def test_round_trip_within_half_a_step_and_exact_at_the_ends(bits):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 3) * torch.tensor([1.0, 10.0, 0.1, 3.0, 100.0]).view(1, 5, 1, 1)
    q = quantize(x, bits=bits, channel_dim=1)
    y = q.dequantize()
    step = (q.hi - q.lo) / (2**bits - 1)
    err = (y - x).abs().amax(dim=(0, 2, 3))
    assert torch.all(err <= step / 2 * (1 + 1e-5) + 1e-6)
    assert int(q.symbols.min()) == 0 and int(q.symbols.max()) == 2**bits - 1
    torch.testing.assert_close(y.amax(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3)))
    torch.testing.assert_close(y.amin(dim=(0, 2, 3)), x.amin(dim=(0, 2, 3)))


def test_bit_counts_raw_and_coded():
    x = torch.zeros(1, 4, 8, 8)
    x[:, :, :4] = 1.0  # two values per channel → a very compressible symbol plane
    q = quantize(x, bits=8)
    side = 4 * SIDE_BITS_PER_CHANNEL
    assert q.raw_bits == 4 * 64 * 8 + side
    assert q.coded_bits("zlib") == 8 * len(zlib.compress(q.symbol_bytes(), 9)) + side
    assert (
        q.coded_bits("lzma")
        == 8 * len(lzma.compress(q.symbol_bytes(), preset=9 | lzma.PRESET_EXTREME)) + side
    )
    assert q.coded_bits("zlib") < q.raw_bits
    assert len(q.symbol_bytes()) == 4 * 64
    with pytest.raises(ValueError, match="unknown coder"):
        q.coded_bits("brotli")
    # a constant channel does not divide by zero and round-trips exactly
    c = quantize(torch.full((1, 2, 3, 3), 0.7))
    torch.testing.assert_close(c.dequantize(), torch.full((1, 2, 3, 3), 0.7))


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="bits"):
        quantize(torch.zeros(1, 2, 2, 2), bits=0)
    with pytest.raises(ValueError, match="NaN"):
        quantize(torch.tensor([[float("nan")]]))


SMALL_GEO = dict(
    patch_size=8, V=16, D=8, enc_hidden=32, dec_hidden=32, enc_depth=1, dec_depth=1,
    bottleneck_hidden=16, inverse_hidden=16, cv_patches=4, cv_points=16, cv_samples=8,
)  # fmt: skip


def test_latent_roundtrip_counts_what_the_decoder_reads():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 32) * 2 - 1
    geo = GeoVAE(GeoVAEConfig(**SMALL_GEO))
    r = latent_roundtrip(geo, x, bits=8)
    n_patch = (16 // 8) * (32 // 8)
    assert r.floats == n_patch * geo.latent_floats_per_patch
    assert r.raw_bits == r.floats * 8 + geo.latent_floats_per_patch * SIDE_BITS_PER_CHANNEL
    assert r.bpp() == r.raw_bits / (16 * 32) and set(r.coded_bits) == {"zlib", "lzma"}
    # 16-bit quantisation is nearly lossless; 8 bits already close
    exact = geo.reconstruct(x)
    assert (latent_roundtrip(geo, x, bits=16).recon - exact).abs().max() < 1e-3
    assert (r.recon - exact).abs().max() < 0.2

    nosvd = PatchSVAE(PatchSVAEConfig(patch_size=8, V=16, D=8, hidden=32, depth=1, readout="linear"))
    assert latent_roundtrip(nosvd, x).floats == n_patch * nosvd.latent_floats_per_patch
    svae = PatchSVAE(PatchSVAEConfig(patch_size=8, V=16, D=8, hidden=32, depth=1))
    rs = latent_roundtrip(svae, x)
    assert rs.floats == n_patch * svae.latent_floats_per_patch  # U, S and Vh: V·D + D + D²
    assert rs.recon.shape == x.shape
