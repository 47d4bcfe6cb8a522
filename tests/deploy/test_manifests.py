"""The deployment files under deploy/: structure, consistency with each other and with the Dockerfile."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"

# The server's metric names (docs/metrics.md); histograms also expose _bucket, _sum and _count series.
METRICS = {
    "ensemble_requests_total",
    "ensemble_request_duration_seconds",
    "ensemble_queue_duration_seconds",
    "ensemble_compute_duration_seconds",
    "ensemble_batch_size",
    "ensemble_queue_depth",
    "ensemble_in_flight_requests",
    "ensemble_model_info",
    "ensemble_model_load_failures_total",
    "ensemble_inferred_rows_total",
}
HISTOGRAMS = {
    "ensemble_request_duration_seconds",
    "ensemble_queue_duration_seconds",
    "ensemble_compute_duration_seconds",
    "ensemble_batch_size",
}
METRIC_RE = re.compile(r"\bensemble_[a-z_]+\b")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s_objects() -> dict[str, dict[str, Any]]:
    """The base kustomization's resources, by kind."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in _documents(K8S / name):
            assert doc["kind"] not in objects, f"two {doc['kind']} objects"
            objects[doc["kind"]] = doc
    return objects


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def _dockerfile_exposed_ports() -> set[int]:
    text = (ROOT / "Dockerfile").read_text()
    return {int(port) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for port in line.split()}


