"""deploy/kubernetes: valid against Kubernetes' schemas, and running the command lines of
docker-compose.yml (which the namespace tests run as processes), with every secret from a Secret.

The kustomizations are rendered here by a small reader of the few fields they use (resources,
components, configMapGenerator, namespace); a field it does not know fails the test rather than
being ignored. Kustomize itself gives the same objects, with a hash added to generated names
(checked by hand with `kubectl kustomize`, v5.5.0; no kubectl in CI). Schemas: the
`kubernetes-validate` package's bundled OpenAPI schemas, strict (unknown fields are errors),
for the oldest Kubernetes these manifests claim (1.29) and the newest it bundles.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loadkit import datasets
from loadkit.cli import build_parser
from loadkit.trace import load_trace
from loadkit.workload import load_workload

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
VARIANTS = {"base": DEPLOY, "with-influxdb": DEPLOY / "with-influxdb"}
OLDEST_KUBERNETES = "1.29"
KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "components", "configMapGenerator"}
MOONCAKE_MODEL = "claude-sonnet-4-6"  # a Mooncake trace names none
SECRET_NAME = re.compile(r"_(KEY|TOKEN|PASSWORD|AUTH)$")


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIRECTORY` builds (generated names without their hash)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml: this reader does not know {unknown}")
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []) + kustomization.get("components", []):
        path = directory / entry
        if path.is_dir():
            objects += render(path)
        else:
            objects += [o for o in yaml.safe_load_all(path.read_text()) if o is not None]
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for entry in generator["files"]:
            key, _, source = entry.rpartition("=")
            data[key or PurePosixPath(source).name] = (directory / source).read_text()
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    namespace = kustomization.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] != "Namespace":
            obj["metadata"]["namespace"] = namespace
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def command_line(c: dict[str, Any]) -> list[str]:
    return list(c.get("command", [])) + list(c.get("args", []))


def option(argv: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    return value


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def dockerfile() -> list[tuple[str, str]]:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line.strip() and not line.startswith("#")
    ]


def _schema_problem(obj: dict[str, Any], version: str) -> str | None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = "/".join(str(p) for p in err.path)
        return f"Kubernetes {version}, at {where}: {err.message}"
    return None


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(path) for name, path in VARIANTS.items()}


def test_manifests_are_valid_kubernetes_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    newest = str(kubernetes_validate.latest_version())
    for variant, objects in rendered.items():
        names = [(o["kind"], o["metadata"]["name"]) for o in objects]
        assert len(names) == len(set(names)), f"{variant}: an object is defined twice"
        for obj in objects:
            for version in (OLDEST_KUBERNETES, newest):
                problem = _schema_problem(obj, version)
                assert problem is None, f"{variant} {names[objects.index(obj)]}: {problem}"
        # Everything lands in one namespace, which the base creates.
        assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
            "loadkit"
        }
        assert set(by_kind(objects, "Namespace")) == {"loadkit"}
    assert set(by_kind(rendered["with-influxdb"], "Deployment")) == {
        "loadkit-emulator",
        "loadkit-master",
        "loadkit-worker",
        "loadkit-influxdb",
        "loadkit-grafana",
    }
    assert set(by_kind(rendered["base"], "Deployment")) == {
        "loadkit-emulator",
        "loadkit-master",
        "loadkit-worker",
    }


def test_containers_run_the_compose_command_lines(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    services = compose()["services"]
    for objects in rendered.values():
        deployments = by_kind(objects, "Deployment")
        for service in ("emulator", "master", "worker"):
            c = container(deployments[f"loadkit-{service}"])
            assert command_line(c) == services[service]["command"], service
            # The image has no ENTRYPOINT, so the args are the whole command line, as compose's
            # command is; and it is the image compose builds.
            assert c["image"] == services[service]["image"]
            names = [e["name"] for e in c.get("env", [])]
            assert len(names) == len(set(names))
            assert set(names) == set(services[service]["environment"]), service
    assert "ENTRYPOINT" not in {instruction for instruction, _ in dockerfile()}
    # Values that are not secrets are the compose file's.
    env = compose()["x-loadkit-env"]
    master = container(by_kind(rendered["with-influxdb"], "Deployment")["loadkit-master"])
    values = {e["name"]: e.get("value") for e in master["env"]}
    assert values["INFLUXDB_V2_ORG"] == env["INFLUXDB_V2_ORG"]
    assert values["INFLUXDB_V2_BUCKET"] == env["INFLUXDB_V2_BUCKET"]
    (url_ref,) = [e for e in master["env"] if e["name"] == "INFLUXDB_V2_URL"]
    ref = url_ref["valueFrom"]["configMapKeyRef"]
    settings = by_kind(rendered["with-influxdb"], "ConfigMap")[ref["name"]]
    assert settings["data"][ref["key"]] == env["INFLUXDB_V2_URL"]
    # Without the InfluxDB variant that ConfigMap is absent and the sink stays off.
    assert ref.get("optional") is True
    assert ref["name"] not in by_kind(rendered["base"], "ConfigMap")


def test_no_literal_secrets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    guide = (ROOT / "docs" / "distributed.md").read_text()
    referenced = set()
    for variant, objects in rendered.items():
        assert not by_kind(objects, "Secret"), f"{variant}: secrets are created by hand"
        for name, deployment in by_kind(objects, "Deployment").items():
            for env in container(deployment).get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env, (name, env["name"])
                    ref = env["valueFrom"]["secretKeyRef"]
                    referenced.add((ref["name"], ref["key"]))
    assert ("loadkit-api-key", "ANTHROPIC_API_KEY") in referenced
    assert ("loadkit-influxdb", "token") in referenced
    assert ("loadkit-emulator-control", "token") in referenced
    # Each Secret the manifests read has its `kubectl create secret` line in the guide.
    for secret, key in referenced:
        pattern = rf"kubectl -n loadkit create secret generic {secret} [^\n]*--from-\w+={key}="
        assert re.search(pattern, guide), (secret, key)
    text = "\n".join(p.read_text() for p in DEPLOY.rglob("*.yaml"))
    assert "sk-ant-" not in text


def test_services_ports_and_probes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    services = compose()["services"]
    objects = rendered["with-influxdb"]
    deployments = by_kind(objects, "Deployment")
    k8s_services = by_kind(objects, "Service")
    # Every Service selects exactly one Deployment's pods and names ports its container has.
    for name, service in k8s_services.items():
        selected = [
            d
            for d in deployments.values()
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, name
        (deployment,) = selected
        assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        ports = {p["name"]: p["containerPort"] for p in container(deployment).get("ports", [])}
        for port in service["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"], (name, port)

    def port_of(service: str, number: int) -> bool:
        return number in {p["port"] for p in k8s_services[service]["spec"]["ports"]}

    master_args = command_line(container(deployments["loadkit-master"]))
    worker_args = command_line(container(deployments["loadkit-worker"]))
    # The workers reach the master's Service on 5557; the web UI is on 8089.
    master_host = option(worker_args, "--master-host")
    assert port_of(master_host, 5557) and port_of(master_host, 8089)
    assert "loadkit-master" in [
        d
        for d, dep in deployments.items()
        if k8s_services[master_host]["spec"]["selector"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    ]
    # The master's target is the emulator's Service, on the port the emulator serves.
    target = option(master_args, "--target-url")
    host, port = target.removeprefix("http://").split(":")
    assert port_of(host, int(port))
    emulator = container(deployments["loadkit-emulator"])
    parsed = build_parser().parse_args(command_line(emulator)[1:])
    assert (parsed.command, parsed.host, parsed.port) == ("emulator", "0.0.0.0", int(port))
    # The emulator's probes ask what compose's healthcheck asks.
    healthcheck = " ".join(services["emulator"]["healthcheck"]["test"])
    for probe in ("readinessProbe", "livenessProbe"):
        get = emulator[probe]["httpGet"]
        named = {p["name"]: p["containerPort"] for p in emulator["ports"]}
        assert f"http://localhost:{named[get['port']]}{get['path']}" in healthcheck
    assert get["path"] == "/_emulator/health"
    # The master's probes connect (behind LOADKIT_WEB_AUTH every page answers 401).
    master = container(deployments["loadkit-master"])
    assert "tcpSocket" in master["readinessProbe"] and "tcpSocket" in master["livenessProbe"]
    # Workers: a Deployment with replicas; the emulator and master: one each.
    assert deployments["loadkit-worker"]["spec"]["replicas"] >= 2
    assert deployments["loadkit-emulator"]["spec"]["replicas"] == 1
    assert deployments["loadkit-master"]["spec"]["replicas"] == 1
    # The image's user is the one the pods require.
    user = dict(dockerfile())["USER"]
    for name in ("loadkit-emulator", "loadkit-master", "loadkit-worker"):
        security = deployments[name]["spec"]["template"]["spec"]["securityContext"]
        assert security == {"runAsNonRoot": True, "runAsUser": int(user)}


def mounted_files(
    deployment: dict[str, Any], configmaps: dict[str, dict[str, Any]], mount_path: PurePosixPath
) -> dict[str, str]:
    """The files the kubelet puts in the volume mounted at ``mount_path``, by path in it: a
    ``configMap`` volume or the ``configMap`` sources of a ``projected`` one, each key as a
    file of its name or, when ``items`` are listed, only those keys, at their ``path``
    (a listed key that the ConfigMap lacks keeps the pod from starting)."""
    (mount,) = [
        m for m in container(deployment)["volumeMounts"] if m["mountPath"] == str(mount_path)
    ]
    assert mount.get("readOnly") is True and "subPath" not in mount
    (volume,) = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    if "configMap" in volume:
        sources = [volume["configMap"]]
    else:
        sources = [source["configMap"] for source in volume["projected"]["sources"]]
    files: dict[str, str] = {}
    for source in sources:
        data = configmaps[source["name"]]["data"]
        assert not source.get("optional"), source["name"]
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            assert item["key"] in data, f"{source['name']} has no key {item['key']}"
            assert item["path"] not in files, f"two sources write {item['path']}"
            files[item["path"]] = data[item["key"]]
    return files


def write_tree(files: dict[str, str], directory: Path) -> Path:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def test_workloads_directory_comes_from_configmaps(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The master and the workers see the repository's whole workloads/ at the image's
    workloads/: the workload files, the datasets they name (read by the master) and the
    traces (read by every process, which must hold the master's file byte for byte).

    ConfigMap keys are flat, so each subdirectory is a ConfigMap of its own, mapped back by
    ``items`` in one projected volume. Kustomize adds a content hash to each generated
    ConfigMap's name and rewrites the references to it; its default nameReference config
    lists ``spec/template/spec/volumes/projected/sources/configMap/name`` for a Deployment
    (kubernetes-sigs/kustomize, api/internal/konfig/builtinpluginconsts/namereference.go), so
    the projected sources get the hashed names too (checked by hand: `kubectl kustomize`,
    v5.5.0, names loadkit-workloads-traces-<hash> in both Deployments' volumes)."""
    objects = rendered["base"]
    deployments = by_kind(objects, "Deployment")
    configmaps = by_kind(objects, "ConfigMap")
    workdir = PurePosixPath(dict(dockerfile())["WORKDIR"])
    # The locustfile and the workloads are in the image, where the command lines expect them;
    # the mount replaces the image's workloads/ with the ConfigMaps' copy.
    copies = [arg for instruction, arg in dockerfile() if instruction == "COPY"]
    assert "locustfiles ./locustfiles" in copies and "workloads ./workloads" in copies
    mount_path = workdir / "workloads"
    shipped = {
        str(p.relative_to(ROOT / "workloads")): p.read_text()
        for p in sorted((ROOT / "workloads").rglob("*"))
        if p.is_file()
    }
    assert any(name.startswith("datasets/") for name in shipped)
    assert any(name.startswith("traces/") for name in shipped)
    master = mounted_files(deployments["loadkit-master"], configmaps, mount_path)
    assert master == shipped, "the copies differ from workloads/: run make k8s-sync"
    worker = mounted_files(deployments["loadkit-worker"], configmaps, mount_path)
    assert worker == master
    master_argv = command_line(container(deployments["loadkit-master"]))
    assert (ROOT / master_argv[2]).is_file()
    # --workload resolves (from the image's WORKDIR) to a file of the mount.
    workload = workdir / option(master_argv, "--workload")
    assert str(workload.relative_to(mount_path)) in master

    # Every workload of the mount finds the datasets it names in the mount, not elsewhere
    # (the image's loadkit is installed, so there is no checkout to fall back on).
    mounted = write_tree(master, tmp_path / "workloads")
    with_datasets = 0
    for name in master:
        if not name.endswith(".yaml") or "/" in name:
            continue
        raw = yaml.safe_load(master[name]) or {}
        for entry in raw.get("datasets") or []:
            if entry.get("path"):
                found = datasets.resolve(entry["path"], mounted / name)
                assert found.is_relative_to(mounted), (name, entry["path"], found)
                with_datasets += 1
        if raw.get("datasets"):
            assert load_workload(mounted / name) == load_workload(ROOT / "workloads" / name)
    assert with_datasets >= 2
    # Every shipped trace is on the master and on each worker at workloads/traces/<file> (the
    # path --trace takes, as the guides name it), with the digest the workers compare.
    traces = sorted(p for p in (ROOT / "workloads" / "traces").glob("*.jsonl"))
    guides = "\n".join((ROOT / g).read_text() for g in ("docs/traces.md", "docs/distributed.md"))
    for trace in traces:
        path = f"traces/{trace.name}"
        assert f"workloads/{path}" in guides, path
        on_worker = write_tree({path: worker[path]}, tmp_path / "worker") / path
        digests = {load_trace(p, model=MOONCAKE_MODEL).digest for p in (on_worker, trace)}
        assert len(digests) == 1, path


