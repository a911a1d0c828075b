"""``tumorsynth serve | worker | generate | batch | models | phantoms | phantom-slices | train | eval | demo``
(``train`` in cli_train.py, ``eval`` in cli_eval.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .cli_common import _logging, console
from .cli_eval import eval_app
from .cli_train import add_train_command as add_train_command  # re-exported: a family's command, as tests add it
from .cli_train import train_app
from .settings import Settings, get_settings

app = typer.Typer(
    help="Synthetic brain-tumour MRI for data augmentation.", no_args_is_help=True, pretty_exceptions_enable=False
)
models_app = typer.Typer(help="List and create model checkpoints.", invoke_without_command=True)
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")

Url = Annotated[str, typer.Option("--url", envvar="TUMORSYNTH_URL", help="the service's base URL")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="TUMORSYNTH_API_KEY", help="bearer key")]


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    worker: Annotated[bool, typer.Option(help="start and supervise a worker process")] = True,
) -> None:
    """Run the API; with no TUMORSYNTH_REDIS_URL, also an embedded Redis server and a supervised worker."""
    from .embedded.serve import serve as run

    _logging()
    try:
        run(get_settings(), host, port, with_worker=worker)
    except ValueError as exc:
        console.print(f"[red]refusing to start:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def worker(
    queues: Annotated[
        str,
        typer.Option(
            help="comma-separated queues, or auto: those of the families with a checkpoint in TUMORSYNTH_MODEL_DIR"
        ),
    ] = "auto",
    concurrency: int = 1,
    pool: Annotated[str, typer.Option(help="prefork (default; can survive a crashing job), solo, threads")] = "prefork",
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker consuming the given queues (one per GPU is the rule)."""
    from .models.registry import ModelRegistry
    from .workers.inventory import resolve_queues
    from .workers.tasks import app as celery

    try:
        queues = ",".join(resolve_queues(queues, get_settings(), ModelRegistry(get_settings().model_dir)))
    except ValueError as exc:
        console.print(f"[red]refusing to start:[/red] {exc}")
        raise typer.Exit(2) from exc
    celery.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--pool",
            pool,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def generate(
    mask: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="tumour mask NIfTI")],
    out: Annotated[Path, typer.Option(help="folder for the outputs")] = Path("out"),
    model: str = "",
    samples: int = 1,
    seed: int | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    tumor_class: str | None = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
    timeout: float = 3600.0,
    intensity: Annotated[str | None, typer.Option(help="zscore, unit or scanner")] = None,
    dicom: Annotated[bool, typer.Option(help="also a DICOM archive (MR series + SEG)")] = False,
    send_to_pacs: Annotated[bool, typer.Option(help="store the DICOM series at the tenant's PACS")] = False,
) -> None:
    """Submit a mask-conditioned job to a running service, wait, and download the outputs."""
    from .client import Client

    client = Client(url, api_key)
    request = {"model": model or _default_model(client, "mask_to_volume"), "num_samples": samples}
    for key, value in (("seed", seed), ("tumor_class", tumor_class), ("intensity", intensity)):
        if value is not None:
            request[key] = value
    if dicom or send_to_pacs:
        request["formats"] = ["nifti", "dicom"]
    if send_to_pacs:
        request["send_to"] = "pacs"
    if sampler or steps:
        request["sampler"] = {k: v for k, v in (("name", sampler), ("steps", steps)) if v is not None}
    job = client.submit(request, {"mask": mask})
    console.print(f"job {job['id']} queued on {request['model']}")
    job = _wait(client, job["id"], timeout)
    if job["status"] != "succeeded":
        console.print(f"[red]job {job['status']}[/red]: {job.get('error')}")
        raise typer.Exit(1)
    for path in client.download(job, out / job["id"]):
        typer.echo(path)


