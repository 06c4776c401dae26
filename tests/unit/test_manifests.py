"""manifests/ (every kustomization builds with `kubectl kustomize`), the Dockerfile, `make image` and the CI
retrain workflow agree with the library: the versioned project image, `ikd distill` under torchrun, no pip at run
time, GPUs where they belong, the `ikd-pipeline` commands that exist."""

import re
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT

import ikd
from ikd.integrations.kubeflow import IMAGE, IMAGE_REPOSITORY

KUSTOMIZATIONS = sorted(p.parent for p in (ROOT / "manifests").rglob("kustomization.yaml"))


def build(folder):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def trainjob(docs):
    [job] = [d for d in docs if d["kind"] == "TrainJob"]
    return job


def test_there_are_overlays_to_build():
    names = {str(p.relative_to(ROOT / "manifests")) for p in KUSTOMIZATIONS}
    assert {"base", "trainjob", "overlays/trainjob-gpu", "overlays/trainjob-cpu"} <= names


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT / "manifests")))
def test_every_kustomization_builds(folder):
    docs = build(folder)
    assert docs and all("kind" in d and d["metadata"]["name"] for d in docs)
    assert "pip install" not in yaml.safe_dump_all(docs)


def test_trainjob_runs_ikd_distill_under_torchrun_on_the_project_image():
    job = trainjob(build(ROOT / "manifests" / "trainjob"))
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    t = job["spec"]["trainer"]
    assert t["image"] == IMAGE
    assert t["command"][:4] == ["torchrun", "--no-python", "ikd", "distill"]
    args = dict(zip(t["command"][4::2], t["command"][5::2], strict=True))
    assert set(args) == {"--params", "--data", "--teacher", "--out"}
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    spec = pod["template"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/workspace", "/etc/ikd", "/dev/shm"} <= mounts and spec["securityContext"]["runAsNonRoot"] is True
    assert args["--params"].startswith("/etc/ikd/") and args["--out"].startswith("/workspace/")


def test_gpu_and_cpu_overlays():
    gpu = trainjob(build(ROOT / "manifests" / "overlays" / "trainjob-gpu"))
    assert gpu["spec"]["trainer"]["numNodes"] == 4
    assert gpu["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    spec = gpu["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"
    ]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    cpu = trainjob(build(ROOT / "manifests" / "overlays" / "trainjob-cpu"))
    assert "nvidia.com/gpu" not in yaml.safe_dump(cpu)


def test_make_image_tags_the_kubeflow_image_with_the_package_version():
    out = subprocess.run(["make", "-n", "image", "ENGINE=docker"], cwd=ROOT, capture_output=True, text=True)
    assert f"--target train -t {IMAGE} ." in out.stdout
    assert f"--target serve -t {IMAGE_REPOSITORY}-serve:{ikd.__version__} ." in out.stdout


def test_retrain_workflow_submits_on_config_and_data_changes():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "retrain.yml").read_text())
    on = wf[True]  # YAML 1.1 reads the key `on` as True
    assert {"params.yaml", "configs/**", "data/**.dvc", "dvc.lock"} <= set(on["push"]["paths"])
    job = wf["jobs"]["submit"]
    assert {"KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE"} <= set(job["env"])
    assert all("secrets." in job["env"][k] for k in ("KFP_HOST", "KFP_TOKEN", "KFP_NAMESPACE"))
    script = "\n".join(s.get("run", "") for s in job["steps"])
    assert "ikd-pipeline compile" in script and "ikd-pipeline submit" in script
    assert "torch==2.13.0" in script and "--index-url https://download.pytorch.org/whl/cpu" in script
    # every flag the workflow passes exists in the CLI (`set -- ...` lines feed both commands)
    from ikd.pipelines.cli import build_parser

    actions = build_parser()._subparsers._group_actions[0].choices
    shared = set(re.findall(r"--[a-z-]+", " ".join(re.findall(r"set -- [^\n]*", script))))
    for action in ("compile", "submit"):
        [line] = re.findall(rf"ikd-pipeline {action} [^\n]*", script)
        known = {o for a in actions[action]._actions for o in a.option_strings}
        assert (set(re.findall(r"--[a-z-]+", line)) | shared) <= known, action


