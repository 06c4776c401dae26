"""The strategies benchmark runs end to end (tiny models, one seed) and writes the JSON it promises."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, shared


def refused(script: str, *args: str) -> str:
    """The error output of a benchmark script refusing ``args`` before it runs anything (exit status 2)."""
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True)
    assert bad.returncode == 2, bad.stderr
    return bad.stderr


@pytest.mark.bench
@pytest.mark.timeout(600)
def test_strategies_benchmark_writes_every_variant(tmp_path):
    data = shared("sst2")
    out = tmp_path / "out.json"
    variants = "finetune,kd,prokt,metadistil,ikd,talking"
    defined = ["kd:T1x", "distill.strategy=kd", "distill.temperature=1.0"]  # a variant of the command line
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "strategies.py"),
            "--quick",
            "--params",
            str(ROOT / "configs" / "tiny.yaml"),
            "--data",
            str(data),
            "--seeds",
            "2",
            "--variants",
            variants,
            "--set",
            "distill.max_steps=3",
            "--set",
            "data.max_dev_rows=64",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out),
            "--define",
            *defined,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    result = report["results"]
    assert list(result) == [*variants.split(","), "kd:T1x"]
    runs = tmp_path / "work"
    temps = [yaml.safe_load(f.read_text())["distill"] for f in sorted(runs.glob("*/runs/kd_T1x-s*/config.yaml"))]
    assert [(d["strategy"], d["temperature"]) for d in temps] == [("kd", 1.0), ("kd", 1.0)]  # its overrides applied
    for r in result.values():
        assert len(r["seeds"]) == 2 and 0.0 <= r["metric_mean"] <= 1.0 and r["metric_std"] >= 0.0
        assert r["step_time_ratio_vs_kd"] > 0 and r["peak_mem_ratio_vs_kd"] > 0
        low, high = r["metric_mean"] - r["metric_ci95"], r["metric_mean"] + r["metric_ci95"]
        assert low <= min(r["seeds"]) and max(r["seeds"]) <= high  # two seeds: t(1) = 12.7 covers both
        diff = r["paired_vs_reference"]
        expected = [a - b for a, b in zip(r["seeds"], result["kd"]["seeds"], strict=True)]
        assert diff["per_seed"] == pytest.approx(expected) and diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
        assert len(r["wall_seconds"]) == 2 and all(w > 0 for w in r["wall_seconds"])
    assert result["kd"]["step_time_ratio_vs_kd"] == 1.0
    assert result["kd"]["paired_vs_reference"]["per_seed"] == [0.0, 0.0]
    assert "| metadistil |" in proc.stdout and "step time × kd" in proc.stdout
    assert "unknown variant" in refused("strategies.py", "--variants", "nope")
    for define in (["kd"], ["kd:new"], ["kd:new", "distill.lr"]):  # a known name, no override, no KEY=VALUE
        assert f"--define {define[0]}: give a new variant name" in refused("strategies.py", "--define", *define)
    # --teacher: another work folder runs with the teacher given (linked, not adapted again)
    (teacher,) = runs.glob("*/teacher")
    again = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "strategies.py"),
            *("--quick", "--params", str(ROOT / "configs" / "tiny.yaml"), "--data", str(data), "--seeds", "1"),
            *("--variants", "kd", "--set", "distill.max_steps=3", "--set", "data.max_dev_rows=64"),
            *("--work", str(tmp_path / "work2"), "--teacher", str(teacher), "--json", str(tmp_path / "again.json")),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    (linked,) = (tmp_path / "work2").glob("*/teacher")
    assert linked.is_symlink() and linked.resolve() == teacher.resolve()
    assert json.loads((tmp_path / "again.json").read_text())["results"]["kd"]["teacher"] == result["kd"]["teacher"]
    assert "not an adapted teacher (no model/)" in refused("strategies.py", "--teacher", str(tmp_path))


@pytest.mark.bench
@pytest.mark.timeout(600)
def test_serving_benchmark_measures_every_engine_and_the_http_server(tmp_path):
    """Builds a tiny run (no --run folder), then measures torch, the three ONNX files and `ikd serve` under load."""
    data = shared("sst2")
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "serving.py"),
            "--quick",
            "--run",
            str(tmp_path / "none"),
            "--params",
            str(ROOT / "configs" / "tiny.yaml"),
            "--data",
            str(data),
            "--set",
            "data.max_train_rows=64",
            "--set",
            "distill.max_steps=3",
            "--set",
            "export.int8_max_loss=100",
            "--set",
            "export.int8_min_agreement=0",
            "--seconds",
            "1.5",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert set(rep["engines"]) == {
        "torch teacher (eager)",
        "torch student (eager)",
        "ORT student fp32",
        "ORT student optimized",
        "ORT student int8",
    }
    for per in rep["engines"].values():
        assert all(f["rows_per_second"] > 0 and f["p99_ms"] >= f["p50_ms"] > 0 for f in per.values())
    assert [h["clients"] for h in rep["http"]] == [1, 8, 32]
    assert all(h["requests"] > 0 and h["errors"] == 0 and h["mean_batch"] >= 1 for h in rep["http"])
    assert rep["http"][2]["mean_batch"] > rep["http"][0]["mean_batch"]  # concurrent requests were merged
    assert rep["served_file"] == "model.int8.onnx" and rep["machine"]["matmul_gflops"] > 0
    assert all(v > 0 for v in rep["flops_gflops"].values()) and len(rep["targets"]) == 8
    assert "| HTTP `ikd serve` | 32 clients" in proc.stdout and "| target | met |" in proc.stdout


def test_serving_benchmark_kserve_peer_flags_bodies_and_verdict():
    """`--kserve` parses, the binary body is the v2 extension's layout, and the 32-client verdict needs both the
    1.5x throughput and a p99 no worse (no kserve here: the peer itself only runs in its own environment)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import serving

    args = serving.parse_args(["--kserve", "--kserve-venv", "/tmp/kv"])
    assert args.kserve and args.kserve_venv == "/tmp/kv" and not serving.parse_args([]).kserve
    body, extra = serving.binary_request("good")
    n = int(extra.split("Inference-Header-Content-Length: ")[1].split("\r\n")[0])
    header = json.loads(body[:n])
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 8 and body[n:] == b"\x04\x00\x00\x00good"
    assert json.loads(serving.json_request("good")[0])["inputs"][0]["data"] == ["good"]
    versus = {}
    for server, rate, p99 in (("ikd", 300.0, 90.0), ("kserve", 150.0, 100.0)):
        for proto in serving.PROTOCOLS[1:]:
            for c in serving.CLIENTS:
                serving.keep_best(versus, (server, proto, c), {"rows_per_second": rate, "p99_ms": p99, "errors": 0})
        for c in serving.CLIENTS:
            serving.keep_best(versus, ("kserve", "rest-json", c), {"rows_per_second": rate, "p99_ms": p99, "errors": 0})
    versus[("kserve", "grpc", 32)] = {"rows_per_second": 250.0, "p99_ms": 100.0, "errors": 0}
    levels = {c: {"rows_per_second": 300.0, "p99_ms": 120.0, "errors": 0} for c in serving.CLIENTS}
    rep = serving.versus_report(versus, levels, "0.21.0", 2)
    at = rep["at_32_clients"]
    assert at["rest-binary"]["met"] and at["rest-binary"]["throughput_ratio"] == 2.0
    assert not at["rest-json"]["met"] and not at["rest-json"]["p99_no_worse"]  # 2x, but p99 120 > 100
    assert not at["grpc"]["met"] and at["grpc"]["p99_no_worse"]  # 1.2x only
    assert len(rep["levels"]) == 2 * len(serving.PROTOCOLS) * len(serving.CLIENTS)


