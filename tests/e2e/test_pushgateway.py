"""Job progress pushed to a real Prometheus Pushgateway (Debian's prometheus-pushgateway): deleted at the end of a
job that succeeded, kept with a failed status by a job that failed."""

import json
import socket
import subprocess
import time
import urllib.request

import pytest
from conftest import BIN, ROOT, shared, tool

pytestmark = pytest.mark.monitoring
TINY = ROOT / "configs" / "tiny.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def groups(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/metrics", timeout=5) as r:
        return json.load(r)["data"]


def series(url: str) -> dict[str, dict]:
    """{metric name: {"labels": ..., "value": float}} of every ikd_job_* series the gateway holds now (the first
    series of each; ``ikd_job_status``: see :func:`status`)."""
    out = {}
    for group in groups(url):
        for name, family in group.items():
            if name.startswith("ikd_job_"):
                m = family["metrics"][0]
                out[name] = {"labels": m["labels"], "value": float(m["value"])}
    return out


def status(url: str, run: str) -> dict[str, float]:
    """{status label: value} of ``ikd_job_status`` in the group of ``run``."""
    for group in groups(url):
        if group["labels"].get("run") == run and "ikd_job_status" in group:
            return {m["labels"]["status"]: float(m["value"]) for m in group["ikd_job_status"]["metrics"]}
    return {}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("pushgateway") / "log").open("w")
    proc = subprocess.Popen(
        [tool("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/-/ready", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the pushgateway did not start (exit {proc.poll()})")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    from ikd.cli import main

    out = tmp_path_factory.mktemp("pushed") / "prep"
    assert main(["prepare", "--params", str(TINY), "--data", str(shared("sst2")), "--out", str(out)]) == 0
    return out


def test_job_metrics_push_their_series_and_delete_their_group(gateway):
    from ikd.integrations.jobmetrics import JobMetrics

    jm = JobMetrics(gateway, "ikd-distill", "run-a", interval=60)
    jm.start(step=5, total=20, epoch=2)  # as after a resume from step 5
    got = series(gateway)
    assert got["ikd_job_step"]["labels"] == {"job": "ikd-distill", "run": "run-a", "instance": ""}
    assert got["ikd_job_step"]["value"] == 5 and got["ikd_job_resumed_from_step"]["value"] == 5
    assert status(gateway, "run-a") == {"running": 1.0, "succeeded": 0.0, "failed": 0.0}
    assert got["ikd_job_end_timestamp_seconds"]["value"] == 0
    jm.update(8, 20, 2, {"loss": 0.25, "teacher_loss": 0.5}, samples_per_second=123.0)
    jm.flush()
    got = series(gateway)
    assert got["ikd_job_step"]["value"] == 8 and got["ikd_job_total_steps"]["value"] == 20
    assert got["ikd_job_loss"]["value"] == 0.25 and got["ikd_job_teacher_loss"]["value"] == 0.5
    assert got["ikd_job_samples_per_second"]["value"] == 123.0 and got["ikd_job_progress_ratio"]["value"] == 0.4
    assert got["ikd_job_eta_seconds"]["value"] > 0 and got["ikd_job_epoch"]["value"] == 2
    jm.update(9, 20, 2, {"loss": 0.2, "quiz_loss": 0.7})  # metadistil / ikd: the quiz loss is the teacher's
    jm.flush()
    assert series(gateway)["ikd_job_teacher_loss"]["value"] == 0.7
    jm.close()
    assert series(gateway) == {}


def test_a_failed_job_keeps_its_group_with_a_failed_status(gateway, tiny_cfg, tmp_path):
    from ikd.steps.job import JobOptions, monitor

    opts = JobOptions(pushgateway=gateway, run_id="run-failed")
    before = time.time()

    def a_step_that_fails():
        with monitor(tiny_cfg, "distill", tmp_path, opts) as jm:
            jm.start(step=0, total=10, epoch=1)
            jm.update(3, 10, 1, {"loss": 9.5})
            jm.flush()
            assert status(gateway, "run-failed")["running"] == 1.0
            raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        a_step_that_fails()
    got = series(gateway)  # the group stays: the failed run, where it stopped, and when
    assert got["ikd_job_step"]["labels"]["run"] == "run-failed" and got["ikd_job_step"]["value"] == 3
    assert status(gateway, "run-failed") == {"running": 0.0, "succeeded": 0.0, "failed": 1.0}
    assert got["ikd_job_end_timestamp_seconds"]["value"] >= before
    from prometheus_client import delete_from_gateway

    delete_from_gateway(gateway, job="ikd-distill", grouping_key={"run": "run-failed"})  # the operator's cleanup
    assert series(gateway) == {}


def test_distill_pushes_progress_and_removes_it_at_the_end(gateway, prep, tmp_path):
    argv = [
        str(BIN / "ikd"),
        "distill",
        "--params",
        str(TINY),
        "--set",
        "distill.strategy=finetune",
        "--set",
        "distill.epochs=25",
        "--set",
        "monitor.push_every_seconds=0.05",
        "--data",
        str(prep),
        "--out",
        str(tmp_path / "student"),
        "--pushgateway",
        gateway,
        "--run-id",
        "ci-1",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    while proc.poll() is None:
        got = series(gateway)
        if got:
            seen.append(got)
        time.sleep(0.02)
    err = proc.communicate()[1]
    assert proc.returncode == 0, err[-3000:]
    assert seen, "no series were seen on the gateway while the job ran"
    assert {s["ikd_job_step"]["labels"]["job"] for s in seen} == {"ikd-distill"}
    assert {s["ikd_job_step"]["labels"]["run"] for s in seen} == {"ci-1"}
    assert {s["ikd_job_total_steps"]["value"] for s in seen} == {100.0}  # 4 steps an epoch, 25 epochs
    steps = [s["ikd_job_step"]["value"] for s in seen]
    assert steps == sorted(steps) and steps[-1] > 0 and len(set(steps)) > 1, steps
    assert any("ikd_job_loss" in s for s in seen)
    assert series(gateway) == {}  # the group is deleted when the job ends


def test_a_gateway_that_is_down_never_fails_the_training(prep, tmp_path, cli):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, _, err = cli(
        "distill",
        "--params",
        TINY,
        "--set",
        "distill.strategy=finetune",
        "--data",
        prep,
        "--out",
        tmp_path / "student",
        "--pushgateway",
        dead,
    )
    assert code == 0, err
    assert f"pushgateway {dead} unreachable" in err and "training goes on" in err
    assert (tmp_path / "student" / "model").is_dir()
