"""The strategies benchmark runs end to end (tiny models, one seed) and writes the JSON it promises."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, shared


@pytest.mark.timeout(600)
def test_strategies_benchmark_writes_every_variant(tmp_path):
    data = shared("sst2")
    out = tmp_path / "out.json"
    variants = "finetune,kd,prokt,metadistil,ikd,talking"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "strategies.py"), "--quick", "--params",
                           str(ROOT / "configs" / "tiny.yaml"), "--data", str(data), "--seeds", "2",
                           "--variants", variants, "--set", "distill.max_steps=3", "--set", "data.max_dev_rows=64",
                           "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result) == variants.split(",")
    for r in result.values():
        assert len(r["seeds"]) == 2 and 0.0 <= r["metric_mean"] <= 1.0 and r["metric_std"] >= 0.0
        assert r["step_time_ratio_vs_kd"] > 0 and r["peak_mem_ratio_vs_kd"] > 0
    assert result["kd"]["step_time_ratio_vs_kd"] == 1.0
    assert "| metadistil |" in proc.stdout and "step time × kd" in proc.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "strategies.py"), "--variants", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown variant" in bad.stderr
