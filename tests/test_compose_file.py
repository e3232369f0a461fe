"""docker-compose.yml builds loadkit's image once and runs it as the emulator, master and workers.

No Docker engine runs here, so the file is read as Compose reads it (YAML with its merge keys
resolved) and checked against the Compose specification's rules for ``build``, ``image`` and
``pull_policy`` (docs.docker.com/reference/compose-file/build, "Using build and image", and
services, "pull_policy"): a service with both ``build`` and ``image`` tags what it builds with
that image name; ``pull_policy: build`` builds instead of first trying to pull; ``never`` uses
the local image only.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
LOADKIT_SERVICES = ("emulator", "master", "worker")


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services


def test_compose_builds_the_image_once() -> None:
    services = _services()
    builders = [name for name, service in services.items() if "build" in service]
    assert len(builders) == 1, f"one service builds loadkit's image, not {builders}"
    (builder,) = builders
    image = services[builder]["image"]
    assert image.startswith("loadkit:"), image
    # Built, never pulled: no registry holds this tag.
    assert services[builder]["pull_policy"] == "build"
    assert services[builder]["build"] in (".", {"context": "."})
    for name in LOADKIT_SERVICES:
        assert services[name]["image"] == image, name
        if name != builder:
            assert services[name]["pull_policy"] == "never", name
    # Every service that runs loadkit's commands runs that image.
    for name, service in services.items():
        command = service.get("command") or [""]
        if command[0] in ("locust", "loadkit"):
            assert service["image"] == image, name
    # Compose starts containers after it has built every image: the services that use the image
    # without building it need nothing else. The master and workers also wait for the emulator.
    assert services["master"]["depends_on"]["emulator"]["condition"] == "service_healthy"
    assert "master" in services["worker"]["depends_on"]


def test_master_healthcheck_passes_behind_web_auth() -> None:
    """With LOADKIT_WEB_AUTH set every page answers 401, so the master's health is a TCP connect
    to the web UI's port, not an HTTP GET that raises on 401 and would hold the workers back."""
    services = _services()
    test = services["master"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "create_connection(('localhost', 8089)" in test[3]
    assert "urlopen" not in test[3]
    assert any(port.endswith(":8089:8089") for port in services["master"]["ports"])
    assert "LOADKIT_WEB_AUTH" in services["master"]["environment"]


def test_documented_commands_set_what_the_file_requires() -> None:
    """`${VAR:?message}` makes every `docker compose` command fail while VAR is unset: each
    place that shows `docker compose up` sets every such variable before it."""
    compose_text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", compose_text))
    assert {"INFLUXDB_TOKEN", "LOADKIT_EMULATOR_CONTROL_TOKEN"} <= required
    documents = [ROOT / "docker-compose.yml", ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    shown = 0
    for document in documents:
        text = document.read_text()
        for match in re.finditer(r"docker compose up", text):
            shown += 1
            before = text[: match.start()]
            missing = [name for name in required if f"{name}=$(" not in before]
            assert not missing, f"{document.name}: `docker compose up` without {missing}"
    assert shown >= 3


def test_master_and_workers_run_the_images_workloads() -> None:
    """Compose mounts nothing on the master or the workers: they use the image's workloads/,
    subdirectories included, so a run can name workloads/datasets.yaml (whose datasets the
    master reads) or replay workloads/traces/*.jsonl (read by every process, which must hold
    the master's file byte for byte: one image, one file). The Dockerfile reference's COPY
    (docs.docker.com/reference/dockerfile/#copy) copies a directory's contents whole, less
    what .dockerignore leaves out of the build context."""
    instructions = [
        line.split(maxsplit=1)
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    workdir = PurePosixPath(dict((i.upper(), a) for i, a in instructions)["WORKDIR"])
    assert ["COPY", "workloads ./workloads"] in instructions
    files = [p.relative_to(ROOT) for p in (ROOT / "workloads").rglob("*") if p.is_file()]
    assert {p.parts[1] for p in files if len(p.parts) > 2} >= {"datasets", "traces"}
    ignore = ROOT / ".dockerignore"
    patterns = []
    if ignore.exists():
        lines = [line.strip() for line in ignore.read_text().splitlines()]
        patterns = [line.strip("/") for line in lines if line and not line.startswith("#")]
    for path in files:
        for part in [path, *path.parents[:-1]]:
            hit = [p for p in patterns if fnmatch.fnmatch(part.as_posix(), p)]
            assert not hit, f".dockerignore leaves {path} out of the image: {hit}"
    workloads = workdir / "workloads"
    services = _services()
    for name in ("master", "worker"):
        for volume in services[name].get("volumes") or []:
            target = PurePosixPath(
                volume["target"] if isinstance(volume, dict) else volume.split(":")[1]
            )
            hides = (
                target == workloads or workloads in target.parents or target in workloads.parents
            )
            assert not hides, f"{name}: the volume at {target} hides the image's {workloads}"
