"""Replay traces on the live kernel (``ksmreplay exec``): see :func:`execute`."""

from ksmreplay.live.driver import execute
from ksmreplay.live.kernel import LiveKernelError

__all__ = ["LiveKernelError", "execute"]