def test_step_cost_pairs_rounds_and_refuses_unknown_variants():
    """The ratio is taken round by round against the reference (a drift of the machine between rounds cancels),
    and a variant or reference that is not known is refused before anything runs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import step_cost

    def run(ms):
        return {"step_time_ms": ms, "counts_per_step": {"student_fwd": 1.0}}

    text = step_cost.table({"kd": [run(100.0), run(200.0)], "x": [run(150.0), run(400.0)]}, "kd", "h")
    assert "| x | 150.0 | 400.0 | 275.0 | 1.75 [1.50, 2.00] | student_fwd 1 |" in text
    assert "| kd | 100.0 | 200.0 | 150.0 | 1.00 [1.00, 1.00] |" in text
    for extra in (["--variants", "kd,nope"], ["--variants", "kd", "--reference", "finetune"]):
        assert "step_cost.py: unknown variant" in refused("step_cost.py", "--data", "d", "--teacher", "t", *extra)


@pytest.mark.bench
@pytest.mark.timeout(600)
def test_step_cost_measures_variants_in_turns(tmp_path):
    from ikd.cli import main

    tiny = str(ROOT / "configs" / "tiny.yaml")
    assert main(["prepare", "-q", "--params", tiny, "--data", str(shared("sst2")), "--out", str(tmp_path / "p")]) == 0
    assert main(["adapt", "-q", "--params", tiny, "--data", str(tmp_path / "p"), "--out", str(tmp_path / "a")]) == 0
    out = tmp_path / "cost.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "step_cost.py"),
            "--params",
            tiny,
            "--data",
            str(tmp_path / "p"),
            "--teacher",
            str(tmp_path / "a"),
            "--variants",
            "kd,metadistil:head4",
            "--steps",
            "4",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "IKD_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert {k: len(v) for k, v in results.items()} == {"kd": 2, "metadistil:head4": 2}
    assert all(r["steps"] == 4 and r["step_time_ms"] > 0 for runs in results.values() for r in runs)
    assert results["metadistil:head4"][0]["counts_per_step"]["student_jvp"] > 0  # the pilot steps ran
    assert "| metadistil:head4 |" in proc.stdout and "× kd (paired by round" in proc.stdout
