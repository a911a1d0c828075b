"""``tumorsynth eval ldm | vqgan | tavit | stylegan2 | utility``: each family's figures against real-vs-real
baselines, on held-out BraTS-format data (the code is in ``evaluation/``; these commands only parse and print)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli_common import _logging, console
from .settings import get_settings

eval_app = typer.Typer(help="Evaluate a trained checkpoint on held-out BraTS-format data.", no_args_is_help=True)


@eval_app.command("tavit")
def eval_tavit(
    model: str,
    data: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    subjects: int = 8,
    true_mask: Annotated[bool, typer.Option(help="condition on the true mask, not the predicted one")] = False,
    out: Path | None = None,
    device: str = "auto",
    montage: Annotated[
        Path | None,
        typer.Option(help="PNG: axial/coronal/sagittal through the tumour of 2 subjects (T1, true T1C, predicted T1C)"),
    ] = None,
    threads: int | None = None,
) -> None:
    """NMSE, PSNR, NCC and SSIM of the synthesised T1C and of the T1 copied as the T1C, for tumour and healthy tissue,
    mean ± std over subjects; and the enhancing rim's T1C − T1, predicted and true."""
    from .evaluation.tavit_eval import evaluate_tavit, format_report
    from .models.loader import resolve_device
    from .models.registry import ModelRegistry

    _logging("WARNING")
    if threads:
        import torch

        torch.set_num_threads(threads)
    entry = ModelRegistry(get_settings().model_dir).get(model)
    report = evaluate_tavit(
        entry, data, subjects=subjects, device=resolve_device(device), use_true_mask=true_mask, montage=montage
    )
    typer.echo(format_report(report))
    if out:
        out.write_text(json.dumps(report, indent=2, default=float))


@eval_app.command("utility")
def eval_utility(
    model: str,
    data: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="utility.json and utility.png go here")] = Path("out/utility"),
    per_class: Annotated[int, typer.Option(help="synthetic subjects per class")] = 20,
    folds: int = 5,
    epochs: int = 10,
    seed: int = 0,
    modality: str = "flair",
    steps: int | None = None,
    max_subjects: int | None = None,
    device: str = "auto",
) -> None:
    """The papers' downstream test: an LGG/HGG classifier on real only vs real + synthetic, k folds, mean ± std."""
    from rich.progress import Progress

    from .evaluation.protocol import format_utility, utility_protocol
    from .models.loader import resolve_device
    from .models.registry import ModelRegistry

    _logging("WARNING")
    entry = ModelRegistry(get_settings().model_dir).get(model)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("synthesising", total=per_class * len(entry.classes))
        result = utility_protocol(
            entry,
            data,
            out,
            per_class,
            folds,
            epochs,
            seed,
            modality,
            steps,
            resolve_device(device),
            max_subjects,
            progress=lambda d, t: bar.update(task, completed=d),
        )
    typer.echo(format_utility(result))
    console.print(f"[green]report: {result['report']}[/green]")


@eval_app.command("stylegan2")
def eval_stylegan2(
    model: str,
    data: Annotated[Path, typer.Option(exists=True, file_okay=False, help="real slices: DIR/<class>/*.png or BraTS")],
    samples: Annotated[int, typer.Option(help="held-out real and generated slices scored")] = 300,
    truncation: float = 1.0,
    epochs: Annotated[int, typer.Option(help="classifier epochs")] = 15,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="write the scores as JSON")] = None,
    device: str = "auto",
    montage: Annotated[
        Path | None, typer.Option(help="PNG: per class, 6 generated slices (at this truncation) beside 6 real ones")
    ] = None,
) -> None:
    """Inception Score, FID and class agreement of generated vs held-out real slices, with an in-house classifier."""
    from .data.slices import load_slices
    from .evaluation.slice_scores import format_scores, score_slices
    from .models.loader import resolve_device
    from .models.registry import ModelRegistry

    _logging("WARNING")
    entry = ModelRegistry(get_settings().model_dir).get(model)
    real = load_slices(data, int(entry.output_shape[0]), list(entry.classes))
    scores = score_slices(
        entry,
        real.images,
        real.labels,
        str(data),
        samples=samples,
        truncation=truncation,
        epochs=epochs,
        seed=seed,
        device=resolve_device(device),
    )
    typer.echo(format_scores(scores))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(scores.to_dict(), indent=2) + "\n")
        console.print(f"[green]scores: {out}[/green]")
    if montage:
        from .evaluation.slice_montage import stylegan2_montage

        stylegan2_montage(entry, real, montage, truncation=truncation, seed=seed, device=resolve_device(device))
        console.print(f"[green]montage: {montage}[/green]")


