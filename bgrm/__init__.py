"""bgrm: offline background removal for images and videos with U^2-Net models.

``bgrm.remove(image, **params)`` for a picture in memory, ``bgrm.remove_video(src,
dst, **params)`` for a file, ``bgrm.Session`` to keep a model loaded; see bgrm.api.
"""

from bgrm.api import Session, remove, remove_video  # light: no model loaded
from bgrm.version import __version__

__all__ = ["Session", "remove", "remove_video", "__version__"]
