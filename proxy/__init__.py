"""Sluice: a recovery-mode load-shedding reverse proxy."""

__version__ = "0.1.0"
