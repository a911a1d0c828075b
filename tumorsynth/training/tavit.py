"""Training TA-ViT (arXiv 2409.01622) and its segmentation predictor on BraTS-format data: phantoms and BraTS alike.

Preprocessing is serving's (``models.tavit.slices``): each volume → z-scores over its non-zero voxels → the slice grid
(in-plane resampling to the model's 240×240 mm field of view; the slices stay the input's) → the slices whose
non-zero share exceeds ``min_brain_fraction``. Subjects, not slices, are split into training and validation. A
``slice_context`` network gets each slice with its neighbours (gathered per batch through ``SliceData.context``, so
the slices are stored once, in float16). Every ``tumour_slice_step``-th slice holding tumour is trained on, and every
``healthy_slice_step``-th of the others: tumour slices are the scarce ones, and neighbouring slices nearly repeat
each other.

Both networks train in one loop, each on its own loss: the segmenter with Dice + cross-entropy on the four BraTS 2023
labels; TA-ViT with L1 (+ SSIM) on the T1C, conditioned per slice on the true regions with probability
``teacher_forcing`` and otherwise on the segmenter's (detached) prediction, which is what it meets in serving. The L1
weighs each voxel of the whole tumour ``1 + tumour_weight`` times a healthy one (tumour is about 1 % of the brain; an
unweighted loss lets the network ignore enhancement), and each enhancing-tumour voxel ``enhancing_weight`` more on top
(the rim is a small share of the tumour, and it is where T1C differs most from T1). ``seg_class_weights`` weighs the
segmenter's Dice and cross-entropy per label (MONAI's ``DiceCELoss(weight=...)``), so the rare enhancing label is predicted at all. With ``cosine`` the learning rate falls from ``lr`` to 0 over
the run along a half cosine, a function of the step alone, so a resumed run follows the same schedule.

Training state is saved after every epoch in ``work_dir/state.pt``; ``resume=True`` continues from it. Every epoch
uses RNG streams derived from (seed, epoch), so an interrupted and resumed run ends with the same weights as an
uninterrupted one (on the same device). ``init_from`` starts from a checkpoint's weights alone.

Under ``torchrun`` (``training.distributed``) each rank trains on its share of the epoch's batches; after each
backward the gradients are averaged across ranks by hand (one all-reduce), not by DDP, because the step runs the two
networks through ``segment`` and ``synthesise`` rather than one ``forward``; TA-ViT's batch-norm running statistics are
averaged after every step. A step is skipped (non-finite loss or gradient) only when every rank agrees to skip it:
a rank that skipped an all-reduce the others entered would hang them. On CUDA the networks run under bf16 autocast.
Rank 0 alone writes state, metrics and the checkpoint.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.brats import find_subjects
from ..data.subjects import prepare_subject
from ..models.checkpoints import save_checkpoint
from ..models.registry import ModelEntry
from ..models.tavit.configs import build_network, image_inputs, model_config
from ..models.tavit.network import regions_from_labels, regions_from_probabilities
from ..models.tavit.slices import brain_slices, context_index, slice_mapping, to_slices
from .common import ResumableTrainer, Stateful, epoch_rng, split_record
from .configs import load_config
from .intensity_stats import record_scanner_stats
from .tavit_card import describe_data, model_card

log = logging.getLogger(__name__)
ENHANCING = 3  # BraTS 2023 label of the enhancing tumour


@dataclass
class TAViTTrainConfig:
    preset: str = "tiny"  # network and slice grid: models.tavit.configs.PRESETS
    name: str = "tavit"
    version: str = "1"
    flair: bool = True  # False: the T1-only network
    seed: int = 0
    val_fraction: float = 0.1
    epochs: int = 1
    batch_size: int = 16
    lr: float = 1e-3
    grad_clip: float = 1.0
    weight_decay: float = 1e-4
    ssim_weight: float = 0.0
    tumour_weight: float = 0.0  # the L1's extra weight on whole-tumour voxels
    enhancing_weight: float = 0.0  # and on enhancing-tumour voxels (label 3) on top of it
    seg_class_weights: list[float] | None = None  # the segmenter's Dice + CE weight per label (background first)
    cosine: bool = False  # learning rate: a half cosine from lr to 0 over the run
    healthy_slice_step: int = 1  # train on every n-th slice without tumour
    tumour_slice_step: int = 1  # and on every n-th slice with tumour
    ssim_range: float = 8.0  # SSIM's data range on z-scored intensities
    seg_weight: float = 1.0
    teacher_forcing: float = 0.5  # share of slices conditioned on the true regions rather than the predicted ones
    min_brain_fraction: float = 0.02
    flip: bool = True  # left-right flips (the slices' first axis)
    max_subjects: int | None = None
    amp: bool = True  # bf16 autocast on CUDA
    init_from: str | None = None  # start from a servable checkpoint's weights (same preset and inputs)

    @classmethod
    def load(cls, spec: str | Path, **overrides) -> TAViTTrainConfig:
        """A JSON file, or the name of one in ``training/configs`` (``tavit-tiny``, ``tavit-demo``, ``tavit-paper``)."""
        return load_config(cls, "tavit", spec, overrides)


@dataclass
class SliceData:
    ids: list[str]
    inputs: torch.Tensor  # (S, C, H, W) float16 z-scores: T1 (+ FLAIR)
    target: torch.Tensor  # (S, 1, H, W) float16 z-scored T1C
    labels: torch.Tensor  # (S, H, W) uint8, BraTS 2023 labels
    subject: torch.Tensor  # (S,) long, index into ids
    context: torch.Tensor  # (S, 2k + 1) long: each slice, then its neighbours (clamped to its subject's stack)

    def network_inputs(self, idx) -> torch.Tensor:
        """The network's input for slices ``idx``: (B, C·(2k + 1), H, W) float32, centre slice first."""
        x = self.inputs[self.context[idx]]  # (B, 2k + 1, C, H, W)
        return x.flatten(1, 2).float()

    def selection(self, subjects, healthy_step: int = 1, tumour_step: int = 1) -> np.ndarray:
        """Every ``tumour_step``-th slice of ``subjects`` holding tumour and every ``healthy_step``-th of the others."""
        mine = np.isin(self.subject.numpy(), subjects)
        tumour = (self.labels > 0).flatten(1).any(1).numpy()
        index = np.arange(len(mine))
        keep = np.where(tumour, index % max(1, tumour_step) == 0, index % max(1, healthy_step) == 0)
        return np.flatnonzero(mine & keep)


