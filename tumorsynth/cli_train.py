"""``tumorsynth train ldm | vqgan | tavit | stylegan2``, and ``train FAMILY`` for any other registered family: each
parses its options into the family's trainer config and runs its trainer with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_common import _logging, _report, console
from .settings import get_settings

train_app = typer.Typer(help="Train a model family on BraTS-format data.", no_args_is_help=True)


@train_app.command("ldm")
def train_ldm(
    data: Annotated[Path, typer.Option(exists=True, file_okay=False, help="BraTS-format folder")],
    config: Annotated[str, typer.Option(help="ldm-tiny | ldm-demo | ldm-paper | a JSON file")] = "ldm-demo",
    out: Annotated[Path | None, typer.Option(help="checkpoint folder (default MODEL_DIR/ldm/NAME@VERSION)")] = None,
    work: Annotated[Path | None, typer.Option(help="training state and metrics")] = None,
    resume: bool = False,
    device: str = "auto",
    name: str | None = None,
    version: str | None = None,
    ae_epochs: int | None = None,
    diffusion_epochs: int | None = None,
    threads: int | None = None,
    init_from: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="start from this checkpoint's weights")
    ] = None,
    skip_autoencoder: Annotated[
        bool, typer.Option(help="with --init-from: keep its autoencoder, train only the diffusion UNet")
    ] = False,
) -> None:
    """Stage 1 autoencoder, stage 2 conditional diffusion; writes a servable checkpoint with a model card."""
    if skip_autoencoder and not init_from:
        raise typer.BadParameter("--skip-autoencoder needs --init-from (the autoencoder to keep)")
    cfg = (
        _family("ldm")
        .train_config_class()
        .load(
            config,
            name=name,
            version=version,
            ae_epochs=ae_epochs,
            diffusion_epochs=diffusion_epochs,
            init_from=str(init_from) if init_from else None,
            init_skip_autoencoder=skip_autoencoder or None,
        )
    )
    _train("ldm", cfg, data, out, work, resume, device, threads)


@train_app.command("vqgan")
def train_vqgan(
    data: Annotated[Path, typer.Option(exists=True, file_okay=False, help="BraTS-format folder")],
    config: Annotated[str, typer.Option(help="vqgan-tiny | vqgan-demo | vqgan-paper | a JSON file")] = "vqgan-demo",
    out: Annotated[Path | None, typer.Option(help="checkpoint folder (default MODEL_DIR/vqgan/NAME@VER)")] = None,
    work: Annotated[Path | None, typer.Option(help="training state and metrics")] = None,
    resume: bool = False,
    device: str = "auto",
    name: str | None = None,
    version: str | None = None,
    threads: int | None = None,
    init_from: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="start from this checkpoint's weights")
    ] = None,
    skip_vqgan: Annotated[
        bool, typer.Option(help="with --init-from: keep its VQGAN, train only the transformers")
    ] = False,
) -> None:
    """Stage 1 VQGAN on tumour ROIs, stage 2 class-conditioned transformers (MaskGIT and AR) on its tokens."""
    if skip_vqgan and not init_from:
        raise typer.BadParameter("--skip-vqgan needs --init-from (the VQGAN to keep)")
    cfg = (
        _family("vqgan")
        .train_config_class()
        .load(
            config,
            name=name,
            version=version,
            init_from=str(init_from) if init_from else None,
            init_skip_vqgan=skip_vqgan or None,
        )
    )
    _train("vqgan", cfg, data, out, work, resume, device, threads)


@train_app.command("tavit")
def train_tavit(
    data: Annotated[Path, typer.Option(exists=True, file_okay=False, help="BraTS-format folder")],
    config: Annotated[str, typer.Option(help="tavit-tiny | tavit-demo | tavit-paper | a JSON file")] = "tavit-demo",
    out: Annotated[Path | None, typer.Option(help="checkpoint folder (default MODEL_DIR/tavit/NAME@VER)")] = None,
    work: Annotated[Path | None, typer.Option(help="training state and metrics")] = None,
    resume: bool = False,
    device: str = "auto",
    name: str | None = None,
    version: str | None = None,
    threads: int | None = None,
    init_from: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="start from this checkpoint's weights")
    ] = None,
) -> None:
    """The segmentation predictor and TA-ViT (T1 (+FLAIR) → T1C) on axial slices, trained together."""
    cfg = (
        _family("tavit")
        .train_config_class()
        .load(config, name=name, version=version, init_from=str(init_from) if init_from else None)
    )
    _train("tavit", cfg, data, out, work, resume, device, threads)


@train_app.command("stylegan2")
def train_stylegan2(
    data: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="DIR/<class>/*.png|*.nii.gz, or a BraTS-format folder")
    ],
    config: Annotated[
        str, typer.Option(help="stylegan2-tiny | stylegan2-demo | stylegan2-paper | a JSON file")
    ] = "stylegan2-demo",
    out: Annotated[Path | None, typer.Option(help="checkpoint folder (default MODEL_DIR/stylegan2/NAME@VER)")] = None,
    work: Annotated[Path | None, typer.Option(help="training state and metrics")] = None,
    resume: bool = False,
    device: str = "auto",
    name: str | None = None,
    version: str | None = None,
    epochs: int | None = None,
    threads: int | None = None,
    init_from: Annotated[
        Path | None,
        typer.Option(exists=True, file_okay=False, help="start G from this checkpoint's weights (D afresh)"),
    ] = None,
) -> None:
    """Class-conditional StyleGAN2 on 2D slices (class folders, or axial slices of BraTS volumes labelled glioma)."""
    cfg = (
        _family("stylegan2")
        .train_config_class()
        .load(config, name=name, version=version, epochs=epochs, init_from=str(init_from) if init_from else None)
    )
    _train("stylegan2", cfg, data, out, work, resume, device, threads)


def _family(name: str):
    from .models.families import get_family

    return get_family(name)


def _train(
    family: str, cfg, data: Path, out: Path | None, work: Path | None, resume: bool, device: str, threads: int | None
) -> None:
    """Run a family's trainer (the one its ``Family`` names) with a progress bar and per-epoch lines; report where
    the checkpoint went."""
    import torch
    from rich.progress import Progress

    from .models.loader import resolve_device

    _logging("INFO")
    if threads:
        torch.set_num_threads(threads)
    out = out or get_settings().model_dir / family / f"{cfg.name}@{cfg.version}"
    work = work or Path("var/train") / f"{family}-{cfg.name}@{cfg.version}"
    with Progress(console=console, transient=True) as progress:
        trainer = _family(family).trainer_class()
        result = trainer(cfg, data, out, work, resolve_device(device), on_epoch=_report, progress=progress).run(resume)
    console.print(f"[green]{result.entry.id} written to {result.entry.path}[/green]")


def add_train_command(typer_app: typer.Typer, family: str) -> None:
    """``tumorsynth train FAMILY`` with the options every trainer takes, for a family without a command of its own
    (a new family trains from the CLI with no edit here)."""

    def train(
        data: Annotated[Path, typer.Option(exists=True, file_okay=False, help="BraTS-format folder")],
        config: Annotated[str, typer.Option(help="a config in training/configs, or a JSON file")] = f"{family}-demo",
        out: Annotated[Path | None, typer.Option(help="checkpoint folder (default MODEL_DIR/FAMILY/NAME@VER)")] = None,
        work: Annotated[Path | None, typer.Option(help="training state and metrics")] = None,
        resume: bool = False,
        device: str = "auto",
        name: str | None = None,
        version: str | None = None,
        threads: int | None = None,
    ) -> None:
        cfg = _family(family).train_config_class().load(config, name=name, version=version)
        _train(family, cfg, data, out, work, resume, device, threads)

    train.__doc__ = f"Train the {family} family with the trainer its registration names."
    typer_app.command(family)(train)


def _train_commands_for_registered_families() -> None:
    from .models.families import family_names

    dedicated = {c.name for c in train_app.registered_commands}
    for name in family_names():
        if name not in dedicated:
            add_train_command(train_app, name)


_train_commands_for_registered_families()
