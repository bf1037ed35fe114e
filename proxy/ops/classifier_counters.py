"""The classifier's own tallies (invalid headers, retry signals), also feeding their metrics.

Only the path that counts pays for the metric; one instance is shared by every classifier
across reloads, so the series never go backwards.
"""

from __future__ import annotations

from ..admission.classify import InvalidHeaderCounter
from ..admission.retries import RetrySignalCounter
from .metrics import Metrics


class CountingInvalidHeaders(InvalidHeaderCounter):
    """The classifier's invalid-header counter, also feeding `sluice_invalid_headers`.

    Only the invalid path pays for the metric; one instance is shared by every classifier
    across reloads so the series never goes backwards.
    """

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._inc = metrics.invalid_headers.inc

    def hit(self) -> None:
        """Count one unusable header, in the classifier's tally and the metric."""
        self.count += 1
        self._inc()


class CountingRetrySignals(RetrySignalCounter):
    """The classifier's retry-signal counter, also feeding `sluice_retries_recognised`;
    shared across reloads like `CountingInvalidHeaders`."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._incs = [c.inc for c in metrics.retry_signal]

    def hit(self, signal: int) -> None:
        """Count one retry recognised by `signal`, in the classifier's tally and the metric."""
        self.counts[signal] += 1
        self._incs[signal]()
