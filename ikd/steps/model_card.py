"""Model cards: the ``README.md`` the adapt, distill and export steps write beside what they produce.

A card follows the Hugging Face model card convention (YAML front matter: ``license``, ``base_model``,
``pipeline_tag``, ``tags``, ``datasets``, ``model-index``; then Markdown) so that a folder pushed to a hub or a
model registry describes itself. In DVC and Kubeflow ``export`` does not see ``evaluate`` or the teacher folder, so
each step writes the card of what it made from what it has: its own ``step.json`` / ``metrics.json`` (and
``metadata.json`` for export), and the card of its input (the teacher's facts reach the export card through the
student's card). The facts of a card are also kept in its front matter under ``ikd`` (plain JSON types), which is
how the next step reads them; a folder written before cards existed has none, and the card says what is not known.

:func:`render` is pure (facts -> Markdown); the ``*_facts`` functions read the recorded JSON; ``write_*`` are what
the steps call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ikd.core.metrics import read_json
from ikd.core.packs import CARD_FILE, UNKNOWN_LICENSE, front_matter, hub_id, license_of

_NONE = "—"


# ---- licenses (each base model's: ikd.core.packs.license_of) ----------------------------------------------
def combined_license(models: list[dict[str, Any]]) -> str:
    """The front matter's ``license``: the one license of every pretrained base model when they agree and are known,
    ``other`` when they differ, ``unknown`` when one is unknown or nothing pretrained went in."""
    found = {str(m.get("license")) for m in models if m.get("init") != "random"}
    if not found or "None" in found or UNKNOWN_LICENSE in found:
        return "unknown"
    return found.pop() if len(found) == 1 else "other"


# ---- facts from the recorded JSON -------------------------------------------------------------------------
def _json(path: Path) -> dict[str, Any]:
    return read_json(path) if Path(path).is_file() else {}


def _model(step: dict[str, Any], role: str) -> dict[str, Any]:
    keep = ("name", "init", "revision", "weights_sha256", "layers", "pooling", "imported")
    found = step.get("model") or (step.get("lineage") or {}).get("models", {}).get(role) or {}
    return {k: found[k] for k in keep if k in found}


def _common(info: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    code = (step.get("lineage") or {}).get("code") or {}
    return {
        "task": info.get("task"),
        "labels": [str(n) for n in info.get("label_names") or []],
        "text_fields": list(info.get("text_fields") or []),
        "max_length": info.get("max_length"),
        "metric": (info.get("metrics") or ["accuracy"])[0],
        "data": (step.get("lineage") or {}).get("data") or {},
        "code": {k: code.get(k) for k in ("ikd_version", "git_revision")},
    }


def teacher_facts(step_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The card of an adapt step's folder (``step.json``, ``metrics.json``; ``info``: the prepared schema)."""
    step, metrics = _json(step_dir / "step.json"), _json(step_dir / "metrics.json")
    imported = "imported" in metrics
    dev = (metrics.get("imported") or metrics.get("train") or {}).get("dev")
    teacher = _model(step, "teacher")
    teacher |= {
        "license": license_of(teacher),
        "how": "imported as it is (adapt.mode: import)" if imported else "fine-tuned by `ikd adapt`",
        "dev": dev or None,
    }
    return {"kind": "teacher", **_common(info, step), "teacher": teacher}


def student_facts(step_dir: Path, info: dict[str, Any], teacher_dir: Path | None) -> dict[str, Any]:
    """The card of a distill step's folder. The teacher's facts come from its folder's card, else (an older
    folder) from its ``step.json`` / ``metrics.json``; without a teacher folder (a pretrained teacher, or export
    reading a student folder without a card) from this step's lineage, with no dev figure; none when the step read
    no teacher (``finetune``)."""
    step, metrics = _json(step_dir / "step.json"), _json(step_dir / "metrics.json")
    key = str((step.get("inputs") or {}).get("teacher") or "")
    teacher: dict[str, Any] | None = None
    if teacher_dir is not None:
        teacher = read_card(teacher_dir / "model").get("teacher") or teacher_facts(teacher_dir, info)["teacher"]
    elif key:  # the key of a pretrained teacher is its model record (JSON), an adapted one's a step key
        teacher = _model({"lineage": step.get("lineage") or {}}, "teacher")
        how = (
            "pretrained, not adapted" if key.startswith("{") else "fine-tuned by `ikd adapt`; its card was not at hand"
        )
        teacher |= {"license": license_of(teacher), "how": how, "dev": None}
    student = _model(step, "student")
    student |= {
        "license": license_of(student),
        "strategy": metrics.get("strategy"),
        "steps": (metrics.get("train") or {}).get("steps"),
        "dev": (metrics.get("train") or {}).get("dev") or None,
        "calib": {k: v for k, v in (metrics.get("calib") or {}).items() if k != "rows"} or None,
    }
    return {"kind": "student", **_common(info, step), "teacher": teacher, "student": student}


