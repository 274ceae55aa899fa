"""r2ios_d2: Reversible Recursive Instance-level Object Segmentation as a detectron2 project."""

from setuptools import find_packages, setup

setup(
    name="r2ios_d2",
    version="0.1.0",
    description="R2-IOS (CVPR 2016) instance segmentation as a detectron2 project",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["r2ios_d2", "r2ios_d2.*"]),
    python_requires=">=3.9",
    # detectron2 is not on PyPI and cannot be a requirement here: `make install` (or
    # tools/install_detectron2.py, or detectron2's own instructions) provides it.
    install_requires=[
        "torch>=1.10",
        "torchvision",
        "fvcore",
        "pycocotools>=2.0.2",
        "numpy",
        "opencv-contrib-python-headless",
        "scipy",
        "tqdm",
        "tabulate",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest>=7", "ruff==0.17.6", "h5py"],  # ruff pinned: `make lint` is exact
        # The pre-trained VGG-16 of `make weights` (HED's Keras .h5, r2ios_d2.engine.hed_weights).
        "hed": ["h5py"],
    },
)
