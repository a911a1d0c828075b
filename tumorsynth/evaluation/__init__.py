"""Evaluation protocols of the papers: image features and the Fréchet distance (``features``), mask fidelity by
segmentation Dice (``fidelity``), and the downstream-utility benchmark (``utility``).

The submodules import torch and MONAI; import them directly (``from tumorsynth.evaluation.utility import
run_utility``) so that importing this package stays cheap.
"""
