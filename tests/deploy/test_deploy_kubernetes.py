"""The Kubernetes manifests (deploy/kubernetes/), checked offline.

Both overlays are rendered once with `kubectl kustomize`, as `kubectl apply -k` would; the output
is validated against Kubernetes' own schemas (kubernetes-validate, strict) and prometheus-operator's
CRD schemas (tests/deploy/crd/validate.mjs). The rest checks what no schema can: that the objects
point at each other (selectors, ports, probe ports, the HPA's metric through the prometheus-adapter
rule to a metric the server defines), that the ConfigMap loads into the real ServerSettings and is
what the pod runs with, and that the termination grace period covers the drain.
"""

from __future__ import annotations

import copy
import os
import functools
import json
import math
import re
import shlex
import shutil
import subprocess
import tomllib
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from seqcast.server.metrics import series_names

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "deploy" / "kubernetes"
OVERLAYS = ["cpu", "gpu"]
ADAPTER_RULES = REPO / "deploy" / "prometheus" / "adapter-rules.yaml"
CRD_VALIDATOR = REPO / "tests" / "deploy" / "crd" / "validate.mjs"
CRD_MODULES = CRD_VALIDATOR.parent / "node_modules" / "@kubernetes-models" / "prometheus-operator"
# The image each overlay runs, and the Dockerfile it is built from.
IMAGES = {"cpu": "ghcr.io/seqcast/seqcast:0.1.0-cpu", "gpu": "ghcr.io/seqcast/seqcast:0.1.0-cuda"}
DOCKERFILES = {"cpu": REPO / "deploy" / "docker" / "Dockerfile.cpu", "gpu": REPO / "deploy" / "docker" / "Dockerfile"}
# Seconds after the drain for the server to close its models and exit before SIGKILL.
EXIT_MARGIN_SECONDS = 5

Obj = dict[str, Any]


# -- Rendering ---------------------------------------------------------------------------------

@functools.cache
def _render(directory: str) -> tuple[Obj, ...]:
    result = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZE / directory)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


