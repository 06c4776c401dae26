"""ikd.integrations.kubeflow (in the pod), components/ and pipelines/ (the front door): the compiled YAML's
structure, placement, caching, the metrics contract, submit / schedule against a local stand-in of the KFP API
that records every request, and the two ways in: `ikd-pipeline ...` and `ikd pipeline ...` (an entry point)."""

import json

import pytest
import yaml
from conftest import ROOT
from kfp_api import API, KfpApi

from ikd.config import Config
from ikd.integrations import kubeflow
from ikd.steps.table import NAMES as STEPS

QUICK = ROOT / "configs" / "quick.yaml"


def compile_docs(tmp_path, cli, *args):
    out = tmp_path / "p.yaml"
    code, _, err = cli("pipeline", "compile", "--params", QUICK, "--out", out, *args)
    assert code == 0, err
    pipeline, platform = yaml.safe_load_all(out.read_text())
    return pipeline, platform


def executor(pipeline, task):
    ref = pipeline["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    label = pipeline["components"][ref]["executorLabel"]
    return label, pipeline["deploymentSpec"]["executors"][label]["container"]


def test_compiled_quick_pipeline_has_the_six_steps_on_the_project_image_with_gpus_and_no_pip(tmp_path, cli):
    pipeline, platform = compile_docs(tmp_path, cli)
    tasks = pipeline["root"]["dag"]["tasks"]
    # condition-1: the optional push to a DVC remote; promote: the gate after export
    assert sorted(tasks) == sorted([*STEPS, "promote", "condition-1"])
    assert {t["taskInfo"]["name"] for t in tasks.values()} == {*STEPS, "promote", "dvc-remote-set"}
    assert set(tasks["promote"]["dependentTasks"]) == {"export", "prepare"}
    assert pipeline["root"]["inputDefinitions"]["parameters"]["current_model"]["defaultValue"] == ""
    assert tasks["score"]["dependentTasks"] == ["adapt", "prepare"]
    assert tasks["distill"]["dependentTasks"] == ["adapt", "prepare", "score"]
    assert set(tasks["evaluate"]["dependentTasks"]) == {"adapt", "distill", "prepare"}
    # evaluate's report twice: Markdown, and the HTML page with its pictures inlined (what the KFP UI can show)
    outputs = pipeline["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert {k: outputs[k]["artifactType"]["schemaTitle"] for k in ("report", "report_html")} == {
        "report": "system.Markdown",
        "report_html": "system.HTML",
    }
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for step in STEPS:
        label, container = executor(pipeline, step)
        assert container["image"] == kubeflow.IMAGE == f"ghcr.io/ikd-project/ikd:{__import__('ikd').__version__}"
        text = json.dumps(container)
        assert "pip install" not in text and "pip3 install" not in text and "python3 -m pip" not in text
        res = container["resources"]
        if step in ("adapt", "score", "distill"):
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "1"
            assert res["resourceCpuRequest"] == "4" and res["resourceMemoryRequest"] == "16Gi"
            assert execs[label]["emptyDirMounts"] == [
                {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "8Gi", "volumeName": "dshm"}
            ]
            assert execs[label]["tolerations"] == [
                {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
            ]
        else:
            assert "accelerator" not in res and label not in execs
    # the config travels as one JSON line that the CLI's validator accepts
    default = pipeline["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert Config.from_text(default) == Config.load(QUICK)


def test_placement_comes_from_the_config(tmp_path, cli):
    pipeline, platform = compile_docs(
        tmp_path,
        cli,
        "--set",
        "kubeflow.distill.accelerator_count=4",
        "--set",
        "kubeflow.distill.node_selector={nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}",
        "--set",
        "kubeflow.adapt.accelerator_count=0",
        "--set",
        "kubeflow.adapt.tolerations=[]",
        "--set",
        "kubeflow.default.memory_limit=12Gi",
        "--set",
        "kubeflow.image=registry.local/ikd:dev",
    )
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    label, container = executor(pipeline, "distill")
    assert container["resources"]["accelerator"]["resourceCount"] == "4"
    assert execs[label]["nodeSelector"] == {"labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}
    label, container = executor(pipeline, "adapt")
    assert "accelerator" not in container["resources"] and "tolerations" not in execs[label]
    assert executor(pipeline, "export")[1]["resources"]["resourceMemoryLimit"] == "12Gi"
    assert {executor(pipeline, s)[1]["image"] for s in STEPS} == {"registry.local/ikd:dev"}


def test_training_steps_are_cached_only_under_a_data_and_config_key(tmp_path, cli, small_data):
    tasks = compile_docs(tmp_path, cli)[0]["root"]["dag"]["tasks"]  # hub source: no fingerprint, no cache
    assert all(tasks[s]["cachingOptions"] == {} for s in ("prepare", "adapt", "distill"))
    assert tasks["evaluate"]["cachingOptions"] == {"enableCache": True}
    a = compile_docs(tmp_path, cli, "--data", small_data)[0]["root"]["dag"]["tasks"]
    b = compile_docs(tmp_path, cli, "--data", small_data, "--set", "distill.lr=2e-4")[0]["root"]["dag"]["tasks"]
    for s in ("prepare", "adapt", "distill"):
        assert a[s]["cachingOptions"]["enableCache"] is True and len(a[s]["cachingOptions"]["cacheKey"]) == 64
    assert a["adapt"]["cachingOptions"] == b["adapt"]["cachingOptions"]  # distill.lr is not read upstream
    assert a["distill"]["cachingOptions"] != b["distill"]["cachingOptions"]
    (small_data / "train.tsv").write_text((small_data / "train.tsv").read_text() + "one more row\t1\n")
    c = compile_docs(tmp_path, cli, "--data", small_data)[0]["root"]["dag"]["tasks"]
    assert all(c[s]["cachingOptions"] != a[s]["cachingOptions"] for s in ("prepare", "adapt", "distill"))


def test_an_imported_teachers_weights_are_in_the_adapt_and_distill_cache_keys(tmp_path, small_data):
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForSequenceClassification

    teacher = tmp_path / "teacher"
    conf = BertConfig(vocab_size=200, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    BertForSequenceClassification(conf).save_pretrained(str(teacher))
    cfg = Config.load(None, ["data.preset=glue-sst2", "adapt.mode=import", f"teacher.name={teacher}"])
    a = kubeflow.cache_keys(cfg, str(small_data))
    weights = teacher / "model.safetensors"
    save_file({k: v + 1 for k, v in load_file(str(weights)).items()}, str(weights), metadata={"format": "pt"})
    b = kubeflow.cache_keys(cfg, str(small_data))
    assert a["prepare"] == b["prepare"] and all(a[s] and a[s] != b[s] for s in ("adapt", "distill"))
    gone = Config.load(None, ["data.preset=glue-sst2", "adapt.mode=import", f"teacher.name={tmp_path / 'nowhere'}"])
    c = kubeflow.cache_keys(gone, str(small_data))
    assert c["prepare"] and c["adapt"] is None and c["distill"] is None  # not resolvable where compiled


def test_a_dvc_source_and_remote_are_pipeline_parameters(tmp_path, cli):
    sha = "0123456789abcdef0123456789abcdef01234567"
    args = (
        "--data",
        "data/raw",
        "--dvc-repo",
        "https://git.example.com/team/data.git",
        "--dvc-remote",
        "s3://models/ikd",
    )
    pipeline, _ = compile_docs(tmp_path, cli, *args, "--dvc-rev", sha)
    params = pipeline["root"]["inputDefinitions"]["parameters"]
    assert {k: params[k]["defaultValue"] for k in ("source", "dvc_repo", "dvc_rev", "dvc_remote")} == {
        "source": "data/raw",
        "dvc_repo": "https://git.example.com/team/data.git",
        "dvc_rev": sha,
        "dvc_remote": "s3://models/ikd",
    }
    tasks = pipeline["root"]["dag"]["tasks"]
    inputs = tasks["prepare"]["inputs"]["parameters"]
    assert {k: inputs[k]["componentInputParameter"] for k in ("source", "dvc_repo", "dvc_rev")} == {
        "source": "source",
        "dvc_repo": "dvc_repo",
        "dvc_rev": "dvc_rev",
    }
    assert len(tasks["prepare"]["cachingOptions"]["cacheKey"]) == 64  # a pinned commit: the data cannot move
    moving = compile_docs(tmp_path, cli, *args, "--dvc-rev", "main")[0]["root"]["dag"]["tasks"]
    assert moving["prepare"]["cachingOptions"] == {}  # a branch can move: never cached
    # push runs only when dvc_remote is set, after export, uncached, on the project image
    cond = tasks["condition-1"]
    assert cond["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--dvc_remote'] != ''"
    inner = pipeline["components"][cond["componentRef"]["name"]]["dag"]["tasks"]["push"]
    assert set(cond["dependentTasks"]) == {"adapt", "distill", "export"} and inner["cachingOptions"] == {}
    label = pipeline["components"][inner["componentRef"]["name"]]["executorLabel"]
    assert pipeline["deploymentSpec"]["executors"][label]["container"]["image"] == kubeflow.IMAGE
    code, _, err = cli("pipeline", "compile", "--params", QUICK, "--out", tmp_path / "x.yaml", "--dvc-repo", "r")
    assert code == 2 and "--dvc-repo needs --data" in err


def test_bad_pipeline_input_is_one_clear_error_and_keeps_the_old_file(tmp_path, cli):
    out = tmp_path / "p.yaml"
    out.write_text("previous: good\n")
    code, _, err = cli("pipeline", "compile", "--params", QUICK, "--out", out, "--set", "device=cpu")
    assert code == 2 and "kubeflow.adapt.accelerator_count" in err and "device" in err
    code, _, err = cli(
        "pipeline",
        "compile",
        "--params",
        QUICK,
        "--out",
        out,
        "--set",
        "kubeflow.distill.cpu_request=lots",
        "--set",
        "distill.strategy=nope",
    )
    assert code == 2 and "kubeflow.distill.cpu_request" in err and "distill.strategy" in err
    assert out.read_text() == "previous: good\n"
    code, _, err = cli("pipeline", "compile", "--params", QUICK, "--out", tmp_path / "p.json")
    assert code == 2 and ".yaml" in err
    code, _, err = cli("pipeline", "schedule", "--params", QUICK, "--host", "http://127.0.0.1:9", "--cron", "0 3 * * 1")
    assert code == 2 and "6 fields" in err and "'0 0 3 * * 1'" in err
    code, _, err = cli("pipeline", "submit", "--params", QUICK)
    assert code == 2 and "--host" in err
    code, out, err = cli("pipeline", "submit", "--params", QUICK, "--host", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach the KFP API at http://127.0.0.1:9" in err and out == ""


def test_ikd_pipeline_is_the_same_front_door_as_ikd_pipeline_subcommand(tmp_path, cli, capsys):
    from importlib.metadata import entry_points

    from ikd.pipelines.cli import main

    [script] = entry_points(group="console_scripts", name="ikd-pipeline")
    [plugin] = entry_points(group="ikd.commands", name="pipeline")
    assert (script.value, plugin.value) == ("ikd.pipelines.cli:main", "ikd.pipelines.cli:register")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert main(["-q", "compile", "--params", str(QUICK), "--out", str(a), "--set", "distill.strategy=ikd"]) == 0
    code, _, err = cli("-q", "pipeline", "compile", "--params", QUICK, "--out", b, "--set", "distill.strategy=ikd")
    assert code == 0, err
    assert list(yaml.safe_load_all(a.read_text())) == list(yaml.safe_load_all(b.read_text()))
    capsys.readouterr()
    assert main(["submit", "--params", str(QUICK)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ikd-pipeline: error: --host") and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exc:  # argparse: the same options as `ikd pipeline run`
        main(["run", "--params", str(QUICK)])
    assert exc.value.code == 2 and "--data" in capsys.readouterr().err


def test_without_the_plugin_ikd_pipeline_says_what_to_install(cli, monkeypatch, tmp_path):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    for args in (["compile", "--params", QUICK, "--out", tmp_path / "p.yaml"], ["run"], []):
        code, out, err = cli("pipeline", *args)
        assert code == 2 and out == "" and "pip install 'ikd[kfp]'" in err, (args, err)
    assert not (tmp_path / "p.yaml").exists()
    code, _, err = cli("config", "--params", QUICK)  # the library's own commands are unaffected
    assert code == 0, err


def test_flatten_metrics_keeps_numbers_only():
    flat = kubeflow.flatten_metrics({"a": {"b": 1, "c": "x", "d": True, "e": float("nan")}, "f": 0.5})
    assert flat == {"a.b": 1.0, "f": 0.5}


@pytest.fixture
def kfp_api():
    api = KfpApi().start()
    yield api
    api.stop()


def test_submit_uploads_a_version_and_starts_a_run(kfp_api, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp reads ~/.config/kfp/context.json
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    code, out, err = cli(
        "pipeline",
        "submit",
        "--params",
        QUICK,
        "--host",
        kfp_api.url,
        "--namespace",
        "team-a",
        "--experiment",
        "sst2",
        "--token-file",
        token,
        "--set",
        "distill.strategy=ikd",
        "--run-name",
        "nightly",
    )
    assert code == 0, err
    ids = json.loads(out)
    assert ids["run_id"] == "run-1" and ids["experiment_id"] == "exp-1" and ids["pipeline_version_id"]
    assert all(c.headers.get("authorization") == "Bearer s3cret" for c in kfp_api.calls)
    [exp] = kfp_api.find("POST", f"{API}/experiments")
    assert exp.json() == {"display_name": "sst2", "namespace": "team-a"}
    [up] = kfp_api.find("POST", f"{API}/pipelines/upload")
    assert up.query["name"] == ["ikd"] and up.query["namespace"] == ["team-a"]
    assert b"multipart/form-data" in up.headers["Content-Type"].encode() and b"PIPELINE DEFINITION" in up.body
    [run] = kfp_api.find("POST", f"{API}/runs")
    body = run.json()
    assert body["display_name"] == "nightly" and body["experiment_id"] == "exp-1"
    assert body["pipeline_version_reference"] == {"pipeline_id": "pipeline-1", "pipeline_version_id": "pipeline-1-v1"}
    params = body["runtime_config"]["parameters"]
    assert Config.from_text(params["config"]).distill.strategy == "ikd" and params["source"] == "nyu-mll/glue"


def test_schedule_creates_a_recurring_run_with_the_cron(kfp_api, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KFP_TOKEN", "tok")
    kfp_api.pipelines["ikd"] = "pipeline-7"  # the pipeline exists: a new version is uploaded
    kfp_api.versions["pipeline-7"] = ["pipeline-7-v1"]
    code, out, err = cli(
        "pipeline",
        "schedule",
        "--params",
        QUICK,
        "--host",
        kfp_api.url,
        "--namespace",
        "team-a",
        "--cron",
        "0 30 2 * * *",
        "--max-concurrency",
        "2",
    )
    assert code == 0, err
    assert json.loads(out)["recurring_run_id"] == "rr-1"
    [ver] = kfp_api.find("POST", f"{API}/pipelines/upload_version")
    assert ver.query["pipelineid"] == ["pipeline-7"] and ver.query["name"][0].startswith("ikd-")
    [rr] = kfp_api.find("POST", f"{API}/recurringruns")
    body = rr.json()
    assert body["trigger"] == {"cron_schedule": {"cron": "0 30 2 * * *"}}
    assert body["max_concurrency"] == "2" or body["max_concurrency"] == 2
    assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["pipeline_version_reference"] == {"pipeline_id": "pipeline-7", "pipeline_version_id": "pipeline-7-v2"}
    assert Config.from_text(body["runtime_config"]["parameters"]["config"]) == Config.load(QUICK)
    assert all(c.headers.get("authorization") == "Bearer tok" for c in kfp_api.calls)


def test_sharded_scoring_is_a_parallel_for_over_row_ranges_merged_before_distill(tmp_path, cli):
    pipeline, _platform = compile_docs(tmp_path, cli, "--set", "kubeflow.score_shards=4")
    tasks = pipeline["root"]["dag"]["tasks"]
    loop = next(t for t in tasks.values() if t["taskInfo"]["name"] == "score-shards")
    assert loop["parameterIterator"]["items"]["raw"] == json.dumps([f"{i}/4" for i in range(4)])
    inner = pipeline["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert [t["taskInfo"]["name"] for t in inner.values()] == ["score"]
    merge = next(k for k, t in tasks.items() if t["taskInfo"]["name"] == "merge-scores")
    assert tasks[merge]["dependentTasks"] == [next(k for k, t in tasks.items() if t is loop)]
    assert merge in tasks["distill"]["dependentTasks"] and "score" not in tasks
    scores = tasks["distill"]["inputs"]["artifacts"]["scores"]["taskOutputArtifact"]
    assert scores == {"outputArtifactKey": "scores", "producerTask": merge}


def test_dvc_credentials_reach_only_the_tasks_that_talk_to_a_remote(tmp_path, cli):
    """Issue 16, point 6: the push task (and prepare, which may `dvc get` from a repository) get the remote's
    Secret as environment variables and, when asked, as files; no other task sees it."""
    pipeline, platform = compile_docs(
        tmp_path,
        cli,
        "--dvc-remote",
        "s3://bucket/ikd",
        "--set",
        "kubeflow.dvc_secret=ikd-dvc-remote",
        "--set",
        "kubeflow.dvc_secret_mount=/var/run/secrets/dvc",
    )
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    push_ref = pipeline["components"]["comp-condition-1"]["dag"]["tasks"]["push"]["componentRef"]["name"]
    push = pipeline["components"][push_ref]["executorLabel"]
    with_secret = {label for label, e in executors.items() if "secretAsEnv" in e}
    assert with_secret == {push, executor(pipeline, "prepare")[0]}
    env = executors[push]["secretAsEnv"][0]
    assert env["secretNameParameter"]["runtimeValue"]["constant"] == "ikd-dvc-remote"
    assert {k["secretKey"]: k["envVar"] for k in env["keyToEnv"]} == {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    }
    assert executors[push]["secretAsVolume"][0]["mountPath"] == "/var/run/secrets/dvc"
    _, plain = compile_docs(tmp_path, cli, "--dvc-remote", "s3://bucket/ikd")
    assert not any("secretAsEnv" in e for e in plain["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values())


def test_a_data_volume_is_mounted_in_prepare_and_the_source_must_lie_on_it(tmp_path, cli):
    """Issue 16, point 8: kubeflow.data_claim mounts a PVC in the prepare task; --data must be a folder on it."""
    sets = ["--set", "kubeflow.data_claim=datasets", "--data", "/data/sst2"]
    pipeline, platform = compile_docs(tmp_path, cli, *sets)
    mounts = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor(pipeline, "prepare")[0]]
    [mount] = mounts["pvcMount"]
    assert mount["constant"] == "datasets" and mount["mountPath"] == "/data"
    assert pipeline["root"]["inputDefinitions"]["parameters"]["source"]["defaultValue"] == "/data/sst2"
    out = tmp_path / "bad.yaml"
    code, _, err = cli(
        "pipeline",
        "compile",
        "--params",
        QUICK,
        "--out",
        out,
        "--set",
        "kubeflow.data_claim=datasets",
        "--data",
        "/mnt/sst2",
    )
    assert code == 2 and "kubeflow.data_claim datasets is mounted at /data" in err and not out.exists()


def test_dvc_secret_env_names_are_checked():
    with pytest.raises(Exception, match="not an environment variable name"):
        Config.load(QUICK, ["kubeflow.dvc_secret=s", "kubeflow.dvc_secret_env={'key': 'AWS KEY'}"])


def test_a_task_whose_shm_mount_the_backend_dropped_fails_at_once_naming_the_kfp_version(tmp_path, monkeypatch):
    """Issue 16, point 7: KFP backends before 2.3 drop emptyDir mounts silently; the task checks /dev/shm itself."""
    import os
    import types

    cfg = Config.load(QUICK)  # kubeflow.adapt.shm_size: 8Gi by default
    sizes = {"bytes": 64 * 2**20}
    monkeypatch.setattr(os, "statvfs", lambda p: types.SimpleNamespace(f_blocks=sizes["bytes"] // 4096, f_frsize=4096))
    kubeflow.check_task_mounts(cfg, "adapt")  # outside a KFP pod: placement does not apply
    monkeypatch.setenv("KFP_POD_NAME", "ikd-abc-adapt")
    with pytest.raises(
        kubeflow.PipelineError, match=r"64 MiB but kubeflow.adapt.shm_size asks for 8Gi.*KFP backend >= 2.3"
    ):
        kubeflow.check_task_mounts(cfg, "adapt")
    kubeflow.check_task_mounts(cfg, "evaluate")  # kubeflow.default sizes no /dev/shm
    sizes["bytes"] = 8 * 2**30
    kubeflow.check_task_mounts(cfg, "adapt")
