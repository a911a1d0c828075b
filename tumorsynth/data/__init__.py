"""Datasets, shared by training and evaluation (and the mask bank): BraTS-format folders (``brats``), the phantom
generator (``phantoms``, ``phantom_slices``), tumour ROIs (``roi``), 2D slice sets (``slices``) and one subject's
preparation on a model grid (``subjects``). It sits below ``training/`` and ``evaluation/``, which never import each
other, and above ``models/`` and ``imaging/``."""