@app.command()
def batch(
    counts: Annotated[str, typer.Option(help="real cases per class, e.g. LGG=76,HGG=259")],
    out: Annotated[Path, typer.Option(help="folder for the volumes and manifest.csv/json")] = Path("out/batch"),
    model: str = "",
    total_per_class: Annotated[
        int | None, typer.Option(help="bring every class to N (default: balance up to the largest)")
    ] = None,
    modalities: str | None = None,
    seed: int = 0,
    masks: Annotated[
        list[Path] | None,
        typer.Option("--mask", exists=True, dir_okay=False, help="masks to use (default: the mask bank)"),
    ] = None,
    sampler: str | None = None,
    steps: int | None = None,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
    timeout: float = 24 * 3600.0,
    layout: Annotated[
        str, typer.Option(help="bids: OUT/bids is a BIDS derivatives dataset; flat: OUT/<subject_id>/ folders")
    ] = "bids",
) -> None:
    """A balanced augmentation batch: submit, follow progress, download the volumes and the manifest."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .client import Client

    if layout not in ("bids", "flat"):
        raise typer.BadParameter("--layout is bids or flat")
    try:
        class_counts = {k.strip(): int(v) for k, v in (p.split("=", 1) for p in counts.split(",") if p.strip())}
    except ValueError as exc:
        raise typer.BadParameter("write counts as CLASS=N,CLASS=N (e.g. LGG=76,HGG=259)") from exc
    client = Client(url, api_key)
    request: dict = {
        "model": model or _default_model(client, "mask_to_volume"),
        "class_counts": class_counts,
        "seed": seed,
        "masks": "upload" if masks else "bank",
    }
    request |= {"total_per_class": total_per_class} if total_per_class else {"target": "balance"}
    if modalities:
        request["modalities"] = [m.strip() for m in modalities.split(",")]
    if sampler or steps:
        request["sampler"] = {k: v for k, v in (("name", sampler), ("steps", steps)) if v is not None}
    b = client.submit_batch(request, masks=list(masks or []))
    console.print(f"batch {b['id']} on {request['model']}: making {b['plan']}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console) as bar:
        task = bar.add_task("jobs finished", total=b["request_counts"]["total"])

        def update(cur: dict) -> None:
            c = cur["request_counts"]
            bar.update(
                task,
                completed=c["succeeded"] + c["failed"] + c["canceled"],
                description=f"{cur['status']} (failed {c['failed']})",
            )

        b = client.wait_batch(b["id"], timeout=timeout, on_update=update)
    if b["manifest"] is None:
        console.print(f"[red]batch {b['status']}[/red] {(b.get('error') or {}).get('message', '')}")
        raise typer.Exit(1)
    manifest = client.download_batch(b, out, layout=layout)
    console.print(f"[green]{b['request_counts']['succeeded']} subjects; manifest {manifest}[/green]")


def _default_model(client, task: str) -> str:
    found = [m for m in client.models() if m["task"] == task]
    if not found:
        raise typer.BadParameter(f"the service has no {task} model; install a checkpoint")
    return sorted(found, key=lambda m: (not m["trained"], m["id"]))[0]["id"]


def _wait(client, job_id: str, timeout: float) -> dict:
    from rich.progress import Progress

    with Progress(console=console) as bar:
        task = bar.add_task(f"{job_id}", total=None)

        def show(job: dict) -> None:
            p = job["progress"]
            bar.update(
                task,
                total=p["total_steps"] or None,
                completed=p["completed_steps"],
                description=f"{job_id[:16]}… {job['status']}",
            )

        return client.wait(job_id, timeout=timeout, on_update=show)


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List the checkpoints under TUMORSYNTH_MODEL_DIR."""
    if ctx.invoked_subcommand:
        return
    from .models.registry import ModelRegistry

    settings = get_settings()
    table = Table(title=f"models in {settings.model_dir}")
    for col in ("id", "task", "trained", "classes", "modalities", "sha256"):
        table.add_column(col)
    for e in ModelRegistry(settings.model_dir).list():
        table.add_row(
            e.id,
            e.task,
            "yes" if e.trained else "[red]NO (untrained)[/red]",
            ",".join(e.classes),
            ",".join(e.modalities),
            e.weights_sha256[:12],
        )
    Console().print(table)


