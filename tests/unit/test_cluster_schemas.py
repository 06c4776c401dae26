"""What a cluster would accept, checked against the upstream schemas since there is no cluster here.

Every object of every kustomization and every object the code generates is validated the way the API server
would (tests/k8s_schemas.py: the CRDs of ../shared/k8s-crds strictly, built-in kinds with kubernetes-validate
for two Kubernetes minor versions), TrainJobs also against Kubeflow Trainer's webhook rules
(tests/trainer_webhook.py), and the compiled pipeline is parsed strictly as the KFP protobufs a backend reads.
"""

import copy
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT
from k8s_schemas import CRDS, SchemaError, custom_kinds, validate, validate_custom
from trainer_webhook import validate_create

from ikd.config import Config
from ikd.integrations import trainjob
from ikd.integrations.kubeflow import IMAGE

QUICK = ROOT / "configs" / "quick.yaml"
KUSTOMIZATIONS = sorted(p.parent for p in (ROOT / "manifests").rglob("kustomization.yaml"))
MULTI = ["kubeflow.distill_nodes=2", "kubeflow.workspace_claim=ikd-workspace"]


def build(folder):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def runtimes():
    doc = yaml.safe_load((CRDS / "torch_distributed.runtime.yaml").read_text())
    return {doc["metadata"]["name"]: doc}


def node_container(job):
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    return patch["template"]["spec"]["template"]["spec"]["containers"][0]


# ---- the validators themselves catch what they are for --------------------------------------------------------
def test_the_crds_are_there_and_the_validators_refuse_unknown_and_mistyped_fields():
    assert {k for _, k in custom_kinds()} >= {"TrainJob", "InferenceService", "PodMonitor", "PrometheusRule"}
    job = trainjob.body(Config.load(QUICK, MULTI), "ikd-distill", IMAGE, "/workspace/run")
    validate(job)
    typo = copy.deepcopy(job)
    typo["spec"]["trainer"]["numNode"] = 2
    with pytest.raises(SchemaError, match=r"spec.trainer: .*'numNode' was unexpected"):
        validate_custom(typo)
    deep = copy.deepcopy(job)
    node_container(deep)["volumeMount"] = []
    with pytest.raises(SchemaError, match="'volumeMount' was unexpected"):
        validate_custom(deep)
    wrong = copy.deepcopy(job)
    wrong["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(SchemaError, match="numNodes"):
        validate_custom(wrong)
    [deployment] = [d for d in build(ROOT / "manifests" / "overlays" / "serving-prod") if d["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(SchemaError, match="'imagePullPolicyy' was unexpected"):
        validate(deployment)


# ---- every rendered kustomization -------------------------------------------------------------------------------
@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(ROOT / "manifests")))
def test_every_object_of_every_kustomization_passes_its_schema(folder):
    docs = build(folder)
    errors = []
    for doc in docs:
        try:
            validate(doc)
        except SchemaError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)
    for job in (d for d in docs if d["kind"] == "TrainJob"):
        assert validate_create(job, runtimes()) == []


