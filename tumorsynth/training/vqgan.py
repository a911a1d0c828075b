"""Training the class-conditional tumour-ROI VQGAN (Zhou et al. 2023 and poster) on BraTS-format data or phantoms.

Data: one ROI per subject (``data.roi``: 128 mm around the tumour centroid on the preset's grid, FLAIR by
default, clipped z-scores in [-1, 1]); left-right flips as augmentation.

Stage 1, the VQGAN: L1 + ``grad_weight`` × the paper's 3D gradient loss + the codebook's commitment (and codebook)
loss + a least-squares patch adversarial loss (MONAI ``PatchDiscriminator``) after ``adv_start_epoch`` warm-up epochs
(+ perceptual only when ``perceptual_weights`` names a local MedicalNet file: nothing is downloaded). The adversarial
term is balanced against the reconstruction as in taming-transformers (Esser et al. 2021, eq. 7): its weight is
``adv_weight`` × ‖∇L_rec‖ / ‖∇L_adv‖ at the decoder's last layer, so that the discriminator can sharpen the
reconstruction but not outweigh it, whatever the scale of either loss. The importance head learns, on detached
encoder features, the per-token reconstruction difficulty (``autoencoder.importance_target``).

Stage 2, with the VQGAN frozen and its tokens and importance scores cached (each ROI and its flip): the bidirectional
transformer learns masked-token modelling under the hybrid masking (``masking.hybrid_mask``, ``topk_ratio``), and
the causal transformer learns next-token prediction from inputs whose tokens are replaced by random codes with
probability ``ar_replace_prob`` (the paper's masked token modelling); both in the same batches, with the class
dropped to "none" with probability ``class_dropout`` for classifier-free guidance.

State is saved after every epoch in ``work_dir/state.pt``; ``resume=True`` continues from it. Each epoch draws from
RNG streams derived from (seed, stage, epoch), so a resumed run ends with the same weights as an uninterrupted one.
``init_from`` starts from a checkpoint's weights alone (``init_skip_vqgan`` then keeps its VQGAN and trains only the
transformers).

Under ``torchrun`` (``training.distributed``) every network trains under DDP, each rank on its share of the epoch's
batches, and rank 0 alone writes. The EMA codebook is not trained by gradients: each rank would update it from its
own batch, so after every step all ranks take rank 0's codebook (codes, EMA statistics, usage, dead-code restarts);
its statistics then come from rank 0's batches, encoded by the encoder every rank shares. On CUDA the discriminator
and the transformers run under bf16 autocast; the VQ autoencoder stays in float32, because the quantiser's nearest-code
distances and EMA sums need float32's precision.
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
import torch.nn.functional as F

from ..data.roi import ROISet, load_rois
from ..data.subjects import split
from ..models.checkpoints import save_checkpoint
from ..models.registry import ModelEntry
from ..models.vqgan.autoencoder import importance_target
from ..models.vqgan.configs import (
    PRESETS,
    build_network,
    sampler_specs,
    with_modalities,
)
from ..models.vqgan.losses import gradient_loss
from ..models.vqgan.masking import hybrid_mask, random_replace
from ..models.vqgan.transformer import masked_token_loss
from .common import ResumableTrainer, Stateful, epoch_rng, perceptual_loss, split_record
from .configs import load_config
from .intensity_stats import record_scanner_stats
from .vqgan_card import describe_data, model_card

log = logging.getLogger(__name__)


@dataclass
class VQGANTrainConfig:
    preset: str = "tiny"  # network and grid: models.vqgan.configs.PRESETS
    name: str = "vqgan"
    version: str = "1"
    seed: int = 0
    modalities: list[str] = field(default_factory=lambda: ["flair"])
    val_fraction: float = 0.1
    flip: bool = True
    max_subjects: int | None = None
    # stage 1: VQGAN
    vq_epochs: int = 1
    batch_size: int = 4
    vq_lr: float = 3e-4
    grad_weight: float = 1.0
    importance_weight: float = 0.1
    adv_weight: float = 0.1
    adv_start_epoch: int = 1
    disc_channels: int = 8
    disc_layers: int = 2
    disc_lr: float = 3e-4
    perceptual_weight: float = 0.0
    perceptual_weights: str | None = None  # a local MedicalNet weights file; none is downloaded
    # stage 2: transformers
    transformer_epochs: int = 1
    transformer_batch_size: int = 16
    transformer_lr: float = 5e-4
    topk_ratio: float = 0.25  # the poster's ablation: 0, 0.25, 0.5
    replace_prob: float = 0.1  # visible unimportant tokens replaced by random codes
    ar_replace_prob: float = 0.1
    class_dropout: float = 0.1
    amp: bool = True  # bf16 autocast on CUDA for the discriminator and the transformers
    # Start from a servable checkpoint's weights (same preset): resuming from weights alone. With init_skip_vqgan its
    # VQGAN is kept as it is and only the transformers train.
    init_from: str | None = None
    init_skip_vqgan: bool = False

    @classmethod
    def load(cls, spec: str | Path, **overrides) -> VQGANTrainConfig:
        """A JSON file, or the name of one in ``training/configs`` (``vqgan-tiny``, ``vqgan-demo``, ``vqgan-paper``)."""
        return load_config(cls, "vqgan", spec, overrides)


@dataclass
class TrainResult:
    entry: ModelEntry
    metrics: list[dict] = field(default_factory=list)


def flip_some(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Left-right (first spatial axis) flips of about half of a batch (B, C, X, Y, Z)."""
    which = torch.from_numpy(rng.random(x.shape[0]) < 0.5)
    return torch.where(which.view(-1, *[1] * (x.ndim - 1)).to(x.device), x.flip(2), x)


