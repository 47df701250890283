"""`fusionrt triton deploy`: every generated file validated without a cluster (the built-in kinds
against the Kubernetes OpenAPI schemas of kubernetes-validate, the custom resources against
tests/triton/schemas/), cross-references between the files, bad flags, the bench-derived target,
and the golden triton_deploy/."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs fusionrt[test] (kubernetes-validate)")
jsonschema = pytest.importorskip("jsonschema")

from fusionrt import InputError  # noqa: E402
from fusionrt.bench.served import capacity_at_p99  # noqa: E402
from fusionrt.triton.cli import add_triton_commands  # noqa: E402
from fusionrt.utils import OUTPUT_MARKER  # noqa: E402
from fusionrt.triton.advisories import ADVISORIES, newest_fix, release_key, unfixed  # noqa: E402
from fusionrt.triton.deploy import (  # noqa: E402
    DEFAULT_IMAGE, NGC_IMAGE, NGC_RELEASE, QUEUE_METRIC, DeployOptions, write_deployment,
)

ROOT = Path(__file__).parents[2]
TRITON_REPO = ROOT / "triton_repo"
GOLDEN = ROOT / "triton_deploy"
SCHEMAS = Path(__file__).parent / "schemas"
# The oldest and the newest Kubernetes whose schemas kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
BUILT_IN = {("apps/v1", "Deployment"), ("v1", "Service"), ("autoscaling/v2", "HorizontalPodAutoscaler"), ("v1", "Namespace"),
            ("networking.k8s.io/v1", "NetworkPolicy"), ("policy/v1", "PodDisruptionBudget")}
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.keda.sh-v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.serving.kserve.io-v1beta1.json",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "kustomization.kustomize.config.k8s.io-v1beta1.json",
}
REGENERATE = "fusionrt triton deploy triton_repo -o triton_deploy --overwrite"


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def validate(doc: dict, version: str = KUBERNETES_VERSIONS[0]) -> str:
    """Validate one generated document; returns what checked it. Raises on any violation."""
    if set(doc) == {"rules"}:  # prometheus-adapter Helm values
        jsonschema.validate(doc, schema("prometheus-adapter-rules.json"))
        return "prometheus-adapter-rules.json"
    key = (doc["apiVersion"], doc["kind"])
    if key in BUILT_IN:
        return "kubernetes " + kubernetes_validate.validate(doc, version, strict=True)
    jsonschema.validate(doc, schema(CUSTOM[key]))
    if key[1] == "InferenceService":  # its container and pod fields are core types: check them as a Pod's
        predictor = doc["spec"]["predictor"]
        model = predictor["model"]
        container = {"name": "kserve-container"} | {k: model[k] for k in (
            "image", "imagePullPolicy", "args", "env", "resources", "readinessProbe", "livenessProbe", "startupProbe",
            "securityContext", "volumeMounts")}
        spec = {k: predictor[k] for k in ("automountServiceAccountToken", "securityContext", "volumes")}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec | {"containers": [container]}}
        kubernetes_validate.validate(pod, version, strict=True)
    return CUSTOM[key]


def load(folder: Path) -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))}


@pytest.fixture(scope="module")
def cpu_repo(tiny_bundle, tmp_path_factory):
    """A CPU-only, python-backend repository from the generator (every instance_group KIND_CPU)."""
    from fusionrt.triton import RepositoryOptions, build_repository

    return build_repository(tiny_bundle, tmp_path_factory.mktemp("deploy") / "repo", RepositoryOptions(backend="python", device="cpu", max_batch_size=8))


def bench_result(tmp_path: Path) -> tuple[Path, dict]:
    """A served-bench results.json as run_served_benchmark writes it, with its capacity."""
    def level(n, rate, p99, queue_ms):
        return ({"contender": f"served (concurrency {n})", "p99_ms": p99, "throughput_per_s": rate},
                {"concurrency": n, "server": {"fusionrt": {"queue_ms_per_request": 99.0},  # the ensemble: not summed
                                              "preprocess": {"queue_ms_per_request": queue_ms / 2},
                                              "image_encoder": {"queue_ms_per_request": queue_ms / 2}}})

    pairs = [level(1, 20.0, 60.0, 0.5), level(4, 61.3, 140.0, 6.25), level(8, 71.7, 175.5, 20.0), level(16, 74.0, 320.0, 90.0)]
    results, levels = [p[0] for p in pairs], [p[1] for p in pairs]
    results.append({"contender": "served (Poisson 20/s)", "p99_ms": 50.0, "throughput_per_s": 90.0})  # open loop: no capacity
    levels.append({"request_rate": 20.0, "server": {}})
    capacity = capacity_at_p99(results, levels, p99_bound_ms=200.0)
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"url": "127.0.0.1:8001", "results": results, "levels": levels, "capacity": capacity}))
    return path, capacity


def test_capacity_is_the_fastest_level_within_the_p99_bound(tmp_path):
    _, capacity = bench_result(tmp_path)
    # concurrency 16 is faster but its p99 (320 ms) is past the bound; the open-loop level does not count
    assert capacity == {"p99_bound_ms": 200.0, "items_per_s": 71.7, "concurrency": 8, "p99_ms": 175.5, "queue_us_per_request": 20000.0}
    path, _ = bench_result(tmp_path)
    data = json.loads(path.read_text())
    assert capacity_at_p99(data["results"], data["levels"], p99_bound_ms=150.0)["items_per_s"] == 61.3
    none = capacity_at_p99(data["results"], data["levels"], p99_bound_ms=10.0)
    assert none == {"p99_bound_ms": 10.0, "items_per_s": None, "concurrency": None, "p99_ms": None, "queue_us_per_request": None}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_file_validates(tmp_path, version):
    out = write_deployment(TRITON_REPO, tmp_path / "deploy", DeployOptions(model_repository_uri="s3://bucket/fusionrt/repo"))
    docs = load(out)
    checked = {name: validate(doc, version) for name, doc in docs.items()}
    assert checked == {
        "deployment.yaml": f"kubernetes {version[:4]}", "service.yaml": f"kubernetes {version[:4]}",
        "namespace.yaml": f"kubernetes {version[:4]}", "networkpolicy.yaml": f"kubernetes {version[:4]}",
        "poddisruptionbudget.yaml": f"kubernetes {version[:4]}",
        "hpa.yaml": f"kubernetes {version[:4]}", "servicemonitor.yaml": CUSTOM[("monitoring.coreos.com/v1", "ServiceMonitor")],
        "keda-scaledobject.yaml": CUSTOM[("keda.sh/v1alpha1", "ScaledObject")],
        "kustomization.yaml": CUSTOM[("kustomize.config.k8s.io/v1beta1", "Kustomization")],
        "prometheus-adapter-rules.yaml": "prometheus-adapter-rules.json",
    }
    assert sorted(p.name for p in out.iterdir()) == sorted([*docs, "Dockerfile", "README.md", "requirements.txt", OUTPUT_MARKER])


def test_kubernetes_files_fit_together(tmp_path):
    out = write_deployment(TRITON_REPO, tmp_path / "deploy", DeployOptions(
        model_repository_uri="gs://bucket/repo", replicas=2, max_replicas=6, gpus=2, cpu="1500m", memory="16Gi", image="reg.io/t:1"))
    docs = load(out)
    dep, svc, mon, hpa, keda = (docs[n] for n in ("deployment.yaml", "service.yaml", "servicemonitor.yaml", "hpa.yaml", "keda-scaledobject.yaml"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    (script,) = container["args"]
    assert container["image"] == "reg.io/t:1" and container["command"] == ["/bin/sh", "-c"] and script.startswith("exec tritonserver ")
    assert "--model-repository=gs://bucket/repo" in script.split()
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "http": (8000, "http"), "grpc": (8001, "grpc"), "metrics": (8002, "metrics")}
    assert [e["port"] for e in mon["spec"]["endpoints"]] == ["metrics"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # minutes of warm-up before liveness counts
    assert container["resources"] == {"requests": {"cpu": "1500m", "memory": "16Gi"}, "limits": {"memory": "16Gi", "nvidia.com/gpu": 2}}
    assert container["envFrom"] == [{"secretRef": {"name": "fusionrt-triton-storage", "optional": True}}]
    assert "replicas" not in dep["spec"]  # the HPA owns it
    for scaler in (hpa, keda):
        assert scaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert (keda["spec"]["minReplicaCount"], keda["spec"]["maxReplicaCount"]) == (2, 6)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == QUEUE_METRIC
    # No bench result: the target is the repository's batching budget, 6 batched models (explain
    # included: a request asking for an explanation waits in its queue too) x 2000 us.
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "12000"}
    (rule,) = docs["prometheus-adapter-rules.yaml"]["rules"]["custom"]
    assert rule["name"]["as"] == QUEUE_METRIC
    numerator, denominator = rule["metricsQuery"].split(" / ")
    assert numerator.startswith("sum(rate(nv_inference_queue_duration_us{") and 'model!="fusionrt"' in numerator
    assert denominator.startswith("clamp_min(sum(rate(nv_inference_request_success{") and 'model="fusionrt"' in denominator
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["metricType"] == "Value" and trigger["metadata"]["threshold"] == "12000"
    assert "nv_inference_queue_duration_us" in trigger["metadata"]["query"]
    kustomization = docs["kustomization.yaml"]
    assert kustomization["resources"] == ["namespace.yaml", "deployment.yaml", "networkpolicy.yaml", "poddisruptionbudget.yaml",
                                          "service.yaml", "servicemonitor.yaml", "hpa.yaml"]
    assert all((out / r).is_file() for r in kustomization["resources"])  # KEDA and the adapter rule stay out
    docker = (out / "Dockerfile").read_text().splitlines()
    assert f"FROM {NGC_IMAGE}" in docker and NGC_IMAGE == f"nvcr.io/nvidia/tritonserver:{NGC_RELEASE}-py3"
    assert " && python3 -m pip install --no-cache-dir -r /tmp/requirements.txt \\" in docker
    assert (out / "requirements.txt").read_text() == (TRITON_REPO / "requirements.txt").read_text()


def test_pvc_repository_is_mounted(tmp_path):
    dep = load(write_deployment(TRITON_REPO, tmp_path / "d", DeployOptions(model_repository_uri="pvc:models")))["deployment.yaml"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--model-repository=/models" in container["args"][0].split() and "envFrom" not in container
    assert {"name": "model-repository", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert {"name": "model-repository", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kserve_inference_service_validates(tmp_path, version):
    out = write_deployment(TRITON_REPO, tmp_path / "d", DeployOptions(kind="kserve", model_repository_uri="pvc:models", replicas=2, max_replicas=5))
    docs = load(out)
    assert list(docs) == ["inferenceservice.yaml", "networkpolicy.yaml"]
    assert validate(docs["networkpolicy.yaml"], version) == f"kubernetes {version[:4]}"
    isvc = docs["inferenceservice.yaml"]
    assert validate(isvc, version) == CUSTOM[("serving.kserve.io/v1beta1", "InferenceService")]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["storageUri"] == "pvc://models/"
    assert model["image"] == DEFAULT_IMAGE and model["runtimeVersion"] == f"{NGC_RELEASE}-py3"  # KServe retags to runtimeVersion
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1  # triton_repo is --device gpu
    # No bench result: Knative's concurrency target is the repository's largest preferred batch size.
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) == (2, 5, "concurrency", 8)
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "Dockerfile", "README.md", "inferenceservice.yaml", "networkpolicy.yaml",
                                                     "requirements.txt"]
    # The admin key: from the Secret into the flags KServe appends to its runtime's tritonserver args.
    assert model["args"][0].startswith("--http-restricted-api=shared-memory,") and model["args"][0].endswith(
        ":fusionrt-admin-key=$(FUSIONRT_ADMIN_KEY)")
    assert {"name": "FUSIONRT_ADMIN_KEY", "valueFrom": {"secretKeyRef": {"name": "fusionrt-triton-admin-key", "key": "key"}}} in model["env"]
    assert model["securityContext"]["readOnlyRootFilesystem"] and predictor["automountServiceAccountToken"] is False


def test_the_release_fixes_every_published_advisory():
    """Bumping NGC_RELEASE below an advisory's fix, or adding a bulletin whose fix is newer than it, fails here."""
    assert unfixed(NGC_RELEASE) == [] and release_key(NGC_RELEASE) >= release_key(newest_fix()) == (26, 7)
    chain = next(a for a in ADVISORIES if "CVE-2025-23319" in a.cves)  # the python backend's shared-memory chain
    assert {"CVE-2025-23310", "CVE-2025-23311", "CVE-2025-23320", "CVE-2025-23334"} <= set(chain.cves) and chain.fixed_in == "25.07"
    assert next(a for a in ADVISORIES if "CVE-2025-33201" in a.cves).fixed_in == "25.10"
    assert [a.bulletin for a in unfixed("24.12")] == [a.bulletin for a in ADVISORIES if a.fixed_in != "24.12"]
    assert [a.bulletin for a in unfixed("26.06")] == ["5875"] and unfixed("26.07") == []
    assert [a.published for a in ADVISORIES] == sorted(a.published for a in ADVISORIES)
    with pytest.raises(ValueError, match="not an NGC release"):
        release_key("2.53.0")


