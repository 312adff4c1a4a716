"""Models: the registry of named models (rembg's files, checksums, licences),
their families (pre- and post-processing as data), where files live and
whether they are the official ones, and ``bgrm models install``.

Light to import (dataclasses, hashlib, json): ``bgrm --help`` loads it.
"""

from bgrm.errors import DownloadError, ModelError
from bgrm.models.families import DEFAULT_FAMILY, FAMILIES, Family
from bgrm.models.installer import install, is_url
from bgrm.models.registry import (
    DEFAULT_MODEL,
    FALLBACK_MODEL,
    REGISTRY,
    SEGMENTATION_MODELS,
    ModelSpec,
)
from bgrm.models.store import (
    ASSETS,
    STAMP_NAME,
    Check,
    ModelStatus,
    ResolvedModel,
    bundled_path,
    check_file,
    file_checksum,
    installed_path,
    models_dir,
    resolve,
    status,
    verified_path,
)

__all__ = [
    "ASSETS", "DEFAULT_FAMILY", "DEFAULT_MODEL", "FALLBACK_MODEL", "FAMILIES", "REGISTRY",
    "SEGMENTATION_MODELS", "STAMP_NAME", "Check", "DownloadError",
    "Family", "ModelError", "ModelSpec", "ModelStatus", "ResolvedModel",
    "bundled_path", "check_file", "file_checksum", "install", "installed_path", "is_url",
    "models_dir", "resolve", "status", "verified_path",
]
