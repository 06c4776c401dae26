"""The promotion gate's parts without a model: the decision rules and their reasons, the registry stand-in held to
the upstream OpenAPI document (it must refuse what the document refuses, or the end-to-end tests prove nothing),
ikd's registry client against it, the InferenceService rollout of a predictor ``model`` (Triton), and the config."""

import urllib.error
import urllib.request

import numpy as np
import pytest
import yaml
from conftest import ROOT
from k8s_schemas import validate
from promote_standins import PREFIX, KubeStandIn, RegistryStandIn

from ikd.config import Config
from ikd.errors import ConfigError
from ikd.opsconfig import PromoteConfig
from ikd.promote import compare, registry, rollout


def side(acc, p50, preds, sha="a" * 64):
    return compare.Side("f", "model.onnx", sha, {"accuracy": acc}, p50, np.array(preds))


ROWS = compare.HeldOut("calib", [("x",)] * 4, np.array([1, 1, 0, 0]), ["0", "1"], ["accuracy"])


def test_every_rule_says_what_held_and_what_did_not():
    cfg = PromoteConfig(min_gain=0.1, min_agreement=0.5, max_latency_ratio=1.5, latency_budget_ms=10.0)
    better = compare.decide(side(0.75, 2.0, [1, 1, 0, 1]), side(0.5, 2.0, [1, 0, 0, 1], "b" * 64), ROWS, cfg)
    assert better.promote and all(r.startswith("ok: ") for r in better.reasons)
    assert better.figures["gain"] == 0.25 and better.figures["agreement"] == 0.75
    # slower than allowed, over the budget, disagreeing, not better enough: each a reason of its own
    worse = compare.decide(side(0.55, 12.0, [0, 0, 1, 1]), side(0.5, 4.0, [1, 1, 0, 0], "b" * 64), ROWS, cfg)
    refused = [r for r in worse.reasons if r.startswith("refused: ")]
    assert not worse.promote and len(refused) == 4
    assert any("budget 10 ms" in r for r in refused) and any("ratio 3.00, allowed 1.5" in r for r in refused)
    assert any("agreement 0.0000 vs minimum 0.5" in r for r in refused)
    assert any("gain +0.0500, needed +0.1000" in r for r in refused)
    # the same file as the served one is never promoted again; nothing served: the first model promotes
    same = compare.decide(side(0.75, 2.0, [1, 1, 0, 1]), side(0.75, 2.0, [1, 1, 0, 1]), ROWS, PromoteConfig())
    assert not same.promote and "is the one served" in same.reasons[0]
    first = compare.decide(side(0.5, 2.0, [1, 1, 1, 1]), None, ROWS, PromoteConfig())
    assert first.promote and first.figures["current"] is None


def post(url, path, body=None, method="POST"):
    """One raw request; returns the status (a refusal is an answer here, not an error)."""
    req = urllib.request.Request(url + PREFIX + path, data=body, method=method, headers={"Content-Type": "x"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_registry_stand_in_refuses_what_the_document_refuses():
    with RegistryStandIn() as reg:
        body = b'{"name": "m", "customProperties": {"x": {"double_value": 1.0}}}'
        assert post(reg.url, "/registered_models", body) == 400 and reg.objects["rm"] == {}
        assert any("metadataType" in v for v in reg.violations), reg.violations  # MetadataValue needs its type
        reg.violations.clear()
        assert post(reg.url, "/model_versions", b'{"name": "v1"}') == 400
        assert any("registeredModelId" in v for v in reg.violations)
        reg.violations.clear()
        assert post(reg.url, "/registered_models/1/artifacts", b"{}") == 404
        assert any("no such operation" in v for v in reg.violations)
        reg.violations.clear()
        assert post(reg.url, "/registered_models?pageSize=1&colour=red", method="GET") == 400
        assert reg.violations == [
            "GET /api/model_registry/v1alpha3/registered_models: undocumented query parameter colour"
        ]


def test_the_registry_client_registers_and_finds_the_newest_version():
    with RegistryStandIn() as reg:
        cfg = PromoteConfig(registry_url=reg.url, storage_uri="s3://b/{version}")
        assert registry.served_uri(cfg, "ikd-student") is None  # nothing registered: nothing served
        props = registry.properties(
            {"new": {"metrics": {"accuracy": 0.9}, "p50_ms": 1.5}, "rows": 512, "split": "calib"},
            {"data": {"fingerprint": "f"}},
            {"promoted": True},
        )
        ids = registry.register(cfg, "v-1", "s3://b/v-1", 18, props)
        assert ids == {"registered_model_id": "1", "model_version_id": "2", "model_artifact_id": "3"}
        registry.register(cfg, "v-2", "s3://b/v-2", 18, props)  # the model is found, not created twice
        assert registry.served_uri(cfg, "ikd-student") == "s3://b/v-2"
        with pytest.raises(registry.RegistryError, match="already has a version v-2"):
            registry.register(cfg, "v-2", "s3://b/v-2", 18, props)
        version = reg.objects["mv"]["2"]["customProperties"]
        assert version["rows"] == {"metadataType": "MetadataIntValue", "int_value": "512"}
        assert version["promoted"] == {"metadataType": "MetadataBoolValue", "bool_value": True}
        assert reg.violations == []
    with pytest.raises(registry.RegistryError, match="failed"):  # the server is gone: one clear error
        registry.served_uri(cfg, "ikd-student")


def test_an_inference_service_with_a_model_gets_its_storage_uri_patched(tmp_path, monkeypatch):
    isvc = yaml.safe_load((ROOT / "manifests" / "kserve" / "triton" / "inferenceservice.yaml").read_text())
    with KubeStandIn("ns1", isvc=isvc) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path)))
        cfg = PromoteConfig(
            target="inferenceservice", namespace="ns1", name="student-triton", storage_uri="s3://x", poll_s=0
        )
        target = rollout.Target(cfg)
        assert target.served_uri() == "s3://ml-artifacts/ikd/models/onnx/triton"
        result = target.rollout("s3://b/v-9", "v-9")
        assert result["status"] == "ready" and result["generation"] == 2
        [(_, body, after)] = kube.patches
        assert body["spec"] == {"predictor": {"model": {"storageUri": "s3://b/v-9"}}}
        assert "merge-patch" in kube.content_types[0]
        validate({**after, "metadata": {k: after["metadata"][k] for k in ("name", "namespace", "annotations")}})
        assert target.served_uri() == "s3://b/v-9"
    with KubeStandIn("ns1") as empty:
        monkeypatch.setenv("KUBECONFIG", str(empty.kubeconfig(tmp_path)))
        with pytest.raises(rollout.RolloutError, match="InferenceService ns1/student-triton: cannot read it"):
            rollout.Target(cfg).rollout("s3://b/v-9", "v-9")


def test_a_rollout_or_a_registry_needs_a_storage_uri():
    with pytest.raises(ConfigError, match="promote.*storage_uri"):
        Config.load(None, ["promote.target=deployment"])
    assert Config.load(None, ["promote.target=deployment", "promote.storage_uri=s3://b/{version}"]).promote.name


def test_a_finished_runs_task_states_include_the_gates():
    from types import SimpleNamespace as Obj

    from ikd.pipelines import cluster

    tasks = [Obj(display_name=n, state=s) for n, s in (("root", "x"), ("export", "succeeded"), ("promote", "FAILED"))]
    assert cluster.task_states(Obj(run_details=Obj(task_details=tasks))) == {"export": "SUCCEEDED", "promote": "FAILED"}
    assert cluster.task_states(Obj()) == {}  # an API that gives no details: nothing claimed