def test_least_privilege(tmp_path):
    out = write_deployment(TRITON_REPO, tmp_path / "d", DeployOptions(namespace="serving"))
    docs = load(out)
    assert docs["namespace.yaml"]["metadata"]["name"] == "serving"
    assert all(doc["metadata"]["namespace"] == "serving" for name, doc in docs.items()
               if name not in ("namespace.yaml", "kustomization.yaml", "prometheus-adapter-rules.yaml"))
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] | container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"},
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False, "readOnlyRootFilesystem": True}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]]["emptyDir"] and volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    # The admin key: the Secret's file, read by the shell into both restricted-API flags.
    assert volumes[mounts["/var/run/secrets/fusionrt"]]["secret"]["secretName"] == "fusionrt-triton-admin-key"
    script = container["args"][0]
    apis = "shared-memory,model-repository,model-config,logging,trace,statistics"
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        assert f'"{flag}={apis}:fusionrt-admin-key=$(cat /var/run/secrets/fusionrt/key)"' in script
    policy = docs["networkpolicy.yaml"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels(docs).items() and policy["policyTypes"] == ["Ingress"]
    inference, metrics = policy["ingress"]
    assert inference == {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 8000}, {"protocol": "TCP", "port": 8001}]}
    assert metrics == {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                       "ports": [{"protocol": "TCP", "port": 8002}]}
    budget = docs["poddisruptionbudget.yaml"]["spec"]
    assert budget["maxUnavailable"] == 1 and budget["selector"]["matchLabels"].items() <= pod_labels(docs).items()
    docker = (out / "Dockerfile").read_text().splitlines()
    assert "USER triton-server" in docker and any(line.startswith("HEALTHCHECK ") and "/v2/health/ready" in line for line in docker)
    readme = (out / "README.md").read_text()
    assert "kubectl -n serving create secret generic fusionrt-triton-admin-key" in readme
    assert "curl -X POST http://fusionrt-triton.serving:8000/v2/repository/index   # refused" in readme
    assert '-H "fusionrt-admin-key: $KEY" http://fusionrt-triton.serving:8000/v2/repository/index' in readme
    assert "| 5687 | 2025-08-04 | 25.07 | 18: CVE-2025-23268, ... |" in readme
    annotations = docs["deployment.yaml"]["metadata"]["annotations"]
    assert sorted(v.split("=")[0] for v in annotations.values()) == ["CKV_K8S_11", "CKV_K8S_40", "CKV_K8S_43"]
    pinned = load(write_deployment(TRITON_REPO, tmp_path / "p", DeployOptions(image="reg.io/t@sha256:" + "0" * 64)))
    assert "CKV_K8S_43" not in str(pinned["deployment.yaml"]["metadata"]["annotations"])  # a digest: nothing to skip


