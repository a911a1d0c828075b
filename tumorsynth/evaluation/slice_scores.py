"""Inception Score and FID for 2D tumour slices, with a slice classifier trained in-house (Giarrusso & Vegna's test).

The paper scored its generators with an InceptionV3 classifier fine-tuned on the real slices of the three classes and
compared the Inception Score of 300 generated slices to that of 300 real ones (baseline 2.6, generator 2.4). No
pretrained Inception weights can be downloaded here, so the classifier is ``SliceClassifier`` (2D conv blocks,
global pooling, linear head), trained on a split of the real slices. Then, on slices it never saw:

- **Inception Score** exp(E_x KL(p(y|x) ‖ p(y))), between 1 and the number of classes: of held-out real slices
  (the baseline) and of as many generated slices, with the classes in the same proportions;
- **FID** on the classifier's pooled features: generated vs held-out real, next to the floor that real data itself
  gives (the classifier's training slices vs the held-out ones);
- **class agreement**: how often the classifier names the class the generator was asked for (its accuracy on the
  held-out real slices is the reference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from ..models.registry import ModelEntry
from .features import fid


class SliceClassifier(nn.Module):
    """2D conv blocks (MONAI ``Convolution``: conv, batch norm, PReLU; all but the first strided), global average
    pool, linear head. Batch norm, not ``features.FeatureNet``'s instance norm: an instance-normalised map averages
    to its affine shift, so pooling after it keeps little but each channel's skew (a classifier trained so was
    accurate yet barely confident: Inception Score 1.1 on three well-separated classes)."""

    def __init__(self, num_classes: int, channels=(16, 32, 64, 128), dropout: float = 0.1):
        super().__init__()
        blocks, previous = [], 1
        for k, width in enumerate(channels):
            blocks.append(
                Convolution(2, previous, width, strides=1 if k == 0 else 2, kernel_size=3, act="PRELU", norm="BATCH")
            )
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(previous, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(2).mean(-1)  # (B, C')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))  # (B, K) logits


@dataclass
class SliceScores:
    model: str
    data: str
    resolution: int
    classes: list[str]
    truncation: float
    real_train: int
    real_heldout: int
    generated: int
    classifier_accuracy: float
    inception_score: dict  # {"baseline": ..., "generator": ...}
    fid: dict  # {"baseline": ..., "generator": ...}
    class_agreement: dict  # {"baseline": ..., "generator": ...}
    per_class_agreement: dict

    def to_dict(self) -> dict:
        return asdict(self)


def train_slice_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    epochs: int = 15,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 1e-3,
) -> SliceClassifier:
    """A ``SliceClassifier`` trained with cross-entropy on (N, 1, R, R) slices, with left-right flips.

    Initialisation, batch order, flips and dropout all come from ``seed`` (torch's global RNG is left as it was).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SliceClassifier(max(num_classes, 2))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        net.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(images)).split(batch_size):
                x = images[batch]
                flip = torch.rand(len(x)) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
                loss = F.cross_entropy(net(x), labels[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return net.eval()


@torch.inference_mode()
def classify(net: SliceClassifier, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, K), features (N, D)) of (N, 1, R, R) slices."""
    probs, feats = [], []
    for x in images.split(batch_size):
        f = net.features(x)
        feats.append(f)
        probs.append(torch.softmax(net.head(f), dim=1))
    return torch.cat(probs).double(), torch.cat(feats).double()


def inception_score(probs: torch.Tensor) -> float:
    """exp(mean KL(p(y|x) ‖ p(y))) over one set (Salimans et al. 2016, one split)."""
    p = probs.clamp_min(1e-12)
    marginal = p.mean(0, keepdim=True)
    return float(torch.exp((p * (p.log() - marginal.log())).sum(1).mean()))


def split_real(labels: torch.Tensor, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A per-class split: about ``heldout_fraction`` of each class is held out for scoring."""
    rng = np.random.default_rng(seed)
    train: list[np.int64] = []
    held: list[np.int64] = []
    for k in labels.unique().tolist():
        idx = rng.permutation(np.nonzero(labels.numpy() == k)[0])
        n = max(1, int(round(len(idx) * heldout_fraction)))
        held.extend(idx[:n])
        train.extend(idx[n:])
    return np.sort(np.array(train)), np.sort(np.array(held))


def generate_like(entry: ModelEntry, labels: torch.Tensor, truncation: float, seed: int, device: str) -> torch.Tensor:
    """One generated slice per label, in [0, 1] and in the network's (displayed) orientation: (N, 1, R, R)."""
    from ..models.checkpoints import load_into
    from ..models.stylegan2.configs import build_network
    from ..models.stylegan2.runner import to_unit
    from ..models.stylegan2.sampler import sample_slices

    net = build_network(entry.config)
    load_into(net, entry, device).requires_grad_(False)  # in place: keeps net's type, the Generator
    out = torch.zeros(len(labels), 1, net.resolution, net.resolution)
    with torch.inference_mode():
        for k in labels.unique().tolist():
            where = torch.nonzero(labels == k).flatten()
            seeds = [seed + int(i) for i in where]
            out[where, 0] = torch.from_numpy(to_unit(sample_slices(net, k, seeds, truncation, device=device)))
    return out


def score_slices(
    entry: ModelEntry,
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    data_name: str,
    *,
    samples: int = 300,
    truncation: float = 1.0,
    epochs: int = 15,
    heldout_fraction: float = 0.5,
    seed: int = 0,
    device: str = "cpu",
) -> SliceScores:
    """The comparison above, for a checkpoint and real slices (N, 1, R, R) in [0, 1] labelled by its classes."""
    train, held = split_real(real_labels, heldout_fraction, seed)
    held = held[np.random.default_rng(seed + 1).permutation(len(held))[:samples]]
    if len(train) < 2 or len(held) < 2:
        raise ValueError(f"need at least 2 real slices to train on and 2 to score, got {len(train)} and {len(held)}")
    classes = list(entry.classes)
    net = train_slice_classifier(real_images[train], real_labels[train], len(classes), epochs, seed)
    fake_labels = real_labels[held]  # the held-out slices' class proportions, one generated slice each
    fake = generate_like(entry, fake_labels, truncation, seed + 10_000, device)
    _, f_train = classify(net, real_images[train])
    p_real, f_real = classify(net, real_images[held])
    p_fake, f_fake = classify(net, fake)
    agree_real = (p_real.argmax(1) == real_labels[held]).double()
    agree_fake = (p_fake.argmax(1) == fake_labels).double()
    return SliceScores(
        model=entry.id,
        data=data_name,
        resolution=int(real_images.shape[-1]),
        classes=classes,
        truncation=truncation,
        real_train=len(train),
        real_heldout=len(held),
        generated=len(fake),
        classifier_accuracy=float(agree_real.mean()),
        inception_score={"baseline": inception_score(p_real), "generator": inception_score(p_fake)},
        fid={"baseline": fid(f_train, f_real), "generator": fid(f_real, f_fake)},
        class_agreement={"baseline": float(agree_real.mean()), "generator": float(agree_fake.mean())},
        per_class_agreement={
            c: float(agree_fake[fake_labels == k].mean()) if (fake_labels == k).any() else None
            for k, c in enumerate(classes)
        },
    )


def format_scores(s: SliceScores) -> str:
    """The table the command prints (plain text, so it can be pasted into a report)."""
    rows = [
        ("", "baseline (real, held out)", f"generator (ψ = {s.truncation:g})"),
        ("Inception Score", f"{s.inception_score['baseline']:.3f}", f"{s.inception_score['generator']:.3f}"),
        ("FID (in-house features)", f"{s.fid['baseline']:.3f}", f"{s.fid['generator']:.3f}"),
        ("class agreement", f"{s.class_agreement['baseline']:.3f}", f"{s.class_agreement['generator']:.3f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    per = ", ".join(f"{c} {v:.2f}" for c, v in s.per_class_agreement.items() if v is not None)
    lines += [
        f"{s.model} on {s.data}: {s.resolution} px, classes {', '.join(s.classes)}; classifier trained on "
        f"{s.real_train} real slices; scored on {s.real_heldout} held-out real and {s.generated} generated",
        f"IS ratio generator/baseline {s.inception_score['generator'] / s.inception_score['baseline']:.2f} "
        f"(max IS = {len(s.classes)}); FID baseline = classifier's training slices vs held-out real; "
        f"generator class agreement per class: {per}",
    ]
    return "\n".join(lines)
