"""Copy the repository's workload files and Grafana provisioning into the kustomizations
(kustomize reads no file above its own directory), and list every workload file in the
workloads ConfigMap. Run it (``make k8s-sync``) after changing workloads/ or dashboards/;
tests/test_kubernetes_manifests.py fails until the copies are equal."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GRAFANA = {
    "dashboards/grafana/provisioning/datasources/loadkit.yaml": "influxdb/grafana/datasource.yaml",
    "dashboards/grafana/provisioning/dashboards/loadkit.yaml": "influxdb/grafana/dashboards.yaml",
    "dashboards/grafana/dashboards/loadkit.json": "influxdb/grafana/loadkit.json",
}
LIST = re.compile(r"(  - name: loadkit-workloads\n    files:\n)((?:      - workloads/.*\n)+)")


def main() -> None:
    copies = HERE / "base" / "workloads"
    for old in copies.glob("*.yaml"):
        old.unlink()
    names = sorted(p.name for p in (ROOT / "workloads").glob("*.yaml"))
    for name in names:
        shutil.copyfile(ROOT / "workloads" / name, copies / name)
    kustomization = HERE / "base" / "kustomization.yaml"
    text = kustomization.read_text(encoding="utf-8")
    listed = "".join(f"      - workloads/{name}\n" for name in names)
    text, found = LIST.subn(lambda m: m.group(1) + listed, text)
    if found != 1:
        raise SystemExit(f"{kustomization}: the loadkit-workloads file list was not found")
    kustomization.write_text(text, encoding="utf-8")
    for source, copy in GRAFANA.items():
        shutil.copyfile(ROOT / source, HERE / copy)
    print(f"copied {len(names)} workload files and {len(GRAFANA)} Grafana files")


if __name__ == "__main__":
    main()