# ---- Kubeflow Trainer's webhook ---------------------------------------------------------------------------------
def test_the_webhook_rules_refuse_what_trainer_denies():
    """Issue 16, point 1: the forms Trainer v2.2.1 / v2.3.0 deny, each caught by its rule."""
    job = trainjob.body(Config.load(QUICK, MULTI), "ikd-distill", IMAGE, "/workspace/run")
    assert validate_create(job, runtimes()) == []
    bare = copy.deepcopy(job)
    bare["spec"]["runtimePatches"][0]["manager"] = "ikd"
    assert any("must be a domain-prefixed path" in e for e in validate_create(bare, runtimes()))
    env = copy.deepcopy(job)
    node_container(env)["env"] = [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    assert any("must not have envs for the" in e for e in validate_create(env, runtimes()))
    reserved = copy.deepcopy(job)
    reserved["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "2"})
    assert any("reserved envs" in e for e in validate_create(reserved, runtimes()))
    stranger = copy.deepcopy(job)
    node_container(stranger)["name"] = "trainer"
    assert any("container 'trainer' that doesn't exist" in e for e in validate_create(stranger, runtimes()))
    other = copy.deepcopy(job)
    other["spec"]["runtimeRef"]["name"] = "deepspeed-distributed"
    assert validate_create(other, runtimes()) == ["unsupported runtime: ClusterTrainingRuntime/deepspeed-distributed"]


def test_the_trainjob_a_two_node_pipeline_creates_passes_the_crd_and_the_webhook(tmp_path, cli):
    """Acceptance of issue 16: compile with kubeflow.distill_nodes=2; the launcher task's own config parameter
    gives the TrainJob it would create."""
    out = tmp_path / "p.yaml"
    code, _, err = cli(
        "pipeline", "compile", "--params", QUICK, "--out", out, *[x for m in MULTI for x in ("--set", m)]
    )
    assert code == 0, err
    pipeline, _ = yaml.safe_load_all(out.read_text())
    params = pipeline["root"]["dag"]["tasks"]["distill"]["inputs"]["parameters"]
    config = pipeline["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert params["config"]["componentInputParameter"] == "config"
    cfg = Config.from_text(config, source="compiled pipeline")
    assert cfg.kubeflow.distill_nodes == 2
    job = trainjob.body(cfg, "ikd-distill-run1", params["image"]["runtimeValue"]["constant"], "/workspace/run1")
    validate(job)
    assert validate_create(job, runtimes()) == []
    assert job["spec"]["trainer"]["env"] == trainjob.NODE_ENV and "env" not in node_container(job)


# ---- the compiled pipeline, as a KFP backend parses it ----------------------------------------------------------
COMPILED = {
    "default": [],
    "two-node-distill": MULTI,
    "sharded-scoring": ["kubeflow.score_shards=3"],
    "gpu-placement": ["kubeflow.distill.accelerator_count=1", "kubeflow.distill.shm_size=2Gi"],
}


@pytest.mark.parametrize("overrides", COMPILED.values(), ids=list(COMPILED))
def test_the_compiled_pipeline_parses_strictly_as_the_kfp_protobufs(tmp_path, cli, overrides):
    """PipelineSpec (its deploymentSpec as PipelineDeploymentConfig) and PlatformSpec (each executor as
    kfp-kubernetes' KubernetesExecutorConfig), unknown fields refused: what the backend's driver unmarshals."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
    from kfp.pipeline_spec import pipeline_spec_pb2 as ps

    out = tmp_path / "p.yaml"
    sets = [x for m in overrides for x in ("--set", m)]
    code, _, err = cli("pipeline", "compile", "--params", QUICK, "--out", out, "--dvc-remote", "s3://b/ikd", *sets)
    assert code == 0, err
    pipeline, platform = yaml.safe_load_all(out.read_text())
    spec = json_format.ParseDict(pipeline, ps.PipelineSpec(), ignore_unknown_fields=False)
    deployment = json_format.ParseDict(
        json_format.MessageToDict(spec.deployment_spec), ps.PipelineDeploymentConfig(), ignore_unknown_fields=False
    )
    assert deployment.executors and all(e.container.image for e in deployment.executors.values())
    plat = json_format.ParseDict(platform, ps.PlatformSpec(), ignore_unknown_fields=False)
    executors = plat.platforms["kubernetes"].deployment_spec.executors
    assert executors
    for label, struct in executors.items():
        json_format.ParseDict(json_format.MessageToDict(struct), k8s.KubernetesExecutorConfig())
        assert label in deployment.executors, f"{label}: platform config for an executor the pipeline lacks"
    # the parse is strict: an unknown field anywhere is an error
    broken = copy.deepcopy(platform)
    label = next(iter(broken["platforms"]["kubernetes"]["deploymentSpec"]["executors"]))
    broken["platforms"]["kubernetes"]["deploymentSpec"]["executors"][label]["pvcMounts"] = []
    struct = json_format.ParseDict(broken, ps.PlatformSpec()).platforms["kubernetes"].deployment_spec.executors[label]
    with pytest.raises(json_format.ParseError, match="pvcMounts"):
        json_format.ParseDict(json_format.MessageToDict(struct), k8s.KubernetesExecutorConfig())


# ---- KServe's deployment mode -------------------------------------------------------------------------------------
def kserve_mode(annotation: str | None, version: tuple[int, int], default: str = "Serverless") -> str:
    """The mode a KServe release deploys an InferenceService in, from its annotation. <= 0.15:
    pkg/controller/v1beta1/inferenceservice/utils/utils.go GetDeploymentMode (v0.15.0) takes RawDeployment,
    Serverless and ModelMesh, anything else is the cluster default; >= 0.16: pkg/constants/constants.go
    ParseDeploymentMode (v0.16.0 .. v0.20.0) maps the legacy RawDeployment/Serverless to Standard/Knative."""
    if version <= (0, 15):
        return annotation if annotation in {"RawDeployment", "Serverless", "ModelMesh"} else default
    legacy = {"RawDeployment": "Standard", "Serverless": "Knative"}
    return legacy.get(annotation, annotation) if annotation else default


@pytest.mark.parametrize("variant", ["custom", "triton"])
def test_kserve_deploys_the_inference_services_without_knative_on_every_release(variant):
    """Issue 16, point 5: "Standard" exists only from KServe 0.16; 0.14/0.15 would deploy Serverless silently."""
    [isvc] = [d for d in build(ROOT / "manifests" / "kserve" / variant) if d["kind"] == "InferenceService"]
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    for version in [(0, 14), (0, 15), (0, 16), (0, 20)]:
        assert kserve_mode(mode, version) in {"RawDeployment", "Standard"}, (mode, version)
    assert kserve_mode("Standard", (0, 15)) == "Serverless"  # the rule catches what the issue found


# ---- volumes: every claim a pod mounts exists, fits the replicas, and something fills it --------------------------
SERVING = ["overlays/serving-dev", "overlays/serving-prod", "overlays/serving-gpu"]


def pod_templates(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield d, d["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", SERVING)
def test_the_served_model_volume_is_defined_shared_across_nodes_and_filled_by_the_load_job(overlay):
    """Issue 16, point 4: the claim ikd-model was referenced but defined nowhere and nothing put a model in it."""
    docs = build(ROOT / "manifests" / overlay)
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    [server] = [d for d in docs if d["kind"] == "Deployment"]
    spec = server["spec"]["template"]["spec"]
    for owner, pod in pod_templates(docs):
        for vol in pod.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                name = vol["persistentVolumeClaim"]["claimName"]
                assert name in claims, f"{owner['kind']}/{owner['metadata']['name']} mounts undefined claim {name}"
    [model] = [v for v in spec["volumes"] if v["name"] == "model"]
    claim = claims[model["persistentVolumeClaim"]["claimName"]]
    if server["spec"]["replicas"] > 1 or overlay.endswith("prod"):  # replicas on several nodes
        assert set(claim["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}
    [c] = spec["containers"]
    model_dir = c["args"][c["args"].index("--model-dir") + 1]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "model"]
    assert mount["readOnly"] and mount["mountPath"] == model_dir
    # the loader writes that folder: same claim, read-write, the folder the server's subPath names
    [jpod] = [p for d, p in pod_templates(docs) if d["kind"] == "Job"]
    [jvol] = [
        v for v in jpod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
    ]
    [load] = jpod["containers"]
    [jmount] = [m for m in load["volumeMounts"] if m["name"] == jvol["name"]]
    assert not jmount.get("readOnly") and not jvol["persistentVolumeClaim"].get("readOnly")
    script = "\n".join(load["args"])
    target = f"{jmount['mountPath']}/{mount['subPath']}"
    assert "dvc get-url" in script and f"mv {jmount['mountPath']}/.incoming {target}" in script
    uri = next(e for e in load["env"] if e["name"] == "MODEL_URI")["valueFrom"]["configMapKeyRef"]
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == uri["name"]]
    assert "://" in cm["data"][uri["key"]]


def test_the_load_script_replaces_the_model_only_when_the_copy_is_complete(tmp_path):
    """Run the loader Job's script here with a local folder as MODEL_URI (dvc get-url reads paths too)."""
    if shutil.which("dvc") is None and not (ROOT / ".venv" / "bin" / "dvc").exists():
        pytest.skip("dvc not installed")
    [job] = [d for d in build(ROOT / "manifests" / "serving") if d["kind"] == "Job"]
    script = "\n".join(job["spec"]["template"]["spec"]["containers"][0]["args"]).replace("/models", str(tmp_path / "m"))
    src = tmp_path / "export"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "m" / "student").mkdir(parents=True)
    (tmp_path / "m" / "student" / "metadata.json").write_text("{}")  # the model served before
    import os
    import sys

    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    bad = subprocess.run(["/bin/sh", "-ec", script], env={**env, "MODEL_URI": str(src)}, capture_output=True, text=True)
    assert bad.returncode == 3 and "no ikd export" in bad.stderr
    assert (tmp_path / "m" / "student" / "metadata.json").read_text() == "{}"  # the served model is intact
    (src / "metadata.json").write_text('{"new": 1}')
    ok = subprocess.run(["/bin/sh", "-ec", script], env={**env, "MODEL_URI": str(src)}, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "m" / "student" / "model.onnx").read_bytes() == b"onnx"
    assert (tmp_path / "m" / ".previous" / "metadata.json").read_text() == "{}"
    empty = subprocess.run(["/bin/sh", "-ec", script], env={**env, "MODEL_URI": ""}, capture_output=True, text=True)
    assert empty.returncode == 2 and "MODEL_URI is empty" in empty.stderr


# ---- RBAC: what the pods of a run with --service-account ikd ask the API server for ------------------------------
def allowed(docs, sa: str, group: str, resource: str, verb: str, name: str | None = None) -> bool:
    """Kubernetes RBAC's answer for a namespaced request by service account ``sa``, from Roles bound to it."""
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    for b in (d for d in docs if d["kind"] == "RoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in b["subjects"]):
            continue
        for rule in roles[b["roleRef"]["name"]]["rules"]:
            names = rule.get("resourceNames")
            if (
                group in rule["apiGroups"]
                and resource in rule["resources"]
                and (verb in rule["verbs"] or "*" in rule["verbs"])
                and (not names or name in names)
            ):
                return True
    return False


# (who asks, API group, resource, verb, object name): the KFP v2 driver and launcher read the kfp-launcher
# ConfigMap and the object store's Secret; Argo's wait container (Argo >= 3.4) writes WorkflowTaskResults; the
# multi-node distill launcher creates and watches TrainJobs; the push task reads the DVC remote's Secret; the
# promote task reads and patches the served InferenceService or Deployment.
RUN_REQUESTS = [
    ("kfp launcher", "", "configmaps", "get", "kfp-launcher"),
    ("kfp launcher", "", "secrets", "get", "mlpipeline-minio-artifact"),
    ("argo wait", "argoproj.io", "workflowtaskresults", "create", None),
    ("argo wait", "argoproj.io", "workflowtaskresults", "patch", "ikd-run-123"),
    ("distill launcher", "trainer.kubeflow.org", "trainjobs", "create", None),
    ("distill launcher", "trainer.kubeflow.org", "trainjobs", "get", "ikd-distill-run"),
    ("push", "", "secrets", "get", "ikd-dvc-remote"),
    ("promote", "serving.kserve.io", "inferenceservices", "patch", "student"),
    ("promote", "apps", "deployments", "get", "ikd-serve"),
    ("promote", "apps", "deployments", "patch", "ikd-serve"),
]


def test_the_ikd_service_account_may_do_what_every_task_of_a_run_asks_and_no_more():
    """Issue 16, point 2: with only the TrainJob Role, every task of a run under --service-account ikd failed."""
    docs = build(ROOT / "manifests" / "base")
    missing = [r for r in RUN_REQUESTS if not allowed(docs, "ikd", *r[1:])]
    assert not missing, f"the service account ikd may not: {missing}"
    assert not allowed(docs, "ikd", "", "secrets", "list")  # least privilege: no reading every Secret
    assert not allowed(docs, "ikd", "", "secrets", "get", "someone-elses-token")
    assert not allowed(docs, "ikd", "argoproj.io", "workflows", "create")
