"""`ikd promote` end to end on the tiny export: a worse student is refused (reasons printed, the registry and the
Kubernetes API never called), a better one is registered in the Model Registry stand-in and rolled out through the
Kubernetes stand-in, a rollout that never becomes ready is rolled back, and the first model promotes against
nothing served. ikd's registry client and the real `kubernetes` client talk to the stand-ins
(tests/promote_standins.py)."""

import copy
import hashlib
import json
import shutil

import pytest
import yaml
from conftest import ROOT
from k8s_schemas import validate
from promote_standins import KubeStandIn, RegistryStandIn
from serve_helpers import TINY, export_tiny

onnx = pytest.importorskip("onnx")

NS = "team-a"
NO_NOISE = ["--set", "promote.max_latency_ratio=0"]  # latency on 2 shared cores is noise; its rules: test_promote_gate


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return export_tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def worse(run_dir, tmp_path_factory):
    """A copy of the tiny export whose logits are negated (a Neg after the graph's output): on two labels every
    answer flips, so its accuracy is one minus the real one's. metadata.json vouches for the new file."""
    folder = tmp_path_factory.mktemp("worse") / "export"
    shutil.copytree(run_dir / "export", folder)
    meta = json.loads((folder / "metadata.json").read_text())
    path = folder / meta["model_file"]
    model = onnx.load(str(path))
    [out] = [o for o in model.graph.output if o.name == "logits"]
    for node in model.graph.node:
        node.output[:] = ["logits_raw" if o == "logits" else o for o in node.output]
    model.graph.node.append(onnx.helper.make_node("Neg", ["logits_raw"], ["logits"]))
    onnx.save(model, str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    meta["sha256"] = meta["files"][meta["model_file"]]["sha256"] = sha
    (folder / "metadata.json").write_text(json.dumps(meta))
    assert out.name == "logits"
    return folder


def manifest(*parts):
    return (
        yaml.safe_load((ROOT / "manifests" / "serving" / parts[-1]).read_text())
        if parts[0] == "serving"
        else (yaml.safe_load((ROOT / "manifests" / "kserve" / parts[0] / parts[1]).read_text()))
    )


def promote(cli, run_dir, new, current, out, *sets):
    args = ["promote", "--params", TINY, "--data", run_dir / "prepare", "--new", new, "--out", out, *NO_NOISE]
    if current is not None:
        args += ["--current", current]
    for s in sets:  # config overrides, and flags as they are
        args += [s] if s.startswith("--") else ["--set", s]
    return cli(*args)


def test_a_worse_student_is_refused_with_its_reasons_and_nothing_is_called(cli, run_dir, worse, tmp_path, monkeypatch):
    isvc = manifest("custom", "inferenceservice.yaml")
    with RegistryStandIn() as reg, KubeStandIn(NS, isvc=isvc) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path)))
        sets = [
            f"promote.registry_url={reg.url}",
            "promote.target=inferenceservice",
            f"promote.namespace={NS}",
            "promote.storage_uri=s3://models/ikd/{version}",
        ]
        code, out, err = promote(cli, run_dir, worse, run_dir / "export", tmp_path / "d", *sets)
        assert code == 0, err
        assert out.startswith("promote: refuse")
        assert "refused: accuracy on 512 calib rows" in out  # the reason, with both figures
        record = json.loads((tmp_path / "d" / "decision.json").read_text())
        assert record["decision"] == "refuse" and record["gain"] < 0 and record["agreement"] == 0.0
        assert record["new"]["metrics"]["accuracy"] == pytest.approx(1 - record["current"]["metrics"]["accuracy"])
        assert record["registry"] is None and record["rollout"] is None
        assert "# Promotion: refuse" in (tmp_path / "d" / "decision.md").read_text()
        # for CI: the same refusal as a non-zero exit, saying why
        code, _, err = promote(cli, run_dir, worse, run_dir / "export", tmp_path / "d2", *sets, "--fail-on-refuse")
        assert code == 2 and "promotion refused: accuracy" in err
        assert reg.calls == [] and kube.patches == [] and kube.reads == 0


