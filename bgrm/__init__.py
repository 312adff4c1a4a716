"""bgrm: offline background removal for images and videos with U^2-Net models.

``bgrm.remove(image, **params)`` for a picture in memory, ``bgrm.remove_video(src,
dst, **params)`` for a file, ``bgrm.Session`` to keep a model loaded; see bgrm.api.
"""

__version__ = "0.1.0"

from bgrm.api import Session, remove, remove_video  # noqa: E402 - light: no model loaded

__all__ = ["Session", "remove", "remove_video", "__version__"]