@models_app.command("create-untrained")
def create_untrained(
    family: str = "ldm", preset: str = "tiny", name: str | None = None, seed: int = 0, out: Path | None = None
) -> None:
    """Write a randomly initialised checkpoint (plumbing only: its outputs are noise)."""
    from .models.families import FAMILIES, family_names

    if family not in FAMILIES:
        raise typer.BadParameter(f"family must be one of {', '.join(family_names())}")
    if preset not in FAMILIES[family].presets:
        raise typer.BadParameter(f"preset must be one of {', '.join(FAMILIES[family].presets)}")
    entry = FAMILIES[family].create_untrained(
        out or get_settings().model_dir / family, preset=preset, name=name, seed=seed
    )
    typer.echo(f"{entry.id} at {entry.path} (UNTRAINED)")


@models_app.command("export")
def export(
    model: Annotated[str, typer.Argument(help="an installed model id, e.g. ldm/demo-phantom@1")],
    out: Annotated[Path, typer.Argument(help="a new or empty folder for the export")],
    format: Annotated[str, typer.Option("--format", help="monai-bundle")] = "monai-bundle",
) -> None:
    """Export a checkpoint for use outside tumorsynth: an LDM as a MONAI bundle (runs with MONAI alone)."""
    from .errors import ModelNotFound
    from .models.registry import ModelRegistry

    if format != "monai-bundle":
        raise typer.BadParameter(f"--format {format!r}: the one format is monai-bundle")
    try:
        entry = ModelRegistry(get_settings().model_dir).get(model)
    except ModelNotFound as exc:
        raise typer.BadParameter(f"{exc}; `tumorsynth models` lists the installed ones") from exc
    if entry.family != "ldm":
        raise typer.BadParameter(f"{model}: only LDM checkpoints export as MONAI bundles")
    from .models.ldm.bundle import export_bundle

    try:
        export_bundle(entry, out)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(
        f"{entry.id} → {out} (MONAI bundle: python -m monai.bundle run --config_file "
        f"{out}/configs/inference.json --meta_file {out}/configs/metadata.json --bundle_root {out})"
    )


@app.command()
def phantoms(
    n: Annotated[int, typer.Option("--n", min=1, help="subjects")] = 20,
    out: Annotated[Path, typer.Option(help="folder for the BraTS-format subjects")] = Path("var/phantoms"),
    seed: int = 0,
    convention: str = "brats2023",
    naming: str | None = None,
    hgg_fraction: float = 0.5,
    workers: int = 1,
) -> None:
    """BraTS-format phantom subjects: real template anatomy, simulated tumours (NOT patients)."""
    from rich.progress import Progress

    from .data.phantoms import generate_phantoms

    with Progress(console=console) as progress:
        task = progress.add_task(f"phantoms → {out}", total=n)
        paths = generate_phantoms(
            out,
            n,
            seed,
            convention=convention,
            naming=naming,
            hgg_fraction=hgg_fraction,
            workers=workers,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    console.print(f"[green]{len(paths)} subjects in {out}[/green]")


@app.command("phantom-slices")
def phantom_slices(
    data: Annotated[Path, typer.Option(exists=True, file_okay=False, help="phantom/BraTS folder")],
    out: Annotated[Path, typer.Option(help="writes OUT/<class>/*.png and OUT/SLICES.json")],
    per_class: int = 200,
    seed: int = 0,
) -> None:
    """A meningioma/glioma/pituitary slice set for demos: glioma slices are the volumes' own tumours; meningioma and
    pituitary masses are SIMULATED on tumour-free slices (SLICES.json says how)."""
    from .data.phantom_slices import build_slice_set

    counts = build_slice_set(data, out, per_class=per_class, seed=seed)
    console.print(f"[green]{counts} slices in {out}[/green]")


@app.command()
def demo(out: Path = Path("out/demo"), port: int = 8765, samples: int = 1) -> None:
    """The main job on the embedded default: start the service, submit the example mask, write the volumes."""
    from .demo import run_demo

    _logging("WARNING")
    paths = run_demo(Settings(), out, port, samples)
    console.print(f"[green]wrote {len(paths)} files to {out}[/green]")
    typer.echo(json.dumps([str(p) for p in paths], indent=1))


if __name__ == "__main__":
    app()
