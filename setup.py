"""The native parts of ksmreplay, built at install by setuptools.

* ``ksmreplay._native``: the native core, an extension module (``native/*.c``,
  one header ``native/ksmreplay.h``).  Optional: without a C compiler the
  package installs and runs on its scalar path, slower (``ksmreplay
  --version`` says which).
* ``ksmreplay/live/ksmreplay-worker``: the program ``ksmreplay exec`` starts
  once per trace pid, built freestanding (no C library) so that it owns no
  anonymous memory but its stack and one buffer (``native/worker.c``).

Everything else is in ``pyproject.toml``.
"""

from __future__ import annotations

import os
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CORE = ["module.c", "scan.c", "fault.c", "window.c", "visit.c", "contentmap.c"]

WORKER_FLAGS = [
    "-O2",
    "-static",
    "-nostdlib",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-stack-protector",
    "-fno-pie",
    "-no-pie",
    "-fno-asynchronous-unwind-tables",
    "-fno-tree-loop-distribute-patterns",
    "-Wall",
]


class BuildNative(build_ext):
    """``build_ext``, then the live worker beside the package's ``live`` module."""

    def run(self) -> None:
        super().run()
        package = os.path.dirname(self.get_ext_fullpath("ksmreplay._native"))
        target = os.path.join(package, "live", "ksmreplay-worker")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                objects = self.compiler.compile(
                    [os.path.join("native", "worker.c")], output_dir=tmp, extra_preargs=WORKER_FLAGS
                )
                os.makedirs(os.path.dirname(target), exist_ok=True)
                self.compiler.link_executable(
                    objects,
                    os.path.basename(target),
                    output_dir=os.path.dirname(target),
                    extra_preargs=WORKER_FLAGS,
                )
        except Exception as exc:  # no compiler, or one that cannot build it freestanding
            self.warn(f"the live worker was not built ({exc}): 'ksmreplay exec' will say so")


setup(
    ext_modules=[
        Extension(
            "ksmreplay._native",
            sources=[os.path.join("native", name) for name in CORE],
            depends=[os.path.join("native", "ksmreplay.h")],
            extra_compile_args=["-O2", "-Wall"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildNative},
)
