"""Copy the repository's workloads/ and Grafana provisioning into the kustomizations
(kustomize reads no file above its own directory), and write the lists that name them: the
ConfigMaps of workloads/ in base/kustomization.yaml and the ``workloads`` volume that puts
them back together in base/master.yaml and base/worker.yaml. Run it (``make k8s-sync``) after
changing workloads/ or dashboards/; tests/test_kubernetes_manifests.py fails until the copies
and lists are up to date.

ConfigMap keys are flat (no ``/``), so workloads/ becomes one ConfigMap per directory:
``loadkit-workloads`` for its own files, ``loadkit-workloads-<dir>`` for each subdirectory
(datasets, traces, ...). One projected volume mounts them all at the image's workloads/, the
subdirectories' keys mapped back to ``<dir>/<file>`` by ``items``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BASE = HERE / "base"
WORKLOADS = "workloads"
CONFIGMAP = "loadkit-workloads"
GRAFANA = {
    "dashboards/grafana/provisioning/datasources/loadkit.yaml": "influxdb/grafana/datasource.yaml",
    "dashboards/grafana/provisioning/dashboards/loadkit.yaml": "influxdb/grafana/dashboards.yaml",
    "dashboards/grafana/dashboards/loadkit.json": "influxdb/grafana/loadkit.json",
}
GENERATOR = re.compile(r"^configMapGenerator:\n(?:[ #].*\n|\n)*\Z", re.MULTILINE)
VOLUME = re.compile(
    r"(        # BEGIN workloads volume.*\n)(?:.*\n)*?(        # END workloads volume\n)"
)


def tree() -> dict[str, list[str]]:
    """workloads/'s files by directory ('' for its own), as the ConfigMaps hold them."""
    source = ROOT / WORKLOADS
    found: dict[str, list[str]] = {}
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(source)
        if len(relative.parts) > 2:
            raise SystemExit(f"{path}: one level of subdirectories only (ConfigMap keys are flat)")
        directory = relative.parts[0] if len(relative.parts) == 2 else ""
        found.setdefault(directory, []).append(relative.name)
    return found


def configmap_name(directory: str) -> str:
    return f"{CONFIGMAP}-{directory}" if directory else CONFIGMAP


def _generator(files: dict[str, list[str]]) -> str:
    lines = ["configMapGenerator:\n"]
    for directory, names in files.items():
        prefix = f"{WORKLOADS}/{directory}/" if directory else f"{WORKLOADS}/"
        lines.append(f"  - name: {configmap_name(directory)}\n    files:\n")
        lines += [f"      - {prefix}{name}\n" for name in names]
    return "".join(lines)


def _volume(files: dict[str, list[str]]) -> str:
    lines = [
        "        - name: workloads\n",
        "          projected:\n",
        "            sources:\n",
    ]
    for directory, names in files.items():
        if not directory:
            lines.append(f"              - configMap: {{name: {configmap_name(directory)}}}\n")
            continue
        lines += [
            "              - configMap:\n",
            f"                  name: {configmap_name(directory)}\n",
            "                  items:\n",
        ]
        lines += [
            f"                    - {{key: {name}, path: {directory}/{name}}}\n" for name in names
        ]
    return "".join(lines)


def _rewrite(path: Path, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> None:
    text, found = pattern.subn(replace, path.read_text(encoding="utf-8"))
    if found != 1:
        raise SystemExit(f"{path}: the generated part ({pattern.pattern[:40]}...) was not found")
    path.write_text(text, encoding="utf-8")


def sync_workloads() -> int:
    files = tree()
    copies = BASE / WORKLOADS
    if copies.exists():
        shutil.rmtree(copies)
    for directory, names in files.items():
        (copies / directory).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(ROOT / WORKLOADS / directory / name, copies / directory / name)
    generator = _generator(files)
    _rewrite(BASE / "kustomization.yaml", GENERATOR, lambda m: generator)
    volume = _volume(files)
    for deployment in ("master.yaml", "worker.yaml"):
        _rewrite(BASE / deployment, VOLUME, lambda m: m.group(1) + volume + m.group(2))
    return sum(len(names) for names in files.values())


def sync_grafana() -> int:
    for source, copy in GRAFANA.items():
        shutil.copyfile(ROOT / source, HERE / copy)
    return len(GRAFANA)


def main() -> None:
    workloads = sync_workloads()
    grafana = sync_grafana()
    print(f"copied {workloads} workload files and {grafana} Grafana files")


if __name__ == "__main__":
    main()
