"""Replay memory-event traces through a simulated Linux VM and ksmd."""

__version__ = "0.1.0"
