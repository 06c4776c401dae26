"""`ikd-pipeline submit --wait`: poll the submitted run until it ends, fail with its state and URL unless it
SUCCEEDED. The polling runs against a fake client (and a fake clock) here; one test goes through the real kfp client
against the local stand-in of the KFP API."""

import json
from types import SimpleNamespace

import pytest
import urllib3
from conftest import ROOT
from kfp_api import API, KfpApi
from kfp_server_api.exceptions import ApiException

from ikd.integrations.kubeflow import PipelineError
from ikd.pipelines import cluster

QUICK = ROOT / "configs" / "quick.yaml"


class Clock:
    """time.monotonic and time.sleep for the wait loop, without waiting."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeClient:
    """get_run answers the given states (or raises the given exceptions) in turn, then repeats the last one."""

    _uihost = "https://kubeflow.example.com/pipeline"

    def __init__(self, *answers, error=None):
        self.answers, self.error, self.calls = list(answers), error, []

    def _get_url_prefix(self):
        return self._uihost

    def get_run(self, run_id):
        self.calls.append(run_id)
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        err = SimpleNamespace(message=self.error) if self.error else None
        return SimpleNamespace(run_id=run_id, state=answer, error=err)


def wait(client, clock, **kw):
    return cluster.wait(client, "run-9", clock=clock, sleep=clock.sleep, **{"timeout_s": 3600, "poll_s": 30, **kw})


def test_waits_through_pending_and_running_until_succeeded():
    client, clock = FakeClient(None, "PENDING", "RUNNING", "RUNNING", "SUCCEEDED"), Clock()
    result = wait(client, clock)
    assert result == {"state": "SUCCEEDED", "url": "https://kubeflow.example.com/pipeline/#/runs/details/run-9"}
    assert client.calls == ["run-9"] * 5 and clock.sleeps == [30] * 4
    cluster.check_succeeded("nightly", result, 3600)  # no error


@pytest.mark.parametrize("state", ["FAILED", "CANCELED", "SKIPPED"])
def test_every_final_state_ends_the_wait_and_only_succeeded_passes(state):
    client, clock = FakeClient("RUNNING", state, error="task distill: exit code 2"), Clock()
    result = wait(client, clock)
    assert result["state"] == state and len(client.calls) == 2  # CANCELED too: kfp's own wait would spin on
    with pytest.raises(PipelineError) as exc:
        cluster.check_succeeded("nightly", result, 3600)
    msg = str(exc.value)
    assert f"run nightly ended {state}: task distill: exit code 2" in msg and "#/runs/details/run-9" in msg


def test_a_run_still_running_at_the_timeout_fails_the_wait_and_says_it_goes_on():
    client, clock = FakeClient("RUNNING"), Clock()
    result = wait(client, clock, timeout_s=100, poll_s=30)
    assert result == {"state": "RUNNING", "url": result["url"], "timed_out": True}
    assert clock.sleeps == [30, 30, 30, 10] and clock.now == 100  # the last sleep ends at the deadline
    with pytest.raises(PipelineError, match=r"run nightly still RUNNING after 100 s; it goes on in the cluster"):
        cluster.check_succeeded("nightly", result, 100)


def test_connection_errors_are_retried_a_few_times_in_a_row():
    flaky = urllib3.exceptions.ProtocolError("connection reset")
    client, clock = FakeClient(flaky, ApiException(status=503), flaky, "SUCCEEDED"), Clock()
    assert wait(client, clock, retries=3)["state"] == "SUCCEEDED"
    client, clock = FakeClient(flaky, "RUNNING", flaky, flaky, "SUCCEEDED"), Clock()  # a success resets the count
    assert wait(client, clock, retries=2)["state"] == "SUCCEEDED"
    client, clock = FakeClient(flaky), Clock()
    with pytest.raises(PipelineError, match=r"cannot reach the KFP API at https://kubeflow.example.com/pipeline"):
        wait(client, clock, retries=3)
    assert len(client.calls) == 4


def test_a_refused_token_is_not_retried():
    client, clock = FakeClient(ApiException(status=401, reason="Unauthorized")), Clock()
    with pytest.raises(PipelineError, match=r"answered 401.*check --token-file / KFP_TOKEN"):
        wait(client, clock)
    assert len(client.calls) == 1 and clock.sleeps == []


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp reads ~/.config/kfp/context.json
    monkeypatch.setenv("KFP_TOKEN", "tok")
    api = KfpApi().start()
    yield api
    api.stop()


def submit(cli, api, *extra):
    return cli("pipeline", "submit", "--params", QUICK, "--host", api.url, "--run-name", "nightly", *extra)


def test_submit_wait_exits_2_with_the_state_and_url_when_the_run_fails(kfp_api, cli):
    kfp_api.run_states = ["PENDING", "RUNNING", "FAILED"]
    code, out, err = submit(cli, kfp_api, "--wait", "--poll-s", "0.01")
    assert code == 2
    result = json.loads(out)  # the ids and the outcome, on stdout all the same
    assert result["run_id"] == "run-1" and result["state"] == "FAILED" and result["error"] == "task distill failed"
    assert result["url"] == f"{kfp_api.url}/#/runs/details/run-1"
    [line] = [x for x in err.splitlines() if x.startswith("ikd: error:")]  # `ikd pipeline submit`
    assert line == f"ikd: error: run nightly ended FAILED: task distill failed ({result['url']})"
    assert len(kfp_api.find("GET", f"{API}/runs/run-1")) == 3


def test_submit_wait_exits_0_when_the_run_succeeds_and_without_wait_does_not_look(kfp_api, cli):
    kfp_api.run_states = ["RUNNING", "SUCCEEDED"]
    code, out, err = submit(cli, kfp_api, "--wait", "--poll-s", "0.01", "--wait-timeout-s", "60")
    assert code == 0, err
    assert json.loads(out)["state"] == "SUCCEEDED"
    code, out, err = submit(cli, kfp_api)
    assert code == 0, err
    assert "state" not in json.loads(out) and not kfp_api.find("GET", f"{API}/runs/run-2")


@pytest.mark.parametrize("flag", ["--poll-s", "--wait-timeout-s"])
def test_wait_times_must_be_positive(cli, flag):
    with pytest.raises(SystemExit) as exc:
        cli("pipeline", "submit", "--params", QUICK, "--wait", flag, "0")
    assert exc.value.code == 2