@eval_app.command("vqgan")
def eval_vqgan(
    model: str,
    data: Annotated[Path, typer.Option(exists=True, file_okay=False, help="held-out BraTS-format subjects")],
    samples: Annotated[int, typer.Option(help="generated ROIs per class (maskgit)")] = 20,
    steps: int | None = None,
    seed: int = 0,
    max_subjects: int | None = None,
    montage: Annotated[
        Path | None, typer.Option(help="write centre slices of generated and real ROIs to this PNG")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the report as JSON")] = None,
    device: str = "auto",
) -> None:
    """Held-out ROI reconstruction (PSNR, Pearson r), codebook perplexity and codes used, and per class the mean
    pairwise r of generated ROIs next to that of real ones."""
    from rich.console import Console as RichConsole

    from .evaluation.vqgan_eval import evaluate_vqgan, table, to_json
    from .models.loader import resolve_device
    from .models.registry import ModelRegistry

    _logging("WARNING")
    entry = ModelRegistry(get_settings().model_dir).get(model)
    report = evaluate_vqgan(
        entry,
        data,
        samples=samples,
        steps=steps,
        seed=seed,
        device=resolve_device(device),
        max_subjects=max_subjects,
        montage_path=montage,
    )
    RichConsole(width=140).print(table(report))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(to_json(report), indent=2) + "\n")
        console.print(f"[green]report: {out}[/green]")


@eval_app.command("ldm")
def eval_ldm(
    model: str,
    data: Annotated[Path, typer.Option(exists=True, file_okay=False)],
    subjects: int = 8,
    samples: int = 2,
    sampler: str | None = None,
    steps: int | None = None,
    out: Path | None = None,
    device: str = "auto",
    fidelity_epochs: Annotated[
        int, typer.Option(help="train the segmenter/feature net for mask fidelity and FID (0: skip)")
    ] = 20,
    feature_weights: Annotated[
        str | None,
        typer.Option(
            help="FID on MedicalNet resnet10 features from this local .pth file instead of the in-house classifier"
        ),
    ] = None,
    montage: Annotated[
        Path | None, typer.Option(help="also write a PNG: real subjects beside samples from their masks, three planes")
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            help="classifier-free guidance weight on the class "
            "(the model's `guidance` option; default: the "
            "checkpoint's)"
        ),
    ] = None,
) -> None:
    """Autoencoder reconstruction (PSNR, SSIM, MAE per contrast) and sample diversity/realism (MS-SSIM, MMD)."""
    from .evaluation.ldm_eval import evaluate_ldm, format_report
    from .models.loader import resolve_device
    from .models.registry import ModelRegistry

    _logging("WARNING")
    entry = ModelRegistry(get_settings().model_dir).get(model)
    report = evaluate_ldm(
        entry,
        data,
        subjects=subjects,
        samples=samples,
        sampler=sampler,
        steps=steps,
        device=resolve_device(device),
        fidelity_epochs=fidelity_epochs,
        feature_weights=feature_weights,
        options=None if guidance is None else {"guidance": guidance},
    )
    typer.echo(format_report(report))
    if out:
        out.write_text(json.dumps(report, indent=2))
    if montage:
        from .evaluation.montages import ldm_montage

        typer.echo(f"montage: {ldm_montage(entry, data, montage, device=resolve_device(device))}")
