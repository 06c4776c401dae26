import numpy as np
import pytest

from ikd import metrics


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
