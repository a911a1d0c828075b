"""TA-ViT: T1C synthesis from T1 (+ FLAIR) conditioned on a latent tumour segmentation (arXiv 2409.01622)."""
