"""Evaluate a VQGAN checkpoint on held-out ROIs: does the codebook work, and do samples differ as real ROIs do?

Issue 13 was a collapsed checkpoint: every sample the same blob, reconstructions the same blob, a few codes in use.
Three checks catch that, each on ROIs cut from held-out subjects exactly as in training (``data.roi``):

- reconstruction: encode → quantise → decode each ROI; PSNR (range [-1, 1], so a peak-to-peak of 2) and Pearson r
  between the ROI and its reconstruction, mean over ROIs;
- codebook: perplexity (exp of the entropy of the code histogram over every held-out token) and how many codes occur;
- diversity, per class: the mean pairwise Pearson r between ``samples`` generated ROIs (the ``maskgit`` sampler,
  through the service's runner), next to the same for the class's real held-out ROIs (the real–real baseline). A
  collapsed model has sample–sample r near 1; a healthy one is close to the real–real figure.

``montage`` writes the centre slices of a few generated and real ROIs per class to one PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..data.roi import ROISet, load_rois
from ..models.base import GenerationParams
from ..models.registry import ModelEntry
from ..models.vqgan.network import ClassConditionalVQGAN
from ..models.vqgan.runner import VQGANGenerator

TARGETS = {"recon_r": 0.8, "perplexity": 64.0, "diversity_gap": 0.1}


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r per row of two (N, ...) tensors → (N,)."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).float()


def mean_pairwise_r(x: torch.Tensor) -> float:
    """Mean Pearson r over the pairs i < j of (N, ...) volumes; nan for fewer than two."""
    if len(x) < 2:
        return float("nan")
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    return float(pearson(x[i], x[j]).mean())


def psnr(recon: torch.Tensor, x: torch.Tensor, peak_to_peak: float = 2.0) -> torch.Tensor:
    mse = (recon - x).flatten(1).pow(2).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(peak_to_peak**2 / mse)


def load_held_out(entry: ModelEntry, data_dir: str | Path, max_subjects: int | None = None) -> ROISet:
    out = entry.config["output"]
    return load_rois(
        data_dir,
        list(entry.classes),
        out["shape"],
        out["spacing"],
        list(entry.modalities),
        entry.config["intensity"]["z_clip"],
        max_subjects,
    )


def _network(gen: VQGANGenerator) -> ClassConditionalVQGAN:
    """The generator's network, as the VQGAN it is (the runner types it as any ``nn.Module``)."""
    net = gen.network
    if not isinstance(net, ClassConditionalVQGAN):
        raise TypeError(
            f"{gen.entry.id}: the VQGAN generator holds a {type(net).__name__}, not a ClassConditionalVQGAN"
        )
    return net


