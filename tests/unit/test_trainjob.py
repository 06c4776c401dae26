"""ikd.integrations.trainjob: the TrainJob the multi-node distill launcher creates (equal to manifests/trainjob where
they overlap), the launcher's staging / waiting / copying against a fake Kubernetes API, and the compiled pipeline."""

import json
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT

from ikd.config import Config
from ikd.integrations import trainjob
from ikd.integrations.kubeflow import IMAGE

QUICK = ROOT / "configs" / "quick.yaml"
MULTI = ["kubeflow.distill_nodes=2", "kubeflow.workspace_claim=ikd-workspace"]


def node_spec(job):
    return job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"
    ]["template"]["spec"]


def test_body_agrees_with_the_kustomize_manifest():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    built = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "manifests" / "trainjob")], capture_output=True, text=True, check=True
    ).stdout
    [manifest] = [d for d in yaml.safe_load_all(built) if d and d["kind"] == "TrainJob"]
    # the manifest sets cpu and memory limits (Pod Security in test_manifests); the config's default leaves them unset
    limits = ["kubeflow.distill.cpu_limit='4'", "kubeflow.distill.memory_limit=16Gi"]
    job = trainjob.body(Config.load(QUICK, [*MULTI, *limits]), "ikd-distill", IMAGE, "/workspace/run")
    for key in ("apiVersion", "kind"):
        assert job[key] == manifest[key]
    assert job["spec"]["runtimeRef"] == manifest["spec"]["runtimeRef"]
    a, b = job["spec"]["trainer"], manifest["spec"]["trainer"]
    assert a["image"] == b["image"] and a["numNodes"] == b["numNodes"] == 2
    assert a["resourcesPerNode"] == b["resourcesPerNode"]
    assert a["command"][:4] == b["command"][:4] and a["command"][4::2] == b["command"][4::2]
    na, nb = node_spec(job), node_spec(manifest)
    assert na["tolerations"] == nb["tolerations"] and na["securityContext"] == nb["securityContext"]
    assert na["containers"][0]["securityContext"] == nb["containers"][0]["securityContext"]
    vols = {v["name"]: v for v in nb["volumes"]}
    assert {v["name"]: v for v in na["volumes"]} == {k: vols[k] for k in ("workspace", "dshm", "home", "tmp")}
    mounts = {m["name"]: m for m in nb["containers"][0]["volumeMounts"]}
    assert {m["name"]: m for m in na["containers"][0]["volumeMounts"]} == {
        k: mounts[k] for k in ("workspace", "dshm", "home", "tmp")
    }


