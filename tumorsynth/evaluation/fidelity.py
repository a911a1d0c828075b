"""Mask fidelity: does a synthetic volume show the tumour it was conditioned on?

A segmenter (a small MONAI ``UNet``) is trained on real images and their masks, on the model grid; each synthetic
volume is then segmented and compared with its conditioning mask by Dice per nested region (WT, TC, ET), with
MONAI's ``DiceMetric``. The segmenter predicts the three regions as independent sigmoid channels, as in the BraTS
challenge, so the nesting of its outputs is not forced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..imaging.labels import REGIONS, to_regions


def build_segmenter(
    in_channels: int, channels: Sequence[int] = (8, 16, 32), strides: Sequence[int] = (2, 2), num_res_units: int = 1
) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=len(REGIONS),
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=("instance", {"affine": True}),
    )


def metric_tensor(result: torch.Tensor | Sequence) -> torch.Tensor:
    """A MONAI metric's value for tensor inputs (its ``__call__`` is typed for list inputs too, which give lists)."""
    if not isinstance(result, torch.Tensor):
        raise TypeError(f"expected the metric of a batch tensor, got a {type(result).__name__}; pass tensors")
    return result


def as_regions(masks) -> torch.Tensor:
    """(N, 3, X, Y, Z) float WT/TC/ET from BraTS 2023 label maps (N, X, Y, Z) or from regions already."""
    m = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.asarray(masks))
    if m.ndim == 5 and m.shape[1] == len(REGIONS):
        return (m > 0.5).float()
    if m.ndim == 4:
        return torch.from_numpy(np.stack([to_regions(x, "brats2023") for x in m.cpu().numpy()]))
    raise ValueError(f"masks must be label maps (N, X, Y, Z) or regions (N, 3, X, Y, Z), got {tuple(m.shape)}")


def train_segmenter(
    images,
    labels,
    epochs: int = 20,
    seed: int = 0,
    channels: Sequence[int] = (8, 16, 32),
    strides: Sequence[int] = (2, 2),
    batch_size: int = 2,
    lr: float = 1e-3,
) -> nn.Module:
    """A UNet trained with Dice + cross-entropy (sigmoid, per region) on ``images`` (N, C, X, Y, Z) and ``labels``.

    ``labels`` are BraTS 2023 label maps (N, X, Y, Z) or regions (N, 3, X, Y, Z). Each spatial size must be divisible
    by the product of ``strides``. Weights and batch order come from ``seed`` alone.
    """
    from monai.losses import DiceCELoss

    x = _images(images)
    y = as_regions(labels)
    if len(x) != len(y) or x.shape[2:] != y.shape[2:]:
        raise ValueError(f"images {tuple(x.shape)} and masks {tuple(y.shape)} must match in number and grid")
    factor = int(np.prod(strides))
    if any(n % factor for n in x.shape[2:]):
        raise ValueError(
            f"each spatial size must be divisible by {factor} (the product of strides), got {tuple(x.shape[2:])}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_segmenter(x.shape[1], channels, strides)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = loss_fn(net(x[batch]), y[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return net.eval()


@torch.inference_mode()
def segment(segmenter: nn.Module, images, batch_size: int = 2) -> torch.Tensor:
    """(N, 3, X, Y, Z) binary WT/TC/ET predicted by ``segmenter`` (logits > 0)."""
    x = _images(images)
    was_training = segmenter.training
    segmenter.eval()
    try:
        return torch.cat([(segmenter(b) > 0).float() for b in x.split(batch_size)])
    finally:
        segmenter.train(was_training)


def dice_per_region(predicted, masks) -> dict[str, float]:
    """Mean Dice per region over the cases whose mask holds that region; NaN for a region no mask holds."""
    from monai.metrics import DiceMetric

    pred, truth = as_regions(predicted), as_regions(masks)
    if pred.shape != truth.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and masks {tuple(truth.shape)} differ in shape")
    # per case: NaN where the mask lacks the region (ignore_empty), so those cases drop out of the mean
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    per_case = metric_tensor(dice(pred, truth))  # (N, 3)
    out = {}
    for k, region in enumerate(REGIONS):
        held = per_case[:, k][~torch.isnan(per_case[:, k])]
        out[region] = float(held.mean()) if len(held) else float("nan")
    return out


def mask_dice(segmenter: nn.Module, images, masks, batch_size: int = 2) -> dict[str, float]:
    """Dice per region (WT, TC, ET) between ``segmenter``'s output on ``images`` and the conditioning ``masks``."""
    return dice_per_region(segment(segmenter, images, batch_size), masks)


def _images(images) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images, dtype=np.float32))
    if x.ndim != 5:
        raise ValueError(f"images must be (N, C, X, Y, Z), got shape {tuple(x.shape)}")
    return x.float()
