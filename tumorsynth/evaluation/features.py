"""3D feature extractors for the Fréchet distance, and the small LGG/HGG classifier they default to.

No ImageNet Inception exists for 3D MRI, so the papers' FID needs another feature network. Two are offered:

- default: ``FeatureNet``, a four-block 3D CNN classifier (LGG/HGG) trained in-house on the real data with
  ``train_feature_classifier``; its features are the pooled activations before the class head. The same network is
  the downstream-utility classifier (``evaluation.utility``);
- MedicalNet: a MONAI ``resnet10`` (3D, one input channel, no class head) with weights from a local file
  (``load_medicalnet``); nothing is downloaded.

Any ``torch.nn.Module`` mapping (N, C, X, Y, Z) images to (N, D) features, or offering a ``features`` method that
does, can be passed to ``extract_features``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn


class FeatureNet(nn.Module):
    """3D conv blocks (MONAI ``Convolution``: conv, instance norm, PReLU; all but the first strided), global average
    pool, linear head. Each spatial size must be at least ``2 ** len(channels)``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (8, 16, 32, 64),
        spatial_dims: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        if in_channels < 1 or num_classes < 2 or not channels or min(channels) < 1:
            raise ValueError(
                f"need in_channels >= 1, num_classes >= 2 and positive channels; got {in_channels}, "
                f"{num_classes}, {list(channels)}"
            )
        self.config = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "channels": list(channels),
            "spatial_dims": spatial_dims,
            "dropout": dropout,
        }
        blocks, previous = [], in_channels
        # the first block keeps the resolution, so a 16³ input still has 2³ voxels to normalise in the last one
        for k, width in enumerate(channels):
            blocks.append(
                Convolution(
                    spatial_dims,
                    previous,
                    width,
                    strides=1 if k == 0 else 2,
                    kernel_size=3,
                    act="PRELU",
                    norm=("instance", {"affine": True}),
                )
            )
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(previous, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(x)  # (B, C', X', Y', Z')
        return h.flatten(2).mean(-1)  # (B, C')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))  # (B, num_classes) logits


def train_feature_classifier(
    images,
    labels,
    epochs: int = 10,
    seed: int = 0,
    channels: Sequence[int] = (8, 16, 32, 64),
    batch_size: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
) -> FeatureNet:
    """A ``FeatureNet`` trained with cross-entropy on ``images`` (N, C, X, Y, Z) and integer ``labels`` (N,).

    Initialisation and batch order come from ``seed`` alone (torch's global RNG is left as it was), so the same data
    and seed give the same weights on the same device.
    """
    x, y = _as_tensors(images, labels)
    num_classes = max(int(y.max()) + 1, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(x.shape[1], num_classes, channels)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for batch in order.split(batch_size):
            loss = F.cross_entropy(net(x[batch]), y[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return net.eval()


def load_medicalnet(path: str | Path) -> nn.Module:
    """MONAI ``resnet10`` (3D, 1 channel, no head) with MedicalNet weights from a local ``.pth`` file.

    MedicalNet saves ``{"state_dict": ...}`` with ``module.`` prefixes from DataParallel and a segmentation head
    (``conv_seg``); both are handled. Any other missing or unexpected key is refused.
    """
    from monai.networks.nets import resnet10
    from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no MedicalNet weights at {path}; give the path of a resnet_10 .pth file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {
        k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("conv_seg")
    }
    bias_downsample, shortcut_type = get_medicalnet_pretrained_resnet_args(10)
    net = resnet10(
        spatial_dims=3,
        n_input_channels=1,
        feed_forward=False,
        shortcut_type=shortcut_type,
        bias_downsample=bias_downsample,
    )
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a MedicalNet resnet_10 state dict: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return net.eval()


@torch.inference_mode()
def extract_features(extractor: nn.Module, images, batch_size: int = 8) -> torch.Tensor:
    """(N, D) float64 features of (N, C, X, Y, Z) ``images``: ``extractor.features`` if it has one, else its output.

    A single-channel extractor (MedicalNet) given multi-contrast images sees each contrast as its own image, and the
    contrasts' features are concatenated.
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).float()
    if x.ndim != 5:
        raise ValueError(f"images must be (N, C, X, Y, Z), got shape {tuple(x.shape)}")
    extract = getattr(extractor, "features", extractor)
    in_channels = _in_channels(extractor)
    was_training = extractor.training
    extractor.eval()
    try:
        if in_channels == 1 and x.shape[1] > 1:
            return torch.cat([extract_features(extractor, x[:, c : c + 1], batch_size) for c in range(x.shape[1])], 1)
        out = torch.cat([extract(b).flatten(1) for b in x.split(batch_size)])
    finally:
        extractor.train(was_training)
    return out.double()


def fid(real_features, fake_features) -> float:
    """Fréchet distance between two (N, D) feature sets (MONAI ``FIDMetric``): 0 for identical sets."""
    from monai.metrics import FIDMetric

    real = torch.as_tensor(np.asarray(real_features) if not isinstance(real_features, torch.Tensor) else real_features)
    fake = torch.as_tensor(np.asarray(fake_features) if not isinstance(fake_features, torch.Tensor) else fake_features)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"need two (N, D) feature sets with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    if min(len(real), len(fake)) < 2:
        raise ValueError("need at least two feature vectors per set to estimate a covariance")
    # rounding can leave a tiny negative distance for identical sets
    return max(float(FIDMetric()(fake.double(), real.double())), 0.0)


def _in_channels(module: nn.Module) -> int | None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv3d):
            return layer.in_channels
    return None


def _as_tensors(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images, dtype=np.float32))
    y = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    x, y = x.float(), y.long()
    if x.ndim != 5 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"need images (N, C, X, Y, Z) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(y) == 0 or int(y.min()) < 0:
        raise ValueError("labels must be a non-empty set of class indices >= 0")
    return x, y
