"""tumorsynth: a service that generates synthetic brain-tumour MRI for data augmentation."""

__version__ = "0.1.0"
