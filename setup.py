"""The native parts of ksmreplay, built at install by setuptools.

* ``ksmreplay._native``: the native core, an extension module (``native/*.c``,
  one header ``native/ksmreplay.h``).  Optional: without a C compiler the
  package installs and runs on its scalar path, slower (``ksmreplay
  --version`` says which).
* ``ksmreplay/live/ksmreplay-worker``: the program ``ksmreplay exec`` starts
  once per trace pid, built freestanding (no C library) so that it owns no
  anonymous memory but its stack and one buffer (``native/worker.c``).
* ``ksmreplay/live/ksmreplay-agent``: the ``/init`` of the guests that
  ``ksmreplay exec --kernel-image`` boots under qemu, linked statically
  (``native/agent.c``).  Optional too: without it, ``--kernel-image`` says so.

Everything else is in ``pyproject.toml``.
"""

from __future__ import annotations

import os
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CORE = ["module.c", "scan.c", "fault.c", "window.c", "walk.c", "visit.c", "contentmap.c", "pages.c"]

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


AGENT_FLAGS = ["-O2", "-static", "-Wall"]


class BuildNative(build_ext):
    """``build_ext``, then the live worker and the guest agent, in the package's ``live``."""

    def run(self) -> None:
        super().run()
        live = os.path.join(os.path.dirname(self.get_ext_fullpath("ksmreplay._native")), "live")
        self._program("worker.c", live, "ksmreplay-worker", WORKER_FLAGS, "'ksmreplay exec'")
        self._program(
            "agent.c", live, "ksmreplay-agent", AGENT_FLAGS, "'ksmreplay exec --kernel-image'"
        )

    def _program(self, source: str, where: str, name: str, flags: list[str], user: str) -> None:
        """Build ``native/source`` into the program ``where/name``; warn if it cannot be."""
        try:
            with tempfile.TemporaryDirectory() as tmp:
                objects = self.compiler.compile(
                    [os.path.join("native", source)], output_dir=tmp, extra_preargs=flags
                )
                os.makedirs(where, exist_ok=True)
                self.compiler.link_executable(objects, name, output_dir=where, extra_preargs=flags)
        except Exception as exc:  # no compiler, or no static C library
            self.warn(f"{name} was not built ({exc}): {user} will say so")


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
