"""What the backends did from t0 on, against the work the clients owed: each backend's figures,
amplification (backend arrivals per unit of work owed) and wasted work (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

from .run_data import RunData
from .stats import count_in


class BackendWork(NamedTuple):
    """What the backends did from t0 on, against the work the clients owed."""

    amplification: float | None
    first_tries: int
    arrivals: int
    wasted_fraction: float | None
    backends: dict[str, Any]


def backend_work(
    run: RunData,
    atts: Sequence[Sequence[Any]],
    backlog: Sequence[Sequence[Any]],
    ok_ids: set[str],
    t0: float,
) -> BackendWork:
    """Each backend's figures from t0, amplification (backend arrivals per unit of work owed)
    and the share of completed work nobody received (wasted)."""
    first_tries = count_in((a[3] for a in atts if a[1] == 0), t0, run.t_end)
    docs = {r: _backend_doc(st, ok_ids, t0, run.t_end) for r, st in run.backends.items()}
    arrivals = sum(d["arrivals"] for d in docs.values())
    completed = sum(d["completed"] for d in docs.values())
    wasted = sum(d["wasted"] for d in docs.values())
    # Work owed at t0 counts as a first try: after an outage the open workflows made theirs
    # before t0, yet each still needs one attempt (without this, a perfect drain of N would
    # read as (λ₀·T + N) / (λ₀·T) amplification).
    first_try_at = {a[0]: a[3] for a in atts if a[1] == 0}
    carried = sum(1 for w in backlog if first_try_at.get(w[0], t0) < t0)
    units = first_tries + carried
    return BackendWork(
        amplification=arrivals / units if units else None,
        first_tries=first_tries,
        arrivals=arrivals,
        wasted_fraction=wasted / completed if completed else None,
        backends=docs,
    )


def _backend_doc(st: dict[str, Any], ok_ids: set[str], t0: float, t_end: float) -> dict[str, Any]:
    """One backend's figures over [t0, t_end)."""
    arr = count_in((a[0] for a in st["arrivals"]), t0, t_end)
    comp = [c for c in st["completions"] if t0 <= c[0] < t_end]
    window_samples = [s for s in st["samples"] if t0 <= s[0] < t_end]
    return {
        "capacity": st["capacity"],
        "workers": st["config"]["workers"],
        "arrivals": arr,
        "completed": len(comp),
        "wasted": sum(1 for c in comp if c[1] not in ok_ids),
        "client_gone": sum(1 for c in comp if c[3]),
        "rejected": Counter(r[2] for r in st["rejections"]),
        "peak_queue": st["peak_queue"],
        "peak_queue_after_t0_sampled": max((s[2] for s in window_samples), default=0),
        "peak_busy": st["peak_busy"],
        "first_good_probe": st.get("first_good_probe"),
        # A capacity step (t from t0, old workers, new workers) and the busy/queue samples
        # from t0 (t from t0): what the backend did when its capacity changed.
        "steps": [(round(x[0] - t0, 4), x[1], x[2]) for x in st.get("steps", [])],
        "samples_after_t0": [
            (round(x[0] - t0, 3), x[1], x[2]) for x in st["samples"] if t0 <= x[0] < t_end
        ],
    }
