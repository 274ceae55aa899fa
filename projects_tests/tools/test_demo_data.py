"""`make demo-data` (tools/prepare_demo_data.py) writes only the demo's data: the synthetic
dataset and the selective-search proposals of both its splits, as the README's LazyConfig
example starts with."""

import os
import re

from readme_utils import REPO, load_tool, readme_commands

import r2ios_d2.data.synthetic as synthetic


def test_make_demo_data_runs_the_tool_and_starts_the_readme_lazy_example():
    with open(os.path.join(REPO, "Makefile")) as f:
        makefile = f.read()
    target = re.search(r"^demo-data: install\n\t(.+)$", makefile, re.M)
    assert target and target[1] == "$(PYTHON) tools/prepare_demo_data.py", target
    assert re.search(r"^\.PHONY:.* demo-data( |$)", makefile, re.M)
    assert readme_commands("lazy-example")[0] == "make demo-data"


def test_prepare_demo_data_prepares_data_and_both_proposal_splits(monkeypatch):
    calls = []

    def prepare(num_train, num_val, seed, workers):
        calls.append((num_train, num_val, seed, workers))
        return "/data/r2ios_synthetic"

    monkeypatch.setattr(synthetic, "prepare_synthetic_benchmark", prepare)
    tool = load_tool("prepare_demo_data")
    assert tool.main([]) == 0
    assert tool.main(["--num-train", "8", "--num-val", "4", "--seed", "3", "--workers", "1"]) == 0
    assert calls == [(160, 60, 0, os.cpu_count() or 1), (8, 4, 3, 1)]  # the demo's defaults


def test_prepare_demo_data_help_shows_defaults():
    text = load_tool("prepare_demo_data").build_parser().format_help()
    assert "(default: 160)" in text and "(default: 60)" in text
