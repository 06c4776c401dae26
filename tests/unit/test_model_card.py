"""Model cards from recorded step JSON: front matter (license, base_model, model-index), the figures of the
teacher, the student and every ONNX file, the teacher's facts carried through the student's card, older folders."""

import json
from pathlib import Path

import pytest
import yaml

from ikd.core.packs import UNKNOWN_LICENSE, front_matter, license_of
from ikd.steps import model_card as mc

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"
INFO = {
    "task": "sst2",
    "label_names": ["negative", "positive"],
    "text_fields": ["sentence"],
    "max_length": 48,
    "metrics": ["accuracy", "f1"],
}
DATA = {"source": "data/raw", "sha256": {"train.tsv": "a" * 64, "dev.tsv": "b" * 64}}
CODE = {"ikd_version": "0.1.0", "git_revision": "c" * 40, "git_dirty": False}


def _write(folder: Path, name: str, doc: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(doc))


def _model(name: str, sha: str) -> dict:
    return {"name": name, "init": "pretrained", "revision": None, "weights_sha256": sha, "layers": 6}


def _card(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _results(front: dict) -> dict:
    """model-index figures as {"<split> <metric>": value}, each split's result naming that split."""
    out = {}
    for result in front["model-index"][0]["results"]:
        split = result["dataset"]["split"]
        for m in result["metrics"]:
            assert m["name"] == f"{split} {m['type']}"
            out[m["name"]] = m["value"]
    return out


@pytest.fixture
def run(tmp_path):
    """adapt, distill and export step folders as the steps record them (their JSON only)."""
    teacher, student = _model(MPNET, "1" * 64), _model(MINILM, "2" * 64)
    adapt, distill, export = tmp_path / "adapt", tmp_path / "distill", tmp_path / "export"
    lineage = {"data": DATA, "models": {"teacher": teacher}, "code": CODE}
    _write(adapt, "step.json", {"step": "adapt", "model": teacher, "lineage": lineage})
    _write(adapt, "metrics.json", {"train": {"steps": 9, "dev": {"accuracy": 0.9125, "f1": 0.9}}})
    (adapt / "model").mkdir()
    lineage = {"data": DATA, "models": {"teacher": teacher, "student": student}, "code": CODE}
    inputs = {"data": "d" * 16, "teacher": "e" * 16}
    _write(distill, "step.json", {"step": "distill", "inputs": inputs, "model": student, "lineage": lineage})
    _write(
        distill,
        "metrics.json",
        {"strategy": "kd", "train": {"steps": 7, "dev": {"accuracy": 0.8395, "f1": 0.83}}, "calib": {"accuracy": 0.85}},
    )
    (distill / "model").mkdir()

    def file(variant, dev, calib_agree, dev_agree, speed):
        agreement = {"reference": "torch student", "calib": {"argmax": calib_agree, "rows": 400}}
        agreement["dev"] = {"argmax": dev_agree, "rows": 80}
        return {
            "variant": variant,
            "sha256": variant[0] * 64,
            "agreement": agreement,
            "calib": {"accuracy": 0.5},
            "dev": {"accuracy": dev},
            "rows_per_second": {"batch_1": speed, "batch_32_sorted": speed * 3},
            "size_bytes": 2_500_000,
        }

    files = {
        "model.onnx": file("fp32", 0.8395, 1.0, 1.0, 101.25),
        "model.opt.onnx": file("optimized", 0.8395, 0.9975, 1.0, 150.5),
        "model.int8.onnx": file("int8", 0.8271, 0.9825, 0.9625, 310.0),
    }
    reason = "int8: per_channel kept: argmax agreement 0.9825 >= 0.98"
    meta = {
        "model_file": "model.int8.onnx",
        "files": files,
        "judged_on": "calib",
        "int8_guard": {"reason": reason, "kept": "per_channel"},
        "task": "sst2",
        "label_names": INFO["label_names"],
        "text_fields": ["sentence"],
        "max_length": 48,
        "metrics": {"dev": {"accuracy": 0.8395, "f1": 0.83}},
        "config": {"export": {"serve": "auto"}},
    }
    _write(export, "metadata.json", meta)
    _write(export, "step.json", {"step": "export", "lineage": lineage})
    return adapt, distill, export


def test_teacher_card_front_matter_and_figures(run):
    adapt, _, _ = run
    front, body = _card(mc.write_teacher(adapt, INFO))
    assert front["license"] == "apache-2.0" and front["base_model"] == MPNET  # the pack's recorded license
    assert front["pipeline_tag"] == "text-classification" and "knowledge-distillation" in front["tags"]
    assert _results(front) == {"dev accuracy": 0.9125, "dev f1": 0.9}
    assert front["ikd"]["teacher"]["dev"] == {"accuracy": 0.9125, "f1": 0.9}
    assert "| teacher `sentence-transformers/all-mpnet-base-v2` | 0.9125 |" in body
    assert "`train.tsv` sha256 `" + "a" * 64 + "`" in body and "inputs longer than 48 tokens" in body
    assert "`negative`, `positive`" in body and "apache-2.0 |" in body


def test_student_card_carries_the_teacher_and_the_retention(run):
    adapt, distill, _ = run
    mc.write_teacher(adapt, INFO)
    front, body = _card(mc.write_student(distill, INFO, adapt))
    assert front["license"] == "apache-2.0" and front["base_model"] == MINILM
    facts = front["ikd"]
    assert facts["teacher"]["dev"]["accuracy"] == 0.9125 and facts["student"]["calib"] == {"accuracy": 0.85}
    assert facts["student"]["strategy"] == "kd"
    assert _results(front) == {"dev accuracy": 0.8395, "dev f1": 0.83, "calib accuracy": 0.85}
    assert f"keeps {100 * 0.8395 / 0.9125:.2f}% of the teacher's dev accuracy" in body
    assert "| student `sentence-transformers/all-MiniLM-L6-v2` (PyTorch) | 0.8395 | 0.8500 |" in body
    assert body.count("| apache-2.0 |") == 2  # both base models' licenses


def test_export_card_lists_every_onnx_file_with_its_agreement(run):
    adapt, distill, export = run
    mc.write_teacher(adapt, INFO)
    mc.write_student(distill, INFO, adapt)
    front, body = _card(mc.write_export(export, distill))
    meta = json.loads((export / "metadata.json").read_text())
    assert front["library_name"] == "onnx" and "onnx" in front["tags"] and front["license"] == "apache-2.0"
    served = meta["files"][meta["model_file"]]
    assert _results(front) == {"dev accuracy": served["dev"]["accuracy"], "calib accuracy": served["calib"]["accuracy"]}
    rows = {line.split(" | ")[0].strip("| `"): line for line in body.splitlines() if line.startswith("| `model")}
    assert set(rows) == set(meta["files"])
    for name, f in meta["files"].items():
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert cells[1] == f["variant"] and cells[2] == f"{f['dev']['accuracy']:.4f}"
        assert cells[4:6] == [f"{f['agreement'][s]['argmax']:.4f}" for s in ("calib", "dev")]
        assert cells[6:8] == [f"{f['rows_per_second'][k]:.1f}" for k in ("batch_1", "batch_32_sorted")]
        assert cells[-1] == ("yes" if name == meta["model_file"] else "")
    assert meta["int8_guard"]["reason"] in body and "`export.serve: auto`" in body
    assert "| teacher `sentence-transformers/all-mpnet-base-v2` | 0.9125 |" in body  # through the student's card
    assert "8-bit weights" in body


def test_the_hub_reads_the_front_matter(run):
    """huggingface_hub's own parser (what the hub applies on upload) takes the card: license, base model, one
    evaluation result per split."""
    hub = pytest.importorskip("huggingface_hub")
    adapt, distill, _ = run
    mc.write_teacher(adapt, INFO)
    data = hub.ModelCard.load(mc.write_student(distill, INFO, adapt)).data
    assert (data.license, data.base_model, data.pipeline_tag) == ("apache-2.0", MINILM, "text-classification")
    got = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == {("dev", "accuracy"): 0.8395, ("dev", "f1"): 0.83, ("calib", "accuracy"): 0.85}


def test_folders_written_before_cards(run):
    """No card in the teacher or student folder: the student card reads the teacher's metrics.json, the export
    card the student's step.json and metrics.json (the teacher's figure is then not known)."""
    adapt, distill, export = run
    facts = mc.student_facts(distill, INFO, adapt)
    assert facts["teacher"]["dev"]["accuracy"] == 0.9125 and mc.retention(facts) == pytest.approx(0.8395 / 0.9125)
    front, body = _card(mc.write_export(export, distill))
    assert front["ikd"]["teacher"]["name"] == MPNET and front["ikd"]["teacher"]["dev"] is None
    assert "The teacher's dev accuracy is not recorded here" in body and "Retention" not in body
    assert front["ikd"]["student"]["dev"]["accuracy"] == 0.8395


def test_license_lookup(tmp_path):
    assert license_of({"name": MINILM, "init": "pretrained"}) == "apache-2.0"
    assert license_of({"name": "tiny", "init": "random"}) is None
    assert license_of({"name": "nobody/not-cached-anywhere", "init": "pretrained"}) == UNKNOWN_LICENSE
    local = tmp_path / "base"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# a model\n")
    mine = {"name": str(local), "init": "pretrained", "license": license_of({"name": str(local)})}
    assert mine["license"] == "mit"
    apache = {"name": MINILM, "init": "pretrained", "license": "apache-2.0"}
    assert mc.combined_license([apache, mine]) == "other"
    assert mc.combined_license([apache, {**mine, "license": UNKNOWN_LICENSE}]) == "unknown"
    assert mc.combined_license([{"name": "tiny", "init": "random", "license": None}]) == "unknown"
    (local / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert front_matter(local / "README.md") == {} and front_matter(local / "missing.md") == {}
