"""The miniature text-to-image model: diffusers' ``UNet2DConditionModel`` on the scene world.

Built from real parts, small enough to train on two CPU cores:

* **denoiser** — a diffusers ``UNet2DConditionModel`` whose cross-attention reads the frozen
  77-token window encoder's last hidden state ``(B, 77, H)`` (all-MiniLM-L6-v2 capped at 77 tokens,
  the stand-in for SD's CLIP-L). Like SD's UNet it is trained on captions that fit one window and
  never sees more than 77 positions; at sampling time it reads whatever length it is given
  (compel-style ``77·k`` concatenations included).
* **pixels** — images in ``[0, 1]`` are mapped to ``2x − 1`` and folded ``f × f`` into channels
  (``pixel_unshuffle``; lossless), so a 32×32 RGB canvas is a 16×16×12 tensor for ``f = 2``.
* **or a latent** — with ``first_stage`` set, a frozen autoencoder with diffusers' VAE surface (a
  :class:`~pentachora.autoencoders.LatentAutoencoder` checkpoint config) encodes the images instead, as
  in Stable Diffusion: training denoises ``normalize(latent_dist.sample())`` (per-channel
  ``latents_mean`` / ``latents_std``), sampling decodes ``decode(denormalize(z)).sample``. Its weights
  are part of this model's checkpoint; they are never trained here.
* **noise** — diffusers' ``DDPMScheduler`` for training (``v``- or ``ε``-prediction), DDIM or Euler
  for sampling, classifier-free guidance against the encoding of the empty prompt (as SD), which is
  kept in the checkpoint (``null_embedding``) so a model samples without its encoder.

The model computes its own loss (``forward(batch)``, the one Trainer trains it); all randomness of a
training step (noise, timesteps, caption dropout) comes from torch's global generator, which the
trainer seeds per step, so a resumed run is exact. :meth:`MiniT2I.generate` takes
``prompt_embeds`` / ``negative_prompt_embeds`` exactly as diffusers pipelines do; the pipeline that
adds the text encoder is :class:`pentachora.diffusion.MiniT2IPipeline`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from pentachora.data.scenes import SceneWorldConfig
from pentachora.errors import ConfigError, DataError
from pentachora.modeling import (
    MODEL_REGISTRY,
    ModelOutput,
    PentachoraModel,
    Presets,
    config_from_dict,
    register_model,
)

__all__ = ["PREDICTION_TYPES", "SAMPLERS", "MiniT2I", "MiniT2IConfig", "T2IOutput"]

SAMPLERS: tuple[str, ...] = ("ddim", "euler", "ddpm")
PREDICTION_TYPES: tuple[str, ...] = ("v_prediction", "epsilon")
BETA_SCHEDULES: tuple[str, ...] = ("squaredcos_cap_v2", "linear", "scaled_linear")


def _world_cpu() -> SceneWorldConfig:
    return SceneWorldConfig()


@dataclass
class MiniT2IConfig(Presets):
    """Configuration of :class:`MiniT2I`.

    Presets: ``cpu`` (32 px, 3×3 cells; 6.3M parameters; one background CPU training reaches the
    short-caption ceiling) and ``gpu`` (64 px, 4×4 cells, 8 colours × 5 shapes; wider UNet).

    Attributes:
        world: The scene world the model draws (canvas, grid, vocabulary).
        encoder: The frozen window encoder whose last hidden state conditions the UNet (a
            :class:`~pentachora.memory.FrozenTextEncoder` name: ``"minilm"``, ``"tiny-bert"``, a folder).
        encoder_window: Tokens per window of that encoder (77, like CLIP).
        cross_attention_dim: Width H of the encoder states.
        fold: Pixel folding factor ``f`` (``pixel_unshuffle``): the UNet works on ``H/f × W/f``
            (ignored with a ``first_stage``).
        first_stage: A frozen first stage, ``{"model_type": ..., "config": {...}}`` as its
            ``config.json`` (a registered model with diffusers' VAE surface, e.g.
            ``"latent-autoencoder"``); ``None``: pixels. Build one with :meth:`MiniT2IConfig.with_first_stage`.
        first_stage_width: Channels of the first stage's latent (checked against the built model).
        first_stage_stride: Pixels per latent cell along a side (checked likewise).
        block_out_channels: UNet channels per level.
        cross_attention_levels: Whether each level (top to bottom) has cross-attention blocks.
        layers_per_block: ResNet layers per level.
        attention_heads: Attention heads (diffusers' ``attention_head_dim``, which counts heads).
        norm_num_groups: GroupNorm groups.
        num_train_timesteps: DDPM timesteps.
        beta_schedule: DDPM beta schedule.
        prediction_type: ``"v_prediction"`` or ``"epsilon"``.
        cond_dropout_prob: Probability of training a caption as the empty prompt (for guidance).
        coord_channels: Concatenate fixed coordinate maps to the UNet's input, as inpainting UNets
            concatenate their mask: x, y in [−1, 1] and ``coord_frequencies`` Fourier pairs
            ``sin/cos(kπ·x)``, ``sin/cos(kπ·y)``. Convolutions are translation-equivariant; this tells
            every cross-attention query where on the canvas it is ("the top left corner").
        coord_frequencies: Fourier frequencies of the coordinate maps (0: x and y only).
        pooled_text: Add an attention-pooled summary of the encoder states to the timestep embedding
            (diffusers' ``addition_embed_type="text"``, DeepFloyd IF's text-time embedding), so every
            ResNet block sees the prompt; it is computed from ``prompt_embeds`` itself (no extra input),
            pooled within each 77-position window and averaged over the windows of a ``77·k`` input.
        text_adapter_kernel: A trainable adapter between the frozen encoder and the cross-attention
            (0: none): ``states + W_out·GELU(conv1d_k(W_in·LN(states)))`` with ``W_out`` zero-initialised,
            so it starts as the identity. It runs within each 77-position window (a ``77·k``
            concatenation stays k windows that do not see each other), mixing neighbouring tokens so a
            colour word can carry the position words of its own sentence: the frozen MiniLM states bind
            them only weakly, and the UNet learned positions far slower without it.
        text_adapter_width: Channels inside the adapter.
        snr_gamma: Min-SNR-γ loss weighting (Hang et al. 2023; diffusers' ``--snr_gamma``); 0 = plain MSE
            (the default: with v-prediction it down-weights the noisiest steps, where the layout is decided,
            and position binding learned slower with it).
        ema_decay: Exponential moving average of the UNet's weights (diffusers' ``EMAModel``, with its
            warm-up ``min(decay, (1 + n) / (10 + n))``), kept in the checkpoint and used for sampling;
            0 = none. :meth:`MiniT2I.update_ema` is called after every optimiser step by the recipe.
        sampler: Default sampler: ``"ddim"``, ``"euler"`` or ``"ddpm"``.
        sample_steps: Default sampling steps.
        guidance_scale: Default classifier-free guidance scale (1 = no guidance).
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "tiny": {"block_out_channels": (16, 32), "cross_attention_levels": (True, True), "attention_heads": 2,
                 "norm_num_groups": 8},
        "gpu": {"world": SceneWorldConfig.preset("gpu"), "block_out_channels": (128, 256, 256),
                "layers_per_block": 2, "attention_heads": 8, "norm_num_groups": 32},
    }  # fmt: skip
    preset_family = "mini-t2i"

    world: SceneWorldConfig = field(default_factory=_world_cpu)
    encoder: str = "minilm"
    encoder_window: int = 77
    cross_attention_dim: int = 384
    fold: int = 2
    first_stage: dict[str, Any] | None = None
    first_stage_width: int = 0
    first_stage_stride: int = 0
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    cross_attention_levels: tuple[bool, ...] = (True, True, False)
    layers_per_block: int = 1
    attention_heads: int = 4
    norm_num_groups: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    cond_dropout_prob: float = 0.1
    coord_channels: bool = True
    coord_frequencies: int = 2
    pooled_text: bool = True
    text_adapter_kernel: int = 9
    text_adapter_width: int = 128
    snr_gamma: float = 0.0
    ema_decay: float = 0.999
    sampler: str = "ddim"
    sample_steps: int = 25
    guidance_scale: float = 3.0

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.cross_attention_levels = tuple(bool(c) for c in self.cross_attention_levels)
        problems = []
        if len(self.cross_attention_levels) != len(self.block_out_channels):
            problems.append("cross_attention_levels needs one entry per block_out_channels level")
        if not any(self.cross_attention_levels):
            problems.append("at least one level needs cross-attention (else the text cannot reach the image)")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            problems.append(
                f"norm_num_groups {self.norm_num_groups} must divide every block_out_channels entry"
            )
        size = self.world.image_size
        if self.first_stage is not None:
            if not isinstance(self.first_stage, dict) or set(self.first_stage) != {"model_type", "config"}:
                problems.append(
                    'first_stage must be {"model_type": ..., "config": {...}} (a checkpoint config)'
                )
            if self.first_stage_width < 1 or self.first_stage_stride < 1:
                problems.append("a first_stage needs first_stage_width and first_stage_stride >= 1")
            stride = max(self.first_stage_stride, 1)
            if size % stride:
                problems.append(
                    f"the world's image_size {size} must be divisible by the first stage's stride {stride}"
                )
            down, what = 2 ** (len(self.block_out_channels) - 1), "2^(levels−1)"
            if (size // stride) % down:
                problems.append(f"the latent side {size // stride} must be divisible by {what} = {down}")
        else:
            down = self.fold * 2 ** (len(self.block_out_channels) - 1)
            if size % down:
                problems.append(
                    f"the world's image_size {size} must be divisible by fold·2^(levels−1) = {down}"
                )
        if self.sampler not in SAMPLERS:
            problems.append(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            problems.append(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        if self.beta_schedule not in BETA_SCHEDULES:
            problems.append(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.guidance_scale < 0:
            problems.append(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.snr_gamma < 0:
            problems.append(f"snr_gamma must be >= 0, got {self.snr_gamma}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if problems:
            raise ConfigError("invalid MiniT2IConfig: " + "; ".join(problems))

    @property
    def n_coord_channels(self) -> int:
        """Coordinate maps concatenated to the UNet's input."""
        return 2 + 4 * self.coord_frequencies if self.coord_channels else 0

    @property
    def latent_channels(self) -> int:
        """Channels of what the UNet denoises: ``3f²`` pixels, or the first stage's latent width."""
        return self.first_stage_width if self.first_stage is not None else 3 * self.fold * self.fold

    @property
    def latent_size(self) -> int:
        """Side of what the UNet denoises."""
        stride = self.first_stage_stride if self.first_stage is not None else self.fold
        return self.world.image_size // stride

    def with_first_stage(self, first_stage: Any) -> MiniT2IConfig:
        """A copy of this config that denoises in ``first_stage``'s latent (a model with diffusers' VAE
        surface and ``latent_channels`` / ``downsample``, e.g. a calibrated ``LatentAutoencoder``)."""
        from pentachora.modeling import config_to_dict

        return dataclasses.replace(
            self,
            first_stage={"model_type": first_stage.model_type, "config": config_to_dict(first_stage.config)},
            first_stage_width=int(first_stage.latent_channels),
            first_stage_stride=int(first_stage.downsample),
        )


class TokenConvAdapter(torch.nn.Module):
    """``(B, L, H) → (B, L, H)``: a residual convolution over the token axis within each window.

    ``x + W_out·GELU(conv1d(W_in·LN(x)))``; ``W_out`` starts at zero (identity). Inputs whose length is
    a multiple of ``window`` are processed window by window (no mixing across windows).
    """

    def __init__(self, dim: int, width: int, kernel: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.norm = torch.nn.LayerNorm(dim)
        self.inp = torch.nn.Linear(dim, width)
        self.conv = torch.nn.Conv1d(width, width, kernel, padding=kernel // 2)
        self.out = torch.nn.Linear(width, dim)
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        w = self.window if n % self.window == 0 else n
        y = x.reshape(b * (n // w), w, h)
        y = self.conv(self.inp(self.norm(y)).transpose(1, 2)).transpose(1, 2)
        return x + self.out(F.gelu(y)).reshape(b, n, h)


def _windowed_text_time_embedding(module: torch.nn.Module, window: int) -> None:
    """Make diffusers' ``TextTimeEmbedding`` (the pooled-text addition) pool each ``window``-position
    window alone and average the windows, in place (same parameters, same state-dict keys).

    On one window it is unchanged. Its attention pooling puts a class token beside the ``L`` keys, so on
    a ``77·k`` concatenation it is *not* invariant to repeating a window; pooled per window it is, and a
    concatenation pools like its windows (compel pads negatives with copies of the empty prompt).
    """
    base = type(module)

    class WindowedTextTimeEmbedding(base):  # type: ignore[misc, valid-type]
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            b, n, h = hidden_states.shape
            w = window if n % window == 0 else n
            pooled = super().forward(hidden_states.reshape(b * (n // w), w, h))
            return pooled.reshape(b, n // w, -1).mean(dim=1)

    module.__class__ = WindowedTextTimeEmbedding


@dataclass
class T2IOutput(ModelOutput):
    """Training output: the denoising MSE and what it was measured on."""

    mse: torch.Tensor | None = None
    dropped_fraction: float | None = None


@register_model
class MiniT2I(PentachoraModel):
    """The miniature text-to-image model (see the module docstring).

    Args:
        config: A :class:`MiniT2IConfig`.
    """

    model_type = "mini-t2i"
    config_class = MiniT2IConfig

    def __init__(self, config: MiniT2IConfig) -> None:
        super().__init__(config)
        from diffusers import UNet2DConditionModel

        self.first_stage = self._build_first_stage(config)
        levels = config.cross_attention_levels
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels))
        channels = config.latent_channels
        self.unet = UNet2DConditionModel(
            sample_size=config.latent_size,
            in_channels=channels + config.n_coord_channels,
            out_channels=channels,
            layers_per_block=config.layers_per_block,
            block_out_channels=config.block_out_channels,
            down_block_types=down,
            up_block_types=up,
            mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=config.cross_attention_dim,
            attention_head_dim=config.attention_heads,
            norm_num_groups=config.norm_num_groups,
            addition_embed_type="text" if config.pooled_text else None,
            addition_embed_type_num_heads=8,
        )
        self.register_buffer(
            "null_embedding", torch.zeros(config.encoder_window, config.cross_attention_dim), persistent=True
        )
        self.noise_scheduler = self._scheduler("ddpm")
        n = config.latent_size
        axis = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        maps = [xx, yy]
        for k in range(1, config.coord_frequencies + 1):
            for v in (xx, yy):
                maps += [torch.sin(k * torch.pi * v), torch.cos(k * torch.pi * v)]
        self.register_buffer("coords", torch.stack(maps), persistent=False)
        if config.pooled_text:
            _windowed_text_time_embedding(self.unet.add_embedding, config.encoder_window)
        if config.text_adapter_kernel > 0:
            self.unet.text_adapter = TokenConvAdapter(
                config.cross_attention_dim,
                config.text_adapter_width,
                config.text_adapter_kernel,
                config.encoder_window,
            )
        if config.ema_decay > 0:
            self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False).eval()
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _build_first_stage(config: MiniT2IConfig) -> torch.nn.Module | None:
        """The frozen first stage the config describes (``None`` for pixels)."""
        if config.first_stage is None:
            return None
        kind = config.first_stage["model_type"]
        target = MODEL_REGISTRY.get(kind)
        if target is None:
            raise ConfigError(
                f"first stage {kind!r} is not a registered model (import pentachora.autoencoders first, or "
                f"load through pentachora.recipes.load_model); registered: {sorted(MODEL_REGISTRY)}"
            )
        stage = target(config_from_dict(target.config_class, config.first_stage["config"], ConfigError))
        for name in ("encode", "decode", "normalize", "denormalize"):
            if not callable(getattr(stage, name, None)):
                raise ConfigError(f"first stage {kind!r} lacks {name}() (it needs diffusers' VAE surface)")
        got = (int(stage.latent_channels), int(stage.downsample))
        if got != (config.first_stage_width, config.first_stage_stride):
            raise ConfigError(
                f"first stage {kind!r} has {got[0]} latent channels at stride {got[1]}; the config says "
                f"first_stage_width={config.first_stage_width}, first_stage_stride={config.first_stage_stride}"
            )
        return stage.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> MiniT2I:
        """Train mode for the UNet; a first stage stays frozen in eval mode."""
        super().train(mode)
        if self.first_stage is not None:
            self.first_stage.eval()
        return self

    def _scheduler(self, kind: str) -> Any:
        from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

        c = self.config
        base = DDPMScheduler(
            num_train_timesteps=c.num_train_timesteps,
            beta_schedule=c.beta_schedule,
            prediction_type=c.prediction_type,
            clip_sample=False,
        )
        if kind == "ddpm":
            return base
        if kind == "ddim":
            return DDIMScheduler.from_config(base.config, set_alpha_to_one=True, timestep_spacing="trailing")
        if kind == "euler":
            return EulerDiscreteScheduler.from_config(base.config, timestep_spacing="trailing")
        raise ConfigError(f"sampler must be one of {SAMPLERS}, got {kind!r}")

    def set_null_embedding(self, embedding: torch.Tensor) -> None:
        """Store the encoder's encoding of the empty prompt ``(W, H)``: the unconditional input."""
        expected = tuple(self.null_embedding.shape)
        if tuple(embedding.shape) != expected:
            raise DataError(f"the null embedding must be {expected}, got {tuple(embedding.shape)}")
        if not torch.isfinite(embedding).all():
            raise DataError("the null embedding holds NaN or infinite values")
        with torch.no_grad():
            self.null_embedding.copy_(embedding.to(self.null_embedding))

    @property
    def has_null_embedding(self) -> bool:
        return bool(self.null_embedding.abs().sum() > 0)

    def to_latent(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → what the UNet denoises: ``(B, 3f², H/f, W/f)`` in [−1, 1] (lossless
        fold), or with a first stage its normalised latent ``(B, c, H/s, W/s)`` — a posterior draw in
        training mode (as latent-diffusion training samples ``latent_dist``), the mode in eval mode."""
        size = self.config.world.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise DataError(f"expected images (B, 3, {size}, {size}) in [0, 1], got {tuple(images.shape)}")
        x = images * 2 - 1
        if self.first_stage is None:
            return F.pixel_unshuffle(x, self.config.fold)
        with torch.no_grad():
            posterior = self.first_stage.encode(x.float()).latent_dist
            z = posterior.sample() if self.training else posterior.mode()
            return self.first_stage.normalize(z.float())

    def from_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_latent` (decoding through the first stage when there is one), clamped to [0, 1]."""
        if self.first_stage is None:
            x = F.pixel_shuffle(latents, self.config.fold)
        else:
            x = self.first_stage.decode(self.first_stage.denormalize(latents.float())).sample
        return ((x.float() + 1) / 2).clamp(0.0, 1.0)

    def denoise(
        self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, ema: bool = False
    ) -> torch.Tensor:
        """The UNet's prediction for latents ``x`` ``(B, 3f², h, w)`` at timesteps ``t`` given ``states``
        (``ema=True``: with the averaged weights, when the model keeps them)."""
        if self.config.coord_channels:
            x = torch.cat([x, self.coords.to(x.dtype).expand(x.shape[0], -1, -1, -1)], dim=1)
        unet = self.ema_unet if ema and self.config.ema_decay > 0 else self.unet
        if self.config.text_adapter_kernel > 0:
            states = unet.text_adapter(states)
        return unet(x, t, encoder_hidden_states=states).sample

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates (the UNet's and its text adapter's; the EMA copy is
        averaged, not trained)."""
        return list(self.unet.parameters())

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA step of the sampling weights towards the trained ones (after an optimiser step)."""
        if self.config.ema_decay <= 0:
            return
        n = int(self.ema_updates)
        decay = min(self.config.ema_decay, (1 + n) / (10 + n))
        for ema, p in zip(self.ema_unet.parameters(), self.unet.parameters(), strict=True):
            ema.lerp_(p.detach(), 1.0 - decay)
        for ema, b in zip(self.ema_unet.buffers(), self.unet.buffers(), strict=True):
            ema.copy_(b)
        self.ema_updates += 1

    def _check_states(self, states: torch.Tensor, name: str) -> None:
        h = self.config.cross_attention_dim
        if states.ndim != 3 or states.shape[-1] != h or states.shape[1] < 1:
            raise DataError(f"{name} must be (B, L, {h}) encoder states, got {tuple(states.shape)}")
        if not torch.isfinite(states).all():
            raise DataError(f"{name} holds NaN or infinite values")

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict[str, torch.Tensor]) -> T2IOutput:
        """Denoising loss on ``{"pixel_values" (B,3,H,W) in [0,1], "encoder_hidden_states" (B,W,H)}``.

        Caption dropout, the noise and the timesteps come from torch's global generator.
        """
        x0 = self.to_latent(batch["pixel_values"])
        states = batch["encoder_hidden_states"]
        self._check_states(states, "encoder_hidden_states")
        b = x0.shape[0]
        drop = torch.rand(b, device=x0.device) < self.config.cond_dropout_prob
        states = torch.where(
            drop[:, None, None], self.null_embedding.to(states.dtype).expand_as(states), states
        )
        loss, mse = self.denoising_loss(x0, states)
        return T2IOutput(loss=loss, mse=mse.detach(), dropped_fraction=float(drop.float().mean()))

    def denoising_loss(
        self, x0: torch.Tensor, states: torch.Tensor, ema: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, mse)`` of one denoising step: the training objective without caption dropout.

        Noise and timesteps (uniform over the training schedule) come from torch's global generator.
        Differentiable in ``states`` as well as in the UNet, so a frozen model can train what
        conditions it (see :mod:`pentachora.recipes.memory_image`).

        Args:
            x0: ``(B, 3f², h, w)`` clean latents (:meth:`to_latent`).
            states: ``(B, L, H)`` conditioning.
            ema: Denoise with the averaged weights (when the model keeps them).
        """
        b = x0.shape[0]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.config.num_train_timesteps, (b,), device=x0.device)
        sched = self.noise_scheduler
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t) if self.config.prediction_type == "v_prediction" else noise
        pred = self.denoise(xt, t, states, ema=ema)
        per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        mse = per_sample.mean()
        if self.config.snr_gamma > 0:
            alphas = sched.alphas_cumprod.to(x0.device)[t]
            snr = alphas / (1 - alphas)
            weight = snr.clamp(max=self.config.snr_gamma) / (
                snr + 1 if self.config.prediction_type == "v_prediction" else snr
            )
            return (weight * per_sample).mean(), mse.detach()
        return mse, mse.detach()

    # ------------------------------------------------------------------ sampling
    def _predict(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        scale: float,
        ema: bool,
    ) -> torch.Tensor:
        if uncond is None or scale == 1.0:
            return self.denoise(x, t, cond, ema)
        if uncond.shape == cond.shape:
            out_u, out_c = self.denoise(torch.cat([x, x]), t, torch.cat([uncond, cond]), ema).chunk(2)
        else:  # e.g. a 77·k concatenation against the 77-position empty prompt: two passes
            out_u = self.denoise(x, t, uncond, ema)
            out_c = self.denoise(x, t, cond, ema)
        return out_u + scale * (out_c - out_u)

    @torch.no_grad()
    def generate(
        self,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sampler: str | None = None,
        latents: torch.Tensor | None = None,
        use_ema: bool = True,
    ) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] from encoder states, as a diffusers pipeline makes them.

        Args:
            prompt_embeds: ``(B, L, H)`` conditioning; any length L (77, or 77·k for concatenation).
            negative_prompt_embeds: ``(B, L', H)`` for guidance; default: the stored empty prompt.
            guidance_scale: Classifier-free guidance (default: the config's; ≤ 1 disables it).
            num_inference_steps: Sampling steps (default: the config's).
            generator: Seeds the initial noise (one generator, or one per image as diffusers allows).
            sampler: ``"ddim"``, ``"euler"`` or ``"ddpm"`` (default: the config's).
            latents: Initial noise ``(B, 3f², H/f, W/f)`` instead of drawing it.
            use_ema: Sample with the averaged weights (when the model keeps them; the default).

        Raises:
            DataError: Misshapen or non-finite embeddings, or guidance without a stored empty prompt.
        """
        c = self.config
        self._check_states(prompt_embeds, "prompt_embeds")
        scale = c.guidance_scale if guidance_scale is None else float(guidance_scale)
        steps = c.sample_steps if num_inference_steps is None else int(num_inference_steps)
        if steps < 1:
            raise ConfigError(f"num_inference_steps must be >= 1, got {steps}")
        b = prompt_embeds.shape[0]
        device, dtype = self.null_embedding.device, self.null_embedding.dtype
        cond = prompt_embeds.to(device, dtype)
        uncond = None
        if scale > 1.0:
            if negative_prompt_embeds is not None:
                self._check_states(negative_prompt_embeds, "negative_prompt_embeds")
                if negative_prompt_embeds.shape[0] != b:
                    raise DataError(
                        f"negative_prompt_embeds has {negative_prompt_embeds.shape[0]} rows for {b} prompts"
                    )
                uncond = negative_prompt_embeds.to(device, dtype)
            else:
                if not self.has_null_embedding:
                    raise DataError(
                        "this model has no stored empty-prompt embedding (set_null_embedding); pass "
                        "negative_prompt_embeds or guidance_scale=1"
                    )
                uncond = self.null_embedding.expand(b, -1, -1)
        shape = (b, c.latent_channels, c.latent_size, c.latent_size)
        if latents is None:
            if isinstance(generator, list):
                if len(generator) != b:
                    raise DataError(f"{len(generator)} generators for {b} images")
                x = torch.stack([torch.randn(shape[1:], generator=g) for g in generator])
            else:
                x = torch.randn(shape, generator=generator)
        else:
            if tuple(latents.shape) != shape:
                raise DataError(f"latents must be {shape}, got {tuple(latents.shape)}")
            x = latents.clone()
        x = x.to(device, dtype)
        scheduler = self._scheduler(sampler or c.sampler)
        scheduler.set_timesteps(steps)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(x, t)
            out = self._predict(inp, t, cond, uncond, scale, use_ema)
            x = scheduler.step(
                out, t, x, generator=generator if not isinstance(generator, list) else None
            ).prev_sample
        return self.from_latent(x.float())

    def describe(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "world": dataclasses.asdict(self.config.world),
            "params": self.num_parameters(),
            "latent": [self.config.latent_channels, self.config.latent_size, self.config.latent_size],
            "first_stage": None if self.first_stage is None else self.config.first_stage["model_type"],
            "unet_params": sum(p.numel() for p in self.unet.parameters()),
            "has_null_embedding": self.has_null_embedding,
        }
