"""The mask-conditioned latent diffusion network (Truong et al., SPIE Medical Imaging 2024).

Two MONAI networks in one module so that one checkpoint holds them:

- ``autoencoder``: a 3D ``AutoencoderKL`` from the four contrasts (4, X, Y, Z) to an 8-channel latent at a quarter
  of the resolution (two downsamplings: 4×128×128×64 → 8×32×32×16 in the paper).
  With ``ae_decoder="spade"`` the autoencoder is MONAI's ``SPADEAutoencoderKL``: the same encoder, and a decoder
  whose normalisations are modulated by the tumour's region channels and the class at every resolution (SPADE, Park
  et al. 2019; as the brain LDMs of Fernandez et al. 2022, "brainSPADE"). A latent at a quarter of the grid cannot
  hold a one-voxel enhancing rim; the decoder then draws it where the mask puts it.
- ``unet``: a 3D ``DiffusionModelUNet`` predicting the noise ε of a latent. The tumour mask, as three nested region
  channels (WT, TC, ET), is area-downsampled to the latent grid and concatenated to the noisy latent. The tumour class
  enters through a class embedding added to the timestep embedding (index 0 = unconditional/unknown); the paper
  describes cross-attention for the class, which for a single class token carries the same information.

Constructor arguments are plain JSON values: they are stored as ``config["network"]`` and the network is rebuilt
with ``MaskConditionedLDM(**config["network"])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet, SPADEAutoencoderKL
from torch import nn


def plain_spade_modulation(module: nn.Module) -> int:
    """Drop the instance normalisation MONAI's ``SPADE`` applies to its γ and β maps (its ``mlp_gamma``/``mlp_beta``
    are ``Convolution`` blocks with the default norm), so they are plain convolutions as in Park et al.'s SPADE.
    Normalised, γ and β have zero mean and unit variance over each volume whatever their weights: a modulation
    cannot start at zero (a trained decoder then cannot be extended without changing its output), cannot carry a
    learnt constant scale, and amplifies the first small weight update to full strength. No weights change name;
    the number of blocks changed is returned."""
    changed = 0
    for name, child in module.named_modules():
        if name.endswith(("mlp_gamma", "mlp_beta")) and hasattr(child, "adn"):
            child.adn = nn.Identity()
            changed += 1
    return changed


class MaskConditionedLDM(nn.Module):
    scale_factor: torch.Tensor  # () buffer, registered in __init__

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        image_channels: int = 4,
        latent_channels: int = 8,
        mask_channels: int = 3,
        num_classes: int = 2,
        ae_channels: Sequence[int] = (64, 128, 128),
        ae_num_res_blocks: int | Sequence[int] = 2,
        ae_attention_levels: Sequence[bool] = (False, False, False),
        ae_norm_num_groups: int = 32,
        unet_channels: Sequence[int] = (256, 512, 768),
        unet_num_res_blocks: int | Sequence[int] = 2,
        unet_attention_levels: Sequence[bool] = (False, True, True),
        unet_num_head_channels: int | Sequence[int] = 64,
        unet_norm_num_groups: int = 32,
        ae_decoder: str = "plain",
        ae_spade_channels: int = 32,
    ) -> None:
        super().__init__()
        if len(ae_channels) < 2:
            raise ValueError(f"ae_channels needs at least two levels (one downsampling), got {list(ae_channels)}")
        self.image_channels = image_channels
        self.latent_channels = latent_channels
        self.mask_channels = mask_channels
        self.num_classes = num_classes
        self.downsampling = 2 ** (len(ae_channels) - 1)
        if ae_decoder not in ("plain", "spade"):
            raise ValueError(f"ae_decoder must be 'plain' or 'spade', got {ae_decoder!r}")
        self.ae_decoder = ae_decoder
        # The MONAI constructor arguments, kept (plain JSON values) so a MONAI bundle can rebuild the same networks.
        self.autoencoder_args: dict[str, Any] = dict(
            spatial_dims=spatial_dims,
            in_channels=image_channels,
            out_channels=image_channels,
            latent_channels=latent_channels,
            channels=list(ae_channels),
            num_res_blocks=ae_num_res_blocks if isinstance(ae_num_res_blocks, int) else list(ae_num_res_blocks),
            attention_levels=list(ae_attention_levels),
            norm_num_groups=ae_norm_num_groups,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
            use_flash_attention=True,
        )
        self.unet_args: dict[str, Any] = dict(
            spatial_dims=spatial_dims,
            in_channels=latent_channels + mask_channels,
            out_channels=latent_channels,
            channels=list(unet_channels),
            num_res_blocks=unet_num_res_blocks if isinstance(unet_num_res_blocks, int) else list(unet_num_res_blocks),
            attention_levels=list(unet_attention_levels),
            num_head_channels=(
                unet_num_head_channels if isinstance(unet_num_head_channels, int) else list(unet_num_head_channels)
            ),
            norm_num_groups=unet_norm_num_groups,
            num_class_embeds=num_classes + 1,
            use_flash_attention=True,
        )
        if ae_decoder == "spade":
            # the decoder's label map: the region channels, then the class one-hot (all zeros: unknown class)
            self.autoencoder_args.update(
                label_nc=self.decoder_label_channels, spade_intermediate_channels=ae_spade_channels
            )
        self.autoencoder: AutoencoderKL | SPADEAutoencoderKL = (
            SPADEAutoencoderKL(**self.autoencoder_args)
            if ae_decoder == "spade"
            else AutoencoderKL(**self.autoencoder_args)
        )
        if isinstance(self.autoencoder, SPADEAutoencoderKL):
            plain_spade_modulation(self.autoencoder)
        self.unet = DiffusionModelUNet(**self.unet_args)
        # 1 / std of the training latents, so the diffusion sees unit-variance latents; set by the trainer.
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """The latent's spatial shape for an image grid; each side must divide by the downsampling factor."""
        if any(n % self.downsampling for n in image_shape):
            raise ValueError(
                f"image grid {tuple(image_shape)} must be divisible by {self.downsampling} on every axis "
                f"(the autoencoder downsamples {len(image_shape)}D images by {self.downsampling})"
            )
        return tuple(n // self.downsampling for n in image_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, X, Y, Z) → scaled latents (B, L, X/f, Y/f, Z/f), from the posterior mean."""
        z_mu, _ = self.autoencoder.encode(x)
        return z_mu * self.scale_factor

    @property
    def decoder_label_channels(self) -> int:
        return self.mask_channels + self.num_classes

    def decoder_labels(self, regions: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """The SPADE decoder's label map (B, 3 + classes, X, Y, Z): region channels at image resolution, then the
        class (index k ≥ 1 of ``class_labels``) as a constant one-hot channel; index 0 (unknown) sets none."""
        b, shape = regions.shape[0], regions.shape[2:]
        onehot = F.one_hot(class_labels.long().to(regions.device), self.num_classes + 1)[:, 1:]  # (B, classes)
        onehot = onehot.to(regions.dtype).view(b, self.num_classes, *([1] * len(shape))).expand(-1, -1, *shape)
        return torch.cat([regions, onehot], dim=1)

    def _seg(self, regions: torch.Tensor | None, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        if regions is None:
            raise ValueError("this autoencoder's decoder is conditioned on the tumour (SPADE): pass its regions")
        if regions.shape[0] != batch:
            regions = regions.expand(batch, *regions.shape[1:])
        if class_labels is None:
            class_labels = torch.zeros(batch, dtype=torch.long, device=regions.device)
        return self.decoder_labels(regions, class_labels)

    def decode_unscaled(
        self, z: torch.Tensor, regions: torch.Tensor | None = None, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Autoencoder latents (not scaled) → images; ``regions`` (B, 3, X, Y, Z) and ``class_labels`` (B,) reach a
        SPADE decoder and are ignored by a plain one."""
        if isinstance(self.autoencoder, SPADEAutoencoderKL):
            seg = self._seg(regions, class_labels, z.shape[0]).to(z.dtype)
            return self.autoencoder.decode(z, seg)
        return self.autoencoder.decode(z)

    def decode(
        self, z: torch.Tensor, regions: torch.Tensor | None = None, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled latents (B, L, x, y, z) → images (B, C, X, Y, Z). The unscaling is done in fp32 (a bf16 network
        keeps ``scale_factor`` in fp32), then in the decoder's own dtype. A SPADE decoder needs the tumour's
        ``regions`` at image resolution (B or 1, 3, X, Y, Z) and takes the ``class_labels`` (B,; 0 = unknown)."""
        dtype = next(self.autoencoder.decoder.parameters()).dtype
        return self.decode_unscaled((z.float() / self.scale_factor.float()).to(dtype), regions, class_labels)

    def reconstruct(
        self, x: torch.Tensor, regions: torch.Tensor | None = None, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The autoencoder's reconstruction of images (B, C, X, Y, Z) from the posterior mean."""
        z_mu, _ = self.autoencoder.encode(x)
        return self.decode_unscaled(z_mu, regions, class_labels)

    def autoencoder_forward(
        self, x: torch.Tensor, regions: torch.Tensor, class_labels: torch.Tensor, autoencoder: nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction from a posterior sample, μ, σ), as MONAI's ``forward``; ``autoencoder``: the same network
        under a wrapper (DistributedDataParallel in training)."""
        ae = autoencoder or self.autoencoder
        if isinstance(self.autoencoder, SPADEAutoencoderKL):
            return ae(x, self._seg(regions, class_labels, x.shape[0]).to(x.dtype))
        return ae(x)

    def spade_from_plain(self, plain: dict[str, torch.Tensor]) -> None:
        """Load a plain ``AutoencoderKL`` state dict (keys without the ``autoencoder.`` prefix) into this SPADE
        autoencoder so that it decodes exactly as the plain one did: encoder and convolutions copied, and each
        decoder normalisation's learnt scale and shift moved into its SPADE modulation's biases (γ = w − 1, β = b)
        with zero weights, so the label map starts with no effect (as ControlNet's zero convolutions)."""
        if not isinstance(self.autoencoder, SPADEAutoencoderKL):
            raise TypeError("spade_from_plain needs ae_decoder='spade'")
        own = self.autoencoder.state_dict()
        loaded = {k: v for k, v in plain.items() if k in own and own[k].shape == v.shape}
        moved = 0
        for key, value in plain.items():
            for norm in (".norm1.", ".norm2."):
                if key.startswith("decoder.") and norm in key and key.endswith((".weight", ".bias")):
                    stem, kind = key.rsplit(".", 1)
                    gamma, beta = f"{stem}.mlp_gamma.conv", f"{stem}.mlp_beta.conv"
                    if f"{gamma}.weight" not in own:
                        continue
                    for name in (f"{gamma}.weight", f"{beta}.weight"):
                        loaded[name] = torch.zeros_like(own[name])
                    if kind == "weight":
                        loaded[f"{gamma}.bias"] = value - 1
                    else:
                        loaded[f"{beta}.bias"] = value.clone()
                    moved += 1
        missing = [k for k in own if k not in loaded and ".mlp_shared." not in k]
        if missing or not moved:
            raise ValueError(
                f"not a plain AutoencoderKL of this shape: {len(missing)} weights missing (e.g. {missing[:3]})"
            )
        self.autoencoder.load_state_dict(loaded, strict=False)

    def condition(self, mask: torch.Tensor) -> torch.Tensor:
        """Region channels at image resolution (B, 3, X, Y, Z) → their fractions per latent voxel (B, 3, x, y, z)."""
        return F.interpolate(mask, size=self.latent_shape(mask.shape[2:]), mode="area")

    def denoise(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        class_labels: torch.Tensor,
        unet: nn.Module | None = None,
    ) -> torch.Tensor:
        """Predicted noise ε for noisy latents ``z_t`` (B, L, x, y, z) at timesteps ``t`` (B,); ``unet``: the same
        UNet under a wrapper (DistributedDataParallel in training)."""
        h = torch.cat([z_t, cond.to(z_t.dtype)], dim=1)  # (B, L + 3, x, y, z)
        return (unet or self.unet)(h, timesteps=t, class_labels=class_labels)  # (B, L, x, y, z)