@dataclass
class TrainResult:
    entry: ModelEntry
    metrics: list[dict] = field(default_factory=list)


def subject_slices(subject, config: dict, min_brain_fraction: float = 0.0) -> tuple[np.ndarray, ...]:
    """One BraTS subject → (inputs (S, C, H, W), t1c (S, 1, H, W), labels (S, H, W)) for its brain slices."""
    if subject.seg is None:
        raise ValueError(f"subject {subject.id!r} has no segmentation; the segmenter needs one per subject")
    grid, labels = prepare_subject(
        subject,
        config["output"]["shape"],
        config["fov_mm"],
        (*image_inputs(config), "t1c"),
        to_grid=slice_mapping,
        crop=False,
    )
    keep = brain_slices(grid[0], min_brain_fraction)  # grid: (C + 1, H, W, Z), labels: (H, W, Z)
    slices = to_slices(grid)[keep]  # (S, C + 1, H, W)
    return slices[:, :-1], slices[:, -1:], np.moveaxis(labels, -1, 0)[keep]


def prepare(
    data_dir: Path,
    config: dict,
    max_subjects: int | None = None,
    min_brain_fraction: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> SliceData:
    k = int(config["network"].get("slice_context", 0))
    subjects = find_subjects(data_dir)
    if not subjects:
        raise FileNotFoundError(
            f"no BraTS-format subjects under {data_dir} (expected <id>/<id>_t1.nii.gz … or <id>/<id>-t1n.nii.gz …)"
        )
    subjects = subjects[:max_subjects] if max_subjects else subjects
    inputs, targets, labels, owner, context = [], [], [], [], []
    start = 0
    for i, s in enumerate(subjects):
        x, y, seg = subject_slices(s, config, min_brain_fraction)
        inputs.append(torch.from_numpy(x).half())
        targets.append(torch.from_numpy(y).half())
        labels.append(torch.from_numpy(seg))
        owner.append(torch.full((len(x),), i, dtype=torch.long))
        context.append(torch.from_numpy(start + context_index(np.arange(len(x)), len(x), k)))
        start += len(x)
        if progress:
            progress(i + 1, len(subjects))
    return SliceData(
        [s.id for s in subjects],
        torch.cat(inputs),
        torch.cat(targets),
        torch.cat(labels),
        torch.cat(owner),
        torch.cat(context).long(),
    )


def split_subjects(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = min(max(1, round(n * val_fraction)), n - 1) if n > 1 and val_fraction > 0 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def regions_from_logits(logits: torch.Tensor) -> torch.Tensor:
    return regions_from_probabilities(logits.softmax(dim=1))  # (B, 3, H, W)


def dice(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = int(pred.sum() + true.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & true).sum()) / total


class Trainer(ResumableTrainer[TAViTTrainConfig]):
    def __init__(
        self,
        cfg: TAViTTrainConfig,
        data_dir: Path,
        out_dir: Path,
        work_dir: Path,
        device: str = "cpu",
        on_epoch: Callable[[dict], None] | None = None,
        progress=None,
    ):
        from monai.losses import DiceCELoss, SSIMLoss

        self.cfg, self.data_dir, self.out_dir, self.work_dir = cfg, Path(data_dir), Path(out_dir), Path(work_dir)
        self._join_world(device, cfg.amp)  # torchrun: one process per GPU; otherwise one process
        self.on_epoch = on_epoch
        self.progress = progress  # a rich Progress, or None
        self.model_config = model_config(cfg.preset, cfg.flair)
        self.model_config.update(name=cfg.name, version=str(cfg.version))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = build_network(self.model_config).to(self.device)
        self.net.check_grid(self.model_config["output"]["shape"])
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        class_weights = (
            None if cfg.seg_class_weights is None else torch.tensor(cfg.seg_class_weights, dtype=torch.float32)
        )
        if class_weights is not None and len(class_weights) != len(self.model_config["labels"]):
            raise ValueError(
                f"seg_class_weights needs {len(self.model_config['labels'])} weights, one per label "
                f"({', '.join(self.model_config['labels'])}); got {len(class_weights)}"
            )
        self.seg_loss = DiceCELoss(
            to_onehot_y=True, softmax=True, weight=None if class_weights is None else class_weights.to(self.device)
        )
        self.ssim = SSIMLoss(spatial_dims=2, data_range=cfg.ssim_range, win_size=7) if cfg.ssim_weight > 0 else None
        self.state = {"epoch": 0, "metrics": []}
        if cfg.init_from:
            entry = self._load_weights(Path(cfg.init_from), self.net, self.model_config)
            self._initialised_from(cfg.init_from, entry)

    def _resumable(self) -> dict[str, Stateful]:
        return {"net": self.net, "opt": self.opt}

    # ----- one epoch -----------------------------------------------------------------------------------------------
    def _batch(self, data: SliceData, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, labels = data.network_inputs(idx), data.target[idx].float(), data.labels[idx].long()
        if self.cfg.flip:
            flip = (torch.rand(len(idx)) < 0.5).view(-1, 1, 1, 1)
            x, y = torch.where(flip, x.flip(-2), x), torch.where(flip, y.flip(-2), y)
            labels = torch.where(flip[:, 0], labels.flip(-2), labels)
        return x.to(self.device), y.to(self.device), labels.to(self.device)

    def _condition(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per slice, the true regions (probability ``teacher_forcing``) or the detached predicted ones."""
        true = regions_from_labels(labels)  # (B, 3, H, W)
        predicted = regions_from_logits(logits.detach())
        use_true = (torch.rand(len(labels), device=labels.device) < self.cfg.teacher_forcing).view(-1, 1, 1, 1)
        return torch.where(use_true, true, predicted)

    def train_epoch(self, data: SliceData, train_slices: np.ndarray, epoch: int) -> dict:
        cfg, net = self.cfg, self.net
        rng = epoch_rng(cfg.seed, epoch, rank=self.world.rank)
        net.train()
        order = rng.permutation(train_slices)
        batches = self.world.shard([order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)])
        sums = {"l1": 0.0, "l1_tumour": 0.0, "ssim": 0.0, "seg": 0.0, "skipped": 0}
        task = self.progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(batches)) if self.progress else None
        for step, idx in enumerate(batches):
            self._set_lr(epoch + step / len(batches))
            x, y, labels = self._batch(data, idx)
            with self._autocast():
                logits = net.segment(x).float()  # (B, 4, H, W)
                pred = net.synthesise(x, self._condition(logits, labels)).float()  # (B, 1, H, W)
            self.world.average_(net.buffers())  # the batch norms' running statistics: one set for all ranks
            seg = self.seg_loss(logits, labels[:, None])
            l1, l1_tumour, weighted = self._l1(pred, y, labels)
            ssim = self.ssim(pred, y) if self.ssim is not None else torch.zeros((), device=self.device)
            loss = weighted + cfg.ssim_weight * ssim + cfg.seg_weight * seg
            # skipped on every rank together (counted; a run of them means lower the lr)
            if not self.world.all_agree(bool(torch.isfinite(loss))):
                log.warning("epoch %d: non-finite loss (l1 %s, seg %s); step skipped", epoch + 1, float(l1), float(seg))
                sums["skipped"] += 1
                continue
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.world.average_gradients(self.net.parameters())
            norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
            if not self.world.all_agree(bool(torch.isfinite(norm))):  # NaN gradients would spread to every weight
                self.opt.zero_grad(set_to_none=True)
                sums["skipped"] += 1
                continue
            self.opt.step()
            for k, v in (("l1", l1), ("l1_tumour", l1_tumour), ("ssim", ssim), ("seg", seg)):
                sums[k] += float(v.detach())
            if task is not None:
                self.progress.advance(task)
        if task is not None:
            self.progress.remove_task(task)
        skipped = sums.pop("skipped")
        return {k: self.world.mean(v / max(1, len(batches) - skipped)) for k, v in sums.items()} | {
            "skipped_steps": skipped
        }

    def _l1(self, pred: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Plain L1, L1 over the whole tumour (0 without tumour), and the tumour-weighted L1 that is trained on."""
        err = (pred - y).abs()[:, 0]  # (B, H, W)
        tumour = (labels > 0).float()
        weights = 1 + self.cfg.tumour_weight * tumour + self.cfg.enhancing_weight * (labels == ENHANCING).float()
        return (err.mean(), (err * tumour).sum() / tumour.sum().clamp(min=1), (err * weights).sum() / weights.sum())

    def _set_lr(self, epochs_done: float) -> None:
        lr = self.cfg.lr
        if self.cfg.cosine:
            lr *= 0.5 * (1 + np.cos(np.pi * min(1.0, epochs_done / self.cfg.epochs)))
        for group in self.opt.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def validate(self, data: SliceData, val_slices: np.ndarray) -> dict:
        """L1 of the T1C from predicted regions, and the whole-tumour Dice of the prediction, over validation slices."""
        if len(val_slices) == 0:
            return {}
        self.net.eval()
        l1, l1_tumour, wt_pred, wt_true = 0.0, 0.0, [], []
        for idx in np.array_split(val_slices, -(-len(val_slices) // self.cfg.batch_size)):
            x, y = data.network_inputs(idx).to(self.device), data.target[idx].float().to(self.device)
            logits = self.net.segment(x)
            pred = self.net.synthesise(x, regions_from_logits(logits))
            err = (pred - y).abs()[:, 0].cpu()
            l1 += float(err.sum())
            l1_tumour += float(err[data.labels[idx] > 0].sum())
            wt_pred.append(logits.argmax(1).cpu() > 0)
            wt_true.append(data.labels[idx] > 0)
        n_tumour = int(torch.cat(wt_true).sum())
        return {
            "val_l1": l1 / data.target[val_slices].numel(),
            "val_l1_tumour": l1_tumour / max(1, n_tumour),
            "val_dice_wt": dice(torch.cat(wt_pred), torch.cat(wt_true)),
        }

    # ----- the whole run -------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        cfg = self.cfg
        if resume and self.load_state():
            log.info("resumed after epoch %s", self.state["epoch"])
        t0 = time.time()
        data = prepare(self.data_dir, self.model_config, cfg.max_subjects, cfg.min_brain_fraction)
        train_ids, val_ids = split_subjects(len(data.ids), cfg.val_fraction, cfg.seed)
        train_slices = data.selection(train_ids, cfg.healthy_slice_step, cfg.tumour_slice_step)
        val_slices = data.selection(val_ids, cfg.healthy_slice_step, cfg.tumour_slice_step)
        log.info(
            "%d subjects (%d train, %d validation), %d slices, prepared in %.1fs",
            len(data.ids),
            len(train_ids),
            len(val_ids),
            len(data.subject),
            time.time() - t0,
        )
        while self.state["epoch"] < cfg.epochs:
            e = self.state["epoch"]
            t = time.time()
            row = (
                {"epoch": e + 1}
                | self.train_epoch(data, train_slices, e)
                | self.validate(data, val_slices)
                | {"seconds": round(time.time() - t, 2)}
            )
            self.state["epoch"] = e + 1
            self._log(row)
            self.save_state()
        entry = self.write_checkpoint(data, train_ids, val_ids, len(train_slices), time.time() - t0)
        return TrainResult(entry, self.state["metrics"])

    def write_checkpoint(self, data: SliceData, train_ids, val_ids, n_slices: int, seconds: float) -> ModelEntry:
        """Rank 0 writes; every rank returns its entry."""
        return self._write_on_main(lambda: self._write_checkpoint(data, train_ids, val_ids, n_slices, seconds))

    def _write_checkpoint(self, data: SliceData, train_ids, val_ids, n_slices: int, seconds: float) -> ModelEntry:
        cfg = self.cfg
        config = copy.deepcopy(self.model_config)
        trained_on = describe_data(self.data_dir, data, train_ids, n_slices)
        last = self.state["metrics"][-1] if self.state["metrics"] else {}
        what = (
            {"data": str(self.data_dir.resolve())}
            | split_record(data.ids, train_ids, val_ids)
            | {"final": last, "seconds": round(seconds, 1)}
        )
        config.update(trained=True, trained_on=trained_on, training=self.training_record(what))
        record_scanner_stats(config, self.data_dir, [data.ids[i] for i in train_ids], config["modalities"])
        self.net.eval()
        return save_checkpoint(
            self.out_dir, config=config, module=self.net, card=model_card(config, cfg, last, trained_on)
        )
