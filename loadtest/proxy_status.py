"""A Sluice `/status` document read as figures (mode, limit, in flight, queued, drain ETA), and a
proxy's samples of it as the plot's series (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def status_figures(doc: dict[str, Any]) -> dict[str, Any]:
    """Mode, limit, in-flight and queued from a /status document, tolerant of its shape."""

    def num(v: Any) -> float | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, dict):
            for key in ("depth", "total", "size", "length", "current", "value", "limit"):
                if isinstance(v.get(key), int | float):
                    return float(v[key])
            parts = [
                x for x in v.values() if isinstance(x, int | float) and not isinstance(x, bool)
            ]
            return float(sum(parts)) if parts else None
        return None

    limiter = doc.get("limiter") if isinstance(doc.get("limiter"), dict) else {}
    limit = num(doc.get("limit"))
    if limit is None and limiter:
        limit = num(limiter.get("limit"))
    queued = None
    for key in ("queued", "queue_depth", "queue", "deferred", "waiting"):
        if key in doc:
            queued = num(doc[key])
            if queued is not None:
                break
    in_flight = num(doc.get("in_flight"))
    if in_flight is None and limiter:
        in_flight = num(limiter.get("in_flight"))
    mode = doc.get("mode")
    drain = doc.get("drain")
    drain = drain if isinstance(drain, dict) else {}
    return {
        "mode": mode if isinstance(mode, str) else None,
        "limit": limit,
        "in_flight": in_flight,
        "queued": queued,
        # The drain ETA Sluice showed (RECOVERY only; None when it showed none).
        "eta_s": num(drain.get("eta_s")),
    }


def proxy_series(samples: Sequence[tuple[float, dict[str, Any]]], t0: float) -> dict[str, Any]:
    """A proxy's /status samples as the plot's series, x in seconds from t0."""
    figs = [(t - t0, status_figures(doc)) for t, doc in samples]
    return {
        "t": [round(t, 3) for t, _ in figs],
        "mode": [f["mode"] for _, f in figs],
        "limit": [f["limit"] for _, f in figs],
        "in_flight": [f["in_flight"] for _, f in figs],
        "queued": [f["queued"] for _, f in figs],
        "eta_s": [f["eta_s"] for _, f in figs],
    }
