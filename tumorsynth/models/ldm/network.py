"""The mask-conditioned latent diffusion network (Truong et al., SPIE Medical Imaging 2024).

Two MONAI networks in one module so that one checkpoint holds them:

- ``autoencoder``: a 3D ``AutoencoderKL`` from the four contrasts (4, X, Y, Z) to an 8-channel latent at a quarter
  of the resolution (two downsamplings: 4×128×128×64 → 8×32×32×16 in the paper).
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
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from torch import nn


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
    ) -> None:
        super().__init__()
        if len(ae_channels) < 2:
            raise ValueError(f"ae_channels needs at least two levels (one downsampling), got {list(ae_channels)}")
        self.image_channels = image_channels
        self.latent_channels = latent_channels
        self.mask_channels = mask_channels
        self.num_classes = num_classes
        self.downsampling = 2 ** (len(ae_channels) - 1)
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
        self.autoencoder = AutoencoderKL(**self.autoencoder_args)
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

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, L, x, y, z) → images (B, C, X, Y, Z). The unscaling is done in fp32 (a bf16 network
        keeps ``scale_factor`` in fp32), then in the decoder's own dtype."""
        dtype = next(self.autoencoder.decoder.parameters()).dtype
        return self.autoencoder.decode((z.float() / self.scale_factor.float()).to(dtype))

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
