"""r2ios_d2: R2-IOS (Reversible Recursive Instance-level Object Segmentation) for detectron2.

Importing this package registers its backbone, heads and datasets in detectron2's registries.
"""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without detectron2
    raise ImportError(
        "r2ios_d2 needs detectron2, which is not on PyPI. Install it with `make install` in "
        "this repository (or `python tools/install_detectron2.py` with the Python you use), or "
        "follow detectron2's own instructions: "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    ) from e

# First: importing engine.compat filters detectron2 v0.6's known-harmless warnings, which
# importing detectron2's modules (below) would otherwise print.
from .engine import compat  # noqa: F401

# isort: split
from . import data, evaluation, modeling  # noqa: F401  (fills detectron2's registries)
from .config import add_r2ios_config
from .predictor import R2IOSPredictor

__version__ = "0.1.0"
__all__ = ["add_r2ios_config", "R2IOSPredictor"]
