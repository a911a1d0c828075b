"""VQGAN paths that the typed code reaches differently: a checkpoint without its AR transformer refuses ``ar``, the
decoder's ``last_layer`` is the output convolution's weight, and the importance target pools 3D and 2D errors."""

from __future__ import annotations

import copy

import pytest
import torch

from tumorsynth.errors import InvalidRequest
from tumorsynth.models.base import GenerationParams
from tumorsynth.models.checkpoints import save_checkpoint
from tumorsynth.models.vqgan.autoencoder import importance_target
from tumorsynth.models.vqgan.configs import PRESETS, build_network
from tumorsynth.models.vqgan.runner import VQGANGenerator


def test_a_checkpoint_without_its_ar_transformer_refuses_the_ar_sampler(tmp_path):
    config = copy.deepcopy(PRESETS["tiny"])  # its samplers still list "ar"
    config["network"]["ar_depth"] = 0
    config.update(name="no-ar", version="1", trained=False, trained_on="nothing")
    torch.manual_seed(0)
    network = build_network(config)
    assert network.ar is None
    entry = save_checkpoint(tmp_path / "no-ar@1", config=config, module=network, card="test\n")
    generator = VQGANGenerator(entry, "cpu")
    params = GenerationParams(num_samples=1, seed=0, sampler="ar", steps=0, modalities=(), tumor_class="HGG")
    with pytest.raises(InvalidRequest, match="no autoregressive transformer") as err:
        generator.generate(params, {}, lambda done, total: None)
    assert err.value.errors[0].field == "sampler"
    maskgit = GenerationParams(num_samples=1, seed=0, sampler="maskgit", steps=4, modalities=(), tumor_class="HGG")
    assert len(generator.generate(maskgit, {}, lambda done, total: None)) == len(entry.modalities)


def test_last_layer_is_the_output_convolution_weight():
    torch.manual_seed(0)
    decoder = build_network(PRESETS["tiny"]).vqgan.decoder
    weight = decoder.last_layer
    assert weight is decoder.net[-1].conv.weight and weight.requires_grad
    decoder(torch.randn(1, decoder.net[0].conv.in_channels, 4, 4, 4)).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("image, latent", [((2, 3, 16, 16, 8), (4, 4, 2)), ((2, 3, 16, 8), (4, 2))])
def test_importance_target_pools_to_the_token_grid(image, latent):
    torch.manual_seed(0)
    x, recon = torch.randn(image), torch.randn(image)
    target = importance_target(recon, x, latent)
    assert target.shape == (image[0], *latent)
    assert float(target.min()) >= 0 and torch.allclose(target.flatten(1).amax(1), torch.ones(image[0]))
    # the first token's cell: the mean absolute error over its 4×4(×4) voxels, over the volume's largest such mean
    cell = (recon - x).abs().mean(1)[(0, *[slice(0, n // m) for n, m in zip(image[2:], latent)])].mean()
    pooled_max = torch.nn.functional.avg_pool3d if len(latent) == 3 else torch.nn.functional.avg_pool2d
    peak = pooled_max((recon - x).abs().mean(1, keepdim=True), [n // m for n, m in zip(image[2:], latent)])[0].max()
    assert torch.isclose(target[(0,) + (0,) * len(latent)], cell / peak, atol=1e-6)
