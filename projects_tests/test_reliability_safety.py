"""Safe-loading audit: no file in the source tree unpickles, evals or runs a shell by surprise.

The scan parses every ``.py`` file of the repository (except the virtual environment and
build outputs) and fails on:

* ``torch.load(...)`` without ``weights_only=True``;
* ``pickle.load`` / ``pickle.loads`` (and cloudpickle / dill / joblib loads) outside the
  reviewed opt-in functions in :data:`PICKLE_OPT_IN` (or test files reading what they wrote);
* ``np.load(..., allow_pickle=True)``; ``yaml.load`` without a safe loader, ``yaml.unsafe_load``;
* the builtins ``eval`` / ``exec`` outside tests;
* ``os.system`` / ``os.popen`` and any call with ``shell=True``.

A new use that is genuinely needed goes behind an explicit opt-in (a config key defaulting to
False) and into the allowlist below, with the test that proves the opt-in.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {
    ".venv",
    "venv",
    ".git",
    "build",
    "dist",
    "__pycache__",
    "datasets",
    "output",
    "shared",
}

# (file, function) -> the test that shows the function refuses without its opt-in.
PICKLE_OPT_IN = {
    (
        "r2ios_d2/data/proposals.py",
        "load_proposal_pickle",
    ): "data/test_data_proposals.py::test_proposal_pickle_needs_opt_in",
}
PICKLE_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "_pickle"}


def _python_files():
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                yield os.path.relpath(path, REPO).replace(os.sep, "/")


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _kw(call, name):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_const(node, value):
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source, relpath):
    """(line, description) of every unsafe call in ``source`` (the file at ``relpath``)."""
    tree = ast.parse(source, filename=relpath)
    is_test = relpath.startswith("projects_tests/")
    found = []
    stack = []

    class Visitor(ast.NodeVisitor):
        def visit_FunctionDef(self, node):
            stack.append(node.name)
            self.generic_visit(node)
            stack.pop()

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Call(self, node):
            name = _dotted(node.func) or ""
            parts = name.split(".")
            where = f"{relpath}:{node.lineno}"
            if name in ("torch.load",) and not _is_const(_kw(node, "weights_only"), True):
                found.append((where, "torch.load without weights_only=True"))
            if len(parts) == 2 and parts[0] in PICKLE_MODULES and parts[1] in ("load", "loads"):
                allowed = any((relpath, f) in PICKLE_OPT_IN for f in stack)
                if not (allowed or is_test):
                    found.append((where, f"{name} outside an opt-in function"))
            if parts[-1] == "load" and parts[0] in ("np", "numpy"):
                if _is_const(_kw(node, "allow_pickle"), True):
                    found.append((where, "np.load(allow_pickle=True)"))
            if name == "yaml.unsafe_load" or (
                name == "yaml.load"
                and "Safe" not in (_dotted(_kw(node, "Loader")) or "")
                and not (len(node.args) > 1 and "Safe" in (_dotted(node.args[1]) or ""))
            ):
                found.append((where, f"{name} without a safe loader"))
            if name in ("eval", "exec") and not is_test:
                found.append((where, f"builtin {name}"))
            if name in ("os.system", "os.popen"):
                found.append((where, name))
            if _is_const(_kw(node, "shell"), True):
                found.append((where, f"{name}(shell=True)"))
            self.generic_visit(node)

    Visitor().visit(tree)
    return found


def test_source_tree_has_no_unsafe_loading_or_shell_calls():
    problems = []
    files = list(_python_files())
    assert "r2ios_d2/engine/checkpoint.py" in files and "tools/train_net.py" in files
    for rel in files:
        with open(os.path.join(REPO, rel), encoding="utf-8") as f:
            problems += unsafe_calls(f.read(), rel)
    assert not problems, "unsafe calls:\n" + "\n".join(f"{w}: {d}" for w, d in problems)


def test_pickle_opt_in_allowlist_is_current():
    for (rel, func), test in PICKLE_OPT_IN.items():
        with open(os.path.join(REPO, rel), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert func in names, f"{rel}:{func} is gone: update PICKLE_OPT_IN"
        test_file, test_name = test.split("::")
        with open(os.path.join(REPO, "projects_tests", test_file), encoding="utf-8") as f:
            assert f"def {test_name}(" in f.read(), test


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('m.pth')",
        "import torch\ntorch.load('m.pth', weights_only=False)",
        "import pickle\npickle.load(open('x', 'rb'))",
        "import pickle\ndef load_proposal_pickle(p):\n    return pickle.loads(p)",  # other file
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import yaml\nyaml.load(open('c.yaml'))",
        "eval('1 + 1')",
        "import os\nos.system('ls')",
        "import subprocess\nsubprocess.run('ls', shell=True)",
    ],
)
def test_scanner_catches_each_unsafe_pattern(snippet):
    assert unsafe_calls(snippet, "r2ios_d2/new_module.py")


def test_scanner_accepts_the_safe_forms():
    safe = (
        "import torch, numpy as np, yaml, pickle\n"
        "torch.load('m.pth', map_location='cpu', weights_only=True)\n"
        "np.load('x.npz', allow_pickle=False)\n"
        "yaml.load(open('c.yaml'), Loader=yaml.SafeLoader)\n"
        "model.eval()\n"
        "def load_proposal_pickle(path, allow_pickle=False):\n"
        "    return pickle.load(open(path, 'rb'))\n"
    )
    assert unsafe_calls(safe, "r2ios_d2/data/proposals.py") == []
