"""Builds the Cython extensions in ``_native/`` as ``fastkv._native.<name>``.

``FASTKV_DEBUG=1`` builds a debug flavour: line tracing (for coverage and profilers),
``assert`` statements compiled in, and the ``DEBUG`` compile-time constant set to 1.

The generated ``_native/<name>.c`` is reused while its ``.pyx`` is unchanged and it was
generated for the flavour being built (the C macros Cython records at its head tell); a
``.c`` of the other flavour, or one without that record, is generated again. So switching
flavours rebuilds every module, and a build of the same flavour stays incremental.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTKV_DEBUG", "") not in ("", "0")
NATIVE = Path("_native")

DEBUG_MACROS = [("CYTHON_TRACE_NOGIL", "1"), ("CYTHON_TRACE", "1")]
RELEASE_MACROS = [("CYTHON_WITHOUT_ASSERTIONS", "1")]
macros = DEBUG_MACROS if DEBUG else RELEASE_MACROS
extensions = [
    Extension(f"fastkv._native.{pyx.stem}", [str(pyx)], define_macros=macros,
              extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"])
    for pyx in sorted(NATIVE.glob("*.pyx"))
]

METADATA_BEGIN = "/* BEGIN: Cython Metadata"
METADATA_END = "END: Cython Metadata */"
METADATA_MAX_LINES = 2000  # the metadata opens the file; stop looking for it after this many lines


def recorded_macros(c_file: Path) -> list[list[str]] | None:
    """The ``define_macros`` recorded in the Cython metadata at the head of ``c_file`` (``[]`` when
    it records none); ``None`` when the file has no such metadata or cannot be read."""
    head: list[str] = []
    try:
        with c_file.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                head.append(line)
                if line.startswith(METADATA_END) or len(head) >= METADATA_MAX_LINES:
                    break
        text = "".join(head)
        begin, end = text.find(METADATA_BEGIN), text.find(METADATA_END)
        if begin < 0 or end < begin:
            return None
        meta = json.loads(text[begin + len(METADATA_BEGIN) : end])
    except (OSError, ValueError):
        return None
    return [list(m) for m in meta.get("distutils", {}).get("define_macros", [])]


def is_stale(ext: Extension) -> bool:
    """Whether the existing generated C file of ``ext`` was made for another flavour than this build's."""
    c_file = Path(ext.sources[0]).with_suffix(".c")
    return c_file.exists() and recorded_macros(c_file) != [list(m) for m in ext.define_macros]


def cythonized(ext: Extension) -> list[Extension]:
    """``ext`` with its ``.pyx`` translated to C, again if its ``.c`` is missing, older or stale."""
    return cythonize(
        [ext],
        force=is_stale(ext),
        language_level=3,
        compile_time_env={"DEBUG": 1 if DEBUG else 0},
        compiler_directives={
            "linetrace": DEBUG,
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "initializedcheck": DEBUG,
            "embedsignature": True,
        },
        annotate=DEBUG,
    )


setup(ext_modules=[module for ext in extensions for module in cythonized(ext)])
