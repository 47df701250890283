"""The generated deployments pass checkov (3.3.30, its Kubernetes and Dockerfile checks) with 0 failed
checks: every skip is a `checkov.io/skipN` annotation with its reason (issue 29).

checkov runs offline (`--skip-download`: no guidelines fetched from its vendor) from its own
virtual environment, `.venv-checkov/` in the checkout (see constraints-checkov.txt), or from PATH.
It has no checks for KServe's InferenceService: its predictor is scanned as the Pod KServe makes
of it (the model's container fields, the predictor's pod fields, the same annotations).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fusionrt.triton.deploy import KSERVE_ENV_SKIP, SKIPS, STORAGE_ENV_SKIP, DeployOptions, write_deployment

yaml = pytest.importorskip("yaml")
pytestmark = pytest.mark.slow  # each scan is a checkov process of about 10 s
ROOT = Path(__file__).parents[2]
TRITON_REPO = ROOT / "triton_repo"
INSTALL = "python3 -m venv .venv-checkov && .venv-checkov/bin/pip install -c constraints-checkov.txt checkov==3.3.30"
POD_FIELDS = ("automountServiceAccountToken", "securityContext", "volumes", "tolerations", "serviceAccountName")


def checkov_binary() -> str:
    local = ROOT / ".venv-checkov" / "bin" / "checkov"
    found = str(local) if local.is_file() else shutil.which("checkov")
    if found is None:
        pytest.skip(f"checkov is not installed; in the checkout: {INSTALL}")
    return found


def scan(folder: Path) -> dict[str, dict]:
    """checkov's JSON summary and checks per framework (kubernetes, dockerfile) of ``folder``."""
    result = subprocess.run(
        [checkov_binary(), "-d", str(folder), "--framework", "kubernetes", "dockerfile", "--skip-download",
         "-o", "json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 1: some check failed
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return {r["check_type"]: r for r in reports}


def skipped(report: dict) -> dict[str, str]:
    return {c["check_id"]: c["check_result"].get("suppress_comment", "") for c in report["results"]["skipped_checks"]}


def failures(report: dict) -> list[str]:
    return [f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in report["results"]["failed_checks"]]


@pytest.mark.parametrize("uri", ["pvc:models", "s3://bucket/fusionrt/repo"])
def test_the_kubernetes_deployment_passes_checkov(tmp_path, uri):
    out = write_deployment(TRITON_REPO, tmp_path / "deploy", DeployOptions(model_repository_uri=uri))
    reports = scan(out)
    assert set(reports) == {"kubernetes", "dockerfile"}
    for kind, report in reports.items():
        assert failures(report) == [], kind
    kube = reports["kubernetes"]
    expected = SKIPS | (STORAGE_ENV_SKIP if uri.startswith("s3") else {})
    assert skipped(kube) == expected and all(expected.values())  # the reasons of the README, nothing else
    assert kube["summary"]["passed"] >= 80  # the checks ran: Deployment, Service, NetworkPolicy, ...
    assert {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_38", "CKV2_K8S_6", "CKV_K8S_21"} <= {
        c["check_id"] for c in kube["results"]["passed_checks"]}
    docker = reports["dockerfile"]
    assert skipped(docker) == {} and {"CKV_DOCKER_2", "CKV_DOCKER_3"} <= {c["check_id"] for c in docker["results"]["passed_checks"]}
    readme = (out / "README.md").read_text()
    assert all(f"| {check} | {reason} |" in readme for check, reason in expected.items())


def test_the_kserve_deployment_passes_checkov(tmp_path):
    out = write_deployment(TRITON_REPO, tmp_path / "deploy", DeployOptions(kind="kserve", model_repository_uri="pvc:models"))
    isvc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    predictor = isvc["spec"]["predictor"]
    container = {"name": "kserve-container"} | {k: v for k, v in predictor["model"].items()
                                                 if k not in ("modelFormat", "runtime", "protocolVersion", "storageUri", "runtimeVersion")}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": isvc["metadata"],
           "spec": {k: predictor[k] for k in POD_FIELDS if k in predictor} | {"containers": [container]}}
    scanned = tmp_path / "scanned"
    scanned.mkdir()
    for name in ("Dockerfile", "networkpolicy.yaml"):
        shutil.copy(out / name, scanned / name)
    assert yaml.safe_load((out / "networkpolicy.yaml").read_text())["spec"]["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}  # the label KServe gives the predictor's pods
    pod["metadata"]["labels"] = pod["metadata"]["labels"] | {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    (scanned / "pod.yaml").write_text(yaml.safe_dump(pod))
    reports = scan(scanned)
    for kind, report in reports.items():
        assert failures(report) == [], kind
    assert skipped(reports["kubernetes"]) == SKIPS | KSERVE_ENV_SKIP and reports["kubernetes"]["summary"]["passed"] >= 70
    assert "| CKV_K8S_35 | KServe's runtime starts tritonserver" in (out / "README.md").read_text()
