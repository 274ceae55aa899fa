"""What every tool does at start: r2ios_d2's messages reach log.txt (without colour codes),
detectron2 v0.6's known-harmless warnings are filtered narrowly, and a misspelt config key is
one line on stderr with exit status 2."""

import argparse
import logging
import os
import re
import subprocess
import sys
import warnings

import pytest
from readme_utils import REPO, load_tool

from r2ios_d2.config_checks import ConfigKeyError, load_r2ios_config
from r2ios_d2.engine import exit_on_usage_error, r2ios_default_setup
from r2ios_d2.engine.compat import KNOWN_WARNINGS, filter_known_warnings

YACS = os.path.join(REPO, "configs/synthetic/r2ios_tiny_stage1.yaml")
LAZY = os.path.join(REPO, "configs/lazy/r2ios_tiny_stage1.py")
LOGGERS = ("fvcore", "detectron2", "r2ios_d2")


@pytest.fixture
def restore_loggers():
    """The loggers' handlers as they were: a test's log file must not outlive it."""
    saved = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in LOGGERS
    }
    yield
    for name, (handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def test_r2ios_messages_reach_log_txt_without_colour_codes(tmp_path, restore_loggers):
    cfg, _ = load_r2ios_config(YACS, ["OUTPUT_DIR", str(tmp_path)])
    args = argparse.Namespace(config_file=YACS, eval_only=True)
    r2ios_default_setup(cfg, args)
    logging.getLogger("r2ios_d2.evaluation.sds").info("AP^r on my_val (2 images):\n| table |")
    logging.getLogger("r2ios_d2.engine.trainer").warning("a warning")
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.flush()
    text = (tmp_path / "log.txt").read_text()
    assert "r2ios_d2.evaluation.sds INFO: AP^r on my_val" in text and "| table |" in text
    assert "r2ios_d2.engine.trainer WARNING: a warning" in text
    assert "Contents of args.config_file" in text and "POSITIVE_FRACTION" in text  # the config
    assert "\x1b[" not in text  # detectron2 highlights the config it logs
    # detectron2's own loggers were not set up twice (each line once)
    assert text.count("Contents of args.config_file") == 1
    assert text.count("AP^r on my_val") == 1


def test_known_warnings_are_filtered_by_message_and_module():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_known_warnings()
        for category, message, module in KNOWN_WARNINGS:
            text = message.replace("\\", "") + " (the rest of the message)"
            warnings.warn_explicit(text, category, "x.py", 1, module=module.replace("\\", ""))
            warnings.warn_explicit(text, category, "mine.py", 1, module="my_project.mine")
            warnings.warn_explicit("another message", category, "x.py", 1, module="x")
    shown = [(w.filename, str(w.message)) for w in caught]
    assert len(shown) == 2 * len(KNOWN_WARNINGS)  # only the known ones, from their module
    assert all(f in ("mine.py", "x.py") for f, _ in shown)
    assert sum(f == "mine.py" for f, _ in shown) == len(KNOWN_WARNINGS)


@pytest.mark.parametrize(
    "command",
    [[os.path.join(REPO, "tools", "train_net.py")], ["-m", "r2ios_d2.data.synthetic"]],
)
def test_a_tool_starts_without_warnings(command):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run(
        [sys.executable, *command, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr


def test_exit_on_usage_error_is_argparse_like(capsys):
    parser = argparse.ArgumentParser(prog="tool.py")
    with pytest.raises(SystemExit) as e, exit_on_usage_error(parser):
        raise ConfigKeyError("Unknown config key 'X' on the command line")
    assert e.value.code == 2
    assert capsys.readouterr().err == "tool.py: error: Unknown config key 'X' on the command line\n"


@pytest.mark.parametrize(
    "tool,argv,named",
    [
        ("train_net", ["--config-file", YACS, "SOLVER.MAX_ITR", "5"], "SOLVER.MAX_ITER"),
        ("lazyconfig_train_net", ["--config-file", LAZY, "train.max_iters=5"], "train.max_iter"),
        ("train_net", ["--config-file", YACS, "MODEL.R2IOS.GATE_SCORE", "x"], "GATE_SCORE"),
        ("train_net", ["--config-file", "nowhere.yaml"], "nowhere.yaml"),
    ],
)
def test_training_tools_report_config_errors_as_usage_errors(tool, argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        load_tool(tool).cli(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    (line,) = err.splitlines()  # "<prog>: error: <message>", as argparse's own errors
    assert re.match(r"^\S+: error: ", line) and named in line, err


def test_demo_and_visualize_report_a_misspelt_key_as_a_usage_error(tmp_path, capsys):
    demo = ["--config-file", YACS, "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    visualize = ["--config-file", YACS, "--output", str(tmp_path / "v")]
    (tmp_path / "a.png").write_bytes(b"")  # the demo looks for images before the config
    for tool, argv in (("demo", demo), ("visualize", visualize)):
        with pytest.raises(SystemExit) as e:
            load_tool(tool).main([*argv, "MODEL.R2IOS.NUM_ITERATONS", "2"])
        assert e.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert re.match(r"^\S+: error: Unknown config key 'MODEL.R2IOS.NUM_ITERATONS'", line)
        assert "did you mean MODEL.R2IOS.NUM_ITERATIONS" in line, tool