def test_a_better_student_is_registered_and_rolled_out_then_judged_against_the_registry(
    cli, run_dir, worse, tmp_path, monkeypatch
):
    isvc = manifest("custom", "inferenceservice.yaml")
    with RegistryStandIn() as reg, KubeStandIn(NS, isvc=isvc) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path)))
        sets = [
            f"promote.registry_url={reg.url}",
            "promote.target=inferenceservice",
            f"promote.namespace={NS}",
            f"promote.storage_uri=file://{run_dir / 'export'}",
            "promote.poll_s=0",
        ]
        code, out, err = promote(cli, run_dir, run_dir / "export", worse, tmp_path / "d", *sets)
        assert code == 0, err
        assert out.startswith("promote: promote")
        record = json.loads((tmp_path / "d" / "decision.json").read_text())
        assert record["decision"] == "promote" and record["gain"] > 0
        # the registry: a RegisteredModel, its ModelVersion with the figures and lineage, the ModelArtifact
        posts = [(p.removeprefix("/api/model_registry/v1alpha3"), b) for m, p, b in reg.calls if m == "POST"]
        assert [p for p, _ in posts] == ["/registered_models", "/model_versions", "/model_versions/2/artifacts"]
        assert posts[0][1]["name"] == "ikd-student"
        version = posts[1][1]
        assert version["name"] == record["version"]
        props = version["customProperties"]
        assert props["new.accuracy"]["double_value"] == pytest.approx(record["new"]["metrics"]["accuracy"], abs=1e-6)
        lineage = json.loads((run_dir / "export" / "step.json").read_text())["lineage"]  # what the export was made from
        assert json.loads(props["lineage"]["string_value"]) == lineage and lineage["models"]
        art = posts[2][1]
        assert art["artifactType"] == "model-artifact" and art["uri"] == f"file://{run_dir / 'export'}"
        assert art["modelFormatName"] == "onnx"
        assert record["registry"] == {"registered_model_id": "1", "model_version_id": "2", "model_artifact_id": "3"}
        assert reg.violations == []  # every request and answer as the OpenAPI document says
        # the rollout: one patch of the predictor's STORAGE_URI, the CRD still accepts it, readiness awaited
        [(kind, _, after)] = kube.patches
        assert kind == "isvc" and kube.reads >= 3  # the read before, then polls until ready
        env = {e["name"]: e["value"] for e in after["spec"]["predictor"]["containers"][0]["env"]}
        assert env["STORAGE_URI"] == f"file://{run_dir / 'export'}"
        assert after["metadata"]["annotations"]["ikd-project.github.io/model-version"] == record["version"]
        validate({**after, "metadata": {k: after["metadata"][k] for k in ("name", "namespace", "annotations")}})
        assert record["rollout"]["status"] == "ready" and record["rollout"]["previous_uri"] == (
            "s3://ml-artifacts/ikd/models/onnx"
        )
        # the next run names the served model by its registry entry: the worse student is refused against it
        code, out, err = promote(cli, run_dir, worse, "registry:ikd-student", tmp_path / "d3", *sets)
        assert code == 0, err
        record = json.loads((tmp_path / "d3" / "decision.json").read_text())
        assert record["decision"] == "refuse" and record["current"]["folder"] == str(run_dir / "export")
        assert len(kube.patches) == 1 and reg.violations == []


def test_a_rollout_that_never_becomes_ready_is_rolled_back(cli, run_dir, worse, tmp_path, monkeypatch):
    deploy = manifest("serving", "deployment.yaml")
    with KubeStandIn(NS, deployment=deploy, ready=lambda obj, polls: obj["metadata"]["generation"] != 2) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path)))
        sets = [
            "promote.target=deployment",
            "promote.name=ikd-serve",
            f"promote.namespace={NS}",
            "promote.storage_uri=s3://models/ikd/{version}",
            "promote.timeout_s=0.3",
            "promote.poll_s=0.05",
        ]
        code, _, err = promote(cli, run_dir, run_dir / "export", worse, tmp_path / "d", *sets)
        assert code == 2 and "not ready within 0.3 s; rolled back" in err
        record = json.loads((tmp_path / "d" / "decision.json").read_text())
        assert record["decision"] == "rolled_back" and record["rollout"]["rollback_ready"] is True
        forward, back = kube.patches
        notes = forward[2]["spec"]["template"]["metadata"]["annotations"]
        assert notes["ikd-project.github.io/model-uri"] == f"s3://models/ikd/{record['version']}"
        after = back[2]
        template = copy.deepcopy(after["spec"]["template"])
        assert template["metadata"].pop("annotations", {}) == {}  # the API server drops an emptied map
        assert template == deploy["spec"]["template"]  # the template as it was: the old ReplicaSet comes back
        meta = {k: forward[2]["metadata"][k] for k in ("name", "namespace", "labels", "annotations")}
        validate({**{k: v for k, v in forward[2].items() if k != "status"}, "metadata": meta})


def test_the_first_model_promotes_against_nothing_served(cli, run_dir, tmp_path):
    with RegistryStandIn() as reg:
        sets = [f"promote.registry_url={reg.url}", "promote.storage_uri=s3://models/ikd/{version}"]
        code, out, err = promote(cli, run_dir, run_dir / "export", "registry:ikd-student", tmp_path / "d", *sets)
        assert code == 0, err
        assert "ok: nothing is served yet" in out
        record = json.loads((tmp_path / "d" / "decision.json").read_text())
        assert record["decision"] == "promote" and record["current"] is None
        assert record["storage_uri"] == f"s3://models/ikd/{record['version']}" and reg.violations == []
    # bad input: a folder that is no export is one clear error, exit 2, no decision written
    code, _, err = promote(cli, run_dir, tmp_path / "nothing", None, tmp_path / "e")
    assert code == 2 and "new model" in err and "no metadata.json" in err
    assert not (tmp_path / "e").exists()
