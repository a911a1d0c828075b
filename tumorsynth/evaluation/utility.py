"""Downstream utility: does adding synthetic volumes help a real LGG/HGG classifier?

The protocol of the class-conditional VQGAN poster (AUC 0.80 ± 0.02 with augmentation against 0.78 without):

- the real subjects are split into ``folds`` stratified folds (seeded); synthetic volumes never enter a test fold;
- per fold, two classifiers are trained from the same initialisation and batch seed: ``real_only`` on the real
  training folds, ``real_plus_synthetic`` on those plus every synthetic volume; both are tested on the held-out real
  fold;
- per fold: AUC of the HGG probability (MONAI ``ROCAUCMetric``), and accuracy, precision, recall and F1 of the
  prediction at probability 0.5 (MONAI ``ConfusionMatrixMetric``; HGG is the positive class). A precision or F1 with
  nothing to divide by (no HGG predicted) counts as 0, as scikit-learn's ``zero_division=0``;
- per arm: mean and sample standard deviation (ddof = 1) over the folds.

The classifier is ``evaluation.features.FeatureNet``, a small 3D CNN; images are expected already normalised and on
one grid (the model grid, as ``data.subjects.prepare_subject`` makes them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .features import train_feature_classifier

METRICS = ("auc", "f1", "accuracy", "precision", "recall")
ARMS = ("real_only", "real_plus_synthetic")
ARM_LABELS = {"real_only": "real only", "real_plus_synthetic": "real + synthetic"}
CLASSES = ("LGG", "HGG")  # index 1 is the positive class
_MONAI_NAMES = {"accuracy": "accuracy", "precision": "precision", "recall": "sensitivity", "f1": "f1 score"}


def stratified_folds(labels: Sequence[int] | np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Test indices per fold: each class shuffled (seeded) and dealt round-robin; fold sizes differ by one at most."""
    y = np.asarray(labels)
    rng = np.random.default_rng([seed, 0])
    members: list[list[int]] = [[] for _ in range(folds)]
    dealt = 0
    for c in np.unique(y):
        for i in rng.permutation(np.flatnonzero(y == c)):
            members[dealt % folds].append(int(i))
            dealt += 1
    return [np.sort(np.asarray(m, dtype=np.int64)) for m in members]


