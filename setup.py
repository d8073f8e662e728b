"""Builds the Cython extensions in ``_native/`` as ``fastkv._native.<name>``.

``FASTKV_DEBUG=1`` builds a debug flavour: line tracing (for coverage and profilers),
``assert`` statements compiled in, and the ``DEBUG`` compile-time constant set to 1.
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTKV_DEBUG", "") not in ("", "0")
NATIVE = Path("_native")

DEBUG_MACROS = [("CYTHON_TRACE_NOGIL", "1"), ("CYTHON_TRACE", "1")]
macros = DEBUG_MACROS if DEBUG else [("CYTHON_WITHOUT_ASSERTIONS", "1")]
extensions = [
    Extension(f"fastkv._native.{pyx.stem}", [str(pyx)], define_macros=macros,
              extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"])
    for pyx in sorted(NATIVE.glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
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
    ),
)