def test_body_follows_the_config():
    cfg = Config.load(
        QUICK,
        [
            *MULTI,
            "kubeflow.distill_nodes=8",
            "kubeflow.distill.accelerator_count=2",
            "kubeflow.distill.node_selector={pool: a100}",
            "kubeflow.distill.shm_size=null",
        ],
    )
    job = trainjob.body(cfg, "j", "img:1", "/workspace/r1")
    t = job["spec"]["trainer"]
    assert t["numNodes"] == 8 and t["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "2"}
    assert node_spec(job)["nodeSelector"] == {"pool": "a100"}
    assert [v["name"] for v in node_spec(job)["volumes"]] == ["workspace", "home", "tmp"]
    assert t["command"][-1] == "/workspace/r1/distill" and "/workspace/r1/params.yaml" in t["command"]


class FakeK8s:
    """CustomObjectsApi stand-in: records the created TrainJob; each get advances the job one state."""

    def __init__(self, workspace, states, write_output=True):
        self.workspace, self.states, self.write_output = workspace, list(states), write_output
        self.created = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        state = self.states.pop(0)
        if state == "Complete" and self.write_output:  # what rank 0 of the TrainJob leaves on the volume
            run_dir = self.workspace / name.removeprefix("ikd-distill-")
            out = run_dir / "distill"
            out.mkdir(parents=True)
            assert Config.load(run_dir / "params.yaml").kubeflow.distill_nodes == 2
            assert (run_dir / "prepare" / "marker").is_file() and (run_dir / "adapt" / "marker").is_file()
            (out / "step.json").write_text(json.dumps({"key": "k1"}))
            (out / "metrics.json").write_text(json.dumps({"world_size": 2, "train": {"steps": 5}}))
        conditions = [] if state == "Running" else [{"type": state, "status": "True", "reason": "R", "message": "M"}]
        return {"status": {"conditions": conditions}}


def inputs(tmp_path):
    for name in ("data", "teacher"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "marker").write_text("x")
    return tmp_path / "data", tmp_path / "teacher"


def test_launch_stages_waits_and_copies_the_student(tmp_path):
    data, teacher = inputs(tmp_path)
    api = FakeK8s(tmp_path / "ws", ["Running", "Running", "Complete"])
    metrics = trainjob.launch(
        Config.load(QUICK, MULTI),
        "img:1",
        data,
        teacher,
        tmp_path / "student",
        "run1",
        api=api,
        namespace="team-a",
        workspace=tmp_path / "ws",
        poll_s=0,
    )
    assert metrics == {"world_size": 2, "train": {"steps": 5}}
    assert (tmp_path / "student" / "step.json").is_file()
    [(group, version, ns, plural, body)] = api.created
    assert (group, version, ns, plural) == ("trainer.kubeflow.org", "v1alpha1", "team-a", "trainjobs")
    assert body["metadata"]["name"] == "ikd-distill-run1" and body["spec"]["trainer"]["image"] == "img:1"


def test_launch_reports_a_failed_or_empty_job(tmp_path):
    data, teacher = inputs(tmp_path)
    cfg = Config.load(QUICK, MULTI)
    with pytest.raises(trainjob.TrainJobError, match="TrainJob team-a/ikd-distill-r2 failed: R M"):
        trainjob.launch(
            cfg,
            "i",
            data,
            teacher,
            tmp_path / "s",
            "r2",
            api=FakeK8s(tmp_path / "ws", ["Failed"]),
            namespace="team-a",
            workspace=tmp_path / "ws",
            poll_s=0,
        )
    with pytest.raises(trainjob.TrainJobError, match="holds no finished distill output"):
        trainjob.launch(
            cfg,
            "i",
            data,
            teacher,
            tmp_path / "s",
            "r3",
            api=FakeK8s(tmp_path / "ws", ["Complete"], write_output=False),
            namespace="team-a",
            workspace=tmp_path / "ws",
            poll_s=0,
        )
    assert not (tmp_path / "s").exists()


def test_wait_gives_up_after_the_timeout():
    class Never:
        def get_namespaced_custom_object(self, *a):
            return {"status": {}}

    with pytest.raises(trainjob.TrainJobError, match="did not finish within 0 s"):
        trainjob.wait(Never(), "ns", "j", timeout_s=0, poll_s=0)


def test_pipeline_with_several_nodes_launches_a_trainjob_from_the_distill_task(tmp_path, cli):
    out = tmp_path / "p.yaml"
    code, _, err = cli(
        "pipeline", "compile", "--params", QUICK, "--out", out, *[x for m in MULTI for x in ("--set", m)]
    )
    assert code == 0, err
    pipeline, platform = yaml.safe_load_all(out.read_text())
    task = pipeline["root"]["dag"]["tasks"]["distill"]
    assert set(task["inputs"]["parameters"]) == {"config", "run_id", "image"}
    assert task["inputs"]["parameters"]["image"]["runtimeValue"]["constant"] == IMAGE
    label = pipeline["components"][task["componentRef"]["name"]]["executorLabel"]
    container = pipeline["deploymentSpec"]["executors"][label]["container"]
    assert "accelerator" not in container["resources"]  # the launcher is a CPU pod; the nodes get the GPUs
    assert "run_trainjob_component" in json.dumps(container)
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][label]["pvcMount"]
    assert mounts[0]["mountPath"] == "/workspace" and mounts[0]["constant"] == "ikd-workspace"
    code, _, err = cli("pipeline", "compile", "--params", QUICK, "--out", out, "--set", "kubeflow.distill_nodes=2")
    assert code == 2 and "workspace_claim" in err
