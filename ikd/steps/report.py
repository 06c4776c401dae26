"""The reports: ``report.md`` with its pictures in ``plots/`` beside it, and ``report.html``, the same report in one
self-contained file (images inlined as data URIs, styles inline, no script).

``ikd evaluate`` writes one into its output folder (tables, training curves of teacher and student, dev confusion
matrices, metric against throughput of the torch models); ``ikd run`` writes the run's into the run folder after
export, where the trade-off picture also has every ONNX file.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from ikd.core.metrics import read_json
from ikd.steps import plots

PLOTS = "plots"  # the pictures' folder, beside report.md


def evaluation_markdown(result: dict[str, Any], names: list[str], title: str | None = None) -> str:
    """The evaluation tables: one row per model, metric and cost columns; the distill step's training cost."""
    cols = [*names, "parameters", "size (MB)", "layers", "sentences/s", "ms/sentence (batch 1)"]
    lines = [
        title or f"# ikd evaluation: {result['task']}",
        "",
        f"Dev rows: {result['dev_rows']}."
        + (f" Device: {result['device']}." if "device" in result else "")
        + f" Primary metric: {names[0]}.",
        "",
        "| model | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for role in ("teacher", "student"):
        if role not in result:
            continue
        r = result[role]
        cells = [f"{r[n]:.4f}" for n in names] + [
            f"{r['parameters']:,}",
            f"{r['size_bytes'] / 1e6:.1f}",
            str(r["layers"]),
            f"{r['sentences_per_second']:.1f}",
            f"{r['latency_ms_batch1']:.2f}",
        ]
        lines.append(f"| {role} ({r['model']}) | " + " | ".join(cells) + " |")
    if "majority" in result:
        m = result["majority"]
        lines.append(
            f"| majority class ('{m['label']}' everywhere) | "
            + " | ".join([f"{m[n]:.4f}" for n in names] + ["", "", "", "", ""])
            + " |"
        )
    if "ratios" in result:
        q = result["ratios"]
        lines += [
            "",
            f"Student vs teacher: {q['parameters']}x fewer parameters, {q['speedup']}x faster, "
            f"{q['metric_retained']} of the teacher's {names[0]}.",
        ]
        if "majority" in result and "teacher" in result:
            gap = result["teacher"][names[0]] - result["majority"][names[0]]
            lines.append(
                f"The teacher is {gap:+.4f} {names[0]} above the majority class"
                + (": it has barely learned the task, so the retention says little." if gap < 0.05 else ".")
            )
    if "distill" in result:
        d = result["distill"]
        counts = ", ".join(f"{k} {v:g}" for k, v in d["counts_per_step"].items())
        lines += [
            "",
            "## Training cost (distill)",
            "",
            "| strategy | steps | ms/step | peak memory (MB) | transfer rows | forward/backward per step |",
            "|---|---|---|---|---|---|",
            f"| {d['strategy']} | {d['steps']} | {d['step_time_ms']} | {d['peak_memory_bytes'] / 2**20:.0f} | "
            f"{d['transfer_rows']} | {counts} |",
        ]
    return "\n".join(lines) + "\n"


def export_markdown(meta: dict[str, Any], metric: str) -> str:
    """The ONNX files of the export's ``metadata.json``: dev metric, agreement with the torch student, speed."""
    lines = [
        "## ONNX files (export)",
        "",
        f"| file | variant | dev {metric} | argmax agreement with torch (dev) | sentences/s (batch 1) "
        "| sentences/s (batched) | size (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in meta.get("files", {}).items():
        speed = f.get("rows_per_second", {})
        batched = [v for k, v in speed.items() if k != "batch_1"]
        agreement = f.get("agreement")  # {split: {argmax, rows}} (older exports: none)
        dev_agreement = agreement.get("dev", {}).get("argmax") if isinstance(agreement, dict) else None
        cells = [
            f.get("dev", {}).get(metric),
            dev_agreement,
            speed.get("batch_1"),
            batched[0] if batched else None,
            f["size_bytes"] / 1e6 if "size_bytes" in f else None,
        ]
        shown = [
            "" if v is None else f"{v:{fmt}}" for v, fmt in zip(cells, (".4f", ".4f", ".1f", ".1f", ".1f"), strict=True)
        ]
        served = " (served)" if name == meta.get("model_file") else ""
        lines.append(f"| {name}{served} | {f['variant']} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def figures(
    evaluation: dict[str, Any],
    confusion: dict[str, Any],
    histories: dict[str, Path],
    export_meta: dict[str, Any] | None = None,
) -> list[tuple[str, str, str, dict[str, Any]]]:
    """The report's pictures as :func:`ikd.steps.plots.save` takes them. ``histories``: step name (adapt,
    distill) -> its ``history.json`` (missing files are left out)."""
    out = []
    for step, path in histories.items():
        if path.is_file():
            who = "teacher" if step == "adapt" else "student"
            out.append((f"curves-{step}", "curves", f"{step} ({who})", plots.curve_series(read_json(path))))
    out.append(("confusion", "confusion", "dev confusion matrices", plots.confusion_series(confusion)))
    where = "torch and every ONNX file" if export_meta else "torch"
    out.append(
        (
            "tradeoff",
            "tradeoff",
            f"dev {evaluation['primary_metric']} against throughput ({where})",
            plots.tradeoff_series(evaluation, export_meta),
        )
    )
    return out


def figures_markdown(written: list[tuple[str, str]]) -> str:
    lines = ["## Figures", ""]
    for title, name in written:
        lines += [f"![{title}]({PLOTS}/{name})", ""]
    return "\n".join(lines)


def write(folder: Path, markdown: str, figs: list[tuple[str, str, str, dict[str, Any]]]) -> None:
    """``folder/report.md`` (``markdown`` and the pictures ``figs``, drawn into ``folder/plots/``) and
    ``folder/report.html``."""
    written = plots.save(folder / PLOTS, figs)
    text = markdown.rstrip("\n") + "\n\n" + figures_markdown(written)
    (folder / "report.md").write_text(text)
    (folder / "report.html").write_text(to_html(text, folder))


def run_report(out: Path, folders: dict[str, Path], summary: dict[str, Any]) -> Path:
    """The run's report in ``out`` from its step folders (step name -> folder) and its metrics.json
    ``summary``; returns the path of report.md."""
    ev = read_json(folders["evaluate"] / "metrics.json")
    metric = ev["primary_metric"]
    meta_file = folders["export"] / "metadata.json"
    meta = read_json(meta_file) if meta_file.is_file() else None
    names = read_json(folders["prepare"] / "schema.json")["metrics"]
    steps = ", ".join(
        f"{k} {v['seconds']:.0f} s" if v.get("status") == "ran" else f"{k} up to date"
        for k, v in summary.get("steps", {}).items()
    )
    head = [
        f"# ikd run: {ev['task']} ({summary.get('strategy')})",
        "",
        f"Steps: {steps}.",
        "",
        evaluation_markdown(ev, names, title="## Evaluation (dev)"),
    ]
    if meta:
        head.append(export_markdown(meta, metric))
    histories = {s: folders[s] / "history.json" for s in ("adapt", "distill")}
    figs = figures(ev, read_json(folders["evaluate"] / "confusion.json"), histories, meta)
    write(out, "\n".join(head), figs)
    return out / "report.md"


_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def to_html(markdown: str, folder: Path) -> str:
    """The Markdown ikd's reports are made of (headings, paragraphs, pipe tables, one image a line, relative to
    ``folder``) as one HTML page with the images inlined."""
    body: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"^(#{1,6}) (.*)$", line):
            n = len(m.group(1))
            body.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            head, rest = _cells(rows[0]), [r for r in rows[1:] if not re.fullmatch(r"[|\-: ]+", r)]
            body.append("<table>")
            body.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(r)) + "</tr>" for r in rest]
            body.append("</table>")
        elif m := _IMAGE.match(line.strip()):
            data = base64.b64encode((folder / m.group("src")).read_bytes()).decode("ascii")
            alt = html.escape(m.group("alt"))
            body.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption>')
            body.append("</figure>")
            i += 1
        else:
            para = [line]
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||!\[)", lines[i]):
                para.append(lines[i])
                i += 1
            body.append(f"<p>{_inline(' '.join(para))}</p>")
    title = next((html.escape(x.lstrip("# ")) for x in lines if x.startswith("# ")), "ikd report")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{title}</title>",
            f"<style>{_STYLE}</style>",
            "</head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )


_STYLE = (
    "body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}"
)
