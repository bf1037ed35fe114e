"""Sluice: a recovery-mode load-shedding reverse proxy."""

# The one place the version is written: pyproject.toml reads it (`dynamic`), and so does
# the `sluice_build_info{version}` metric.
__version__ = "0.1.0"
