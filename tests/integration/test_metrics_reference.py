"""What `/metrics` serves, against what the README promises: the metric names of the README's
metrics reference are exactly those a running Sluice exposes (both ways), with the labels it
lists; and forwarded answers show up by status class there."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from proxy import __version__
from proxy.edge.lifecycle import Server
from tests.redis_server import RedisServer
from tests.support import running_backend, running_sluice, sluice_config, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"
# A name in a table cell: `sluice_x_total`, `process_y`, `python_z`, `status_class`.
NAME_RE = re.compile(r"`([a-z_][a-z0-9_]*)`")
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$", re.MULTILINE)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def readme_metrics(text: str) -> dict[str, set[str]]:
    """Name -> label names, from the tables of the README's `## Metrics` section: the names
    in the first column, the labels in the second (values in parentheses left out)."""
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) < 4 or set(cells[1].strip()) <= {"-", " ", ":"}:
            continue  # not a table row, or the header's rule
        labels = set(NAME_RE.findall(re.sub(r"\([^)]*\)", "", cells[2])))
        for name in NAME_RE.findall(cells[1]):
            out[name] = labels
    return out


def exposed_metrics(text: str) -> dict[str, set[str] | None]:
    """Name -> label names of an exposition, the names as its `# TYPE` lines give them
    (counters with `_total`, histograms by their base name); None for a family with no
    series yet (a labelled family before its first child)."""
    out: dict[str, set[str] | None] = {
        m.group(1): None for m in re.finditer(r"^# TYPE (\S+) \S+$", text, re.MULTILINE)
    }
    for m in SAMPLE_RE.finditer(text):
        name, body = m.group(1), m.group(2) or ""
        if name not in out:
            name = next(name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s))
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', body)) - {"le"}
        out[name] = (out[name] or set()) | labels
    return out


async def scrape(server: Server) -> str:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{server.admin_port}/metrics") as r,
    ):
        assert r.status == 200
        return await r.text()


FLEET_PREFIX = "sluice_fleet_"  # served only with `fleet.redis` (none standalone)


def compare(served: dict[str, set[str] | None], fleet: bool) -> None:
    documented = readme_metrics(README.read_text(encoding="utf-8"))
    assert any(n.startswith(FLEET_PREFIX) for n in documented)
    if not fleet:
        documented = {n: v for n, v in documented.items() if not n.startswith(FLEET_PREFIX)}
    assert documented["sluice_requests_total"] == {"outcome", "reason"}  # the section was read
    assert sorted(served.keys() - documented.keys()) == [], "served, not in the README"
    assert sorted(documented.keys() - served.keys()) == [], "in the README, not served"
    wrong = {
        name: f"README {sorted(documented[name])}, served {sorted(labels)}"
        for name, labels in served.items()
        if labels is not None and labels != documented[name]
    }
    assert wrong == {}


@pytest.mark.parametrize("protection", ["on", "off"])
async def test_the_readme_lists_exactly_the_metrics_served(protection: str) -> None:
    async with (
        running_backend() as backend,
        running_sluice(sluice_config(backend.url, modes={"protection": protection})) as server,
    ):
        served = exposed_metrics(await scrape(server))
    compare(served, fleet=False)
    unchecked = sorted(name for name, labels in served.items() if labels is None)
    # With protection off no mode ever changes: no transition has a series to check.
    allowed = [] if protection == "on" else ["sluice_mode_transitions_total"]
    assert unchecked == allowed, "families with no series to check the labels of"


async def test_in_a_fleet_the_readme_lists_exactly_the_metrics_served(
    redis_server: RedisServer,
) -> None:
    async with (
        running_backend() as backend,
        running_sluice(sluice_config(backend.url, fleet={"redis": redis_server.url})) as server,
    ):
        link = server.sluice.fleet
        assert link is not None
        await wait_for(lambda: link.ok >= 2)  # every labelled series has been touched
        served = exposed_metrics(await scrape(server))
    compare(served, fleet=True)
    unchecked = sorted(name for name, labels in served.items() if labels is None)
    assert unchecked == [], "families with no series to check the labels of"


def test_the_readme_reader_reads_names_and_labels_of_table_rows_only() -> None:
    text = (
        "intro\n## Metrics\n\n| metric | labels | meaning |\n| --- | --- | --- |\n"
        "| `a_total`, `b` | `kind` (`x`, `y`) | see `c` |\n| `d` | | none |\n\nprose `e`\n"
        "## Next\n| `f` | | |\n"
    )
    assert readme_metrics(text) == {"a_total": {"kind"}, "b": {"kind"}, "d": set()}


def test_the_exposition_reader_finds_series_and_their_labels() -> None:
    text = (
        '# HELP a_total A.\n# TYPE a_total counter\na_total{kind="x",who="y"} 1.0\n'
        '# TYPE h_seconds histogram\nh_seconds_bucket{le="0.1"} 0.0\nh_seconds_sum 0.0\n'
        "# TYPE empty counter\n# TYPE g gauge\ng 3.0\n"
    )
    assert exposed_metrics(text) == {
        "a_total": {"kind", "who"},
        "h_seconds": set(),
        "empty": None,
        "g": set(),
    }


async def test_forwarded_answers_by_status_class_and_the_version() -> None:
    async with (
        running_backend() as backend,
        running_sluice(sluice_config(backend.url)) as server,
        aiohttp.ClientSession() as s,
    ):
        for path in ("/echo", "/echo/again", "/missing"):
            async with s.get(f"http://127.0.0.1:{server.proxy_port}{path}") as r:
                await r.read()
        text = await scrape(server)
    assert 'sluice_upstream_responses_total{status_class="2xx"} 2.0' in text
    assert 'sluice_upstream_responses_total{status_class="4xx"} 1.0' in text
    assert 'sluice_upstream_responses_total{status_class="5xx"} 0.0' in text
    assert f'sluice_build_info{{version="{__version__}"}} 1.0' in text