def export_facts(step_dir: Path, student_dir: Path) -> dict[str, Any]:
    """The card of an export step's folder: the student's card (or, for a student folder without one, its
    ``step.json`` / ``metrics.json``, the teacher's figures then unknown) and every ONNX file of ``metadata.json``."""
    meta, step = _json(step_dir / "metadata.json"), _json(step_dir / "step.json")
    info = {k: meta.get(k) for k in ("task", "label_names", "text_fields", "max_length")}
    base = read_card(student_dir / "model")
    dev = (meta.get("metrics") or {}).get("dev") or {}
    info["metrics"] = [base.get("metric") or next(iter(dev), "accuracy")]
    if base.get("kind") != "student":
        base = student_facts(student_dir, info, None)
    guard = meta.get("int8_guard") or {}
    onnx = {
        "served": meta.get("model_file"),
        "serve": ((meta.get("config") or {}).get("export") or {}).get("serve"),
        "judged_on": meta.get("judged_on"),
        "int8_reason": guard.get("reason"),
        "opset": meta.get("opset"),
        "files": meta.get("files") or {},
    }
    return {**base, "kind": "onnx", **_common(info, step), "onnx": onnx}


def read_card(folder: Path) -> dict[str, Any]:
    """The facts a card in ``folder`` recorded (its front matter's ``ikd``); {} for a folder without a card."""
    found = front_matter(Path(folder) / CARD_FILE).get("ikd")
    return found if isinstance(found, dict) else {}


def write(folder: Path, facts: dict[str, Any]) -> Path:
    path = Path(folder) / CARD_FILE
    path.write_text(render(facts), encoding="utf-8")
    return path


# ---- rendering --------------------------------------------------------------------------------------------
def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else _NONE


def _metric(record: dict[str, Any] | None, name: str) -> Any:
    return (record or {}).get(name)


def retention(facts: dict[str, Any]) -> float | None:
    """The student's dev metric over the teacher's (the primary metric), None when either is unknown or 0."""
    m = facts["metric"]
    s, t = _metric((facts.get("student") or {}).get("dev"), m), _metric((facts.get("teacher") or {}).get("dev"), m)
    return s / t if isinstance(s, (int, float)) and isinstance(t, (int, float)) and t else None