@torch.no_grad()
def reconstruct(gen: VQGANGenerator, rois: torch.Tensor, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstructions (N, C, *grid) and code indices (N, *latent) of ROIs (N, C, *grid)."""
    vq = _network(gen).vqgan.eval()
    recons, codes = [], []
    for x in rois.split(batch):
        out = vq(x.to(gen.device))
        recons.append(out.recon.float().cpu())
        codes.append(out.quantized.indices.cpu())
    return torch.cat(recons), torch.cat(codes)


def generate(gen: VQGANGenerator, tumor_class: str, n: int, seed: int, steps: int | None = None) -> torch.Tensor:
    """``n`` ROIs (n, C, *grid) of one class from the default (maskgit) sampler, through the service's runner."""
    spec = next(s for s in gen.entry.config["samplers"] if s["name"] == "maskgit")
    params = GenerationParams(
        num_samples=n,
        seed=seed,
        sampler="maskgit",
        steps=steps or spec["default_steps"],
        modalities=tuple(gen.entry.modalities),
        tumor_class=tumor_class,
    )
    volumes = gen.generate(params, {}, lambda done, total: None)
    out = np.zeros((n, len(gen.entry.modalities), *gen.grid_shape), dtype=np.float32)
    for v in volumes:
        out[v.sample_index, list(gen.entry.modalities).index(v.modality)] = v.data
    return torch.from_numpy(out)


def evaluate_vqgan(
    entry: ModelEntry,
    data_dir: str | Path,
    samples: int = 20,
    steps: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    max_subjects: int | None = None,
    montage_path: str | Path | None = None,
    montage_per_class: int = 4,
) -> dict:
    """The report: ``reconstruction``, ``codebook``, ``diversity`` (one row per class and source) and ``targets``."""
    gen = VQGANGenerator(entry, device)
    held = load_held_out(entry, data_dir, max_subjects)
    recon, codes = reconstruct(gen, held.rois)
    r, p = pearson(recon, held.rois), psnr(recon, held.rois)
    num_codes = _network(gen).num_codes
    counts = torch.bincount(codes.flatten(), minlength=num_codes).double()
    probs = counts / counts.sum()
    perplexity = float(torch.exp(-(probs * torch.log(probs.clamp_min(1e-30))).sum()))
    report: dict = {
        "model": entry.id,
        "data": str(data_dir),
        "subjects": len(held.ids),
        "reconstruction": {
            "psnr": float(p.mean()),
            "psnr_std": float(p.std()) if len(p) > 1 else 0.0,
            "r": float(r.mean()),
            "r_std": float(r.std()) if len(r) > 1 else 0.0,
            "r_min": float(r.min()),
        },
        "codebook": {
            "perplexity": perplexity,
            "codes_used": int((counts > 0).sum()),
            "num_codes": int(num_codes),
            "tokens": int(counts.sum()),
        },
        "diversity": [],
        "targets": dict(TARGETS),
    }
    generated: dict[str, torch.Tensor] = {}
    for k, name in enumerate(entry.classes):
        real = held.rois[held.classes == k + 1]
        fake = generate(gen, name, samples, seed + 1000 * k, steps)
        generated[name] = fake
        real_r, fake_r = mean_pairwise_r(real), mean_pairwise_r(fake)
        report["diversity"].append({"class": name, "source": "real", "n": len(real), "pairwise_r": real_r})
        report["diversity"].append(
            {"class": name, "source": "generated (maskgit)", "n": samples, "pairwise_r": fake_r, "gap": fake_r - real_r}
        )
    report["pass"] = {
        "recon_r": report["reconstruction"]["r"] >= TARGETS["recon_r"],
        "perplexity": perplexity >= TARGETS["perplexity"],
        "diversity": all(
            abs(row["gap"]) <= TARGETS["diversity_gap"]
            for row in report["diversity"]
            if "gap" in row and not math.isnan(row["gap"])
        ),
    }
    if montage_path is not None:
        montage(
            montage_path,
            {c: generated[c][:montage_per_class] for c in entry.classes},
            {c: held.rois[held.classes == k + 1][:montage_per_class] for k, c in enumerate(entry.classes)},
        )
        report["montage"] = str(montage_path)
    return report


def to_json(report: dict) -> dict:
    """The report with nan (a class with fewer than two ROIs) as null."""
    if isinstance(report, dict):
        return {k: to_json(v) for k, v in report.items()}
    if isinstance(report, list):
        return [to_json(v) for v in report]
    return None if isinstance(report, float) and math.isnan(report) else report


def table(report: dict):
    """The report as a rich ``Table``."""
    from rich.table import Table

    rec, cb, t = report["reconstruction"], report["codebook"], report["targets"]
    tab = Table(title=f"{report['model']} on {report['subjects']} held-out ROIs ({Path(report['data']).name})")
    for col in ("metric", "class", "n", "value", "target", "ok"):
        tab.add_column(col, justify="left" if col in ("metric", "class") else "right")
    ok = report["pass"]
    yes = {True: "[green]yes[/green]", False: "[red]NO[/red]"}
    tab.add_row("recon PSNR (dB)", "all", str(report["subjects"]), f"{rec['psnr']:.2f} ± {rec['psnr_std']:.2f}", "", "")
    tab.add_row(
        "recon Pearson r",
        "all",
        str(report["subjects"]),
        f"{rec['r']:.3f} ± {rec['r_std']:.3f}",
        f"≥ {t['recon_r']:g}",
        yes[ok["recon_r"]],
    )
    tab.add_row(
        "codebook perplexity",
        "all",
        str(cb["tokens"]),
        f"{cb['perplexity']:.1f}",
        f"≥ {t['perplexity']:g}",
        yes[ok["perplexity"]],
    )
    tab.add_row("codes used", "all", str(cb["tokens"]), f"{cb['codes_used']} / {cb['num_codes']}", "", "")
    for row in report["diversity"]:
        gap = row.get("gap")
        if gap is None:
            target, mark = "baseline", ""
        elif gap != gap:  # nan: fewer than two real ROIs of the class
            target, mark = "no baseline", ""
        else:
            target, mark = f"|Δ| ≤ {t['diversity_gap']:g} (Δ {gap:+.3f})", yes[abs(gap) <= t["diversity_gap"]]
        tab.add_row(
            f"pairwise r, {row['source']}", row["class"], str(row["n"]), f"{row['pairwise_r']:.3f}", target, mark
        )
    return tab


def montage(
    path: str | Path, generated: dict[str, torch.Tensor], real: dict[str, torch.Tensor], pixels: int = 3
) -> Path:
    """One PNG: a row per (class, source), each ROI as its axial | coronal | sagittal centre slices (channel 0),
    every voxel ``pixels`` pixels wide. One grey window for every tile, from the real ROIs' 0.5th to 99.5th
    percentiles, so that generated and real ROIs are shown alike."""
    from PIL import Image, ImageDraw

    pool = torch.cat([v[:, 0].flatten() for v in real.values() if len(v)])
    lo, hi = (float(q) for q in torch.quantile(pool[:1_000_000], torch.tensor([0.005, 0.995])))
    hi = hi if hi > lo else lo + 1.0

    rows: list[tuple[str, torch.Tensor]] = []
    for c in generated:
        rows.append((f"{c} real", real[c]))
        rows.append((f"{c} generated", generated[c]))
    side = next(iter(generated.values())).shape[-1]
    per_row = max(len(v) for _, v in rows)
    gap, label_w, head = 2, 110, 16
    tile = side * pixels
    width = label_w + per_row * (3 * tile + 2 * gap + 4 * gap)
    height = head + len(rows) * (tile + 2 * gap)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), f"each ROI: axial | coronal | sagittal centre slice; grey window [{lo:.2f}, {hi:.2f}]", fill=200)
    for i, (label, vols) in enumerate(rows):
        y = head + i * (tile + 2 * gap)
        draw.text((4, y + tile // 2 - 6), label, fill=255)
        for j, vol in enumerate(vols):
            v = vol[0].numpy()
            mid = [n // 2 for n in v.shape]
            views = [v[:, :, mid[2]], v[:, mid[1], :], v[mid[0], :, :]]  # axial (x, y), coronal (x, z), sagittal (y, z)
            x0 = label_w + j * (3 * tile + 6 * gap)
            for k, view in enumerate(views):
                grey = np.clip((view - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
                img = Image.fromarray(np.rot90(grey)).resize((tile, tile), Image.Resampling.NEAREST)
                canvas.paste(img, (x0 + k * (tile + gap), y + gap))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
