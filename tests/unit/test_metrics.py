import numpy as np
import pytest

from ikd.core import metrics


def test_accuracy_f1_matthews_golden():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    p = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    # tp=3 fp=1 fn=1 tn=3
    assert metrics.accuracy(y, p) == pytest.approx(0.75)
    assert metrics.f1(y, p) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert metrics.matthews(y, p) == pytest.approx((3 * 3 - 1 * 1) / np.sqrt(4 * 4 * 4 * 4))


def test_matthews_degenerate_and_perfect():
    y = np.array([0, 1, 0, 1])
    assert metrics.matthews(y, np.zeros(4, dtype=int)) == 0.0  # constant prediction: undefined -> 0
    assert metrics.matthews(y, y) == pytest.approx(1.0)
    assert metrics.matthews(y, 1 - y) == pytest.approx(-1.0)


def test_compute_and_confusion():
    y = np.array([0, 1, 2, 2])
    p = np.array([0, 2, 2, 2])
    assert metrics.compute(["accuracy"], y, p) == {"accuracy": 0.75}
    assert metrics.confusion(y, p, 3) == [[1, 0, 0], [0, 0, 1], [0, 0, 2]]


def test_write_json_is_atomic(tmp_path):
    f = tmp_path / "m.json"
    metrics.write_json(f, {"a": 1})
    assert metrics.read_json(f) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_tracker_summary_keeps_the_chosen_numbers_and_replaces_the_folder_only_on_success(tmp_path):
    import json

    import numpy as np
    import pytest

    from ikd.core.metrics import Tracker, pick

    pytest.importorskip("dvclive")
    metrics = {
        "task": "sst2",
        "teacher": {"accuracy": 0.9, "layers": 12, "model": "m", "parameters": 100},
        "student": {"accuracy": 0.8, "sentences_per_second": 50.0, "parameters": 10},
        "ratios": {"parameters": 10.0, "metric_retained": None},
    }
    assert pick(metrics, ("teacher.accuracy", "teacher.f1", "ratios")) == {
        "teacher": {"accuracy": 0.9},
        "ratios": {"parameters": 10.0, "metric_retained": None},
    }
    live = tmp_path / "dvclive" / "evaluate"
    with Tracker(live) as t:
        t.summary("evaluate", metrics)
        t.confusion("student", np.array([0, 1, 1]), np.array([0, 1, 0]), ["neg", "pos"])
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["teacher"] == {"accuracy": 0.9, "parameters": 100}
    assert summary["student"] == {"accuracy": 0.8, "sentences_per_second": 50.0, "parameters": 10}
    assert summary["ratios"] == {"parameters": 10.0}  # None and strings are not metrics
    pairs = json.loads((live / "plots" / "sklearn" / "confusion" / "student.json").read_text())
    assert [(p["actual"], p["predicted"]) for p in pairs] == [("neg", "neg"), ("pos", "pos"), ("pos", "neg")]
    with pytest.raises(RuntimeError), Tracker(live) as t:  # noqa: PT012 - the failure happens inside the tracker
        t.summary("evaluate", {"student": {"accuracy": 0.1}})
        raise RuntimeError("the step failed")
    assert json.loads((live / "metrics.json").read_text()) == summary  # the previous files are intact
    assert sorted(p.name for p in live.parent.iterdir()) == ["evaluate"]  # no temporary folder left behind
    assert Tracker(None).live is None  # without --live: nothing is written