def _metric_names(expr: str) -> set[str]:
    names = set()
    for token in METRIC_RE.findall(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", token)
        names.add(base if base in HISTOGRAMS else token)
    return names


def test_every_yaml_file_parses_with_apiversion_and_kind() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 10
    for path in files:
        for doc in _documents(path):
            assert isinstance(doc, dict), path
            if path.parent.name != "prometheus":
                assert "apiVersion" in doc and "kind" in doc, path


def test_kustomization_lists_the_expected_kinds() -> None:
    objects = _k8s_objects()
    assert set(objects) == {
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    assert objects["Deployment"]["apiVersion"] == "apps/v1"
    assert objects["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert objects["PodDisruptionBudget"]["apiVersion"] == "policy/v1"


def test_probes_use_the_v2_health_paths_on_the_served_port() -> None:
    container = _container(_k8s_objects()["Deployment"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # Readiness over gRPC (grpc.health.v1, the same readiness as /v2/health/ready) or HTTP.
    readiness = container["readinessProbe"]
    assert readiness.get("httpGet", {}).get("path", "/v2/health/ready") == "/v2/health/ready"
    assert container["startupProbe"]["httpGet"]["path"].startswith("/v2/health/")
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        action = container[probe].get("httpGet") or container[probe]["grpc"]
        assert action["port"] in port_names | {p["containerPort"] for p in container["ports"]}
    if "grpc" in readiness:
        assert readiness["grpc"]["port"] == int(_env(container)["ENSEMBLE_GRPC_PORT"])


def test_grace_period_outlasts_prestop_and_drain() -> None:
    deployment = _k8s_objects()["Deployment"]
    container = _container(deployment)
    env = _env(container)
    # uvicorn's graceful shutdown waits up to the request timeout + 1 s (server default 30 s) as well.
    drain = max(float(env["ENSEMBLE_DRAIN_TIMEOUT_S"]), float(env.get("ENSEMBLE_REQUEST_TIMEOUT_S", 30)) + 1)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    prestop = float(command[-1]) if command[0] == "sleep" else 0.0
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > prestop + drain


def test_pod_runs_non_root_with_a_read_only_root_filesystem() -> None:
    pod = _k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The read-only root needs a writable /tmp, and the models are mounted read-only.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts and mounts["/models"]["readOnly"] is True
    assert _env(container)["ENSEMBLE_MODEL_REPOSITORY"] == "/models"


def test_ports_agree_between_dockerfile_deployment_service_and_scrape_annotation() -> None:
    objects = _k8s_objects()
    deployment, service = objects["Deployment"], objects["Service"]
    container = _container(deployment)
    ports = {p["name"]: p for p in container["ports"]}
    assert {p["containerPort"] for p in ports.values()} == _dockerfile_exposed_ports()
    port = ports["http"]
    assert int(_env(container)["ENSEMBLE_PORT"]) == port["containerPort"]
    assert int(_env(container)["ENSEMBLE_GRPC_PORT"]) == ports["grpc"]["containerPort"]
    targets = {p["targetPort"] for p in service["spec"]["ports"]}
    assert targets == {"http", "grpc"} or targets == {p["containerPort"] for p in ports.values()}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_selectors_match_the_pod_labels() -> None:
    objects = _k8s_objects()
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def matches(selector: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert matches(deployment["spec"]["selector"]["matchLabels"])
    assert matches(objects["Service"]["spec"]["selector"])
    assert matches(objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"])
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert objects["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # The HPA's utilisation target is a fraction of the CPU request, so the request must be set.
    assert "cpu" in _container(deployment)["resources"]["requests"]
    claim = deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]


def test_gpu_overlay_asks_for_one_gpu_and_the_cuda_device() -> None:
    kustomization = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../"]
    (patch,) = kustomization["patches"]
    container = _container(yaml.safe_load((K8S / "gpu" / patch["path"]).read_text()))
    assert container["name"] == _container(_k8s_objects()["Deployment"])["name"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _env(container)["ENSEMBLE_DEVICE"] in {"cuda", "tensorrt"}


def test_kserve_runtime_speaks_v2_on_the_image_port() -> None:
    (runtime,) = _documents(DEPLOY / "kserve" / "servingruntime.yaml")
    (service,) = _documents(DEPLOY / "kserve" / "inferenceservice.yaml")
    assert runtime["kind"] == "ServingRuntime" and "v2" in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert {p["containerPort"] for p in container["ports"]} == _dockerfile_exposed_ports()
    assert _env(container)["ENSEMBLE_MODEL_REPOSITORY"] == "/mnt/models"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    model = service["spec"]["predictor"]["model"]
    assert service["kind"] == "InferenceService" and service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}


def test_alert_expressions_use_only_server_metrics() -> None:
    rules = [
        rule
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    used: set[str] = set()
    for rule in rules:
        names = _metric_names(rule["expr"])
        assert names <= METRICS, f"{rule['alert']} uses unknown metrics {names - METRICS}"
        used |= names
    assert {"ensemble_requests_total", "ensemble_request_duration_seconds", "ensemble_model_info"} <= used
    assert "ensemble_model_load_failures_total" in used


def test_grafana_dashboard_panels_query_server_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    panels = dashboard["panels"]
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names, f"panel {panel['title']!r} queries no ensemble metric"
            assert names <= METRICS, f"panel {panel['title']!r} uses unknown metrics {names - METRICS}"
            used |= names
    # Request rate by outcome, latency quantiles, batch size, queue depth and the provider in use.
    assert {
        "ensemble_requests_total",
        "ensemble_request_duration_seconds",
        "ensemble_batch_size",
        "ensemble_queue_depth",
        "ensemble_model_info",
    } <= used
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert "by (outcome)" in exprs and "histogram_quantile(0.99" in exprs and "provider" in exprs
    assert len({p["id"] for p in panels}) == len(panels)


def _promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (apt-get install prometheus, see .ci/apt-packages.txt)")
    return binary


def test_promtool_checks_the_scrape_config(tmp_path: Path) -> None:
    promtool = _promtool()
    proc = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS / "prometheus.yml")], capture_output=True, text=True
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 and "field kubernetes_sd_configs not found" in output:
        # Debian builds promtool without Kubernetes discovery; validate everything else (relabel regexes,
        # rule files) by swapping that discovery block for a static target.
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
        shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        proc = subprocess.run(
            [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
        )
        output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output


def test_promtool_checks_and_unit_tests_the_alerts() -> None:
    promtool = _promtool()
    check = subprocess.run(
        [promtool, "check", "rules", str(PROMETHEUS / "alerts.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", str(PROMETHEUS / "alerts_test.yml")], capture_output=True, text=True
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_workers_follow_the_containers_cpu_limit() -> None:
    # auto = the CPUs the process may use, which inside the container is the cgroup quota the limit sets.
    container = _container(_k8s_objects()["Deployment"])
    assert _env(container)["ENSEMBLE_WORKERS"] == "auto"
    assert float(container["resources"]["limits"]["cpu"]) >= 1
    dockerfile = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^ENV .*\bENSEMBLE_WORKERS=auto\b", final_stage, re.M)
