"""Training the class-conditional StyleGAN2 on 2D slices (a folder per class, or axial slices of BraTS volumes).

The losses are stylegan2-ada-pytorch's ``StyleGAN2Loss`` (without ADA): the non-saturating logistic loss for both
networks; lazy R1 on reals every ``d_reg_interval`` steps (γ/2 · |∇D(x)|², scaled by the interval); lazy path-length
regularisation every ``g_reg_interval`` steps on a ``pl_batch_shrink``-times smaller batch (the gradient of
⟨G(w), noise/√(HW)⟩ w.r.t. w against its running mean); style mixing with probability ``style_mixing_prob``; Adam
with β = (0, 0.99) whose learning rate and betas are corrected for the lazy intervals (lr·c, β^c with c =
interval / (interval + 1)); an EMA generator with a half-life of ``ema_kimg`` thousand images (ramped up over the first
``ema_rampup`` of the images seen), which is the one the checkpoint keeps. Real slices are mirrored left-right with
probability 1/2 (``xflip``). Classes are drawn for fakes as they occur in the data. With ``augment`` (DiffAugment
policies, ``models.stylegan2.augment``) the discriminator sees only augmented images, real and generated, in its
loss, in R1 and in the generator's loss, as data-efficient-gans' StyleGAN2 port does for a few hundred images.
D's width can differ from the preset's (``d_channel_base``/``d_channel_max``: D is not kept in the checkpoint). With
``ac_weight`` D also carries an AC-GAN class head (Odena et al. 2017) trained on the reals' labels, and G's loss adds
D's cross-entropy for the class it was asked for (``ac_weight_g``): a D whose real/fake output learns too slowly to
guide G still learns, from the labels, the features (the small mass) that tell the classes apart.

State is saved after every epoch in ``work_dir/state.pt``; ``resume=True`` continues from it. Each epoch draws from
RNG streams derived from (seed, epoch), so a resumed run ends with the same weights as an uninterrupted one.
``init_from`` starts G and its EMA from a checkpoint's weights alone (a checkpoint keeps no D: D starts afresh).

Under ``torchrun`` (``training.distributed``) each rank trains on its share of the epoch's batches (``batch_size`` per
rank) and averages G's and D's gradients after every backward with one all-reduce, as stylegan2-ada-pytorch's and
stylegan3's ``training_loop`` do, rather than through DDP: the regularisers differentiate twice and the mapping and
synthesis networks are called apart, which DDP's ``forward`` hook does not see. The tracked mean w and the
path-length mean are averaged too, so every rank holds the same G, G_ema and D; the EMA counts the images of all
ranks. On CUDA the main G and D passes run under bf16 autocast; the R1 and path-length regularisers, gradients of
gradients, stay in float32. Rank 0 alone writes state, metrics and the checkpoint.
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

from ..data.slices import DEFAULT_CLASS_MAP, SliceSet, load_slices
from ..models.checkpoints import save_checkpoint
from ..models.registry import ModelEntry
from ..models.stylegan2.augment import POLICIES, diff_augment
from ..models.stylegan2.configs import PRESETS, build_network, model_config
from ..models.stylegan2.discriminator import Discriminator
from .common import ResumableTrainer, Stateful, epoch_rng
from .configs import load_config
from .stylegan2_card import describe_data, model_card

log = logging.getLogger(__name__)


@dataclass
class StyleGAN2TrainConfig:
    preset: str = "tiny"  # network and grid: models.stylegan2.configs.PRESETS
    name: str = "stylegan2"
    version: str = "1"
    seed: int = 0
    classes: list[str] | None = None  # default: the classes found in the data
    modality: str = "t1c"  # the contrast sliced from BraTS-format volumes
    class_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CLASS_MAP))
    slices_per_subject: int = 8
    max_per_class: int | None = None
    epochs: int = 1
    batch_size: int = 8
    lr_g: float = 0.0025
    lr_d: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 1.0
    d_reg_interval: int = 16
    pl_weight: float = 2.0
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    g_reg_interval: int = 4
    style_mixing_prob: float = 0.9
    ema_kimg: float | None = None  # default batch_size * 10 / 32, as stylegan2-ada-pytorch's auto config
    ema_rampup: float | None = 0.05
    xflip: bool = True
    augment: list[str] = field(default_factory=list)  # DiffAugment policies for D's inputs: color, translation, cutout
    amp: bool = True  # bf16 autocast on CUDA for the main G and D passes
    init_from: str | None = None  # start G and G_ema from a servable checkpoint's weights (same preset and classes)
    # D's channels min(d_channel_base / r, d_channel_max) instead of the preset's (D is not kept in the checkpoint, so
    # a wider D can train against a G of the preset's shape, e.g. one started with ``init_from``)
    d_channel_base: int | None = None
    d_channel_max: int | None = None
    # AC-GAN weight: D also classifies reals (cross-entropy), G is also scored on D's class for its fakes; 0 = off
    ac_weight: float = 0.0
    ac_weight_g: float | None = None  # G's weight, if not ac_weight (at 1 G drew class caricatures, not brains)

    @classmethod
    def load(cls, spec: str | Path, **overrides) -> StyleGAN2TrainConfig:
        """A JSON file, or one in ``training/configs`` (``stylegan2-tiny``, ``stylegan2-demo``, ``stylegan2-paper``)."""
        cfg = load_config(cls, "stylegan2", spec, overrides)
        cfg.betas = tuple(cfg.betas)
        unknown = sorted(set(cfg.augment) - set(POLICIES))
        if unknown:
            raise ValueError(f"augment: unknown DiffAugment policies {unknown}; choose from {', '.join(POLICIES)}")
        return cfg


@dataclass
class TrainResult:
    entry: ModelEntry
    metrics: list[dict] = field(default_factory=list)


def lazy_adam(params, lr: float, betas: tuple[float, float], interval: int) -> torch.optim.Adam:
    """Adam for a network regularised every ``interval`` steps (stylegan2-ada-pytorch ``training_loop``)."""
    c = interval / (interval + 1) if interval > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * c, betas=(betas[0] ** c, betas[1] ** c), eps=1e-8)


class Trainer(ResumableTrainer[StyleGAN2TrainConfig]):
    def __init__(
        self,
        cfg: StyleGAN2TrainConfig,
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
        self._join_world(device, cfg.amp)  # torchrun: one process per GPU; otherwise one process
        self.on_epoch, self.progress = on_epoch, progress
        self.data = self.load_data()
        self.model_config = model_config(cfg.preset, self.data.classes)
        self.model_config.update(name=cfg.name, version=str(cfg.version))
        for key in ("channel_base", "channel_max"):
            if getattr(cfg, f"d_{key}") is not None:
                self.model_config["discriminator"][key] = int(getattr(cfg, f"d_{key}"))
        if cfg.ac_weight > 0:
            self.model_config["discriminator"]["aux_classifier"] = True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.G = build_network(self.model_config).to(self.device)
            self.D = Discriminator(**self.model_config["discriminator"]).to(self.device)
        self.state = {"epoch": 0, "step": 0, "images_seen": 0, "pl_mean": 0.0, "metrics": []}
        if cfg.init_from:
            entry = self._load_weights(Path(cfg.init_from), self.G, self.model_config)
            self.G.train()
            self._initialised_from(cfg.init_from, entry)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g = lazy_adam(self.G.parameters(), cfg.lr_g, cfg.betas, cfg.g_reg_interval)
        self.opt_d = lazy_adam(self.D.parameters(), cfg.lr_d, cfg.betas, cfg.d_reg_interval)
        counts = torch.bincount(self.data.labels, minlength=len(self.data.classes)).float()
        self.class_probs = (counts / counts.sum()).to(self.device)

    def load_data(self) -> SliceSet:
        cfg = self.cfg
        res = PRESETS[cfg.preset]["network"]["resolution"]
        return load_slices(
            self.data_dir,
            res,
            cfg.classes,
            modality=cfg.modality,
            class_map=cfg.class_map,
            per_subject=cfg.slices_per_subject,
            max_per_class=cfg.max_per_class,
        )

    def _resumable(self) -> dict[str, Stateful]:
        return {"G": self.G, "G_ema": self.G_ema, "D": self.D, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def _D(self, img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """D's logits for ``img``, through DiffAugment when the config asks for it (reals and fakes alike)."""
        if self.cfg.augment:
            img = diff_augment(img, self.cfg.augment)
        return self.D(img, labels)

    # ----- losses -----------------------------------------------------------------------------------------------------
    def _fake_labels(self, n: int) -> torch.Tensor:
        return torch.multinomial(self.class_probs, n, replacement=True)

    def _generate(self, n: int, labels: torch.Tensor, update_w_avg: bool = False, amp: bool = True):
        """Images and the ws that made them, with style mixing as ``StyleGAN2Loss.run_G``. The mapping network runs
        in float32 (the tracked mean w moves by 0.5 % a step, below bf16's resolution); the synthesis under bf16
        autocast on CUDA unless ``amp`` is False."""
        G = self.G
        ws = G.mapping(torch.randn(n, G.z_dim, device=self.device), labels, update_w_avg=update_w_avg)
        if self.cfg.style_mixing_prob > 0:
            cutoff = int(torch.randint(1, ws.shape[1], ()))
            if float(torch.rand(())) >= self.cfg.style_mixing_prob:
                cutoff = ws.shape[1]
            mixed = G.mapping(torch.randn(n, G.z_dim, device=self.device), labels)
            ws = torch.cat([ws[:, :cutoff], mixed[:, cutoff:]], dim=1)
        with self._autocast(amp):
            img = G.synthesis(ws)
        return img.float(), ws

    def g_step(self) -> dict:
        """``Gmain``, then every ``g_reg_interval`` steps ``Greg`` (path length), each its own optimiser step."""
        cfg, n = self.cfg, self.cfg.batch_size
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        labels = self._fake_labels(n)
        fake, _ = self._generate(n, labels, update_w_avg=True)
        with self._autocast():
            logits = self._D(fake, labels).float()
        self.world.average_(self.G.buffers())  # the tracked mean w: one for all ranks
        loss = F.softplus(-logits).mean()
        out = {"loss_g": float(loss.detach())}
        if cfg.ac_weight > 0:
            assert self.D.last_class_logits is not None
            ac = F.cross_entropy(self.D.last_class_logits.float(), labels)
            weight = cfg.ac_weight if cfg.ac_weight_g is None else cfg.ac_weight_g
            loss, out["ac_g"] = loss + weight * ac, float(ac.detach())
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.world.average_gradients(self.G.parameters())
        self.opt_g.step()
        if cfg.pl_weight > 0 and self.state["step"] % cfg.g_reg_interval == 0:
            self.opt_g.zero_grad(set_to_none=True)
            out |= self._path_length()
            self.world.average_gradients(self.G.parameters())
            self.opt_g.step()
        return out

    def _path_length(self) -> dict:
        cfg = self.cfg
        m = max(1, cfg.batch_size // cfg.pl_batch_shrink)
        img, ws = self._generate(m, self._fake_labels(m), amp=False)  # a gradient of a gradient: float32
        noise = torch.randn_like(img) / np.sqrt(img.shape[2] * img.shape[3])
        (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grads.square().sum(2).mean(1).sqrt()  # (m,)
        batch_mean = self.world.mean(float(lengths.detach().mean()))  # all ranks' images
        pl_mean = self.state["pl_mean"] + cfg.pl_decay * (batch_mean - self.state["pl_mean"])
        self.state["pl_mean"] = pl_mean
        penalty = (lengths - pl_mean).square().mean()
        (penalty * cfg.pl_weight * cfg.g_reg_interval).backward()
        return {"pl_penalty": float(penalty.detach()), "pl_mean": pl_mean}

    def d_step(self, real: torch.Tensor, labels: torch.Tensor) -> dict:
        """``Dmain``, then every ``d_reg_interval`` steps ``Dreg`` (R1 on reals), each its own optimiser step."""
        cfg = self.cfg
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        fake_labels = self._fake_labels(len(real))
        with torch.no_grad():
            fake, _ = self._generate(len(real), fake_labels)
        with self._autocast():
            real_logits = self._D(real, labels).float()
            class_logits = self.D.last_class_logits
            fake_logits = self._D(fake, fake_labels).float()
        loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        out = {
            "loss_d": float(loss.detach()),
            "d_real": float(real_logits.detach().mean()),
            "d_fake": float(fake_logits.detach().mean()),
        }
        if cfg.ac_weight > 0:  # on reals only: D learns the classes from true labels, not from G's attempts
            assert class_logits is not None
            ac = F.cross_entropy(class_logits.float(), labels)
            loss, out["ac_d"] = loss + cfg.ac_weight * ac, float(ac.detach())
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.world.average_gradients(self.D.parameters())
        self.opt_d.step()
        if cfg.r1_gamma > 0 and self.state["step"] % cfg.d_reg_interval == 0:
            real = real.detach().requires_grad_(True)
            (grads,) = torch.autograd.grad(self._D(real, labels).sum(), real, create_graph=True)
            r1 = grads.square().sum(dim=[1, 2, 3]).mean()
            self.opt_d.zero_grad(set_to_none=True)
            (r1 * (cfg.r1_gamma / 2) * cfg.d_reg_interval).backward()
            self.world.average_gradients(self.D.parameters())
            self.opt_d.step()
            out["r1"] = float(r1.detach())
        return out

    @torch.no_grad()
    def update_ema(self, batch: int) -> None:
        cfg = self.cfg
        ema_nimg = (cfg.ema_kimg if cfg.ema_kimg is not None else cfg.batch_size * 10 / 32) * 1000
        if cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, self.state["images_seen"] * cfg.ema_rampup)
        beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)  # w_avg and the constant noise are tracked, not learnt

    # ----- the whole run ---------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        rng = epoch_rng(cfg.seed, 1, epoch, rank=self.world.rank)
        self.G.train()
        self.D.train()
        order = rng.permutation(len(self.data.labels))
        batches = self.world.shard(
            [order[i : i + cfg.batch_size] for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]
        )
        sums: dict[str, float] = {}
        seen: dict[str, int] = {}
        task = (
            self.progress.add_task(f"StyleGAN2 epoch {epoch + 1}/{cfg.epochs}", total=len(batches))
            if self.progress
            else None
        )
        for idx in batches:
            real = self.data.images[idx].to(self.device) * 2 - 1  # (B, 1, R, R) in [-1, 1]
            if cfg.xflip:
                flip = torch.from_numpy(rng.random(len(idx)) < 0.5).to(self.device).view(-1, 1, 1, 1)
                real = torch.where(flip, real.flip(3), real)
            parts = self.g_step() | self.d_step(real, self.data.labels[idx].to(self.device))
            self.state["step"] += 1
            self.state["images_seen"] += len(idx) * self.world.size  # every rank's batch
            self.update_ema(len(idx) * self.world.size)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
                seen[k] = seen.get(k, 0) + 1
            if task is not None:
                self.progress.advance(task)
        if task is not None:
            self.progress.remove_task(task)
        return {k: self.world.mean(v / seen[k]) for k, v in sums.items()} | {"images_seen": self.state["images_seen"]}

    def run(self, resume: bool = False) -> TrainResult:
        cfg = self.cfg
        if resume and self.load_state():
            log.info("resumed at epoch %s", self.state["epoch"])
        t0 = time.time()
        log.info("%d slices of %s (%s layout)", len(self.data.labels), self.data.classes, self.data.layout)
        while self.state["epoch"] < cfg.epochs:
            e = self.state["epoch"]
            t, cpu = time.time(), time.process_time()
            row = (
                {"epoch": e + 1}
                | self.train_epoch(e)
                | {"seconds": round(time.time() - t, 2), "cpu_seconds": round(time.process_time() - cpu, 2)}
            )
            if not all(np.isfinite(v) for v in row.values() if isinstance(v, float)):
                raise FloatingPointError(
                    f"epoch {e + 1}: a loss is not finite ({row}); lower lr_g/lr_d or raise r1_gamma"
                )
            self.state["epoch"] = e + 1
            self._log(row)
            self.save_state()
        log.info("this run: %.1fs", time.time() - t0)
        return TrainResult(self.write_checkpoint(), self.state["metrics"])

    def write_checkpoint(self) -> ModelEntry:
        """Rank 0 writes; every rank returns its entry."""
        return self._write_on_main(self._write_checkpoint)

    def _write_checkpoint(self) -> ModelEntry:
        cfg = self.cfg
        config = copy.deepcopy(self.model_config)
        trained_on = describe_data(self.data_dir, self.data)
        last = self.state["metrics"][-1] if self.state["metrics"] else {}
        what = {
            "slices": len(self.data.labels),
            "final": last,
            "images_seen": self.state["images_seen"],
            "epoch_seconds": self.epoch_seconds(),  # all epochs, across resumes
            "epoch_cpu_seconds": self.epoch_seconds("cpu_seconds"),
        }
        config.update(trained=True, trained_on=trained_on, training=self.training_record(what, threads=False))
        self.G_ema.eval()
        return save_checkpoint(
            self.out_dir,
            config=config,
            module=self.G_ema,
            card=model_card(config, cfg, last, trained_on, self.data_dir, self.state["images_seen"]),
        )
