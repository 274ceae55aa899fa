#!/usr/bin/env python
"""Install detectron2 v0.6 into the running Python environment, without compiling anything.

detectron2 is not published on PyPI. ``pb1-detectron2==0.6`` is a source distribution whose
Python files are those of the official v0.6 release but which lacks the C++/CUDA sources, so
``pip install`` of it fails. This script downloads that exact file (pinned by URL and sha256),
copies its ``detectron2/`` package into this interpreter's site-packages and puts a small
``detectron2/_C.py`` in place of the compiled extension. Every compiled op of that stand-in
raises a clear error naming the op (rotated boxes, deformable convolutions and the fast COCO
evaluator need it; r2ios_d2 does not). RoIAlign and NMS come from torchvision, whose CUDA
kernels are used on a GPU.

If ``import detectron2`` already works (for example a user's own build from source, with the
real ``_C``), the script leaves it alone.

Usage::

    python tools/install_detectron2.py             # into the interpreter that runs it
    R2IOS_D2_SDIST=/path/pb1-detectron2-0.6.tar.gz python tools/install_detectron2.py  # offline
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import urllib.request
from pathlib import Path

SDIST_NAME = "pb1-detectron2-0.6.tar.gz"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/60/26/"
    "48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108acf63b2bd/" + SDIST_NAME
)
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
DETECTRON2_VERSION = "0.6"

# What detectron2 v0.6 imports, with the pins it needs on today's packages.
RUNTIME_REQUIREMENTS = [
    "pillow<10",  # v0.6 uses Image.LINEAR at import time
    "setuptools>=77,<81",  # v0.6's model_zoo imports pkg_resources
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "pycocotools>=2.0.2",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
    "yacs>=0.1.8",
    "termcolor>=1.1",
    "tabulate",
    "cloudpickle",
    "matplotlib",
    "tqdm>4.29.0",
    "tensorboard",
    "black",
]

STAND_IN = '''"""Stand-in for detectron2's compiled extension, written by r2ios_d2's installer.

This detectron2 was installed from Python sources only, without compiling its C++/CUDA ops.
r2ios_d2 needs none of them (RoIAlign and NMS come from torchvision). Using any compiled op
raises an ImportError that names it; see "Installing into an existing detectron2
environment" in r2ios_d2's README.md for how to get a compiled detectron2 instead.
"""

R2IOS_STAND_IN = True

_HELP = (
    "detectron2 was installed by r2ios_d2's tools/install_detectron2.py without its compiled "
    "extension detectron2._C, so the op {name!r} is not available. r2ios_d2 itself does not use "
    "it (rotated boxes, deformable convolutions and the fast COCO evaluator do; pass "
    "use_fast_impl=False to COCOEvaluator). To use it, build detectron2 from source: see the "
    "section 'Installing into an existing detectron2 environment' of r2ios_d2's README.md."
)


class MissingCompiledOpError(ImportError):
    """Raised when a compiled detectron2 op is used."""


# Environment reporting only (detectron2.utils.collect_env, called by default_setup): these
# describe the stand-in honestly and compute nothing.
def get_compiler_version() -> str:
    return "none: detectron2._C is r2ios_d2's stand-in (not compiled)"


def get_cuda_version() -> str:
    return "none: detectron2._C is r2ios_d2's stand-in (not compiled)"


def has_cuda() -> bool:
    return False


def __getattr__(name: str):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise MissingCompiledOpError(_HELP.format(name=name))
'''


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist(cache_dir: Path) -> Path:
    """Return a verified local copy of the pinned sdist (from $R2IOS_D2_SDIST, cache or PyPI)."""
    candidates = []
    if os.environ.get("R2IOS_D2_SDIST"):
        candidates.append(Path(os.environ["R2IOS_D2_SDIST"]))
    cached = cache_dir / SDIST_NAME
    candidates.append(cached)
    for c in candidates:
        if c.is_file():
            digest = sha256_of(c)
            if digest == SDIST_SHA256:
                log(f"using {c}")
                return c
            log(f"ignoring {c}: sha256 {digest} is not the pinned {SDIST_SHA256}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"downloading {SDIST_URL}")
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(SDIST_URL, timeout=120) as r:
            shutil.copyfileobj(r, out)
        digest = sha256_of(Path(tmp))
        if digest != SDIST_SHA256:
            raise SystemExit(
                f"downloaded {SDIST_NAME} has sha256 {digest}, expected {SDIST_SHA256}; refusing it"
            )
        os.replace(tmp, cached)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return cached


def detectron2_importable() -> str | None:
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def extract_detectron2(sdist: Path, site_packages: Path) -> None:
    """Copy the ``detectron2/`` package of ``sdist`` into ``site_packages`` with the ``_C``
    stand-in and a ``.dist-info`` (so ``pip uninstall detectron2`` works)."""
    with tempfile.TemporaryDirectory(dir=site_packages, prefix=".d2-install-") as tmp:
        with tarfile.open(sdist) as tf:
            prefix = "pb1-detectron2-0.6/detectron2/"
            members = [m for m in tf.getmembers() if m.name.startswith(prefix)]
            for m in members:
                if not (m.isfile() or m.isdir()) or ".." in Path(m.name).parts:
                    raise SystemExit(f"unexpected entry {m.name!r} in {sdist}")
            # The "data" filter (Python >= 3.11.4 / 3.10.12 / 3.9.17) refuses links and
            # absolute paths; the check above does the same on older interpreters.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(tmp, members=members, **extra)  # noqa: S202
        pkg = Path(tmp) / "pb1-detectron2-0.6" / "detectron2"
        (pkg / "_C.py").write_text(STAND_IN)
        dist_info = Path(tmp) / f"detectron2-{DETECTRON2_VERSION}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: detectron2\nVersion: {DETECTRON2_VERSION}\n"
            "Summary: detectron2 v0.6 Python sources (no compiled ops), "
            "installed by r2ios_d2\n"
        )
        (dist_info / "INSTALLER").write_text("r2ios_d2\n")
        records = [
            f"{p.relative_to(pkg.parent).as_posix()},,"
            for p in sorted(pkg.rglob("*"))
            if p.is_file()
        ]
        records += [f"{dist_info.name}/{n},," for n in ("METADATA", "INSTALLER", "RECORD")]
        (dist_info / "RECORD").write_text("\n".join(records) + "\n")
        # Move into place last, so an interrupted run leaves no half-installed package.
        shutil.rmtree(site_packages / dist_info.name, ignore_errors=True)
        os.replace(dist_info, site_packages / dist_info.name)
        os.replace(pkg, site_packages / "detectron2")


def install(site_packages: Path, cache_dir: Path, with_deps: bool) -> None:
    existing = detectron2_importable()
    if existing is not None:
        log(f"detectron2 already importable from {existing}; leaving it alone")
        return
    if with_deps:
        log("installing detectron2's runtime dependencies")
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *RUNTIME_REQUIREMENTS])
    extract_detectron2(fetch_sdist(cache_dir), site_packages)
    log(f"installed detectron2 {DETECTRON2_VERSION} (Python only) into {site_packages}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir",
        default=os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "r2ios_d2"
        ),
        help="where the downloaded sdist is kept",
    )
    parser.add_argument("--no-deps", action="store_true", help="skip pip-installing the deps")
    args = parser.parse_args()
    import torch  # noqa: F401  (detectron2 needs torch first; fail early with a clear error)

    site_packages = Path(sysconfig.get_paths()["purelib"])
    install(site_packages, Path(args.cache_dir), with_deps=not args.no_deps)


if __name__ == "__main__":
    main()
