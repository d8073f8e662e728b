"""Small file helpers shared by the agent and the built-in runtime."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` so that readers (and a restart after a crash) see the old
    or the new content, never a part: write ``<path>.tmp``, then rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
