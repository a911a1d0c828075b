"""An LDM checkpoint as a MONAI bundle (``tumorsynth models export ldm/NAME@V --format monai-bundle OUT/``).

The bundle needs MONAI alone, not tumorsynth: both networks are MONAI's own (``AutoencoderKL``, or
``SPADEAutoencoderKL`` for a tumour-conditioned decoder, and ``DiffusionModelUNet``, rebuilt from the constructor
arguments our network keeps), sampling is MONAI's ``LatentDiffusionInferer`` (which hands a SPADE decoder its label
map) with its ``DDIMScheduler`` on the checkpoint's training schedule, the mask's regions are
MONAI transforms plus one expression, and the tumour class reaches the UNet through ``functools.partial`` (the
inferer passes no class labels). What the service adds and the bundle does not: DPM-Solver++, and mapping the result
back to the mask's own grid (the bundle writes it on the model grid, in the mask's orientation).

Layout (MONAI bundle specification): ``configs/metadata.json`` (with ``network_data_format``),
``configs/inference.json``, ``models/model.pt`` (the UNet) and ``models/model_autoencoder.pt`` (state dicts),
``docs/README.md`` (the model card), ``sample_data/mask.nii.gz`` (a mask to run on).
"""

from __future__ import annotations

import json
from pathlib import Path

import monai
import nibabel
import numpy as np
import torch

from ... import __version__
from ...imaging.examples import affine_1mm, example_mask
from ...imaging.nifti import write_nifti
from ..checkpoints import load_into
from ..registry import ModelEntry
from .configs import build_network

DEFAULT_STEPS = 50
Z_LIMIT = 10.0  # as the service's runner: decoded z-scores beyond ±10 are artefacts
# WT = any label; TC = {1, 3, 4} unless the mask is binary (only label 1); ET = {3, 4} (imaging/labels.to_regions)
REGIONS = "$lambda x: torch.cat([x > 0, ((x == 1) | (x >= 3)) & (x > 1).any(), x >= 3]).float()"


def _scheduler(schedule: dict) -> dict:
    if schedule.get("beta_schedule", "linear") != "linear":
        raise ValueError(f"MONAI's DDIMScheduler has no '{schedule['beta_schedule']}' beta schedule to export")
    return {
        "_target_": "monai.networks.schedulers.DDIMScheduler",
        "num_train_timesteps": int(schedule.get("num_train_timesteps", 1000)),
        "schedule": "linear_beta",
        "beta_start": float(schedule.get("beta_start", 1e-4)),
        "beta_end": float(schedule.get("beta_end", 0.02)),
        "prediction_type": schedule.get("prediction_type", "epsilon"),
        "clip_sample": False,
    }


def inference_config(entry: ModelEntry, net, scale_factor: float) -> dict:
    grid = [int(n) for n in entry.output_shape]
    return {
        "imports": ["$import functools", "$import monai", "$import numpy as np", "$import torch"],
        "bundle_root": ".",
        "model_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "mask_path": "$@bundle_root + '/sample_data/mask.nii.gz'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "classes": list(entry.classes),
        "tumor_class": None,
        "class_index": "$0 if @tumor_class is None else @classes.index(@tumor_class) + 1",  # 0: unconditional
        "seed": 0,
        "num_inference_steps": DEFAULT_STEPS,
        "grid_shape": grid,
        "grid_spacing": [float(s) for s in entry.output_spacing],
        "latent_shape": list(net.latent_shape(grid)),
        "latent_channels": net.latent_channels,
        "scale_factor": scale_factor,
        "autoencoder_def": {
            "_target_": f"monai.networks.nets.{type(net.autoencoder).__name__}",
            **net.autoencoder_args,
        },
        "network_def": {"_target_": "monai.networks.nets.DiffusionModelUNet", **net.unet_args},
        "autoencoder": "$@autoencoder_def.to(@device).eval()",
        "network": "$@network_def.to(@device).eval()",
        "load_autoencoder": "$@autoencoder.load_state_dict(torch.load(@model_dir + '/model_autoencoder.pt', "
        "map_location=@device, weights_only=True))",
        "load_network": "$@network.load_state_dict(torch.load(@model_dir + '/model.pt', map_location=@device, "
        "weights_only=True))",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "mask", "image_only": True},
                {"_target_": "EnsureChannelFirstd", "keys": "mask"},
                {"_target_": "Spacingd", "keys": "mask", "pixdim": "@grid_spacing", "mode": "nearest"},
                {"_target_": "ResizeWithPadOrCropd", "keys": "mask", "spatial_size": "@grid_shape"},
                {"_target_": "Lambdad", "keys": "mask", "func": REGIONS},
            ],
        },
        "regions": "$@preprocessing({'mask': @mask_path})['mask']",
        "condition": "$torch.nn.functional.interpolate(@regions[None].as_tensor().to(@device), size=@latent_shape, "
        "mode='area')",
        # a SPADE decoder's label map (ignored by a plain AutoencoderKL): the regions, then the class one-hot
        "decoder_labels": "$torch.cat([@regions[None].as_tensor(), torch.nn.functional.one_hot(torch.tensor("
        "[@class_index]), len(@classes) + 1)[:, 1:, None, None, None].float().expand(-1, -1, *@grid_shape)], 1)"
        ".to(@device)",
        "scheduler": _scheduler(entry.config.get("schedule", {})),
        "inferer": {"_target_": "LatentDiffusionInferer", "scheduler": "@scheduler", "scale_factor": "@scale_factor"},
        "denoiser": "$functools.partial(@network, class_labels=torch.tensor([@class_index], device=@device))",
        "noise": "$torch.randn([1, @latent_channels] + @latent_shape, "
        "generator=torch.Generator().manual_seed(@seed)).to(@device)",
        "sample": "$@inferer.sample(input_noise=@noise, autoencoder_model=@autoencoder, diffusion_model=@denoiser, "
        "scheduler=@scheduler, conditioning=@condition, mode='concat', verbose=False, seg=@decoder_labels)",
        "image": f"$monai.data.MetaTensor(@sample[0].clamp(-{Z_LIMIT}, {Z_LIMIT}).cpu(), meta=@regions.meta)",
        "saver": {
            "_target_": "SaveImage",
            "output_dir": "@output_dir",
            "output_postfix": "synthetic",
            "separate_folder": False,
            "resample": False,
            "output_dtype": "$np.float32",
        },
        # SPADE's γ and β as plain convolutions, as tumorsynth's decoder (models/ldm/network.plain_spade_modulation)
        "plain_modulation": "$[setattr(m, 'adn', torch.nn.Identity()) for n, m in @autoencoder.named_modules() "
        "if n.endswith(('mlp_gamma', 'mlp_beta'))]",
        "run": [
            "$@plain_modulation",
            "$@load_autoencoder",
            "$@load_network",
            "$@scheduler.set_timesteps(@num_inference_steps)",
            "$torch.set_grad_enabled(False)",
            "$@saver(@image)",
        ],
    }


