"""Build of the compiled channel core (`channel/protocol/_core.c`); the rest is in pyproject.toml.

A C extension with the CPython C API rather than Cython: the core is a few hundred lines of
pointer arithmetic, atomics and fences over a mapping, which C states directly (and ASan
checks directly); Cython would add a build dependency and a generated-code layer between the
ordering argument and the instructions it is about. Warnings are errors, so a sloppy change
fails the set-up instead of shipping.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "channel.protocol._core",
            sources=["channel/protocol/_core.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror", "-O2", "-std=gnu11"],
        )
    ]
)