def _front(facts: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face metadata: ``license`` covers every model that went in (the teacher too, for a student),
    ``base_model`` is the one this model's weights started from, ``model-index`` holds its own figures (for the
    ONNX card, those of the served file)."""
    kind = facts["kind"]
    own = facts["teacher"] if kind == "teacher" else facts["student"]
    used = [own] if kind == "teacher" else [x for x in (facts.get("teacher"), own) if x]
    measured = own or {}
    if kind == "onnx":  # the figures of the file ikd serve loads
        measured = facts["onnx"]["files"].get(facts["onnx"].get("served")) or {}
    hub = str((facts.get("data") or {}).get("hub") or "").split(":")[0]
    dataset = {"name": str(facts.get("task")), "type": hub or str(facts.get("task"))}
    runs: list[dict[str, Any]] = [
        {
            "task": {"type": "text-classification"},
            "dataset": {**dataset, "split": split},
            "metrics": [{"type": k, "value": v, "name": f"{split} {k}"} for k, v in measured[split].items()],
        }
        for split in ("dev", "calib")
        if measured.get(split)
    ]
    out: dict[str, Any] = {"license": combined_license(used)}
    if own and own.get("init") != "random" and hub_id(str(own.get("name") or "")):
        out["base_model"] = own["name"]  # a hub id: the hub links it (a local folder is named in the body only)
    out |= {
        "pipeline_tag": "text-classification",
        "library_name": "onnx" if kind == "onnx" else "transformers",
        "tags": ["text-classification", "knowledge-distillation", "ikd", *(["onnx"] if kind == "onnx" else [])],
        **({"datasets": [hub]} if hub else {}),
        "metrics": [facts["metric"]],
    }
    return {**out, "model-index": [{"name": f"{facts.get('task')}-{kind}", "results": runs}], "ikd": facts}


def _model_row(role: str, model: dict[str, Any] | None) -> str:
    if not model:
        return f"| {role} | none | {_NONE} | {_NONE} | {_NONE} |"
    lic = model.get("license") or "none (random initialisation: no base model)"
    sha = model.get("weights_sha256") or _NONE
    base = f"`{model.get('name')}`" + (" (random init)" if model.get("init") == "random" else "")
    return f"| {role} | {base} | {model.get('revision') or _NONE} | {sha} | {lic} |"


def _data_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    if "dvc_source" in data:
        d = data["dvc_source"]
        lines.append(f"- DVC repository `{d.get('repo')}`, path `{d.get('path')}` at commit `{d.get('commit')}`")
    if data.get("source"):
        lines.append(f"- source: `{data['source']}`" + (f" (hub dataset `{data['hub']}`)" if data.get("hub") else ""))
    for name, digest in (data.get("sha256") or {}).items():
        lines.append(f"- `{name}` sha256 `{digest}`")
    if data.get("dvc"):
        d = data["dvc"]
        lines.append(
            f"- DVC md5 `{d.get('md5')}`"
            + (f", tracked by `{d['tracked_by']}` (matches: {d.get('matches')})" if d.get("tracked_by") else "")
        )
    return lines or ["- not recorded (a folder written before ikd recorded data lineage)"]


def _onnx_lines(facts: dict[str, Any]) -> list[str]:
    onnx, m = facts["onnx"], facts["metric"]
    files = onnx.get("files") or {}
    speeds = sorted({k for f in files.values() for k in (f.get("rows_per_second") or {})})
    head = ["file", "variant", f"dev {m}", f"calib {m}", "agreement (calib)", "agreement (dev)"]
    head += [f"rows/s {k}" for k in speeds] + ["size (MB)", "served"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, f in files.items():
        agree = f.get("agreement") or {}
        size = f.get("size_bytes")
        row = [f"`{name}`", str(f.get("variant") or _NONE), _num(_metric(f.get("dev"), m))]
        row += [_num(_metric(f.get("calib"), m)), _num(_metric(agree.get("calib"), "argmax"))]
        row += [_num(_metric(agree.get("dev"), "argmax"))]
        rps = f.get("rows_per_second") or {}
        row += [f"{rps[k]:.1f}" if k in rps else _NONE for k in speeds]
        row += [f"{size / 1e6:.2f}" if isinstance(size, int) else _NONE, "yes" if name == onnx.get("served") else ""]
        lines.append("| " + " | ".join(row) + " |")
    why = {
        "auto": "`export.serve: auto` serves the int8 file when the int8 guard kept one, else the optimized, else the "
        "fp32 graph",
        None: "the export's setting is not recorded",
    }.get(onnx.get("serve"), f"`export.serve: {onnx.get('serve')}` asked for it")
    lines += [
        "",
        "Agreement: how often each file's argmax equals the fp32 PyTorch student's on the same rows. "
        "Speed: rows per second measured by ONNX Runtime on the CPU of the machine that ran `ikd export`.",
        "",
        f"Served by `ikd serve` (`metadata.json` `model_file`): `{onnx.get('served')}`; {why}.",
    ]
    if onnx.get("int8_reason"):
        lines.append(f"The int8 guard (judged on {onnx.get('judged_on')} rows): {onnx['int8_reason']}.")
    return lines


def _limitations(facts: dict[str, Any]) -> list[str]:
    labels = ", ".join(f"`{n}`" for n in facts["labels"])
    fields = " and ".join(f"`{f}`" for f in facts["text_fields"]) or "the text"
    out = [
        f"- It answers with one of the labels {labels} for every input, including text that fits none of them.",
        f"- It reads {fields}; inputs longer than {facts.get('max_length') or 'the tokenizer maximum'} tokens are "
        "truncated (the saved tokenizer's `model_max_length`), so what comes after is never seen.",
        "- The language and domain are those of the training data; figures on other text are not measured.",
        "- Scores (softmax of the logits) are not calibrated probabilities: no temperature was fitted; calibrate on "
        "your own data before reading them as confidences.",
        "- The dev figures come from the data's dev split (the calib rows are carved from train and used by ikd's "
        "own decisions); they say nothing about fairness or robustness.",
    ]
    models = [x for x in (facts.get("teacher"), facts.get("student")) if x]
    if any(x.get("init") == "random" for x in models):
        out.append("- Built from randomly initialised weights (`init: random`): a smoke test, not a usable model.")
    if facts["kind"] == "onnx" and any(f.get("variant") == "int8" for f in facts["onnx"]["files"].values()):
        out.append(
            "- The int8 file has 8-bit weights: it can answer differently from the fp32 student on some inputs (see "
            "its agreement), and its speed-up depends on the CPU's integer instructions."
        )
    return out


def _usage(kind: str) -> list[str]:
    if kind == "onnx":
        return [
            "```",
            "ikd serve --model-dir <this folder>        # Open Inference Protocol v2 over HTTP, /metrics",
            "ikd predict --model-dir <this folder> --input texts.jsonl  # a file of texts, offline",
            "```",
        ]
    return [
        "```python",
        "from transformers import pipeline",
        "",
        'clf = pipeline("text-classification", model="<this folder>", trust_remote_code=True)',
        'clf(["some text"], truncation=True)',
        "```",
        "",
        "`trust_remote_code` runs the `modeling_ikd.py` beside the weights (an imported transformers classifier "
        "needs no remote code). ikd itself loads the folder with `ikd.core.models.load`.",
    ]


def render(facts: dict[str, Any]) -> str:
    """The card (front matter + Markdown) of ``facts`` (:func:`teacher_facts`, :func:`student_facts`,
    :func:`export_facts`)."""
    kind, m = facts["kind"], facts["metric"]
    teacher, student = facts.get("teacher"), facts.get("student")
    what = {"teacher": "teacher", "student": "distilled student", "onnx": "distilled student, as ONNX"}[kind]
    lines = [f"# {facts.get('task')} text classifier: {what}", ""]
    if kind == "teacher":
        lines.append(
            f"The teacher model of an ikd run, {(teacher or {}).get('how')} on the task `{facts.get('task')}`."
        )
    else:
        strat = (student or {}).get("strategy")
        lines.append(
            f"A student model trained by ikd with the `{strat}` strategy"
            + (f" from the teacher `{teacher.get('name')}`" if teacher else " (no teacher)")
            + (" and exported to ONNX for ONNX Runtime." if kind == "onnx" else ".")
        )
    lines += ["", "## Results", "", f"| model | dev {m} | calib {m} |", "| --- | --- | --- |"]
    if teacher:
        lines.append(f"| teacher `{teacher.get('name')}` | {_num(_metric(teacher.get('dev'), m))} | {_NONE} |")
    if student:
        dev, calib = _num(_metric(student.get("dev"), m)), _num(_metric(student.get("calib"), m))
        lines.append(f"| student `{student.get('name')}` (PyTorch) | {dev} | {calib} |")
    kept = retention(facts)
    if kept is not None:
        lines += ["", f"Retention: the student keeps {100 * kept:.2f}% of the teacher's dev {m}."]
    elif teacher is not None and not teacher.get("dev"):
        lines += ["", f"The teacher's dev {m} is not recorded here ({teacher.get('how')})."]
    if kind == "onnx":
        lines += ["", "## ONNX files", "", *_onnx_lines(facts)]
    lines += ["", "## Task and data", ""]
    labels, fields = ", ".join(f"`{n}`" for n in facts["labels"]), ", ".join(f"`{f}`" for f in facts["text_fields"])
    lines.append(f"- task `{facts.get('task')}`, labels (class order) {labels}")
    lines.append(f"- text fields {fields}; max length {facts.get('max_length')} tokens")
    lines += _data_lines(facts.get("data") or {})
    code = facts.get("code") or {}
    lines.append(f"- made by ikd {code.get('ikd_version')} (git revision `{code.get('git_revision') or _NONE}`)")
    lines += ["", "## Base models and licenses", "", "| role | base model | revision | weights sha256 | license |"]
    lines += ["| --- | --- | --- | --- | --- |", _model_row("teacher", teacher)]
    if kind != "teacher":
        lines.append(_model_row("student", student))
    lines += [
        "",
        "The data's own terms apply as well; check them, and each base model's card, before you publish this model.",
        "",
        "## Intended use",
        "",
        f"Classifying text like the training data into the labels of `{facts.get('task')}`"
        + (", served by `ikd serve` or run offline by `ikd predict`." if kind == "onnx" else ".")
        + " Not for decisions about people without a human review and an evaluation on the data it will meet.",
        "",
        "## Limitations",
        "",
        *_limitations(facts),
        "",
        "## How to use",
        "",
        *_usage(kind),
        "",
    ]
    head = yaml.safe_dump(_front(facts), sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{head}---\n\n" + "\n".join(lines)


def write_teacher(folder: Path, info: dict[str, Any]) -> Path:
    """``folder``/model/README.md of an adapt step's folder (its step.json and metrics.json already written)."""
    return write(folder / "model", teacher_facts(folder, info))


def write_student(folder: Path, info: dict[str, Any], teacher_dir: Path | None) -> Path:
    """``folder``/model/README.md of a distill step's folder."""
    return write(folder / "model", student_facts(folder, info, teacher_dir))


def write_export(folder: Path, student_dir: Path) -> Path:
    """``folder``/README.md of an export step's folder (metadata.json and step.json already written)."""
    return write(folder, export_facts(folder, student_dir))