def metadata(entry: ModelEntry) -> dict:
    version = f"{entry.version}.0.0" if entry.version.isdigit() else "0.1.0"
    grid = [int(n) for n in entry.output_shape]
    channels = {str(i): m.upper() for i, m in enumerate(entry.modalities)}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
        "meta_schema_20220324.json",
        "version": version,
        "changelog": {version: f"exported by tumorsynth {__version__} from {entry.id}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": nibabel.__version__},
        "name": f"tumorsynth {entry.id}",
        "task": "Mask-conditioned synthesis of brain-tumour MRI (" + ", ".join(entry.modalities) + ")",
        "description": "Latent diffusion model: a tumour mask (and optionally a class) in, SYNTHETIC multi-contrast "
        "MRI out, as z-scores over the brain (background 0). Every output is synthetic.",
        "authors": "tumorsynth",
        "copyright": "tumorsynth contributors",
        "data_source": entry.trained_on,
        "data_type": "nibabel",
        "intended_use": "Research and data augmentation only; the outputs are synthetic, not for diagnosis.",
        "references": [
            "Truong et al., mask-conditioned 3D latent diffusion for multi-contrast brain-tumour MRI, "
            "SPIE Medical Imaging 2024"
        ],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "segmentation",
                    "modality": "MR",
                    "num_channels": 1,
                    "spatial_shape": grid,
                    "dtype": "float32",
                    "value_range": [0, 4],
                    "is_patch_data": False,
                    "channel_def": {"0": "tumour labels: BraTS 2023 {0,1,2,3}, 2019 {0,1,2,4} or binary {0,1}"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": len(entry.modalities),
                    "spatial_shape": grid,
                    "dtype": "float32",
                    "value_range": [-Z_LIMIT, Z_LIMIT],
                    "is_patch_data": False,
                    "channel_def": channels,
                }
            },
        },
        "tumorsynth": {
            "model": entry.id,
            "checkpoint_sha256": entry.weights_sha256,
            "trained": entry.trained,
            "synthetic": True,
        },
    }


def export_bundle(entry: ModelEntry, out: Path) -> Path:
    """Write ``entry`` as a MONAI bundle in ``out`` (created; must be empty or absent). Returns ``out``."""
    if entry.family != "ldm":
        raise ValueError(f"{entry.id}: only LDM checkpoints export as MONAI bundles")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; give a new or empty folder")
    net = load_into(build_network(entry.config), entry, "cpu")  # verifies the checkpoint's sha256
    for sub in ("configs", "models", "docs", "sample_data"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    torch.save(net.unet.state_dict(), out / "models" / "model.pt")
    torch.save(net.autoencoder.state_dict(), out / "models" / "model_autoencoder.pt")
    config = inference_config(entry, net, float(net.scale_factor))
    (out / "configs" / "inference.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata(entry), indent=2) + "\n")
    card = entry.path / "MODEL_CARD.md"
    head = (
        f"# {entry.id} as a MONAI bundle\n\nRun: `python -m monai.bundle run --config_file configs/inference.json "
        f"--meta_file configs/metadata.json --bundle_root . [--mask_path M.nii.gz] [--tumor_class "
        f"{entry.classes[0] if entry.classes else 'X'}] [--seed N]` (the command line needs `pip install fire`; "
        "or call `monai.bundle.run(run_id='run', config_file=..., meta_file=..., bundle_root=...)`); writes "
        f"`eval/<mask>_synthetic.nii.gz`, "
        f"channels {', '.join(entry.modalities)}, on the model grid ({list(entry.output_shape)} voxels of "
        f"{list(entry.output_spacing)} mm). DDIM, {DEFAULT_STEPS} steps. SYNTHETIC images.\n\n"
    )
    (out / "docs" / "README.md").write_text(head + (card.read_text() if card.is_file() else "(no model card)\n"))
    mask = example_mask().astype(np.float32)  # BraTS 2023 labels on the 1 mm BraTS grid, as make run's example
    (out / "sample_data" / "mask.nii.gz").write_bytes(write_nifti(mask, affine_1mm()))
    return out
