"""bgrm: offline background removal for images and videos with U^2-Net models."""

__version__ = "0.1.0"
