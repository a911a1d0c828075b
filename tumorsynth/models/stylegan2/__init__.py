"""StyleGAN2 (Karras et al. 2020) for class-conditional 2D tumour slices; hand-written, MONAI has none."""
