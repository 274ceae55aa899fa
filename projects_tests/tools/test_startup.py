"""Every tool answers ``--help`` and argparse's usage errors before it imports torch, detectron2,
OpenCV or r2ios_d2 (which take seconds to load): each runs in a fresh interpreter as
``python tools/<tool>.py ...`` would, and what was imported is read afterwards."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "detectron2", "cv2", "r2ios_d2")
TOOLS = sorted(
    p.name for p in (REPO / "tools").glob("*.py") if 'if __name__ == "__main__":' in p.read_text()
)

# Runs tools/<argv[1]> as __main__ with the rest of argv, then prints its exit status and the
# heavy modules it imported as the last line of stderr.
RUNNER = f"""
import json, os, runpy, sys
tool = os.path.join("tools", sys.argv[1])
sys.argv = [tool, *sys.argv[2:]]
sys.path.insert(0, os.path.dirname(os.path.abspath(tool)))
code = 0
try:
    runpy.run_path(tool, run_name="__main__")
except SystemExit as e:
    code = e.code
sys.stdout.flush()
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def run_tool(tool: str, *argv: str):
    """(exit status, heavy modules imported, stdout, stderr without the runner's line)."""
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, tool, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    *err, last = done.stderr.rstrip("\n").split("\n")
    report = json.loads(last)
    return report["code"], report["heavy"], done.stdout, "\n".join(err)


def test_the_tools_are_found():
    assert {"train_net.py", "demo.py", "benchmark.py", "selective_search.py"} <= set(TOOLS)


@pytest.mark.parametrize("tool", TOOLS)
def test_help_prints_without_importing_torch(tool):
    code, heavy, out, err = run_tool(tool, "--help")
    assert code in (0, None), err
    assert "usage:" in out, out
    assert heavy == [], f"{tool} --help imported {heavy}"


@pytest.mark.parametrize(
    "tool,argv",
    [
        ("train_net.py", ["--no-such-option"]),  # unknown option
        ("demo.py", ["--input", "a.jpg", "--output", "out"]),  # missing --config-file
        ("benchmark.py", ["--speed", "--threads", "two"]),  # a value of the wrong type
        ("lazyconfig_train_net.py", ["--num-gpus"]),  # an option without its value
    ],
)
def test_usage_error_is_one_line_and_status_2_without_importing_torch(tool, argv):
    code, heavy, _, err = run_tool(tool, *argv)
    assert code == 2, err
    assert heavy == [], f"{tool} {argv} imported {heavy}"
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"{tool}: error: "), err
    assert "Traceback" not in err, err
