"""A real Prometheus (Debian's binary, see .ci/prometheus-tools) scraping a real `ikd serve` every second: the
target is up, and the request counter Prometheus stores equals the requests sent, per endpoint and status code.
Both servers on free loopback ports; Prometheus' storage in tmp_path; both stopped at the end."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from conftest import ROOT, tool
from serve_helpers import MODEL, SENTENCES, call, export_tiny, free_port, start, stop, texts_request

pytestmark = pytest.mark.monitoring

JOB = "ikd-serve"
TIMEOUT_S = 20.0  # the longest wait for Prometheus to be ready, to find the target up, to show a count


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, log) of one `ikd serve`."""
    tool("prometheus")  # skipped (or failed, under IKD_REQUIRE_TOOLS=1) before any model is built
    run = export_tiny(tmp_path_factory)
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    proc, url = start(run / "export", "--name", MODEL, "--max-delay-ms", 2, log=log)
    assert proc.poll() is None, log.read_text()
    yield url, log
    stop(proc)


def wait_for(what: str, probe, log=None):
    """Poll ``probe()`` until it returns a true value (its OSErrors count as not yet) within TIMEOUT_S. Returns the
    value; fails naming ``what`` and the last value, with the tail of ``log``."""
    deadline, last = time.monotonic() + TIMEOUT_S, None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log is not None else ""
    pytest.fail(f"{what}: not within {TIMEOUT_S} s (last: {last!r})\n{tail}")


@pytest.fixture
def prometheus(tmp_path, served):
    """Base url of a Prometheus scraping the served /metrics every second."""
    binary = tool("prometheus")
    target = served[0].removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )

    def ready():
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        return get(url, "/-/ready", raw=True) == 200

    try:
        wait_for("Prometheus ready", ready, log)
        yield url, log
    finally:
        stop(proc)


def get(url: str, path: str, raw: bool = False, **params):
    """GET ``path`` with query ``params``: the status (``raw``) or the JSON body."""
    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    with urllib.request.urlopen(url + path + query, timeout=5) as r:
        return r.status if raw else json.loads(r.read())


def value(prom: str, query: str) -> float | None:
    """The single value of an instant ``query``, or None while it has no sample."""
    answer = get(prom, "/api/v1/query", query=query)
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_request_counter(served, prometheus):
    url, serve_log = served
    prom, log = prometheus
    begun = time.monotonic()

    def target_up():
        targets = get(prom, "/api/v1/targets")["data"]["activeTargets"]
        return [t for t in targets if t["labels"]["job"] == JOB and t["health"] == "up"]

    (target,) = wait_for("the ikd target up in /api/v1/targets", target_up, log)
    assert target["scrapeUrl"] == f"{url}/metrics" and not target["lastError"]
    assert value(prom, f'up{{job="{JOB}"}}') == 1.0

    ok, bad = 7, 3
    for i in range(ok):
        code, _ = call(url, "POST", f"/v2/models/{MODEL}/infer", texts_request(SENTENCES[: 1 + i % 4]))
        assert code == 200
    for _ in range(bad):
        code, _ = call(url, "POST", f"/v2/models/{MODEL}/infer", {"inputs": []})
        assert code == 400

    def counted(code: int, want: int):
        query = f'ikd_requests_total{{job="{JOB}",model="{MODEL}",endpoint="infer",code="{code}"}}'
        return lambda: value(prom, query) == want

    wait_for(f"{ok} infer requests with code 200 in Prometheus", counted(200, ok), log)
    wait_for(f"{bad} infer requests with code 400 in Prometheus", counted(400, bad), log)
    latency = f'ikd_request_duration_seconds_count{{job="{JOB}",model="{MODEL}",endpoint="infer"}}'
    assert value(prom, latency) == ok + bad
    assert value(prom, f'count(ikd_model_info{{job="{JOB}",model="{MODEL}"}})') == 1.0
    assert value(prom, f'sum(ikd_requests_total{{job="{JOB}",code=~"5.."}})') is None  # no 5xx series at all
    print(f"\nprometheus: target up and {ok} + {bad} requests counted {time.monotonic() - begun:.1f} s after start")
    check_dashboard_queries(prom, log)
    assert "Traceback" not in serve_log.read_text()


def check_dashboard_queries(prom: str, log) -> None:
    """Every query of the Grafana dashboard (manifests/monitoring/dashboards/ikd.json), its variables set to "all",
    is valid PromQL to this Prometheus; the server panels' queries have data (the jobs' have none here)."""
    dash = json.loads((ROOT / "manifests" / "monitoring" / "dashboards" / "ikd.json").read_text())
    panels, queries = list(dash["panels"]), []
    while panels:
        p = panels.pop(0)
        panels.extend(p.get("panels", []))
        queries += [(p["title"], t["expr"]) for t in p.get("targets", [])]
    assert len(queries) > 10
    for title, expr in queries:
        query = expr.replace("$__rate_interval", "1m")
        for var in ("namespace", "model", "job", "run"):
            query = query.replace(f"${var}", ".*")
        answer = get(prom, "/api/v1/query", query=query)
        assert answer["status"] == "success", (title, query, answer)
        if not title.startswith(("Step", "Loss", "Samples", "Time left", "Progress", "Job state")):
            wait_for(
                f"data for the dashboard query {query}",
                lambda q=query: get(prom, "/api/v1/query", query=q)["data"]["result"],
                log,
            )
