"""Held-out variants of the synthetic dataset: the default spec is the demo's data byte for byte,
each variant is its own distribution, recorded in its marker, registered with its classes."""

import dataclasses
import hashlib
import json
import os
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from r2ios_d2.data import synthetic
from r2ios_d2.data.synthetic import (
    DEFAULT_SPEC,
    HELDOUT_VARIANTS,
    MARKER,
    SYNTHETIC_CLASSES,
    ClassSpec,
    SyntheticSpec,
    generate_synthetic_dataset,
    heldout_dataset_opts,
    heldout_root,
    register_heldout_variant,
    register_synthetic,
    render_image,
)

# sha256 of what the generator wrote before it had a spec (regression check): three 96 x 112
# renders, and every file but the marker of a 2 + 1 image dataset.
RENDER_SHA256 = "ed08b5bc9f175f366cf6dea5b7f123387dd2c5b51732a16f730711d7c2e1d79b"
FILES_SHA256 = "8510432375f5e348051a7154b8deba9947ec97063ab759320ba795a32212e00b"
PROMISED_CLASSES = {"texture4": 4, "dense": 6, "large_sparse": 4, "mixed8": 8}


def _files_sha256(root):
    h = hashlib.sha256()
    for dirpath, _, names in sorted(os.walk(root)):
        for n in sorted(names):
            if n == MARKER:
                continue
            path = os.path.join(dirpath, n)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def variant_roots(tmp_path_factory):
    """Each variant written small (3 train, 2 val images): name -> (root, marker)."""
    out = {}
    for name, v in HELDOUT_VARIANTS.items():
        root = str(tmp_path_factory.mktemp(name) / f"r2ios_heldout_{name}")
        out[name] = (root, generate_synthetic_dataset(root, 3, 2, v.seed, spec=v.spec))
    return out


def test_default_spec_renders_the_demo_data_byte_for_byte(tmp_path):
    h = hashlib.sha256()
    for i in range(3):
        rng = np.random.default_rng(np.random.SeedSequence([0, 0, i]))
        image, inst, classes, amodal = render_image(rng, 96, 112)
        for a in (image, inst, np.asarray(classes, np.int64), np.asarray(amodal, np.int64)):
            h.update(a.tobytes())
    assert h.hexdigest() == RENDER_SHA256
    root = str(tmp_path / "syn")
    marker = generate_synthetic_dataset(root, 2, 1, 0, min_size=(72, 80), max_size=(88, 96))
    assert _files_sha256(root) == FILES_SHA256
    # the default marker is as it always was: no spec, so existing datasets are reused
    assert "spec" not in marker and marker["classes"] == list(SYNTHETIC_CLASSES)
    assert SyntheticSpec() == DEFAULT_SPEC and DEFAULT_SPEC.class_names == SYNTHETIC_CLASSES


def test_variants_have_their_own_seeds_and_promised_classes():
    seeds = [v.seed for v in HELDOUT_VARIANTS.values()]
    assert len(set(seeds)) == len(seeds) and not set(seeds) & {0, 1, 2}
    assert len(HELDOUT_VARIANTS) >= 3
    for name, n in PROMISED_CLASSES.items():
        spec = HELDOUT_VARIANTS[name].spec
        assert len(spec.classes) == n and spec != DEFAULT_SPEC
    texture4 = HELDOUT_VARIANTS["texture4"].spec
    # told apart by texture only: one palette, one set of shapes, four textures
    assert texture4.palette is not None and len({c.shapes for c in texture4.classes}) == 1
    assert len({c.texture for c in texture4.classes}) == 4
    new_shapes = {"triangle", "cross", "crescent", "hexagon"}
    used = {s for v in HELDOUT_VARIANTS.values() for c in v.spec.classes for s in c.shapes}
    assert new_shapes <= used


def test_each_variant_writes_its_classes_and_spec_to_the_marker(variant_roots):
    for name, (root, marker) in variant_roots.items():
        spec = HELDOUT_VARIANTS[name].spec
        with open(os.path.join(root, MARKER)) as f:
            on_disk = json.load(f)
        assert on_disk["classes"] == list(spec.class_names)
        assert len(on_disk["classes"]) == PROMISED_CLASSES[name]
        assert on_disk["spec"] == spec.to_dict() == marker["spec"]
        assert SyntheticSpec.from_dict(on_disk["spec"]) == spec
        assert on_disk["args"]["min_size"] == list(spec.min_size)


