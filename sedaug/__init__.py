"""sedaug: latent and adversarial data augmentations for semi-supervised sound event detection."""

__version__ = "0.2.0"