def test_configmaps_fit_kubectl_apply(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """`kubectl apply` (client-side, as the guide runs it) stores each object whole in its
    kubectl.kubernetes.io/last-applied-configuration annotation, and an object's annotations
    may hold at most 256 KiB (262,144 bytes; kubernetes/kubectl#712): a larger ConfigMap is
    refused ("metadata.annotations: Too long"), well before the 1 MiB a ConfigMap may hold
    (kubernetes.io/docs/concepts/configuration/configmap). docs/distributed.md says what to do
    with larger files."""
    for variant, objects in rendered.items():
        for name, configmap in by_kind(objects, "ConfigMap").items():
            size = len(json.dumps(configmap, separators=(",", ":")).encode())
            # room for the name's hash and what kubectl adds
            assert size < 256 * 1024 - 1024, f"{variant} ConfigMap {name}: {size} bytes"
    guide = (ROOT / "docs" / "distributed.md").read_text()
    assert "256 KiB" in guide and "1 MiB" in guide and "--server-side" in guide


def test_grafana_gets_the_repositorys_provisioning(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["with-influxdb"]
    grafana = by_kind(objects, "Deployment")["loadkit-grafana"]
    configmaps = by_kind(objects, "ConfigMap")
    volumes = {
        v["name"]: v["configMap"]["name"] for v in grafana["spec"]["template"]["spec"]["volumes"]
    }
    mounted = {
        m["mountPath"]: configmaps[volumes[m["name"]]]["data"]
        for m in container(grafana)["volumeMounts"]
    }
    grafana_dir = ROOT / "dashboards" / "grafana"
    datasources = mounted["/etc/grafana/provisioning/datasources"]
    providers = mounted["/etc/grafana/provisioning/dashboards"]
    assert datasources == {
        "loadkit.yaml": (grafana_dir / "provisioning/datasources/loadkit.yaml").read_text()
    }
    assert providers == {
        "loadkit.yaml": (grafana_dir / "provisioning/dashboards/loadkit.yaml").read_text()
    }
    dashboards_path = yaml.safe_load(providers["loadkit.yaml"])["providers"][0]["options"]["path"]
    assert mounted[dashboards_path] == {
        "loadkit.json": (grafana_dir / "dashboards/loadkit.json").read_text()
    }, "the copies differ from dashboards/grafana/: run make k8s-sync"
    # The datasource is the influxdb Service, and Grafana has the token it sends.
    (source,) = yaml.safe_load(datasources["loadkit.yaml"])["datasources"]
    host, port = source["url"].removeprefix("http://").split(":")
    service = by_kind(objects, "Service")[host]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert "INFLUXDB_TOKEN" in {e["name"] for e in container(grafana)["env"]}


PARSE = """
import json, runpy, sys
from locust.argument_parser import parse_options
runpy.run_path(sys.argv[1])  # the locustfile: loadkit adds its options to Locust's parser
out = {}
for name, argv in json.loads(sys.argv[2]).items():
    o = parse_options(args=argv[1:])
    out[name] = {k: getattr(o, k, None) for k in (
        "master", "worker", "web_host", "web_port", "master_bind_port", "master_host",
        "master_port", "target_url", "workload")}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_locust_accepts_the_command_lines(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Locust's own parser, with loadkit's options added by the locustfile, reads the master's
    and the workers' command lines (an unknown flag exits 2, naming it)."""
    deployments = by_kind(rendered["base"], "Deployment")
    argvs = {
        name: command_line(container(deployments[f"loadkit-{name}"]))
        for name in ("master", "worker")
    }
    for argv in argvs.values():
        assert argv[:2] == ["locust", "-f"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    done = subprocess.run(
        [sys.executable, "-c", PARSE, argvs["master"][2], json.dumps(argvs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    master, worker = parsed["master"], parsed["worker"]
    assert master["master"] is True and master["web_host"] == "0.0.0.0"
    assert master["target_url"] == "http://emulator:8000"
    assert master["workload"] == "workloads/default.yaml"
    master_service = by_kind(rendered["base"], "Service")["master"]
    ports = {p["name"]: p["port"] for p in master_service["spec"]["ports"]}
    assert ports == {"web": master["web_port"], "workers": master["master_bind_port"]}
    assert worker["worker"] is True and worker["master_host"] == "master"
    assert worker["master_port"] == master["master_bind_port"]


def test_the_guide_gives_the_recipe() -> None:
    guide = (ROOT / "docs" / "distributed.md").read_text()
    for line in (
        "kubectl apply -k deploy/kubernetes",
        "kubectl apply -k deploy/kubernetes/with-influxdb",
        "kubectl -n loadkit scale deployment/loadkit-worker --replicas=8",
        "kubectl -n loadkit port-forward service/master 8089:8089",
        "kubectl -n loadkit port-forward service/grafana 3000:3000",
    ):
        assert line in guide, line
    assert "docs/distributed.md" in (ROOT / "README.md").read_text()