def test_a_changed_spec_regenerates(tmp_path):
    root = str(tmp_path / "r")
    spec = HELDOUT_VARIANTS["dense"].spec
    small = dict(min_size=(64, 72), max_size=(72, 80))
    first = generate_synthetic_dataset(root, 2, 1, 7, spec=spec, **small)
    again = generate_synthetic_dataset(root, 2, 1, 7, spec=spec, **small)
    assert again == first  # same spec: reused
    other = dataclasses.replace(spec, groups=(1, 1))
    changed = generate_synthetic_dataset(root, 2, 1, 7, spec=other, **small)
    assert changed["spec"]["groups"] == [1, 1] != first["spec"]["groups"]


def test_variant_registers_and_loads_with_its_class_names(variant_roots):
    for name, (root, _) in variant_roots.items():
        spec = HELDOUT_VARIANTS[name].spec
        prefix = f"heldout_{uuid.uuid4().hex[:6]}"
        register_synthetic(root, prefix, spec=spec)
        dicts = DatasetCatalog.get(f"{prefix}_train")
        assert len(dicts) == 3
        cats = {a["category_id"] for d in dicts for a in d["annotations"]}
        assert cats and cats <= set(range(len(spec.classes)))
        md = MetadataCatalog.get(f"{prefix}_val")
        assert md.thing_classes == list(spec.class_names)
        assert md.proposal_dir == os.path.join(root, "proposals", "selective_search")


def test_register_heldout_variant_names_and_default_root(variant_roots):
    root = variant_roots["texture4"][0]
    try:
        register_heldout_variant("texture4", root)  # replaces the registration at import
        assert len(DatasetCatalog.get("r2ios_heldout_texture4_val")) == 2
        md = MetadataCatalog.get("r2ios_heldout_texture4_train")
        assert md.thing_classes == ["striped", "checkered", "dotted", "mottled"]
    finally:
        register_heldout_variant("texture4")
    for name, v in HELDOUT_VARIANTS.items():
        md = MetadataCatalog.get(f"r2ios_heldout_{name}_val")
        assert md.thing_classes == list(v.spec.class_names)
        assert md.proposal_dir.startswith(heldout_root(name))
        opts = heldout_dataset_opts(name)
        assert opts[opts.index("MODEL.ROI_HEADS.NUM_CLASSES") + 1] == str(len(v.spec.classes))
        assert f"r2ios_heldout_{name}_train" in opts[opts.index("DATASETS.TRAIN") + 1]


def test_loading_with_other_classes_than_written_is_an_error(variant_roots):
    prefix = f"heldout_{uuid.uuid4().hex[:6]}"
    register_synthetic(variant_roots["dense"][0], prefix)  # the default spec's 5 classes
    with pytest.raises(ValueError, match="Regenerate"):
        DatasetCatalog.get(f"{prefix}_train")


def test_variants_are_different_distributions():
    def per_image(spec, n=12):
        counts, sides = [], []
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([5, 0, i]))
            h, w = spec.min_size
            _, inst, classes, amodal = render_image(rng, h, w, spec)
            counts.append(len(classes))
            sides += [np.sqrt(a) / min(h, w) for a in amodal]
        return np.mean(counts), np.median(sides)

    stats = {k: per_image(v.spec) for k, v in HELDOUT_VARIANTS.items()}
    demo = per_image(DEFAULT_SPEC)
    assert stats["dense"][0] > 1.3 * demo[0] and stats["dense"][1] < demo[1]
    assert stats["large_sparse"][0] < demo[0] and stats["large_sparse"][1] > 1.15 * demo[1]
    assert len({round(float(c), 2) for c, _ in stats.values()}) == len(stats)


def test_spec_rejects_unknown_shapes_and_textures():
    with pytest.raises(ValueError, match="shapes"):
        SyntheticSpec(classes=(ClassSpec("a", ("blobby",), "flat", (1, 2, 3)),))
    with pytest.raises(ValueError, match="texture"):
        SyntheticSpec(classes=(ClassSpec("a", ("disc",), "plaid", (1, 2, 3)),))
    with pytest.raises(ValueError, match="unique"):
        SyntheticSpec(classes=(ClassSpec("a", ("disc",), "flat", (1, 2, 3)),) * 2)


def test_cli_writes_a_variant(tmp_path, capsys):
    root = str(tmp_path / "cli")
    synthetic.main(["--variant", "large_sparse", "--root", root, "--num-train", "1",
                    "--num-val", "1"])  # fmt: skip
    assert "held-out variant large_sparse" in capsys.readouterr().out
    with open(os.path.join(root, MARKER)) as f:
        marker = json.load(f)
    assert marker["args"]["seed"] == HELDOUT_VARIANTS["large_sparse"].seed
    assert marker["classes"] == list(HELDOUT_VARIANTS["large_sparse"].spec.class_names)
    with pytest.raises(SystemExit):
        synthetic.main(["--help"])
    text = capsys.readouterr().out
    assert "--variant" in text and "default: 160" in text and "texture4" in text
