"""The PNG timeline of one scenario: arms side by side, two panels per region.

Top panel: goodput (200s received per second), offered load (attempts sent per second), fresh
arrivals (λ₀), and work the backend finished for clients that had gone (wasted). Bottom panel:
the backend's busy workers and the queue behind them (symlog axis), and for a proxy arm the
admission limit and Sluice's own queue; Sluice's mode shades both panels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display here
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

MODE_COLOURS = {
    "NORMAL": None,
    "OUTAGE": "#f4a6a6",
    "RECOVERY": "#ffe08a",
    "SHIELD": "#bdbdbd",
}


def _mode_spans(proxy: dict[str, Any], x_end: float) -> list[tuple[float, float, str]]:
    spans: list[tuple[float, float, str]] = []
    ts, modes = proxy.get("t", []), proxy.get("mode", [])
    for i, (t, mode) in enumerate(zip(ts, modes, strict=False)):
        if mode is None:
            continue
        end = ts[i + 1] if i + 1 < len(ts) else x_end
        if spans and spans[-1][2] == mode and abs(spans[-1][1] - t) < 1e-9:
            spans[-1] = (spans[-1][0], end, mode)
        else:
            spans.append((t, end, mode))
    return spans


def _shade(ax: Any, spans: list[tuple[float, float, str]]) -> None:
    for a, b, mode in spans:
        colour = MODE_COLOURS.get(mode, "#c6dbef")
        if colour:
            ax.axvspan(a, b, color=colour, alpha=0.45, lw=0, zorder=0)


def plot_scenario(results: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Draw the arms that ran into `path` (PNG); returns the path, or None if nothing ran."""
    ran = [r for r in results if "unavailable" not in r]
    if not ran:
        return None
    regions: list[str] = ran[0]["params"]["regions"]
    nrows = 2 * len(regions)
    ncols = len(ran)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(9.0, 5.2 * ncols + 0.6), 2.6 * nrows + 1.4),
        sharex=True,
        squeeze=False,
    )
    rate_max = 1.0
    for r in ran:
        for reg in r["timeline"]["regions"].values():
            rate_max = max(rate_max, *reg["offered"], *reg["client_ok"])
    # Offered load can spike far above the rest at a release: cap the axis near λ₀.
    rate_top = min(rate_max * 1.1, 8 * max(r["params"]["fresh_rate_total"] for r in ran) + 50)
    for col, r in enumerate(ran):
        for k, region in enumerate(regions):
            ax_rate, ax_be = axes[2 * k][col], axes[2 * k + 1][col]
            _draw_region(ax_rate, ax_be, r, region, rate_top)
            if col == 0:
                ax_rate.set_ylabel("req/s")
                ax_be.set_ylabel("requests")
            ax_be.set_xlabel("seconds from t0" if k == len(regions) - 1 else "")
    handles, labels = _legend_entries(axes, ran, ncols)
    ncol = 6 if ncols > 1 else 4
    fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)), fontsize=8)
    first = ran[0]
    t0_what = "release" if first["params"]["trigger"] == "reopen" else "first good probe"
    fig.suptitle(
        f"{first['scenario']} (t0 = {t0_what}) · C = {first['params']['capacity']:g} req/s · "
        f"λ₀ = {first['params']['fresh_rate_total']:g} req/s · N = {first['backlog']['n']} · "
        f"profile {first['profile']}",
        fontsize=11,
    )
    legend_rows = -(-len(labels) // min(ncol, len(labels)))
    fig.tight_layout(rect=(0, 0.025 + 0.03 * legend_rows * 4 / (nrows + 1), 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_region(ax_rate: Any, ax_be: Any, r: dict[str, Any], region: str, rate_top: float) -> None:
    """One arm's two panels of one region: rates on top, the backend (and Sluice) below."""
    tl = r["timeline"]
    x = tl["x"]
    p = r["params"]
    reg = tl["regions"][region]
    spans = _mode_spans(reg["proxy"], x[-1] if x else 0.0) if "proxy" in reg else []
    _shade(ax_rate, spans)
    _shade(ax_be, spans)
    ax_rate.plot(x, reg["offered"], color="#7f7f7f", lw=1.0, label="offered (attempts/s)")
    ax_rate.plot(x, reg["client_ok"], color="#2ca02c", lw=1.8, label="goodput (200/s)")
    ax_rate.plot(x, reg["backend_wasted"], color="#d62728", lw=1.0, ls=":", label="wasted work/s")
    ax_rate.plot(
        x, reg["fresh_offered"], color="#1f77b4", lw=0.8, ls="--", label="fresh arrivals/s (λ₀)"
    )
    ax_rate.set_ylim(0, rate_top)
    ax_rate.set_title(f"{r['arm']} · {region}", fontsize=10)
    _draw_backend(ax_be, x, reg, p["queue_limit"])
    for ax in (ax_rate, ax_be):
        ax.axvline(0, color="black", lw=0.8)
        ax.grid(alpha=0.25)
        if p["trigger"] == "outage":
            trig = r["times"]["t_trigger"] - r["times"]["t0"]
            ax.axvspan(trig, trig + p["outage_s"], color="#d62728", alpha=0.08, lw=0)
    bound = r["backlog"].get("bound_s")
    if bound and region == p["home"]:
        ax_rate.axvline(1.2 * bound, color="#9467bd", lw=0.8, ls="-.")
        ax_rate.text(
            1.2 * bound, rate_top * 0.97, " 1.2·N/(C\u2212λ₀)", fontsize=7, va="top",
            color="#9467bd",
        )  # fmt: skip


def _draw_backend(ax: Any, x: list[float], reg: dict[str, Any], queue_limit: int) -> None:
    """The backend's queue and busy workers (and its worker count), Sluice's limit and queue."""
    ax.plot(x, reg["backend_queue"], color="#d62728", lw=1.2, label="backend queue")
    ax.plot(x, reg["backend_busy"], color="#ff7f0e", lw=1.2, label="backend busy workers")
    if reg.get("workers"):
        ax.axhline(reg["workers"], color="#ff7f0e", lw=0.6, ls="--")
    if "proxy" in reg:
        pr = reg["proxy"]
        lim = [(t, v) for t, v in zip(pr["t"], pr["limit"], strict=False) if v is not None]
        if lim:
            ax.step(
                [t for t, _ in lim], [v for _, v in lim], where="post",
                color="#9467bd", lw=1.2, label="Sluice limit",
            )  # fmt: skip
        qd = [(t, v) for t, v in zip(pr["t"], pr["queued"], strict=False) if v is not None]
        if qd:
            ax.plot(
                [t for t, _ in qd], [v for _, v in qd], color="#8c564b", lw=0.9,
                ls="--", label="Sluice queue",
            )  # fmt: skip
    # symlog: a queue of thousands and a few busy workers on one axis.
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(0, max(10.0, queue_limit * 1.3))


def _legend_entries(
    axes: Any, ran: Sequence[dict[str, Any]], ncols: int
) -> tuple[list[Any], list[str]]:
    """One legend entry per line drawn (first panels of the first and last arm), then the
    mode colours (when a proxy ran) and the outage band."""
    handles, labels = [], []
    for ax in (axes[0][0], axes[1][0], *([axes[1][-1]] if ncols > 1 else [])):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if any("proxy" in reg for r in ran for reg in r["timeline"]["regions"].values()):
        for mode, colour in MODE_COLOURS.items():
            if colour:
                handles.append(Patch(color=colour, alpha=0.45))
                labels.append(f"mode {mode}")
    if ran[0]["params"]["trigger"] == "outage":
        handles.append(Patch(color="#d62728", alpha=0.08))
        labels.append("backend outage")
    return handles, labels
