"""Model families as data: how a frame goes into a network and how its map comes out.

Each row is what rembg 2.0.86's session class of that family does, step for
step (``rembg/sessions/``): the frame is resized to ``size`` x ``size`` with
Lanczos, divided by its own maximum, shifted by ``mean`` and scaled by ``std``
per channel; output ``output`` channel 0 goes through ``activation``, then a
min-max stretch to 0-255, and the map is resized back to the frame with
Lanczos. ``segment.Segmenter`` carries the steps out; this module holds only
the numbers, so ``bgrm --help`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Family:
    name: str  # what --model-family takes
    title: str  # how error messages name it
    size: int  # square input, pixels a side
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    activation: str  # "none": min-max of the raw map; "sigmoid": sigmoid, then min-max
    output: int = 0  # which of the graph's outputs is the map
    # Pillow's shortcut for large reductions (reduce by an integer factor first):
    # u2net keeps bgrm's 3.0, which made big photos faster and whose masks every
    # earlier release gave; the 1024 families resize exactly as rembg does, which
    # costs little beside their inference.
    reducing_gap: float | None = None


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        # rembg: U2netSession, U2netpSession, U2netHumanSegSession, SiluetaSession,
        # U2netCustomSession.
        Family("u2net", "U^2-Net", 320, IMAGENET_MEAN, IMAGENET_STD, "none",
               reducing_gap=3.0),
        # rembg: dis_general_use.DisSession, DisCustomSession (isnet-anime overrides
        # the mean, see the registry).
        Family("isnet", "IS-Net", 1024, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0), "none"),
        # rembg: BiRefNetSessionGeneral and its six subclasses; the export gives
        # logits, hence the sigmoid.
        Family("birefnet", "BiRefNet", 1024, IMAGENET_MEAN, IMAGENET_STD, "sigmoid"),
        # rembg: BriaRmBgSession, which takes the map as it comes (no sigmoid).
        Family("bria", "BRIA RMBG", 1024, IMAGENET_MEAN, IMAGENET_STD, "none"),
    )
}
DEFAULT_FAMILY = "u2net"  # what a bare --model PATH.onnx has always meant