@dataclass(frozen=True)
class Rendered:
    """One kustomization's output, with the objects the checks look at."""

    name: str
    objects: tuple[Obj, ...]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def all(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    @property
    def deployment(self) -> Obj:
        return self.get("Deployment", "seqcast")

    @property
    def pod(self) -> Obj:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> Obj:
        (container,) = [c for c in self.pod["containers"] if c["name"] == "seqcast"]
        return container

    def container_port(self, name: str) -> int:
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        assert name in ports, f"{self.name}: no container port named {name!r} (have {sorted(ports)})"
        return ports[name]

    def env(self) -> dict[str, Obj]:
        return {e["name"]: e for e in self.container.get("env", [])}

    @property
    def config_path(self) -> Path:
        return Path(self.env()["SEQCAST_CONFIG"]["value"])

    @property
    def config_text(self) -> str:
        """The TOML file the pod reads: the ConfigMap mounted at SEQCAST_CONFIG's directory."""
        mount = next(m for m in self.container["volumeMounts"] if Path(m["mountPath"]) == self.config_path.parent)
        volume = next(v for v in self.pod["volumes"] if v["name"] == mount["name"])
        configmap = self.get("ConfigMap", volume["configMap"]["name"])
        return configmap["data"][self.config_path.name]

    @property
    def config(self) -> dict[str, Any]:
        return tomllib.loads(self.config_text)


@pytest.fixture(scope="module")
def render():
    """`render("overlays/gpu")`: kubectl kustomize's output for that directory, rendered once."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (scripts/install-deploy-tools.sh puts it in .venv/bin)")
    return lambda directory: Rendered(directory, _render(directory))


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request, render) -> Rendered:
    return render(f"overlays/{request.param}")


def overlay_name(rendered: Rendered) -> str:
    return rendered.name.rsplit("/", 1)[-1]


# -- Schemas -----------------------------------------------------------------------------------

def is_monitoring(obj: Obj) -> bool:
    return obj["apiVersion"].startswith("monitoring.coreos.com/")


def kind_and_name(obj: Obj) -> tuple[str, str]:
    """Without the content hash kustomize appends to generated ConfigMaps."""
    name = obj["metadata"]["name"]
    return obj["kind"], re.sub(r"-[a-z0-9]{10}$", "", name) if obj["kind"] == "ConfigMap" else name


def test_each_overlay_renders_every_object_of_the_base(render, overlay: Rendered) -> None:
    expected = {kind_and_name(o) for o in render("base").objects}
    assert {kind_and_name(o) for o in overlay.objects} == expected
    for kind, name in [("Deployment", "seqcast"), ("Service", "seqcast"), ("Service", "seqcast-headless"),
                       ("PodDisruptionBudget", "seqcast"), ("HorizontalPodAutoscaler", "seqcast"),
                       ("ServiceMonitor", "seqcast"), ("PrometheusRule", "seqcast")]:
        overlay.get(kind, name)


def test_built_in_kinds_validate_strictly_against_kubernetes_schemas(overlay: Rendered) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    failures = []
    for obj in overlay.objects:
        if is_monitoring(obj):
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(f"{where}: {e.message}")
    assert not failures, f"{overlay.name} against Kubernetes {version}:\n" + "\n".join(failures)


def test_strict_validation_rejects_a_misspelt_field(overlay: Rendered) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = copy.deepcopy(overlay.deployment)
    deployment["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"] = {"secs": 10}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def validate_crds(objects: list[Obj]) -> subprocess.CompletedProcess[str]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the ServiceMonitor/PrometheusRule schema checks need it")
    if not CRD_MODULES.is_dir():
        pytest.skip(f"{CRD_MODULES.relative_to(REPO)} is missing (npm ci --prefix tests/deploy/crd)")
    return subprocess.run(["node", str(CRD_VALIDATOR)], input=json.dumps(objects),
                          capture_output=True, text=True, timeout=60)


def test_servicemonitor_and_prometheusrule_validate_against_the_crd_schemas(overlay: Rendered) -> None:
    result = validate_crds(list(overlay.objects))
    assert result.returncode == 0, f"{overlay.name}:\n{result.stdout}{result.stderr}"
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert f"ok monitoring.coreos.com/v1 {kind}/seqcast" in result.stdout.splitlines()


def test_the_crd_validator_rejects_bad_objects_and_unknown_kinds(overlay: Rendered) -> None:
    monitor = copy.deepcopy(overlay.get("ServiceMonitor", "seqcast"))
    monitor["spec"]["endpoints"][0]["port"] = 9464
    result = validate_crds([monitor])
    assert result.returncode == 1 and "port must be string" in result.stdout
    unknown = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "x"}, "spec": {}}
    assert validate_crds([unknown]).returncode == 1


# -- Cross-references --------------------------------------------------------------------------

def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_both_services_select_the_pods_and_target_named_container_ports(overlay: Rendered) -> None:
    labels = overlay.deployment["spec"]["template"]["metadata"]["labels"]
    for name in ("seqcast", "seqcast-headless"):
        service = overlay.get("Service", name)
        assert selects(service["spec"]["selector"], labels), f"Service {name} selects no seqcast pod"
        for port in service["spec"]["ports"]:
            assert port["port"] == overlay.container_port(port["targetPort"]), f"Service {name} port {port['name']}"
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["appProtocol"] == "grpc"
    assert overlay.get("Service", "seqcast-headless")["spec"]["clusterIP"] == "None"
    assert selects(overlay.deployment["spec"]["selector"]["matchLabels"], labels)


def test_pdb_and_hpa_target_the_deployment(overlay: Rendered) -> None:
    labels = overlay.deployment["spec"]["template"]["metadata"]["labels"]
    pdb = overlay.get("PodDisruptionBudget", "seqcast")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = overlay.get("HorizontalPodAutoscaler", "seqcast")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "seqcast"}
    # The autoscaler owns the replica count; two or more keep serving while the PDB evicts one.
    assert "replicas" not in overlay.deployment["spec"]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_probes_and_ports_match_the_settings(overlay: Rendered) -> None:
    config = overlay.config
    assert config["host"] == config["metrics_host"] == "0.0.0.0"
    assert overlay.container_port("grpc") == config["port"]
    assert overlay.container_port("metrics") == config["metrics_port"]
    assert overlay.container_port("health") == config["health_port"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # Native gRPC probes, on the plaintext health listener (they cannot speak TLS).
        assert overlay.container[probe]["grpc"]["port"] == config["health_port"], probe
    # Ready while a model serves; alive while the process answers, models or not.
    assert "service" not in overlay.container["readinessProbe"]["grpc"]
    assert overlay.container["livenessProbe"]["grpc"]["service"] == "seqcast.v1.Models"


def test_servicemonitor_scrapes_the_metrics_port_of_service_seqcast_only(overlay: Rendered) -> None:
    monitor = overlay.get("ServiceMonitor", "seqcast")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    # Services the monitor yields targets for: selected, with a port of the endpoint's name. Their
    # names are the job label, and the alerts select job="seqcast".
    scraped = [s for s in overlay.all("Service")
               if selects(selector, s["metadata"].get("labels", {}))
               and any(p["name"] == endpoint["port"] for p in s["spec"]["ports"])]
    assert [s["metadata"]["name"] for s in scraped] == ["seqcast"]
    port = next(p for p in scraped[0]["spec"]["ports"] if p["name"] == endpoint["port"])
    assert port["targetPort"] == "metrics" and endpoint["path"] == "/metrics"


def adapter_series(metric: str) -> str:
    """The server metric behind custom metric `metric` of the prometheus-adapter rules."""
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    for rule in rules:
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"]).group(0)
        exposed = re.sub(rule["name"]["matches"], rule["name"].get("as", r"\g<0>"), series)
        if exposed == metric:
            overrides = rule["resources"]["overrides"]
            assert overrides["namespace"]["resource"] == "namespace" and overrides["pod"]["resource"] == "pod"
            assert {"<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"} <= set(re.findall(r"<<\.\w+>>", rule["metricsQuery"]))
            return series
    raise AssertionError(f"no rule in {ADAPTER_RULES.relative_to(REPO)} exposes {metric!r}")


def test_the_hpa_metric_comes_through_the_adapter_rule_from_a_server_metric(overlay: Rendered) -> None:
    hpa = overlay.get("HorizontalPodAutoscaler", "seqcast")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    series = adapter_series(metric["pods"]["metric"]["name"])
    assert series in series_names()


def test_the_metrics_endpoint_exports_the_autoscaler_series() -> None:
    from seqcast.server.metrics import start_metrics_server

    series = adapter_series("seqcast_queue_requests")
    exporter = start_metrics_server("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10) as response:
            body = response.read().decode()
    finally:
        exporter.stop()
    assert f"# TYPE {series} gauge" in body


# -- Settings ----------------------------------------------------------------------------------

def cpu_cores(quantity: str) -> Decimal:
    return Decimal(quantity[:-1]) / 1000 if quantity.endswith("m") else Decimal(quantity)


def container_env(rendered: Rendered) -> dict[str, str]:
    """The container's env as the kubelet resolves it (literal values and resourceFieldRefs)."""
    env = {}
    for name, entry in rendered.env().items():
        if "value" in entry:
            env[name] = str(entry["value"])
            continue
        ref = entry["valueFrom"].get("resourceFieldRef")
        assert ref is not None, f"{name}: only literal values and resourceFieldRefs are resolved here"
        kind, resource = ref["resource"].split(".")
        value = cpu_cores(str(rendered.container["resources"][kind][resource])) / cpu_cores(str(ref.get("divisor", "1")))
        env[name] = str(math.ceil(value))  # the kubelet rounds up to the divisor
    return env


def image_env(dockerfile: Path) -> dict[str, str]:
    """ENV of the Dockerfile's final stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    final = re.split(r"^FROM\s", text, flags=re.M)[-1]
    env = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            env |= dict(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


def load_settings(config_text: str, env: dict[str, str], tmp_path: Path, monkeypatch):
    """ServerSettings as `seqcast serve` builds them in the pod: the TOML file at SEQCAST_CONFIG
    below SEQCAST_* variables. model_dir is replaced (the image's is not here)."""
    from seqcast.server.settings import ServerSettings

    config = tmp_path / "seqcast.toml"
    config.write_text(config_text)
    with monkeypatch.context() as m:
        for name in [n for n in os.environ if n.startswith("SEQCAST_")]:
            m.delenv(name)
        for name, value in env.items():
            if name.startswith("SEQCAST_"):
                m.setenv(name, value)
        m.setenv("SEQCAST_CONFIG", str(config))
        return ServerSettings(model_dir=tmp_path)


def test_the_configmap_loads_into_the_server_settings(overlay: Rendered, tmp_path: Path, monkeypatch) -> None:
    settings = load_settings(overlay.config_text, {}, tmp_path, monkeypatch)
    for key, value in overlay.config.items():
        if key != "model_dir":
            assert getattr(settings, key) == value, key


def test_the_pod_runs_with_what_the_configmap_says(overlay: Rendered, tmp_path: Path, monkeypatch) -> None:
    """SEQCAST_* variables win over the file: those of the container and those baked into the
    image must agree with every setting the file makes, or editing the file would change nothing."""
    dockerfile = DOCKERFILES[overlay_name(overlay)]
    baked = image_env(dockerfile) if dockerfile.exists() else {}
    env = baked | container_env(overlay)
    config = overlay.config
    from_file = load_settings(overlay.config_text, {}, tmp_path, monkeypatch)
    in_pod = load_settings(overlay.config_text, env, tmp_path, monkeypatch)
    overridden = []
    for key in config:
        if key != "model_dir" and getattr(from_file, key) != getattr(in_pod, key):
            variable = f"SEQCAST_{key.upper()}"
            source = "the Deployment" if variable in container_env(overlay) else f"ENV in {dockerfile.relative_to(REPO)}"
            overridden.append(f"{key} = {getattr(from_file, key)!r} in the ConfigMap, but {variable}={env[variable]} from {source}")
    assert not overridden, "\n".join(overridden)
    if "SEQCAST_MODEL_DIR" in env:
        assert Path(env["SEQCAST_MODEL_DIR"]) == Path(config["model_dir"])


def test_onnx_runtime_threads_follow_the_cpu_request(overlay: Rendered, tmp_path: Path, monkeypatch) -> None:
    requests = overlay.container["resources"]["requests"]
    cores = cpu_cores(str(requests["cpu"]))
    assert cores == int(cores), "whole cores, so the thread count is the request itself"
    settings = load_settings(overlay.config_text, container_env(overlay), tmp_path, monkeypatch)
    assert settings.intra_op_threads == cores


def test_service_links_are_off_because_they_would_set_the_port(overlay: Rendered, tmp_path: Path, monkeypatch) -> None:
    assert overlay.pod["enableServiceLinks"] is False
    from pydantic import ValidationError

    # What the kubelet injects for a Service named seqcast when service links are on.
    links = {"SEQCAST_PORT": "tcp://10.96.0.10:50051", "SEQCAST_SERVICE_HOST": "10.96.0.10"}
    with pytest.raises(ValidationError, match="port"):
        load_settings(overlay.config_text, links, tmp_path, monkeypatch)


# -- Drain, security, per-overlay resources ------------------------------------------------------

def test_the_grace_period_covers_prestop_sleep_and_drain(overlay: Rendered) -> None:
    sleep = overlay.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = overlay.config["drain_seconds"]
    grace = overlay.pod["terminationGracePeriodSeconds"]
    assert sleep >= 5, "endpoints need a few seconds to drop a terminating pod"
    assert grace >= sleep + drain + EXIT_MARGIN_SECONDS, (
        f"terminationGracePeriodSeconds {grace} < preStop sleep {sleep} + drain_seconds {drain} + {EXIT_MARGIN_SECONDS}")


def test_the_pod_runs_unprivileged_on_a_read_only_root(overlay: Rendered) -> None:
    pod, container = overlay.pod["securityContext"], overlay.container["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == pod["runAsGroup"] == 10001
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["readOnlyRootFilesystem"] is True and container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in overlay.container["volumeMounts"]}
    volumes = {v["name"]: v for v in overlay.pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_each_overlay_sets_its_image(render, overlay: Rendered) -> None:
    assert render("base").container["image"] == "seqcast"
    assert overlay.container["image"] == IMAGES[overlay_name(overlay)]


def test_the_gpu_overlay_takes_a_gpu_and_runs_on_cuda(render, tmp_path: Path, monkeypatch) -> None:
    gpu = render("overlays/gpu")
    resources = gpu.container["resources"]
    assert str(resources["limits"]["nvidia.com/gpu"]) == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu.pod["tolerations"]
    assert load_settings(gpu.config_text, container_env(gpu), tmp_path, monkeypatch).device == "cuda"


def test_the_cpu_overlay_takes_no_gpu_and_runs_on_cpu(render, tmp_path: Path, monkeypatch) -> None:
    cpu = render("overlays/cpu")
    resources = cpu.container["resources"]
    assert not any("nvidia.com" in key for part in resources.values() for key in part)
    assert not cpu.pod.get("tolerations")
    assert load_settings(cpu.config_text, container_env(cpu), tmp_path, monkeypatch).device == "cpu"