def classification_metrics(probabilities, labels) -> dict[str, float]:
    """AUC, F1, accuracy, precision and recall of positive-class ``probabilities`` against 0/1 ``labels``."""
    from monai.metrics import ConfusionMatrixMetric, ROCAUCMetric

    p = torch.as_tensor(np.asarray(probabilities, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(torch.unique(y)) < 2:
        raise ValueError("a test set needs both classes for an AUC")
    auc = ROCAUCMetric()
    auc(p[:, None], y[:, None])
    predicted = (p >= 0.5).long()
    confusion = ConfusionMatrixMetric(include_background=False, metric_name=list(_MONAI_NAMES.values()))
    # one-hot (N, 2); the background channel (LGG) is dropped, so HGG is the positive class
    confusion(torch.nn.functional.one_hot(predicted, 2).float(), torch.nn.functional.one_hot(y, 2).float())
    values = []
    for v in confusion.aggregate():
        if isinstance(v, tuple):  # (value, not-NaN count) pairs come only with get_not_nans=True
            raise TypeError("ConfusionMatrixMetric returned (value, count) pairs; expected one tensor per metric")
        values.append(float(v))
    out = {"auc": float(np.asarray(auc.aggregate()))}  # typed as any array-like: a float under the default average
    for name, value in zip(_MONAI_NAMES, values):
        out[name] = 0.0 if math.isnan(value) else value
    return out


def run_utility(
    real_images,
    real_labels,
    synth_images,
    synth_labels,
    folds: int = 5,
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 4,
    lr: float = 1e-3,
    channels: Sequence[int] = (8, 16, 32, 64),
    classes: Sequence[str] = CLASSES,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Both arms over ``folds`` folds; see the module. Labels are class names from ``classes`` or their indices."""
    real_x, synth_x = _images(real_images, "real_images"), _images(synth_images, "synth_images")
    real_y, synth_y = _labels(real_labels, classes, "real_labels"), _labels(synth_labels, classes, "synth_labels")
    if len(real_x) != len(real_y) or len(synth_x) != len(synth_y):
        raise ValueError(
            f"got {len(real_x)} real images for {len(real_y)} labels and {len(synth_x)} synthetic "
            f"images for {len(synth_y)} labels"
        )
    if len(synth_x) and real_x.shape[1:] != synth_x.shape[1:]:
        raise ValueError(
            f"real {tuple(real_x.shape[1:])} and synthetic {tuple(synth_x.shape[1:])} images must "
            "share channels and grid"
        )
    counts = np.bincount(real_y.numpy(), minlength=2)
    if folds < 2 or counts.min() < folds:
        raise ValueError(
            f"{folds} stratified folds need at least {max(folds, 2)} real subjects per class; got "
            f"{dict(zip(classes, counts.tolist()))}"
        )
    per_fold: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    splits = stratified_folds(real_y.numpy(), folds, seed)
    for fold, test_idx in enumerate(splits):
        train = torch.from_numpy(np.setdiff1d(np.arange(len(real_y)), test_idx))
        test = torch.from_numpy(test_idx)
        fold_seed = int(np.random.default_rng([seed, fold + 1]).integers(2**31))  # shared: a paired comparison
        training_sets = {
            "real_only": (real_x[train], real_y[train]),
            "real_plus_synthetic": (torch.cat([real_x[train], synth_x]), torch.cat([real_y[train], synth_y])),
        }
        for arm, (x, y) in training_sets.items():
            net = train_feature_classifier(x, y, epochs, fold_seed, channels, batch_size, lr)
            with torch.inference_mode():
                p = torch.softmax(net(real_x[test]), 1)[:, 1]
            per_fold[arm].append(classification_metrics(p.numpy(), real_y[test].numpy()))
            if progress:
                progress(fold * len(ARMS) + ARMS.index(arm) + 1, folds * len(ARMS))
    arms = {arm: {m: _summary([f[m] for f in per_fold[arm]]) for m in METRICS} for arm in ARMS}
    return {
        "protocol": {
            "task": f"{classes[0]} vs {classes[1]} (positive: {classes[1]})",
            "classes": list(classes),
            "folds": folds,
            "epochs": epochs,
            "seed": seed,
            "batch_size": batch_size,
            "lr": lr,
            "classifier": {"name": "FeatureNet", "channels": list(channels)},
            "n_real": len(real_y),
            "n_synthetic": len(synth_y),
            "real_per_class": dict(zip(classes, counts.tolist())),
            "synthetic_per_class": dict(zip(classes, np.bincount(synth_y.numpy(), minlength=2).tolist())),
            "threshold": 0.5,
            "std": "sample standard deviation over folds (ddof=1)",
            "test_folds": [s.tolist() for s in splits],
        },
        "metrics": list(METRICS),
        "arms": arms,
        "difference": {m: arms["real_plus_synthetic"][m]["mean"] - arms["real_only"][m]["mean"] for m in METRICS},
    }


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """``utility.json`` (the result, NaN written as null) and ``utility.png`` (mean ± std per metric and arm)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "utility.json", "png": out_dir / "utility.png"}
    paths["json"].write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    draw_chart(result).save(paths["png"])
    return paths


def draw_chart(result: dict):
    """A grouped bar chart with error bars, drawn with Pillow (matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = 760, 440
    left, right, top, bottom = 60, 20, 50, 60
    colours = {"real_only": (120, 144, 176), "real_plus_synthetic": (222, 132, 82)}
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_h = height - top - bottom

    def y_of(value: float) -> float:
        return top + plot_h * (1 - min(max(value, 0.0), 1.0))

    for tick in np.linspace(0, 1, 6):
        y = y_of(tick)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{tick:.1f}", fill="black", font=font, anchor="rm")
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    metrics = result["metrics"]
    group_w = (width - left - right) / len(metrics)
    bar_w = group_w * 0.3
    for i, metric in enumerate(metrics):
        centre = left + group_w * (i + 0.5)
        for j, arm in enumerate(ARMS):
            stat = result["arms"][arm][metric]
            if stat["mean"] is None or not math.isfinite(stat["mean"]):
                continue
            x0 = centre + (j - 1) * bar_w
            mean = stat["mean"]
            draw.rectangle([x0, y_of(mean), x0 + bar_w, height - bottom], fill=colours[arm])
            std = stat["std"] if stat["std"] is not None and math.isfinite(stat["std"]) else 0.0
            xc, lo, hi = x0 + bar_w / 2, y_of(mean - std), y_of(mean + std)
            draw.line([(xc, lo), (xc, hi)], fill="black", width=2)
            for y in (lo, hi):
                draw.line([(xc - bar_w / 4, y), (xc + bar_w / 4, y)], fill="black", width=2)
        draw.text(
            (centre, height - bottom + 14),
            metric.upper() if metric == "auc" else metric,
            fill="black",
            font=font,
            anchor="mt",
        )
    protocol = result["protocol"]
    draw.text(
        (left, 16),
        f"Downstream utility: {protocol['task']}, {protocol['folds']}-fold, mean ± std",
        fill="black",
        font=font,
    )
    for j, arm in enumerate(ARMS):
        x = width - right - 190
        y = 14 + 16 * j
        draw.rectangle([x, y, x + 12, y + 10], fill=colours[arm])
        draw.text((x + 18, y - 1), ARM_LABELS[arm], fill="black", font=font)
    return image


def _summary(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "folds": array.tolist()}


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _images(images, name: str) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images, dtype=np.float32))
    if x.ndim != 5:
        raise ValueError(f"{name} must be (N, C, X, Y, Z), got shape {tuple(x.shape)}")
    return x.float()


def _labels(labels, classes: Sequence[str], name: str) -> torch.Tensor:
    raw = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    if len(classes) != 2:
        raise ValueError(f"the utility protocol is binary; classes must name two classes, got {list(classes)}")
    out = []
    for value in raw:
        if isinstance(value, str):
            if value not in classes:
                raise ValueError(f"{name}: unknown class {value!r}; expected one of {list(classes)}")
            out.append(list(classes).index(value))
        elif value in (0, 1):
            out.append(int(value))
        else:
            raise ValueError(f"{name}: labels are class names {list(classes)} or their indices 0/1, got {value!r}")
    return torch.tensor(out, dtype=torch.long)
