"""BraTS-folder datasets, the phantom generator, one trainer per family."""
