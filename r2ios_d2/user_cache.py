"""The per-user cache folder of r2ios_d2 (downloaded weights, derived dataset files).

``$R2IOS_D2_CACHE`` when set, else ``~/.cache/r2ios_d2``. Everything in it can be deleted; it
is made again when needed.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir"]

# Environment variable that moves the cache folder.
CACHE_ENV = "R2IOS_D2_CACHE"


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a path under it); nothing is created.

    Args:
        parts: path components under the cache folder.

    Returns:
        ``$R2IOS_D2_CACHE/<parts>`` or ``~/.cache/r2ios_d2/<parts>``.
    """
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "r2ios_d2")
    return Path(root, *parts)