def _server(docs):
    [dep] = [d for d in docs if d["kind"] == "Deployment"]
    return dep, dep["spec"]["template"]["spec"]


def _serve_args(container):
    from ikd.cli import build_parser

    return build_parser().parse_args(container["args"])  # the CLI accepts the container's command line


SERVING = ["serving", "overlays/serving-dev", "overlays/serving-prod", "overlays/serving-gpu"]


@pytest.mark.parametrize("overlay", SERVING)
def test_serving_runs_ikd_serve_safely_with_probes_on_the_v2_health_endpoints(overlay):
    from ikd.integrations.kubeflow import SERVE_IMAGE

    docs = build(ROOT / "manifests" / overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodMonitor"} <= kinds
    dep, spec = _server(docs)
    [c] = spec["containers"]
    args = _serve_args(c)
    assert args.command == "serve" and args.host == "0.0.0.0" and args.model_dir == "/models/student"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert spec["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == args.model_dir]
    assert mount["readOnly"] is True
    [monitor] = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    gpu = overlay.endswith("gpu")
    assert c["image"] == (SERVE_IMAGE.replace("ikd-serve:", "ikd-serve-gpu:") if gpu else SERVE_IMAGE)
    assert ("nvidia.com/gpu" in c["resources"]["limits"]) == gpu
    assert (args.providers == "CUDAExecutionProvider,CPUExecutionProvider") == gpu
    assert args.model_file == ("model.onnx" if gpu else None)  # dynamic int8 would run on CPU under CUDA
    if overlay.endswith("prod"):
        assert (args.instances, args.threads) == (2, 2) and c["resources"]["limits"]["cpu"] == "4"
        assert "PodDisruptionBudget" in kinds
    else:  # the sessions' threads in all match the CPU limit
        cpu = c["resources"]["limits"].get("cpu")
        assert cpu is None or args.instances * args.threads == int(cpu), (args.instances, args.threads, cpu)
    if overlay.endswith("dev"):
        assert dep["spec"]["replicas"] == 1


def test_kserve_variants_serve_the_exported_model():
    from ikd.integrations.kubeflow import SERVE_IMAGE

    [custom] = [d for d in build(ROOT / "manifests" / "kserve" / "custom") if d["kind"] == "InferenceService"]
    [c] = custom["spec"]["predictor"]["containers"]
    args = _serve_args(c)
    assert c["name"] == "kserve-container" and c["image"] == SERVE_IMAGE and args.model_dir == "/mnt/models"
    assert args.port == c["ports"][0]["containerPort"] == 8080
    [triton] = build(ROOT / "manifests" / "kserve" / "triton")
    model = triton["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "onnx" and model["protocolVersion"] == "v2"
    assert model["storageUri"].endswith("/triton")


# ---- Pod Security "restricted" (plus a read-only root filesystem and sized containers) on every pod -------------
NO_PODS = {
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Service",
    "NetworkPolicy",
    "HorizontalPodAutoscaler",
    "PodMonitor",
    "PrometheusRule",
    "PodDisruptionBudget",
    "PersistentVolumeClaim",
    "ConfigMap",
}


def pods(doc):
    """Every pod a rendered document makes: (pod-level spec, [(container, its resources)])."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        pod = spec["template"]["spec"]
    elif kind == "CronJob":
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        pod = spec
    elif kind == "TrainJob":  # Trainer gives the node container the trainer's resourcesPerNode
        [node] = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        pod = node["template"]["spec"]["template"]["spec"]
        [c] = pod["containers"]
        return [(pod, [(c, spec["trainer"].get("resourcesPerNode", {}))])]
    elif kind == "InferenceService":  # the predictor is a pod spec; `model` is its one container (KServe runtime)
        pod = spec["predictor"]
        containers = pod.get("containers") or [pod["model"]]
        return [(pod, [(c, c.get("resources", {})) for c in containers])]
    else:
        assert kind in NO_PODS, f"{kind}: unknown kind; teach pods() where its pod template is"
        return []
    return [(pod, [(c, c.get("resources", {})) for c in pod.get("initContainers", []) + pod["containers"]])]


def restricted_problems(pod, containers):
    """What keeps one pod from Pod Security "restricted" + read-only root + requests and limits (empty: nothing)."""
    problems = []
    psc = pod.get("securityContext", {})
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("shares a host namespace")
    problems += [f"hostPath volume {v['name']}" for v in pod.get("volumes", []) if "hostPath" in v]
    for c, resources in containers:
        sc = c.get("securityContext", {})
        eff = {k: sc.get(k, psc.get(k)) for k in ("runAsNonRoot", "runAsUser", "seccompProfile")}  # container wins
        name = c.get("name", "model")
        if eff["runAsNonRoot"] is not True or eff["runAsUser"] == 0:
            problems.append(f"{name}: runAsNonRoot")
        if (eff["seccompProfile"] or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
            problems.append(f"{name}: allowPrivilegeEscalation false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
            problems.append(f"{name}: capabilities drop ALL")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem")
        for bound in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(bound, {}))
            if missing:
                problems.append(f"{name}: {bound} for {', '.join(sorted(missing))}")
    return problems


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT / "manifests")))
def test_every_pod_meets_pod_security_restricted_with_a_read_only_root_and_sized_containers(folder):
    found = [(d["kind"], d["metadata"]["name"], pod, cs) for d in build(folder) for pod, cs in pods(d)]
    assert found or folder.name in ("base", "monitoring"), "no pod template found: the check would pass vacuously"
    for kind, name, pod, containers in found:
        assert containers and restricted_problems(pod, containers) == [], f"{kind}/{name}"
        mounts = {m["mountPath"] for c, _ in containers for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{kind}/{name}: read-only root, so /tmp must be a volume"


def test_the_restricted_check_catches_each_missing_field():
    [(pod, containers)] = pods(trainjob(build(ROOT / "manifests" / "trainjob")))
    assert restricted_problems(pod, containers) == []
    [(c, resources)] = containers
    for where, key in [
        (pod["securityContext"], "runAsNonRoot"),
        (pod["securityContext"], "seccompProfile"),
        (c["securityContext"], "allowPrivilegeEscalation"),
        (c["securityContext"], "capabilities"),
        (c["securityContext"], "readOnlyRootFilesystem"),
        (resources["limits"], "memory"),
        (resources["requests"], "cpu"),
    ]:
        value = where.pop(key)
        assert restricted_problems(pod, containers), f"deleting {key} went unnoticed"
        where[key] = value
    pod["securityContext"]["runAsUser"] = 0
    assert restricted_problems(pod, containers) == ["node: runAsNonRoot"]


@pytest.mark.parametrize("overlay", SERVING)
def test_a_network_policy_lets_only_the_serving_ports_in_and_nothing_out_of_the_server(overlay):
    docs = build(ROOT / "manifests" / overlay)
    dep, spec = _server(docs)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    [c] = spec["containers"]
    ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
    policies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(policies) == 1, "exactly one NetworkPolicy selects the server pods"
    np = policies[0]["spec"]
    assert set(np["policyTypes"]) == {"Ingress", "Egress"} and np["egress"] == []  # no egress at all, DNS included
    allowed = [(p["port"], p.get("protocol", "TCP")) for rule in np["ingress"] for p in rule["ports"]]
    assert allowed == [("http", "TCP"), ("grpc", "TCP")]
    assert ports["http"] == _serve_args(c).port and ports["grpc"] == _serve_args(c).grpc_port == 8081
    [service] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "ikd-serve"]
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http", "grpc": "grpc"}


def test_the_kserve_predictor_takes_traffic_only_on_its_http_port():
    docs = build(ROOT / "manifests" / "kserve" / "custom")
    [isvc] = [d for d in docs if d["kind"] == "InferenceService"]
    [np] = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert np["spec"]["podSelector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    [port] = [p for rule in np["spec"]["ingress"] for p in rule["ports"]]
    assert port["port"] == isvc["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"]
