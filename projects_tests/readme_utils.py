"""The README's tested examples: the ```bash block after a ``<!-- tested: NAME -->`` marker,
and the tools its commands run, loaded as modules (tools/ is not a package)."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from types import ModuleType
from typing import List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands(name: str) -> List[str]:
    """The lines of the README's ``tested: name`` bash block, continuations joined, blank and
    comment-only lines dropped."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    marker = f"<!-- tested: {name} -->"
    start = text.index(marker)
    m = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert m and text[start:].index("```bash") <= len(marker) + 2, f"{marker} must precede a block"
    lines = [c.strip() for c in m.group(1).replace("\\\n", " ").splitlines()]
    return [c for c in lines if c and not c.startswith("#")]


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (a fresh one per call)."""
    name = name[:-3] if name.endswith(".py") else name
    spec = importlib.util.spec_from_file_location(
        f"r2ios_tool_{name}", os.path.join(REPO, "tools", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
