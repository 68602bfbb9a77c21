"""The build of the native accelerator (parsers/_speedups.c, relay/_recvmmsg.c); everything else is
in pyproject.toml.

The extension is required: a build without a C compiler and the Python headers fails with
setuptools' error (scripts/setup and packaging/deps install gcc and python3-dev).
RELAY_PURE_BUILD=1 builds without it: the relay then runs its pure Python path, which
`relay version` reports.
"""
import os

from setuptools import Extension, setup

ext = []
if os.environ.get("RELAY_PURE_BUILD", "") in ("", "0"):
    flags = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    ext.append(Extension("parsers._speedups", ["parsers/_speedups.c"], extra_compile_args=flags))
    # the UDP source's batch receive (Linux recvmmsg(2)); relay/sources/udp.py falls back without it
    ext.append(Extension("relay._recvmmsg", ["relay/_recvmmsg.c"], extra_compile_args=flags))
setup(ext_modules=ext)
