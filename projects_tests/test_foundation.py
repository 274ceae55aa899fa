"""Foundation: package import, registration, config keys, the detectron2 installer."""

import importlib.util
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest
from detectron2.config import get_cfg

import r2ios_d2
from r2ios_d2 import add_r2ios_config

REPO = Path(__file__).resolve().parents[1]


def _load_installer() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "install_detectron2", REPO / "tools" / "install_detectron2.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parts_are_registered():
    from detectron2.modeling import (
        BACKBONE_REGISTRY,
        ROI_HEADS_REGISTRY,
        ROI_MASK_HEAD_REGISTRY,
    )

    assert "build_r2ios_vgg_backbone" in BACKBONE_REGISTRY._obj_map
    assert "R2IOSROIHeads" in ROI_HEADS_REGISTRY._obj_map
    assert "InstanceAwareAEMaskHead" in ROI_MASK_HEAD_REGISTRY._obj_map


def test_config_keys_and_defaults():
    cfg = get_cfg()
    add_r2ios_config(cfg)
    r = cfg.MODEL.R2IOS
    assert (r.NUM_ITERATIONS, r.TEST_NUM_ITERATIONS) == (4, 4)
    assert r.GATE is False and r.GATE_SCORE == "all"
    assert r.SEG_AWARE is True and r.SKIP_BACKGROUND is True
    assert r.MASK_SIZE == 40 and r.AE_HIDDEN_DIM == 512
    assert cfg.MODEL.VGG.WIDTH == 1.0
    add_r2ios_config(cfg)  # idempotent
    assert cfg.MODEL.R2IOS.NUM_ITERATIONS == 4


def test_misspelt_key_in_yaml_fails_clearly(tmp_path):
    cfg = get_cfg()
    add_r2ios_config(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  R2IOS:\n    NUM_ITERATONS: 3\n")
    with pytest.raises(KeyError, match="NUM_ITERATONS"):
        cfg.merge_from_file(str(bad))


def test_c_stand_in_raises_clear_error():
    installer = _load_installer()
    stand_in = types.ModuleType("stand_in")
    exec(compile(installer.STAND_IN, "_C.py", "exec"), stand_in.__dict__)  # noqa: S102
    with pytest.raises(ImportError, match="nms_rotated.*README"):
        stand_in.__getattr__("nms_rotated")
    # Environment reporting (detectron2.utils.collect_env, used by default_setup) still works.
    assert "stand-in" in stand_in.get_compiler_version()
    assert stand_in.has_cuda() is False


def test_installed_detectron2_stand_in_raises_when_used():
    from detectron2 import _C

    if not getattr(_C, "R2IOS_STAND_IN", False):
        pytest.skip("detectron2 here has its real compiled _C")
    with pytest.raises(ImportError, match="deform_conv_forward"):
        _C.deform_conv_forward  # noqa: B018


def test_default_setup_environment_report_works():
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_installer_extracts_package_with_stand_in(tmp_path):
    installer = _load_installer()
    src = tmp_path / "src" / "pb1-detectron2-0.6" / "detectron2"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("__version__ = '0.6'\n")
    sdist = tmp_path / "fake.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(tmp_path / "src" / "pb1-detectron2-0.6", arcname="pb1-detectron2-0.6")
    site = tmp_path / "site"
    site.mkdir()
    installer.extract_detectron2(sdist, site)
    assert (site / "detectron2" / "__init__.py").read_text() == "__version__ = '0.6'\n"
    assert "R2IOS_STAND_IN = True" in (site / "detectron2" / "_C.py").read_text()
    assert (site / "detectron2-0.6.dist-info" / "RECORD").is_file()
    assert not [p for p in site.iterdir() if p.name.startswith(".d2-install-")]


def test_installer_refuses_wrong_checksum(tmp_path, monkeypatch):
    installer = _load_installer()
    fake = tmp_path / "pb1-detectron2-0.6.tar.gz"
    fake.write_bytes(b"not the real file")
    monkeypatch.setenv("R2IOS_D2_SDIST", str(fake))
    served = tmp_path / "served.tar.gz"
    served.write_bytes(b"a tampered download")
    monkeypatch.setattr(installer, "SDIST_URL", served.as_uri())
    with pytest.raises(SystemExit, match="refusing"):
        installer.fetch_sdist(tmp_path / "cache")
    # Neither the bad local file nor the bad download is kept in the cache.
    assert not list((tmp_path / "cache").glob("*.tar.gz"))


def test_installer_leaves_importable_detectron2_alone():
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "install_detectron2.py"), "--no-deps"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "leaving it alone" in out.stdout


def test_second_make_install_does_no_work():
    stamp_dir = REPO / ".install-stamps"
    if not stamp_dir.is_dir():
        pytest.skip("not installed through `make install`")
    out = subprocess.run(
        ["make", "-q", "install", f"PYTHON={sys.executable}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, "make install would do work again: " + out.stdout + out.stderr


def test_version():
    assert r2ios_d2.__version__


def test_readme_configuration_reference_is_current():
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "config_reference.py"), "--check", "README.md"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for key in ("MODEL.R2IOS.NUM_ITERATIONS", "MODEL.VGG.WIDTH", "SOLVER.PRETRAINED_LR_FACTOR"):
        assert f"`{key}`" in readme
