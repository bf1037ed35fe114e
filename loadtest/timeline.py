"""Per-bin series of one arm's run: the plot's timeline (offered, served, wasted, busy, queued,
each proxy's /status) and the backlog's drain from t0 (pure)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

from .lb_analysis import region_stats
from .proxy_status import proxy_series
from .run_data import RunData, request_id
from .stats import bin_counts, bin_max

TIMELINE_BIN = 0.5
SERIES_BIN = 0.1  # the backlog series (successes per bin, open workflows) from t0


def backlog_series(
    backlog: Sequence[Sequence[Any]], t0: float, t_end: float, width: float = SERIES_BIN
) -> dict[str, Any]:
    """From t0 to the end in bins of `width`: the backlog workflows that succeeded in each bin
    (`ok`) and those still open (not finished) at each bin's start (`open`)."""
    n = max(0, math.ceil((t_end - t0) / width - 1e-9))
    ok = bin_counts((w[5] for w in backlog if w[6] and w[5] is not None), t0, t0 + n * width, width)
    ends = sorted(w[5] for w in backlog if w[5] is not None)
    total = len(backlog)
    # Open at a bin's start: not finished by then (a workflow ending exactly there is closed).
    open_ = [total - bisect.bisect_right(ends, t0 + i * width) for i in range(n)]
    return {"bin_s": width, "ok": ok, "open": open_}


def timeline(run: RunData, t0: float) -> dict[str, Any]:
    """Per-bin series for the plot, x in seconds from t0."""
    sc = run.scenario
    lo = run.t_start
    hi = run.t_end + sc.timing.grace
    w = TIMELINE_BIN
    atts = run.fleet["attempts"]
    wfs = run.fleet["workflows"]
    ok_ids = {request_id(a[0], a[1]) for a in atts if a[5] == "200"}
    n = max(0, math.ceil((hi - lo) / w))
    out: dict[str, Any] = {
        "bin_s": w,
        "x": [round(lo + (i + 0.5) * w - t0, 3) for i in range(n)],
        "regions": {},
    }
    for i, region in enumerate(sc.regions):
        st = region_stats(run.backends, run.members.get(region, [region]), lo, hi, w)
        comps = st.get("completions", [])
        reg: dict[str, Any] = {
            "fresh_offered": [
                c / w for c in bin_counts((x[4] for x in wfs if x[1] == 0 and x[2] == i), lo, hi, w)
            ],
            "client_ok": [
                c / w
                for c in bin_counts((a[4] for a in atts if a[5] == "200" and a[2] == i), lo, hi, w)
            ],
            "offered": [c / w for c in bin_counts((a[3] for a in atts if a[2] == i), lo, hi, w)],
            "backend_useful": [
                c / w for c in bin_counts((c[0] for c in comps if c[1] in ok_ids), lo, hi, w)
            ],
            "backend_local_useful": [
                c / w
                for c in bin_counts((c[0] for c in comps if c[1] in ok_ids and not c[2]), lo, hi, w)
            ],
            "backend_wasted": [
                c / w for c in bin_counts((c[0] for c in comps if c[1] not in ok_ids), lo, hi, w)
            ],
            "backend_busy": bin_max(((s[0], s[1]) for s in st.get("samples", [])), lo, hi, w),
            "backend_queue": bin_max(((s[0], s[2]) for s in st.get("samples", [])), lo, hi, w),
            "workers": st.get("config", {}).get("workers"),
        }
        samples = run.proxy_samples.get(region, [])
        if samples:
            reg["proxy"] = proxy_series(samples, t0)
        members = run.members.get(region, [])
        if members:  # a fleet's sidecars, each its own series
            reg["proxies"] = {
                m: proxy_series(run.proxy_samples[m], t0)
                for m in members
                if run.proxy_samples.get(m)
            }
        out["regions"][region] = reg
    return out
