"""One preset mechanism for every model family, and the listing across families."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

import pentachora.autoencoders as ae
import pentachora.memory as memory
from pentachora.cli import app
from pentachora.errors import ConfigError
from pentachora.modeling import (
    MODEL_REGISTRY,
    Presets,
    UnknownConfigFieldError,
    describe_preset,
    list_presets,
)

FAMILIES = {
    "patch_svae": (ae.PatchSVAEConfig, "tiny", {"fresnel", "freckles", "tiny"}),
    "geovae": (ae.GeoVAEConfig, "tiny-48", {"48:1", "12:1", "tiny-48", "tiny-12"}),
    "autoencoder_kl": (ae.AutoencoderKLAdapterConfig, "tiny-f8c4", {"tiny-f8c4", "tiny-f8c16", "small-f8c4", "small-f8c16"}),
    "geometric_memory": (memory.MemoryConfig, "minilm-tiny", {"minilm-tiny", "minilm-tiny-long", "minilm-tiny-image", "minilm", "clip-l", "sdxl-bigg"}),
}  # fmt: skip


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_family_uses_the_one_mechanism(model_type):
    config_class, name, names = FAMILIES[model_type]
    assert issubclass(config_class, Presets)
    assert MODEL_REGISTRY[model_type].config_class is config_class
    assert set(config_class.preset_names()) == names
    # the preset method is the mixin's, not a per-family copy
    assert config_class.preset.__func__ is Presets.preset.__func__
    assert "preset" not in vars(config_class) and "preset_names" not in vars(config_class)
    # presets are class attributes, never dataclass fields (they must not reach config.json)
    assert "presets" not in {f.name for f in dataclasses.fields(config_class)}
    cfg = config_class.preset(name)
    assert isinstance(cfg, config_class)
    for key, value in config_class.presets[name].items():
        got = getattr(cfg, key)
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == (
            tuple(value) if isinstance(value, (list, tuple)) else value
        )


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_unknown_names_and_fields_are_refused_with_the_valid_ones(model_type):
    config_class, name, _ = FAMILIES[model_type]
    with pytest.raises(ConfigError, match=r"unknown .* preset 'nope'; known: ") as err:
        config_class.preset("nope")
    assert name in str(err.value)
    with pytest.raises(UnknownConfigFieldError, match=r"unknown \w+Config field\(s\) \['bogus'\]") as err:
        config_class.preset(name, bogus=1)
    # the message lists the valid fields; the error is a ConfigError and (as before) a TypeError
    first_field = dataclasses.fields(config_class)[0].name
    assert "valid fields" in str(err.value) and first_field in str(err.value)
    assert isinstance(err.value, ConfigError) and isinstance(err.value, TypeError)


def test_overrides_beat_the_preset_and_are_validated():
    cfg = ae.GeoVAEConfig.preset("tiny-12", latent_dim=31, cv_samples=8)
    assert cfg.latent_dim == 31 and cfg.patch_size == 8 and cfg.cv_samples == 8
    with pytest.raises(ValueError, match="cv_points"):
        ae.GeoVAEConfig.preset("tiny-12", cv_points=2)  # __post_init__ still runs
    # AutoencoderKL used to skip the unknown-field check (a raw dataclass TypeError)
    with pytest.raises(UnknownConfigFieldError, match="valid fields"):
        ae.AutoencoderKLAdapterConfig.preset("tiny-f8c4", latent=4)


def test_the_container_does_not_inherit_geovae_presets():
    assert ae.BatteryContainerConfig.preset_names() == []
    with pytest.raises(ConfigError, match="unknown BatteryContainer preset"):
        ae.BatteryContainerConfig.preset("tiny-48")


def test_list_presets_covers_every_registered_family():
    listing = list_presets()
    assert set(listing) == set(MODEL_REGISTRY)
    for model_type, (_, _, names) in FAMILIES.items():
        assert set(listing[model_type]) == names
    assert listing["battery_bank"] == [] and listing["battery_container"] == []
    assert list_presets({"geovae": ae.GeoVAE}) == {"geovae": sorted(FAMILIES["geovae"][2])}


def test_describe_preset_counts_what_the_model_builds():
    row = describe_preset("geovae", "tiny-48")
    assert row["params"] == 1_720_491  # the count the GeoVAE docs state
    assert row["latent_floats_per_patch"] == 16 and row["patch"] == "16×16×3"
    svae = describe_preset("patch_svae", "tiny")
    assert svae["params"] == ae.PatchSVAE(ae.PatchSVAEConfig.preset("tiny")).num_parameters()
    assert svae["latent_floats_per_patch"] == 32 * 8 + 8 + 8 * 8  # U, S and Vᵀ: no bottleneck
    assert describe_preset("battery_bank")["preset"] is None
    with pytest.raises(ConfigError, match="unknown model type"):
        describe_preset("nope")


def test_cli_models_lists_every_family(tmp_path):
    out = tmp_path / "models.json"
    r = CliRunner().invoke(app, ["models", "--no-params", "--json", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert {row["model_type"] for row in rows} == set(MODEL_REGISTRY)
    assert {row["preset"] for row in rows if row["model_type"] == "geovae"} == FAMILIES["geovae"][2]
    assert "tiny-12" in r.output and "(defaults)" in r.output
    r = CliRunner().invoke(app, ["models", "-f", "geovae", "-f", "patch_svae"], catch_exceptions=False)
    assert r.exit_code == 0 and "1,720,491" in r.output and "minilm" not in r.output
    r = CliRunner().invoke(app, ["models", "-f", "nope"])
    assert r.exit_code == 2 and "unknown model type" in r.output
