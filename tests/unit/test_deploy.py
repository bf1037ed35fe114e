"""The Dockerfile, requirements.lock and the pod manifest keep the properties the sidecar relies
on (no Docker engine runs here, so the files are parsed and checked instead of built).
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import re
import tomllib
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from proxy.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
# python:3.11.17-slim-bookworm: a patch release of CPython on a named Debian release.
BASE_RE = re.compile(r"^python:(3\.1[1-9]\.\d+)-slim-(bookworm|trixie)(?:@sha256:[0-9a-f]{64})?$")


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the image's last stage (what ships), its FROM first."""
    ops = instructions()
    start = max(i for i, (op, _) in enumerate(ops) if op == "FROM")
    return ops[start:]


def base_images() -> list[str]:
    return [rest.split()[0] for op, rest in instructions() if op == "FROM"]


def test_slim_python_base_pinned_to_a_patch_release() -> None:
    bases = base_images()
    assert bases and all(BASE_RE.match(b) for b in bases), bases
    assert len(set(bases)) == 1, "the build and runtime stages must share one base image"


def test_runs_as_non_root() -> None:
    users = [rest for op, rest in instructions() if op == "USER"]
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_exec_form_entrypoint_with_fixed_config_path() -> None:
    entry = [rest for op, rest in instructions() if op == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form: a JSON array, so signals reach sluice
    assert argv[0] == "sluice"
    assert argv[argv.index("--config") + 1] == "/etc/sluice/sluice.yaml"


def test_pod_manifest_has_sluice_sidecar_and_probes() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "sidecar-pod.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "Pod")
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert "sluice" in names and len(names) == 2
    sluice = pod["spec"]["containers"][names.index("sluice")]
    assert sluice["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sluice["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sluice["securityContext"]["readOnlyRootFilesystem"] is True
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    from proxy.config import load_config_data

    load_config_data(yaml.safe_load(config["data"]["sluice.yaml"]))


# --- the image's Python packages come from requirements.lock only -------------------------
def locked() -> dict[str, tuple[Requirement, list[str]]]:
    """requirements.lock as name -> (the pinned requirement, its sha256 hashes)."""
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    out: dict[str, tuple[Requirement, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = re.split(r"\s+(?=--)", line)
        req = Requirement(spec)
        hashes = [o.removeprefix("--hash=sha256:") for o in options if o.startswith("--hash=")]
        out[canonicalize_name(req.name)] = (req, hashes)
    return out


def locked_version(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not pinned with =="
    return spec.version


def image_environment() -> dict[str, str]:
    """Marker values of the image's interpreter (its Python version from the FROM tag)."""
    match = BASE_RE.match(base_images()[0])
    assert match is not None
    full = match.group(1)
    env = dict(default_environment())
    env.update(
        python_full_version=full,
        python_version=".".join(full.split(".")[:2]),
        sys_platform="linux",
        platform_system="Linux",
        os_name="posix",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        extra="",
    )
    return env


def test_every_pip_install_in_the_image_is_locked() -> None:
    """The dependencies by exact version and hash; Sluice itself without dependencies and
    without an isolated build (which would fetch the newest setuptools)."""
    runs = [rest for op, rest in instructions() if op == "RUN" and "pip install" in rest]
    assert runs
    from_lock = 0
    for run in runs:
        for command in re.split(r"&&", run):
            if "pip install" not in command:
                continue
            words = command.split()
            assert "--no-deps" in words, command
            if "-r" in words:
                assert words[words.index("-r") + 1] == LOCK.name, command
                assert "--require-hashes" in words, command
                from_lock += 1
            else:
                assert words[-1] == "." and "--no-build-isolation" in words, command
    assert from_lock == 1
    copied = [rest.split() for op, rest in instructions() if op == "COPY"]
    assert any(LOCK.name in args[:-1] for args in copied), "requirements.lock is not copied in"


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    lock = locked()
    assert lock
    for name, (req, hashes) in lock.items():
        locked_version(req)
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = project["project"]["dependencies"] + project["build-system"]["requires"]
    for line in wanted:
        want = Requirement(line)
        got, _ = lock[canonicalize_name(want.name)]
        assert want.specifier.contains(locked_version(got)), f"{got} does not satisfy {want}"
        assert got.marker == want.marker, f"{got}: marker differs from pyproject's {want}"


def test_the_lock_is_the_whole_runtime_set_and_the_tests_run_on_it() -> None:
    """Walk the runtime dependencies through the installed packages' metadata: every package
    reached is locked, at the version installed here (`make venv` installs from the lock), so
    the tests exercise what the image ships."""
    lock = locked()
    env = image_environment()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    todo = [Requirement(r) for r in project["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        seen.add(name)
        assert name in lock, f"{name} (needed by the runtime set) is not in {LOCK.name}"
        installed = importlib.metadata.version(name)
        pinned = locked_version(lock[name][0])
        assert installed == pinned, (
            f"{name} {installed} installed, {pinned} locked: rebuild the venv (make venv)"
        )
        todo += [Requirement(r) for r in importlib.metadata.requires(name) or []]
    build = {canonicalize_name(Requirement(r).name) for r in project["build-system"]["requires"]}
    build |= {"packaging"}  # what wheel, a build dependency, needs itself
    assert set(lock) - seen <= build, f"locked but not needed: {set(lock) - seen - build}"


# --- the baked-in config and what the image opens -----------------------------------------
def baked_in_config() -> Config:
    """The config the image runs with when none is mounted: the file COPYed to the path the
    entrypoint names."""
    stage = final_stage()
    (entry,) = [rest for op, rest in stage if op == "ENTRYPOINT"]
    argv = json.loads(entry)
    path = argv[argv.index("--config") + 1]
    sources = [rest.split() for op, rest in stage if op == "COPY" and rest.split()[-1] == path]
    assert len(sources) == 1 and len(sources[0]) == 2, f"one COPY of a file to {path}"
    return load_config(ROOT / sources[0][0])


def reachable_from_outside(host: str) -> bool:
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to any interface
        return True


def test_expose_lists_exactly_the_listeners_reachable_from_outside() -> None:
    config = baked_in_config()
    listeners = [(config.listen.host, config.listen.port), (config.admin.host, config.admin.port)]
    outside = {port for host, port in listeners if reachable_from_outside(host)}
    exposed = {
        int(word.split("/")[0])
        for op, rest in final_stage()
        if op == "EXPOSE"
        for word in rest.split()
    }
    assert exposed == outside
    assert config.listen.port in exposed  # the image is a proxy: its own port is published


def test_healthcheck_reaches_the_baked_in_admin_listener() -> None:
    admin = baked_in_config().admin
    (check,) = [rest for op, rest in final_stage() if op == "HEALTHCHECK"]
    assert f"http://{admin.host}:{admin.port}/healthz" in check
