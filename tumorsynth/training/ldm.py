"""Training the mask-conditioned LDM (Truong et al. 2024) on BraTS-format data: the same code for phantoms and BraTS.

Preprocessing (shared with serving through ``imaging.geometry.fit_to_grid`` and ``imaging.labels.to_regions``):
BraTS files → z-score per modality over non-zero voxels (paper §2.1) → crop to the non-zero box → the model grid
(a fixed field of view centred on the box; serving centres it on the mask volume, which for BraTS-format masks is
the same place to within a few millimetres) → mask as nested WT/TC/ET regions.

Stage 1, the autoencoder: L1 + SSIM + KL (weight 1e-6) + a patch adversarial loss after a warm-up, as in the paper
(perceptual loss only when ``perceptual_weights`` names a local file: no model hub is reachable here).
Stage 2, the diffusion UNet on frozen latents: ε-prediction MSE with the schedule that serving samples with, the mask
regions concatenated to the latent, the class dropped to "unknown" with probability ``class_dropout``.

Training state is saved after every epoch in ``work_dir/state.pt``; ``resume=True`` continues from it. Every epoch
uses RNG streams derived from (seed, stage, epoch), so an interrupted and resumed run ends with the same weights as
an uninterrupted one (on the same device).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..data.brats import MODALITIES, find_subjects
from ..data.subjects import prepare_subject, split
from ..imaging.labels import to_regions
from ..models.checkpoints import save_checkpoint
from ..models.ldm.configs import PRESETS, build_network
from ..models.ldm.schedulers import make_scheduler
from ..models.registry import ModelEntry
from .common import ResumableTrainer, Stateful, ema_with_warmup, epoch_rng, perceptual_loss, split_record
from .configs import load_config
from .intensity_stats import record_scanner_stats
from .ldm_card import describe_data, model_card
from .ldm_losses import augment, enhancement_l1, kl_loss, random_crops, region_weights, weighted_mean

log = logging.getLogger(__name__)


@dataclass
class LDMTrainConfig:
    preset: str = "tiny"  # network and grid: models.ldm.configs.PRESETS
    name: str = "ldm"
    version: str = "1"
    seed: int = 0
    val_fraction: float = 0.1
    batch_size: int = 2
    grad_accum: int = 1
    amp: bool = True  # bf16 autocast where the device supports it (CUDA); CPUs train in float32
    # Start from the weights of a servable checkpoint (its network must match the preset): "resume from weights
    # alone", when the optimiser state is gone. ``init_stages`` says which stages then skip training: "autoencoder"
    # keeps the checkpoint's autoencoder as it is and trains only the diffusion UNet.
    init_from: str | None = None
    init_skip_autoencoder: bool = False
    # stage 1: autoencoder
    ae_epochs: int = 1
    ae_lr: float = 1e-4
    ssim_weight: float = 1.0
    ssim_range: float = 5.0  # SSIM's data range on z-scored intensities
    kl_weight: float = 1e-6
    # Extra L1 weight per tumour region (WT, TC, ET): a voxel weighs 1 + Σ w_k·region_k. Tumours are ~1% of the brain
    # and the enhancing rim a voxel or two thick, so an autoencoder trained on the plain mean blurs their contrast away,
    # and no diffusion model can then bring it back.
    ae_region_weights: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # L1 between the reconstruction's T1C − T1 and the input's, weighted like the L1 above: contrast enhancement is a
    # difference between two channels that agree everywhere else, which the per-channel L1 lets a decoder average away.
    ae_enhancement_weight: float = 0.0
    # Train only the decoder (and post-quantisation conv) of an --init-from autoencoder: its latents, scale factor and
    # so its diffusion UNet stay valid, and the decoder learns to bring back what the latents do hold.
    ae_freeze_encoder: bool = False
    # "spade": a decoder conditioned on the tumour's regions and class (MONAI's SPADEAutoencoderKL; see
    # models/ldm/network.py). From an --init-from checkpoint with a plain decoder, the SPADE decoder starts as that
    # decoder exactly (its normalisations' scale and shift moved into the modulation's biases).
    ae_decoder: str = "plain"
    ae_spade_channels: int = 32
    # Train the autoencoder on random crops of this size (None: whole volumes), a fraction of them centred on a tumour
    # voxel (as MONAI's RandCropByPosNegLabel): a convolutional autoencoder learns the same maps from crops at a
    # fraction of the cost, and tumour-centred crops show it the rare tumour voxels far more often.
    ae_crop: tuple[int, int, int] | None = None
    ae_crop_tumour_fraction: float = 0.5
    adv_weight: float = 0.01
    adv_start_epoch: int = 1  # warm-up epochs before the discriminator joins
    disc_channels: int = 16
    disc_layers: int = 2
    disc_lr: float = 2e-4
    perceptual_weight: float = 0.0
    perceptual_weights: str | None = None  # a local MedicalNet/torchvision weights file; none is downloaded
    # stage 2: diffusion
    diffusion_epochs: int = 1
    diffusion_lr: float = 1e-4
    diffusion_batch_size: int = 8
    # Sampling uses an exponential moving average of the UNet's weights (DDPM, LDM, DiT all do; decay per step).
    # 0 turns it off. The EMA weights are what the checkpoint stores.
    ema_decay: float = 0.999
    # Warm the average up as diffusers' EMAModel does (decay min(d, (1 + n) / (10 + n)) at update n): a plain 0.999
    # average still holds 0.999^n of the starting weights after n steps (58 % after 540), which a short run serves.
    ema_warmup: bool = True
    # What the UNet predicts: "epsilon" (the paper's) or "v_prediction" (Salimans & Ho 2022). With the paper's linear
    # schedule ᾱ_T ≈ 4e-5, so an ε-model's estimate of z_0 at high noise multiplies its error by 1/√ᾱ ≈ 160: the
    # first sampling steps then start from texture (measured on the demo: z_0 estimate r = 0.13 at t = 999). v is
    # well-conditioned at every t. Stored in the checkpoint's schedule; every sampler reads it from there.
    prediction_type: str = "epsilon"
    diffusion_warmup_steps: int = 0  # linear learning-rate warm-up
    class_dropout: float = 0.1
    latent_augment: int = 2  # cached latents per subject: the original and flipped/scaled copies
    # data augmentation (TorchIO): left-right flips and a random scaling like the paper's "random scaling"
    flip: bool = True
    scale_range: float = 0.08
    max_subjects: int | None = None

    @classmethod
    def load(cls, spec: str | Path, **overrides) -> LDMTrainConfig:
        """A JSON file, or the name of one in ``training/configs`` (``ldm-tiny``, ``ldm-demo``, ``ldm-paper``)."""
        return load_config(cls, "ldm", spec, overrides)


@dataclass
class Prepared:
    ids: list[str]
    images: torch.Tensor  # (N, C, X, Y, Z) float32, z-scored, on the model grid
    regions: torch.Tensor  # (N, 3, X, Y, Z) float32
    classes: torch.Tensor  # (N,) long, 0 = unknown, k + 1 = classes[k]


@dataclass
class TrainResult:
    entry: ModelEntry
    metrics: list[dict] = field(default_factory=list)


def prepare(
    data_dir: Path,
    config: dict,
    classes: list[str],
    max_subjects: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Prepared:
    subjects = find_subjects(data_dir)
    if not subjects:
        raise FileNotFoundError(
            f"no BraTS-format subjects under {data_dir} (expected <id>/<id>_t1.nii.gz … or <id>/<id>-t1n.nii.gz …)"
        )
    subjects = subjects[:max_subjects] if max_subjects else subjects
    grid, fov = tuple(config["output"]["shape"]), tuple(config["fov_mm"])
    images, regions, labels = [], [], []
    for i, s in enumerate(subjects):
        image, seg = prepare_subject(s, grid, fov, tuple(config["modalities"]))
        images.append(torch.from_numpy(image))
        regions.append(torch.from_numpy(to_regions(seg, "brats2023")))
        labels.append(classes.index(s.tumor_class) + 1 if s.tumor_class in classes else 0)
        if progress:
            progress(i + 1, len(subjects))
    return Prepared([s.id for s in subjects], torch.stack(images), torch.stack(regions), torch.tensor(labels))


def _ddpm(scheduler: SchedulerMixin) -> DDPMScheduler:
    """The training scheduler, typed as the DDPM one ``make_scheduler("ddpm", ...)`` builds (its noise and velocity
    maths are the DDPM scheduler's, not every diffusers scheduler's)."""
    if not isinstance(scheduler, DDPMScheduler):
        raise TypeError(f"expected a DDPMScheduler for training, got {type(scheduler).__name__}")
    return scheduler


class Trainer(ResumableTrainer[LDMTrainConfig]):
    def __init__(
        self,
        cfg: LDMTrainConfig,
        data_dir: Path,
        out_dir: Path,
        work_dir: Path,
        device: str = "cpu",
        on_epoch: Callable[[dict], None] | None = None,
        progress=None,
    ):
        self.cfg, self.data_dir, self.out_dir, self.work_dir = cfg, Path(data_dir), Path(out_dir), Path(work_dir)
        self._join_world(device, cfg.amp)  # torchrun: one process per GPU, DDP; otherwise one process
        self.on_epoch = on_epoch
        self.progress = progress  # a rich Progress, or None
        self.model_config = copy.deepcopy(PRESETS[cfg.preset])
        self.model_config.update(name=cfg.name, version=str(cfg.version))
        if cfg.ae_decoder != "plain":
            self.model_config["network"].update(ae_decoder=cfg.ae_decoder, ae_spade_channels=cfg.ae_spade_channels)
        if cfg.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {cfg.prediction_type!r}")
        self.model_config["schedule"] = dict(self.model_config["schedule"], prediction_type=cfg.prediction_type)
        self.classes = list(self.model_config["classes"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = build_network(self.model_config).to(self.device)
        from monai.losses import PatchAdversarialLoss, SSIMLoss
        from monai.networks.nets import PatchDiscriminator

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.disc = PatchDiscriminator(
                spatial_dims=3,
                channels=cfg.disc_channels,
                in_channels=len(MODALITIES),
                num_layers_d=cfg.disc_layers,
                norm="INSTANCE",
            ).to(self.device)
        self.ssim = SSIMLoss(spatial_dims=3, data_range=cfg.ssim_range, win_size=5)
        self.adv = PatchAdversarialLoss(criterion="least_squares")
        self.perceptual = perceptual_loss(cfg.perceptual_weights, cfg.perceptual_weight, self.device)
        ae = self.net.autoencoder
        if cfg.ae_freeze_encoder:
            if not cfg.init_from:
                raise ValueError("ae_freeze_encoder needs init_from: the trained encoder to keep")
            for part in (ae.encoder, ae.quant_conv_mu, ae.quant_conv_log_sigma):
                part.requires_grad_(False)
        self.opt_ae = torch.optim.Adam([p for p in ae.parameters() if p.requires_grad], lr=cfg.ae_lr)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr)
        self.opt_unet = torch.optim.AdamW(self.net.unet.parameters(), lr=cfg.diffusion_lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)
        self.ema = None
        if cfg.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            if cfg.ema_warmup:
                self.ema = AveragedModel(self.net.unet, avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True)
            else:
                self.ema = AveragedModel(
                    self.net.unet, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
                )
        self.warmup = torch.optim.lr_scheduler.LambdaLR(
            self.opt_unet, lambda step: min(1.0, (step + 1) / max(1, cfg.diffusion_warmup_steps))
        )
        self.state = {"stage": 1, "epoch": 0, "metrics": [], "scale_factor": None}
        if cfg.init_from:
            self.init_weights(Path(cfg.init_from))
        self.train_scheduler = _ddpm(make_scheduler("ddpm", 1000, self.model_config["schedule"]))

    def _resumable(self) -> dict[str, Stateful]:
        parts: dict[str, Stateful] = {
            "net": self.net,
            "disc": self.disc,
            "opt_ae": self.opt_ae,
            "opt_d": self.opt_d,
            "opt_unet": self.opt_unet,
            "warmup": self.warmup,
        }
        return parts | ({"ema": self.ema} if self.ema is not None else {})

    def init_weights(self, checkpoint_dir: Path) -> None:
        """Weights (not optimiser state) from a servable checkpoint whose network matches this preset."""
        entry = self._init_entry(checkpoint_dir)
        if self.ema is not None:
            self.ema.module.load_state_dict(self.net.unet.state_dict())
        if self.cfg.init_skip_autoencoder:
            self._initialised_from(checkpoint_dir, entry, stage=2, epoch=0)
        if self.cfg.ae_freeze_encoder:  # same latents: the trained UNet's scale factor stays
            self._initialised_from(checkpoint_dir, entry, scale_factor=float(self.net.scale_factor))

    def _init_entry(self, checkpoint_dir: Path) -> ModelEntry:
        """Load an --init-from checkpoint; one with a plain decoder into a SPADE one of the same sizes too."""
        from ..models.registry import entry_at

        theirs = entry_at(Path(checkpoint_dir)).config.get("network") or {}
        if self.net.ae_decoder != "spade" or theirs.get("ae_decoder") == "spade":
            return self._load_weights(checkpoint_dir, self.net, self.model_config)
        spade_keys = ("ae_decoder", "ae_spade_channels")
        network = {k: v for k, v in self.model_config["network"].items() if k not in spade_keys}
        plain = build_network(self.model_config | {"network": network})
        entry = self._load_weights(checkpoint_dir, plain, self.model_config | {"network": network})  # same sizes?
        self.net.spade_from_plain(plain.autoencoder.state_dict())
        self.net.unet.load_state_dict(plain.unet.state_dict())
        self.net.scale_factor.copy_(plain.scale_factor)
        log.info("its decoder made a SPADE one (%s)", entry.id)
        return entry

    def _step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, i: int, n: int) -> None:
        self.scaler.scale(loss / self.cfg.grad_accum).backward()
        if (i + 1) % self.cfg.grad_accum == 0 or i + 1 == n:
            self.scaler.step(opt)
            self.scaler.update()
            opt.zero_grad(set_to_none=True)

    # ----- stage 1 -------------------------------------------------------------------------------------------------
    def train_autoencoder_epoch(self, data: Prepared, train_idx: np.ndarray, epoch: int) -> dict:
        cfg, ae = self.cfg, self.net.autoencoder
        rng = epoch_rng(cfg.seed, 1, epoch, rank=self.world.rank)
        ae.train()
        self.disc.train()
        order = rng.permutation(train_idx)
        batches = self.world.shard([order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)])
        ae_train, disc_train = self._wrapped("ae", ae), self._wrapped("disc", self.disc)
        sums = {"l1": 0.0, "ssim": 0.0, "kl": 0.0, "adv_g": 0.0, "disc": 0.0}
        adversarial = epoch >= cfg.adv_start_epoch and cfg.adv_weight > 0
        task = (
            self.progress.add_task(f"autoencoder epoch {epoch + 1}/{cfg.ae_epochs}", total=len(batches))
            if self.progress
            else None
        )
        for i, idx in enumerate(batches):
            x, r = augment(data.images[idx], data.regions[idx], cfg)
            if cfg.ae_crop:
                x, r = random_crops(x, r, cfg.ae_crop, cfg.ae_crop_tumour_fraction, rng)
            x, r = x.to(self.device), r.to(self.device)
            # a SPADE decoder also learns the unknown class (0), as the UNet does: requests may name none
            labels = data.classes[idx]
            if self.net.ae_decoder == "spade":  # (a plain one draws nothing: its runs stay as they were)
                labels = labels * torch.from_numpy(rng.random(len(idx)) >= cfg.class_dropout)
            labels = labels.to(self.device)
            with self._autocast():
                recon, z_mu, z_sigma = self.net.autoencoder_forward(x, r, labels, ae_train)
                weights = region_weights(r, cfg.ae_region_weights)
                l1 = weighted_mean((recon.float() - x).abs(), weights)
                if cfg.ae_enhancement_weight:
                    l1 = l1 + cfg.ae_enhancement_weight * enhancement_l1(recon.float(), x, weights)
                ssim = self.ssim(recon.float(), x)
                kl = kl_loss(z_mu.float(), z_sigma.float())
                loss = l1 + cfg.ssim_weight * ssim + cfg.kl_weight * kl
                if self.perceptual is not None:
                    loss = loss + cfg.perceptual_weight * self.perceptual(recon.float(), x)
                adv_g = torch.zeros((), device=self.device)
                if adversarial:
                    adv_g = self.adv(
                        self.disc(recon.contiguous().float())[-1], target_is_real=True, for_discriminator=False
                    )
                    loss = loss + cfg.adv_weight * adv_g
            self._step(loss, self.opt_ae, i, len(batches))
            d_loss = torch.zeros(())
            if adversarial:
                with self._autocast():  # fake and real in one forward: DDP wants one forward per backward
                    both = disc_train(torch.cat([recon.detach().float(), x]).contiguous())[-1]
                    fake, real = both[: len(x)], both[len(x) :]
                    d_loss = 0.5 * (
                        self.adv(fake, target_is_real=False, for_discriminator=True)
                        + self.adv(real, target_is_real=True, for_discriminator=True)
                    )
                self._step(cfg.adv_weight * d_loss, self.opt_d, i, len(batches))
            for k, v in (("l1", l1), ("ssim", ssim), ("kl", kl), ("adv_g", adv_g), ("disc", d_loss)):
                sums[k] += float(v.detach())
            if task is not None:
                self.progress.advance(task)
        if task is not None:
            self.progress.remove_task(task)
        return {k: self.world.mean(v / max(1, len(batches))) for k, v in sums.items()}

    @torch.no_grad()
    def validate_autoencoder(self, data: Prepared, val_idx: np.ndarray) -> dict:
        if len(val_idx) == 0:
            return {}
        self.net.autoencoder.eval()
        x, r = data.images[val_idx].to(self.device), data.regions[val_idx].to(self.device)
        c, n = data.classes[val_idx].to(self.device), self.cfg.batch_size
        recon = torch.cat([self.net.reconstruct(b, rb, cb) for b, rb, cb in zip(x.split(n), r.split(n), c.split(n))])
        return {"val_l1": float(F.l1_loss(recon, x))}

    # ----- stage 2 -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def cache_latents(self, data: Prepared, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent means of ``latent_augment`` augmented copies of each subject, with their region conditions."""
        self.net.autoencoder.eval()
        epoch_rng(self.cfg.seed, 2, 10**6)  # its own stream, apart from every epoch's
        zs, conds, labels = [], [], []
        for copy_i in range(max(1, self.cfg.latent_augment)):
            for b in np.array_split(idx, max(1, math.ceil(len(idx) / self.cfg.batch_size))):
                if len(b) == 0:
                    continue
                x, r = (
                    (data.images[b], data.regions[b])
                    if copy_i == 0
                    else augment(data.images[b], data.regions[b], self.cfg)
                )
                z_mu, _ = self.net.autoencoder.encode(x.to(self.device))
                zs.append(z_mu.float())
                conds.append(self.net.condition(r.to(self.device)))
                labels.append(data.classes[b].to(self.device))
        return torch.cat(zs), torch.cat(conds), torch.cat(labels)

    def train_diffusion_epoch(self, latents, conds, labels, epoch: int) -> dict:
        cfg, net = self.cfg, self.net
        rng = epoch_rng(cfg.seed, 2, epoch, rank=self.world.rank)
        net.unet.train()
        order = rng.permutation(len(latents))
        bs = cfg.diffusion_batch_size
        batches = self.world.shard([order[i : i + bs] for i in range(0, len(order), bs)])
        unet_train = self._wrapped("unet", net.unet)
        total = 0.0
        sched = self.train_scheduler
        task = (
            self.progress.add_task(f"diffusion epoch {epoch + 1}/{cfg.diffusion_epochs}", total=len(batches))
            if self.progress
            else None
        )
        for i, idx in enumerate(batches):
            z0 = latents[idx] * net.scale_factor
            noise = torch.randn_like(z0)
            # diffusers annotates timesteps as the legacy IntTensor; it takes randint's int64 tensor
            t = cast(
                torch.IntTensor, torch.randint(0, sched.config["num_train_timesteps"], (len(idx),), device=self.device)
            )
            z_t = sched.add_noise(z0, noise, t)
            y = labels[idx].clone()
            y[torch.rand(len(idx), device=self.device) < cfg.class_dropout] = 0
            with self._autocast():
                pred = net.denoise(z_t, t, conds[idx], y, unet=unet_train)
                target = noise if cfg.prediction_type == "epsilon" else sched.get_velocity(z0, noise, t)
                loss = F.mse_loss(pred.float(), target)
            self._step(loss, self.opt_unet, i, len(batches))
            if (i + 1) % cfg.grad_accum == 0 or i + 1 == len(batches):
                self.warmup.step()
                if self.ema is not None:
                    self.ema.update_parameters(net.unet)
            total += float(loss.detach())
            if task is not None:
                self.progress.advance(task)
        if task is not None:
            self.progress.remove_task(task)
        return {"mse": self.world.mean(total / max(1, len(batches)))}

    # ----- the whole run -------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        cfg = self.cfg
        if resume and self.load_state():
            log.info("resumed at stage %s epoch %s", self.state["stage"], self.state["epoch"])
        t0 = time.time()
        data = prepare(self.data_dir, self.model_config, self.classes, cfg.max_subjects)
        train_idx, val_idx = split(len(data.ids), cfg.val_fraction, cfg.seed)
        log.info(
            "%d subjects (%d train, %d validation), prepared in %.1fs",
            len(data.ids),
            len(train_idx),
            len(val_idx),
            time.time() - t0,
        )
        if self.state["stage"] == 1:
            while self.state["epoch"] < cfg.ae_epochs:
                e = self.state["epoch"]
                t = time.time()
                row = (
                    {"stage": "autoencoder", "epoch": e + 1}
                    | self.train_autoencoder_epoch(data, train_idx, e)
                    | self.validate_autoencoder(data, val_idx)
                    | {"seconds": round(time.time() - t, 2)}
                )
                self.state["epoch"] = e + 1
                self._log(row)
                self.save_state()
            self.state.update(stage=2, epoch=0)
            self.save_state()
        if cfg.diffusion_epochs == 0 and self.state["scale_factor"] is not None:  # nothing to train on latents
            self.net.scale_factor.fill_(self.state["scale_factor"])
            entry = self.write_checkpoint(data, train_idx, val_idx, time.time() - t0)
            return TrainResult(entry, self.state["metrics"])
        latents, conds, labels = self.cache_latents(data, train_idx)
        if self.state["scale_factor"] is None:
            self.state["scale_factor"] = float(1.0 / latents.std().clamp_min(1e-6))
        scale_factor = self.net.scale_factor  # a buffer: nn.Module types it as Tensor | Module
        if not isinstance(scale_factor, torch.Tensor):
            raise TypeError(f"the LDM's scale_factor is a {type(scale_factor).__name__}, not a buffer")
        scale_factor.fill_(self.state["scale_factor"])
        self.net.autoencoder.requires_grad_(False)
        while self.state["epoch"] < cfg.diffusion_epochs:
            e = self.state["epoch"]
            t = time.time()
            row = (
                {"stage": "diffusion", "epoch": e + 1}
                | self.train_diffusion_epoch(latents, conds, labels, e)
                | {"seconds": round(time.time() - t, 2)}
            )
            self.state["epoch"] = e + 1
            self._log(row)
            self.save_state()
        entry = self.write_checkpoint(data, train_idx, val_idx, time.time() - t0)
        return TrainResult(entry, self.state["metrics"])

    def write_checkpoint(self, data: Prepared, train_idx, val_idx, seconds: float) -> ModelEntry:
        return self._write_on_main(lambda: self._write_checkpoint(data, train_idx, val_idx, seconds))

    def _write_checkpoint(self, data: Prepared, train_idx, val_idx, seconds: float) -> ModelEntry:
        cfg = self.cfg
        config = copy.deepcopy(self.model_config)
        trained_on = describe_data(self.data_dir, data, train_idx)
        last = {r["stage"]: r for r in self.state["metrics"]}
        timing = {"seconds": round(seconds, 1), "epoch_seconds": self.epoch_seconds()}
        what = split_record(data.ids, train_idx, val_idx) | {"final": last} | timing
        kept = "decoder_trained_from" if cfg.ae_freeze_encoder and not cfg.init_skip_autoencoder else "autoencoder_from"
        training = self.training_record(what, threads=False, init_key=kept)
        config.update(trained=True, trained_on=trained_on, training=training)
        if self.ema is not None:  # the checkpoint serves the averaged weights
            self.net.unet.load_state_dict(self.ema.module.state_dict())
        record_scanner_stats(config, self.data_dir, [data.ids[i] for i in train_idx], config["modalities"])
        card = model_card(config, cfg, last, trained_on)
        self.net.eval()
        return save_checkpoint(self.out_dir, config=config, module=self.net, card=card)