class Trainer(ResumableTrainer[VQGANTrainConfig]):
    def __init__(
        self,
        cfg: VQGANTrainConfig,
        data_dir: Path,
        out_dir: Path,
        work_dir: Path,
        device: str = "cpu",
        on_epoch: Callable[[dict], None] | None = None,
        progress=None,
    ):
        if cfg.preset not in PRESETS:
            raise ValueError(f"unknown preset '{cfg.preset}'; choose one of {', '.join(PRESETS)}")
        self.cfg, self.data_dir, self.out_dir, self.work_dir = cfg, Path(data_dir), Path(out_dir), Path(work_dir)
        self._join_world(device, cfg.amp)  # torchrun: one process per GPU, DDP; otherwise one process
        self.on_epoch = on_epoch
        self.progress = progress  # a rich Progress, or None
        self.model_config = with_modalities(PRESETS[cfg.preset], list(cfg.modalities))
        self.model_config.update(name=cfg.name, version=str(cfg.version))
        self.classes = list(self.model_config["classes"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = build_network(self.model_config).to(self.device)
        from monai.losses import PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.disc = PatchDiscriminator(
                spatial_dims=3,
                channels=cfg.disc_channels,
                in_channels=len(cfg.modalities),
                num_layers_d=cfg.disc_layers,
                norm="INSTANCE",
            ).to(self.device)
        self.adv = PatchAdversarialLoss(criterion="least_squares")
        self.perceptual = perceptual_loss(cfg.perceptual_weights, cfg.perceptual_weight, self.device)
        vq_params = [p for p in self.net.vqgan.parameters() if p.requires_grad]  # EMA codes are not trained by Adam
        self.opt_vq = torch.optim.Adam(vq_params, lr=cfg.vq_lr, betas=(0.5, 0.9))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))
        self.opt_tf = torch.optim.AdamW(
            self._transformer_params(), lr=cfg.transformer_lr, betas=(0.9, 0.95), weight_decay=0.01
        )
        self.state = {"stage": 1, "epoch": 0, "metrics": []}
        if cfg.init_skip_vqgan and not cfg.init_from:
            raise ValueError("init_skip_vqgan needs init_from (the checkpoint whose VQGAN to keep)")
        if cfg.init_from:
            entry = self._load_weights(Path(cfg.init_from), self.net, self.model_config)
            if cfg.init_skip_vqgan:
                self._initialised_from(cfg.init_from, entry, stage=2, epoch=0)

    def _transformer_params(self) -> list[torch.nn.Parameter]:
        params = list(self.net.maskgit.parameters())
        return params + (list(self.net.ar.parameters()) if self.net.ar is not None else [])

    def _resumable(self) -> dict[str, Stateful]:
        return {"net": self.net, "disc": self.disc, "opt_vq": self.opt_vq, "opt_d": self.opt_d, "opt_tf": self.opt_tf}

    def _task(self, label: str, total: int):
        return self.progress.add_task(label, total=total) if self.progress else None

    def _advance(self, task, done: bool = False) -> None:
        if task is None:
            return
        self.progress.remove_task(task) if done else self.progress.advance(task)

    # ----- stage 1 -------------------------------------------------------------------------------------------------
    def vq_losses(
        self, x: torch.Tensor, adversarial: bool, vq: torch.nn.Module | None = None
    ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """The VQGAN's loss on ``x``; ``vq`` is the VQGAN or its DDP wrapper."""
        cfg = self.cfg
        out = (vq or self.net.vqgan)(x)
        l1 = F.l1_loss(out.recon, x)
        grad = gradient_loss(out.recon, x)
        target = importance_target(out.recon, x, out.importance_logits.shape[1:])
        importance = F.binary_cross_entropy_with_logits(out.importance_logits, target)
        loss = l1 + cfg.grad_weight * grad + out.quantized.loss + cfg.importance_weight * importance
        if self.perceptual is not None:
            loss = loss + cfg.perceptual_weight * self.perceptual(out.recon, x)
        adv_g = torch.zeros((), device=self.device)
        adv_scale = torch.zeros((), device=self.device)
        if adversarial:
            with self._autocast():
                logits = self.disc(out.recon.contiguous())[-1]
            adv_g = self.adv(logits.float(), target_is_real=True, for_discriminator=False)
            adv_scale = cfg.adv_weight * self.adaptive_weight(l1 + cfg.grad_weight * grad, adv_g)
            loss = loss + adv_scale * adv_g
        parts = {
            "l1": l1,
            "grad": grad,
            "vq": out.quantized.loss,
            "importance": importance,
            "adv_g": adv_g,
            "adv_scale": adv_scale,
            "perplexity": out.quantized.perplexity,
        }
        return loss, parts, out.recon

    def adaptive_weight(self, rec: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """‖∇_w rec‖ / ‖∇_w adv‖ at the decoder's last layer w, clamped to [0, 10⁴] and detached (taming)."""
        last = self.net.vqgan.decoder.last_layer
        g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
        return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def train_vq_epoch(self, rois: torch.Tensor, train_idx: np.ndarray, epoch: int) -> dict:
        cfg = self.cfg
        rng = epoch_rng(cfg.seed, 1, epoch, rank=self.world.rank)
        self.net.vqgan.train()
        self.disc.train()
        order = rng.permutation(train_idx)
        batches = self.world.shard([order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)])
        vq_train, disc_train = self._wrapped("vqgan", self.net.vqgan), self._wrapped("disc", self.disc)
        quantizer = self.net.vqgan.quantizer
        adversarial = epoch >= cfg.adv_start_epoch and cfg.adv_weight > 0
        sums: dict[str, float] = {}
        task = self._task(f"VQGAN epoch {epoch + 1}/{cfg.vq_epochs}", len(batches))
        for idx in batches:
            x = rois[idx].to(self.device)
            if cfg.flip:
                x = flip_some(x, rng)
            loss, parts, recon = self.vq_losses(x, adversarial, vq_train)
            self.opt_vq.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_vq.step()
            self.world.broadcast_([quantizer.codebook.weight, *quantizer.buffers()])  # one codebook: rank 0's
            parts["disc"] = torch.zeros(())
            if adversarial:
                with self._autocast():  # fake and real in one forward: DDP wants one forward per backward
                    both = disc_train(torch.cat([recon.detach(), x]).contiguous())[-1].float()
                fake, real = both[: len(x)], both[len(x) :]
                d_loss = 0.5 * (
                    self.adv(fake, target_is_real=False, for_discriminator=True)
                    + self.adv(real, target_is_real=True, for_discriminator=True)
                )
                self.opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                self.opt_d.step()
                parts["disc"] = d_loss
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            self._advance(task)
        self._advance(task, done=True)
        row = {k: self.world.mean(v / max(1, len(batches))) for k, v in sums.items()}
        row["codes_alive"] = int(self.net.vqgan.quantizer.alive().sum())
        return row

    @torch.no_grad()
    def validate_vq(self, rois: torch.Tensor, val_idx: np.ndarray) -> dict:
        if len(val_idx) == 0:
            return {}
        self.net.vqgan.eval()
        x = rois[val_idx].to(self.device)
        recon = torch.cat([self.net.vqgan(b).recon for b in x.split(self.cfg.batch_size)])
        return {"val_l1": float(F.l1_loss(recon, x))}

    # ----- stage 2 -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def cache_tokens(self, rois: torch.Tensor, classes: torch.Tensor, idx: np.ndarray):
        """Tokens (M, N), importance scores (M, N) and class labels (M,) of each ROI (and its flip)."""
        self.net.vqgan.eval()
        copies = [rois[idx]] + ([rois[idx].flip(2)] if self.cfg.flip else [])
        tokens, scores = [], []
        for x in copies:
            for b in x.split(self.cfg.batch_size):
                t, s = self.net.tokenize(b.to(self.device))
                tokens.append(t)
                scores.append(s)
        labels = classes[idx].to(self.device).repeat(len(copies))
        return torch.cat(tokens), torch.cat(scores), labels

    def transformer_losses(
        self,
        tokens: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        maskgit: torch.nn.Module | None = None,
        ar: torch.nn.Module | None = None,
    ) -> dict:
        """Masked-token and next-token losses; ``maskgit`` and ``ar`` are the transformers or their DDP wrappers."""
        cfg, net = self.cfg, self.net
        maskgit, ar = maskgit or net.maskgit, ar or net.ar
        y = labels.clone()
        y[torch.rand(len(y), device=self.device) < cfg.class_dropout] = 0
        m = hybrid_mask(
            tokens,
            scores,
            net.latent_shape,
            mask_id=net.mask_id,
            num_codes=net.num_codes,
            topk_ratio=cfg.topk_ratio,
            replace_prob=cfg.replace_prob,
        )
        with self._autocast():
            logits = maskgit(m.inputs, y).float()  # (B, N, K)
        where = m.loss_positions
        out = {"mtm_ce": masked_token_loss(logits, tokens, where)}
        out["mtm_acc"] = (logits.argmax(-1) == tokens)[where].float().mean() if where.any() else torch.zeros(())
        if ar is not None:
            with self._autocast():
                ar_logits = ar(random_replace(tokens, net.num_codes, cfg.ar_replace_prob), y)  # (B, N, K)
            out["ar_ce"] = F.cross_entropy(ar_logits.flatten(0, 1).float(), tokens.flatten())
        return out

    def train_transformer_epoch(self, tokens, scores, labels, epoch: int) -> dict:
        cfg = self.cfg
        rng = epoch_rng(cfg.seed, 2, epoch, rank=self.world.rank)
        self.net.maskgit.train()
        if self.net.ar is not None:
            self.net.ar.train()
        order = rng.permutation(len(tokens))
        bs = cfg.transformer_batch_size
        batches = self.world.shard([order[i : i + bs] for i in range(0, len(order), bs)])
        maskgit = self._wrapped("maskgit", self.net.maskgit)
        ar = self._wrapped("ar", self.net.ar) if self.net.ar is not None else None
        sums: dict[str, float] = {}
        task = self._task(f"transformer epoch {epoch + 1}/{cfg.transformer_epochs}", len(batches))
        for idx in batches:
            parts = self.transformer_losses(tokens[idx], scores[idx], labels[idx], maskgit, ar)
            loss = parts["mtm_ce"] + parts.get("ar_ce", 0.0)
            self.opt_tf.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self._transformer_params(), 1.0)
            self.opt_tf.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            self._advance(task)
        self._advance(task, done=True)
        return {k: self.world.mean(v / max(1, len(batches))) for k, v in sums.items()}

    # ----- the whole run -------------------------------------------------------------------------------------------
    def load_data(self) -> ROISet:
        out = self.model_config["output"]
        return load_rois(
            self.data_dir,
            self.classes,
            out["shape"],
            out["spacing"],
            self.cfg.modalities,
            self.model_config["intensity"]["z_clip"],
            self.cfg.max_subjects,
        )

    def run(self, resume: bool = False) -> TrainResult:
        cfg = self.cfg
        if resume and self.load_state():
            log.info("resumed at stage %s epoch %s", self.state["stage"], self.state["epoch"])
        t0 = time.time()
        data = self.load_data()
        train_idx, val_idx = split(len(data.ids), cfg.val_fraction, cfg.seed)
        log.info(
            "%d ROIs (%d train, %d validation) in %.1fs", len(data.ids), len(train_idx), len(val_idx), time.time() - t0
        )
        if self.state["stage"] == 1:
            self._run_stage(
                "vqgan",
                cfg.vq_epochs,
                lambda e: self.train_vq_epoch(data.rois, train_idx, e) | self.validate_vq(data.rois, val_idx),
            )
            self.state.update(stage=2, epoch=0)
            self.save_state()
        self.net.vqgan.requires_grad_(False)
        tokens, scores, labels = self.cache_tokens(data.rois, data.classes, train_idx)
        self._run_stage(
            "transformer", cfg.transformer_epochs, lambda e: self.train_transformer_epoch(tokens, scores, labels, e)
        )
        entry = self.write_checkpoint(data, train_idx, val_idx, time.time() - t0)
        return TrainResult(entry, self.state["metrics"])

    def _run_stage(self, stage: str, epochs: int, train_epoch: Callable[[int], dict]) -> None:
        while self.state["epoch"] < epochs:
            e = self.state["epoch"]
            t = time.time()
            row = {"stage": stage, "epoch": e + 1} | train_epoch(e) | {"seconds": round(time.time() - t, 2)}
            self.state["epoch"] = e + 1
            self._log(row)
            self.save_state()

    def write_checkpoint(self, data: ROISet, train_idx, val_idx, seconds: float) -> ModelEntry:
        """Rank 0 writes; every rank returns its entry."""
        return self._write_on_main(lambda: self._write_checkpoint(data, train_idx, val_idx, seconds))

    def _write_checkpoint(self, data: ROISet, train_idx, val_idx, seconds: float) -> ModelEntry:
        cfg = self.cfg
        config = copy.deepcopy(self.model_config)
        config["samplers"] = sampler_specs(self.net.num_tokens, self.net.ar is not None)
        trained_on = describe_data(self.data_dir, data, train_idx, self.classes)
        last = {r["stage"]: r for r in self.state["metrics"]}
        what = split_record(data.ids, train_idx, val_idx) | {"final": last, "seconds": round(seconds, 1)}
        training = self.training_record(what, then={"epoch_seconds": self.epoch_seconds()}, init_key="vqgan_from")
        config.update(trained=True, trained_on=trained_on, training=training)
        record_scanner_stats(config, self.data_dir, [data.ids[i] for i in train_idx], config["modalities"])
        self.net.eval()
        return save_checkpoint(
            self.out_dir, config=config, module=self.net, card=model_card(config, cfg, last, trained_on)
        )
