"""A training run saves its datasets' class names and category ids beside its checkpoints
(dataset_metadata.json, read by tools/demo.py), and warns when MODEL.ROI_HEADS.NUM_CLASSES is
larger than the number of categories."""

import json
import logging
import uuid

import pytest
from coco_files import CATEGORY_IDS, CATEGORY_NAMES, write_coco4
from detectron2.data import DatasetCatalog
from reliability_utils import make_dataset, run_train_net, tiny_opts, write_base_config

from r2ios_d2.data import SYNTHETIC_CLASSES, register_coco_for_r2ios
from r2ios_d2.engine import record_training_datasets
from r2ios_d2.engine.run_metadata import load_dataset_metadata


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_of_run_metadata():
    logger = logging.getLogger("r2ios_d2.engine.run_metadata")
    handler = _Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.fixture
def coco4(tmp_path):
    name = f"meta_{uuid.uuid4().hex[:8]}"
    register_coco_for_r2ios(name, write_coco4(str(tmp_path), [1, 2]), str(tmp_path / "images"))
    DatasetCatalog.get(name)  # loaded: detectron2 sets a COCO dataset's classes on load
    return name


def test_num_classes_above_the_categories_is_a_warning_naming_both(
    coco4, tmp_path, warnings_of_run_metadata
):
    record_training_datasets(str(tmp_path / "run"), [coco4], 5)
    (message,) = warnings_of_run_metadata
    assert "The model has 5 classes" in message and f"{coco4} has 4 categories" in message
    warnings_of_run_metadata.clear()
    record_training_datasets(str(tmp_path / "run"), [coco4], 4)
    assert warnings_of_run_metadata == []


def test_dataset_metadata_json_has_names_and_category_ids(coco4, tmp_path):
    out = tmp_path / "run"
    record_training_datasets(str(out), [coco4], 4)
    saved = load_dataset_metadata(str(out / "dataset_metadata.json"))
    assert saved["datasets"] == [coco4] and saved["num_classes"] == 4
    assert saved["thing_classes"] == list(CATEGORY_NAMES)
    assert saved["thing_dataset_id_to_contiguous_id"] == {c: i for i, c in enumerate(CATEGORY_IDS)}
    with open(out / "dataset_metadata.json") as f:
        assert json.load(f)["thing_dataset_id_to_contiguous_id"]["11"] == 2  # plain JSON


def test_yacs_trainer_records_its_datasets(tmp_path, warnings_of_run_metadata):
    prefix = f"metarun{uuid.uuid4().hex[:6]}"
    make_dataset(str(tmp_path), prefix)
    out = tmp_path / "out"
    opts = tiny_opts(prefix, str(out), max_iter=1) + [
        "SOLVER.STEPS", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "6",
    ]  # fmt: skip
    run_train_net(write_base_config(str(tmp_path)), opts)
    saved = load_dataset_metadata(str(out / "dataset_metadata.json"))
    assert saved["thing_classes"] == list(SYNTHETIC_CLASSES) and saved["num_classes"] == 6
    assert any("has 6 classes" in m and "5 categories" in m for m in warnings_of_run_metadata)