def pod_labels(docs: dict) -> dict:
    return docs["deployment.yaml"]["spec"]["template"]["metadata"]["labels"]


def test_a_misspelt_field_fails_validation(tmp_path):
    out = write_deployment(TRITON_REPO, tmp_path / "d")
    docs = load(out)
    dep = docs["deployment.yaml"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        validate(dep)
    hpa = docs["hpa.yaml"]
    hpa["spec"]["maxReplica"] = hpa["spec"].pop("maxReplicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(hpa)
    mon = docs["servicemonitor.yaml"]
    mon["spec"]["endpoints"][0]["prot"] = mon["spec"]["endpoints"][0].pop("port")
    with pytest.raises(jsonschema.ValidationError, match="'prot' was unexpected"):
        validate(mon)
    keda = docs["keda-scaledobject.yaml"]
    keda["spec"]["maxReplicas"] = keda["spec"].pop("maxReplicaCount")
    with pytest.raises(jsonschema.ValidationError, match="'maxReplicas' was unexpected"):
        validate(keda)
    isvc = load(write_deployment(TRITON_REPO, tmp_path / "k", DeployOptions(kind="kserve")))["inferenceservice.yaml"]
    model = isvc["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")
    with pytest.raises(jsonschema.ValidationError, match="'storageURI' was unexpected"):
        validate(isvc)


@pytest.mark.parametrize("fields, message", [
    ({"replicas": 0}, r"--replicas must be an integer >= 1, got 0"),
    ({"replicas": -2}, r"--replicas must be an integer >= 1, got -2"),
    ({"replicas": 3, "max_replicas": 2}, r"--max-replicas 2 is below --replicas 3"),
    ({"model_repository_uri": "http://host/repo"}, r"'http://host/repo': kind kubernetes reads s3://, gs://, as://, pvc:NAME"),
    ({"model_repository_uri": "ftp://host/repo"}, r"Triton cannot read a repository from other schemes"),
    ({"model_repository_uri": "/models"}, r"expected s3://, gs://, as://, pvc:NAME"),
    ({"model_repository_uri": "pvc:Bad_Name"}, r"'Bad_Name' is not a PersistentVolumeClaim name"),
    ({"kind": "kserve", "model_repository_uri": "as://acct/c/repo"}, r"KServe reads Azure blob storage from https URLs"),
    ({"memory": "8GB"}, r"--memory '8GB' is not a positive Kubernetes quantity"),
    ({"memory": "0Gi"}, r"--memory '0Gi' is not a positive"),
    ({"cpu": "two"}, r"--cpu 'two' is not a positive Kubernetes quantity"),
    ({"gpus": -1}, r"--gpus must be an integer >= 0, got -1"),
    ({"target_queue_us": 0}, r"--target-queue-us must be an integer >= 1"),
    ({"kind": "helm"}, r"--kind 'helm' is not one of"),
    ({"namespace": "default"}, r"--namespace 'default' must be a DNS label .* other than 'default'"),
    ({"namespace": "My_NS"}, r"--namespace 'My_NS' must be a DNS label"),
])
def test_bad_options_are_refused(fields, message):
    with pytest.raises(InputError, match=message):
        DeployOptions(**fields)


def test_gpus_must_match_the_repository(cpu_repo, tmp_path):
    with pytest.raises(InputError, match=r"--gpus 1: the repository .* is CPU-only \(every instance_group is KIND_CPU\)"):
        write_deployment(cpu_repo, tmp_path / "d", DeployOptions(gpus=1))
    with pytest.raises(InputError, match=r"--gpus 0: the repository .* has KIND_GPU instances"):
        write_deployment(TRITON_REPO, tmp_path / "d", DeployOptions(gpus=0))
    assert not (tmp_path / "d").exists()
    dep = load(write_deployment(cpu_repo, tmp_path / "d"))["deployment.yaml"]  # gpus default: 0 on a CPU repository
    pod = dep["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"] and "tolerations" not in pod
    assert validate(dep) == "kubernetes 1.33"
    assert "onnxruntime>=1.18" in (tmp_path / "d" / "requirements.txt").read_text()  # the python backend's


def test_a_repository_missing_a_model_its_ensemble_runs_is_refused(tmp_path):
    """A deployment was written for it (Triton then refuses the ensemble: "contains models that are
    not available"), with another autoscaling target (the missing model's queue delay left out)."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(TRITON_REPO, repo)
    shutil.rmtree(repo / "image_encoder")
    with pytest.raises(InputError, match=r"the fusionrt ensemble runs \['image_encoder'\] but the repository has no image_encoder/config.pbtxt"):
        write_deployment(repo, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_deployment_inside_its_repository_is_refused(tmp_path):
    """It was written into REPO/deploy, which Triton then took for a model ('Poll failed for model
    directory deploy'), and the repository no longer served."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(TRITON_REPO, repo)
    for inside in (repo / "deploy", repo, repo / "fusionrt" / "k8s"):
        with pytest.raises(InputError, match=r"is inside the model repository .*: give a folder outside it"):
            write_deployment(repo, inside)
    assert not (repo / "deploy").exists() and not (repo / "fusionrt" / "k8s").exists()


def test_cli_refuses_bad_flags_before_writing(tmp_path, capsys):
    out = tmp_path / "d"
    for argv, message in (
        (["--replicas", "-1"], "--replicas must be"),
        (["--model-repository-uri", "http://x/y"], "Triton cannot read"),
        (["--memory", "lots"], "--memory 'lots'"),
        (["--bench-result", str(tmp_path / "missing.json")], "cannot read it as JSON"),
    ):
        args = parse(["triton", "deploy", str(TRITON_REPO), "-o", str(out), *argv])
        with pytest.raises(InputError, match=message):
            args.func(args)
        assert not out.exists()
    with pytest.raises(InputError, match="not a model repository written by `fusionrt triton build`"):
        args = parse(["triton", "deploy", str(tmp_path), "-o", str(out)])
        args.func(args)


def parse(argv):
    parser = argparse.ArgumentParser(prog="fusionrt")
    add_triton_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_writes_and_prints_the_image_build(tmp_path, capsys):
    out = tmp_path / "d"
    args = parse(["triton", "deploy", str(TRITON_REPO), "-o", str(out), "--kind", "kserve", "--model-repository-uri", "s3://b/r",
                  "--image", "reg.io/fusionrt-triton:24.12-py3", "--max-replicas", "3"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"docker build -t reg.io/fusionrt-triton:24.12-py3 {out}" in printed and f"kubectl apply -f {out / 'inferenceservice.yaml'}" in printed
    isvc = load(out)["inferenceservice.yaml"]
    assert isvc["spec"]["predictor"]["maxReplicas"] == 3 and isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://b/r"
    args = parse(["triton", "deploy", str(TRITON_REPO), "-o", str(out)])
    with pytest.raises(InputError, match="--overwrite"):
        args.func(args)
    args = parse(["triton", "deploy", str(TRITON_REPO), "-o", str(out), "--overwrite"])
    assert args.func(args) == 0
    assert "placeholder registry.example.com" in capsys.readouterr().out
    assert not (out / "inferenceservice.yaml").exists() and (out / "kustomization.yaml").is_file()  # replaced whole
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"\(notes.txt\); it is not a fusionrt deployment"):
        write_deployment(TRITON_REPO, tmp_path / "other", overwrite=True)


def test_targets_come_from_the_bench_result(tmp_path):
    path, capacity = bench_result(tmp_path)
    out = write_deployment(TRITON_REPO, tmp_path / "d", DeployOptions(max_replicas=4), bench_result=path)
    hpa = load(out)["hpa.yaml"]
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "20000"  # the queue us measured at capacity
    assert load(out)["keda-scaledobject.yaml"]["spec"]["triggers"][0]["metadata"]["threshold"] == "20000"
    readme = (out / "README.md").read_text()
    assert "71.7 items/s with p99 175.5 ms (bound 200 ms) at concurrency 8" in readme
    assert (math.ceil(100 / 71.7), math.ceil(1000 / 71.7)) == (2, 14)
    assert "ceil(R / 71.7); for example R = 100/s: 2, R = 1000/s: 14." in readme
    assert "4 x 71.7 = 286.8 items/s" in readme
    explicit = write_deployment(TRITON_REPO, tmp_path / "e", DeployOptions(target_queue_us=5000), bench_result=path)
    assert load(explicit)["hpa.yaml"]["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "5000"
    isvc = load(write_deployment(TRITON_REPO, tmp_path / "k", DeployOptions(kind="kserve"), bench_result=path))["inferenceservice.yaml"]
    assert isvc["spec"]["predictor"]["scaleTarget"] == capacity["concurrency"] == 8
    (tmp_path / "old.json").write_text(json.dumps({"url": "x", "results": []}))
    with pytest.raises(InputError, match="no 'capacity' entry"):
        write_deployment(TRITON_REPO, tmp_path / "f", bench_result=tmp_path / "old.json")
    data = json.loads(path.read_text())
    data["capacity"] = capacity_at_p99(data["results"], data["levels"], p99_bound_ms=10.0)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"no concurrency level had p99 within 10.0 ms \(lowest p99 60.0 ms\)"):
        write_deployment(TRITON_REPO, tmp_path / "f", bench_result=path)
    assert not (tmp_path / "f").exists()


def test_triton_deploy_is_what_the_generator_writes(tmp_path):
    fresh = write_deployment(TRITON_REPO, tmp_path / "deploy")
    committed = sorted(p.name for p in GOLDEN.iterdir())
    assert committed == sorted(p.name for p in fresh.iterdir()), f"triton_deploy/ is out of date; regenerate it: {REGENERATE}"
    for name in committed:
        assert (GOLDEN / name).read_text() == (fresh / name).read_text(), f"triton_deploy/{name} is out of date; regenerate it: {REGENERATE}"
    for name, doc in load(GOLDEN).items():
        assert validate(doc), name


def test_deployment_from_a_real_served_bench(triton_server, tmp_path):
    """The served bench's results.json, as it is written, feeds `--bench-result`."""
    from fusionrt.bench.served import run_served_benchmark

    run_served_benchmark(triton_server.grpc_url, str(tmp_path / "bench"), concurrency=(1, 2), window_s=0.5, max_windows=3,
                         p99_bound_ms=60_000.0, admin_key=triton_server.admin_key)
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    capacity = saved["capacity"]
    fastest = max(saved["results"], key=lambda r: r["throughput_per_s"])
    assert capacity["items_per_s"] == round(fastest["throughput_per_s"], 2) > 0 and capacity["p99_bound_ms"] == 60_000.0
    level = saved["levels"][saved["results"].index(fastest)]
    queue_ms = sum(st["queue_ms_per_request"] for model, st in level["server"].items() if model != "fusionrt")
    assert capacity["concurrency"] == level["concurrency"] and capacity["queue_us_per_request"] == round(queue_ms * 1e3, 1) > 0
    out = write_deployment(TRITON_REPO, tmp_path / "d", bench_result=tmp_path / "bench" / "results.json")
    target = load(out)["hpa.yaml"]["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    assert target == str(max(1, round(capacity["queue_us_per_request"])))
    assert f"{capacity['items_per_s']:g} items/s with p99" in (out / "README.md").read_text()
