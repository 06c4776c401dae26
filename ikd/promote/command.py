"""``ikd promote`` (and the KFP ``promote`` task): decide, then register and roll out when the new model wins.

Outputs, in ``--out``: ``decision.json`` (decision, reasons, both sides' figures, registry ids, rollout result) and
``decision.md`` (the same for people; the KFP Markdown artifact). A refusal is a result, not an error: exit 0
unless ``--fail-on-refuse``. Bad input (no export, unreadable metadata, no held-out rows) and a rollout that had
to be rolled back exit non-zero, after the files are written.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ikd.core.metrics import read_json, write_json
from ikd.errors import ConfigError, IkdError
from ikd.opsconfig import PromoteConfig
from ikd.promote import compare, registry, rollout

log = logging.getLogger("ikd")


class PromotionRefused(IkdError):
    """``--fail-on-refuse``: the gate said no (the message lists why)."""


def resolve_current(
    cfg: PromoteConfig, spec: str, registry_api: registry.Registry | None = None, k8s_api=None
) -> tuple[Path | None, str]:
    """The served model's folder for ``spec`` (see ``promote.current``), or None when nothing is served; and
    where it came from, in words."""
    spec = spec.strip()
    if spec in ("", "none"):
        return None, "nothing served"
    if spec.startswith("registry:"):
        name = spec.removeprefix("registry:")
        if not cfg.registry_url:
            raise ConfigError(f"promote.current {spec}: needs promote.registry_url")
        uri = registry.served_uri(cfg, name, registry_api)
        return (_local(uri, spec) if uri else None), f"{spec} -> {uri or 'no version registered'}"
    if spec.startswith("inferenceservice:"):
        ns, _, name = spec.removeprefix("inferenceservice:").rpartition("/")
        target_cfg = cfg.model_copy(
            update={"target": "inferenceservice", "namespace": ns or cfg.namespace, "name": name}
        )
        uri = rollout.Target(target_cfg, k8s_api).served_uri()
        return (_local(uri, spec) if uri else None), f"{spec} -> {uri or 'no storage URI'}"
    return Path(spec), spec


def _local(uri: str, spec: str) -> Path:
    path = Path(uri.removeprefix("file://"))
    if ("://" in uri and not uri.startswith("file://")) or not path.is_dir():
        raise IkdError(
            f"promote.current {spec}: serves {uri}, which is not a folder readable here; give the served export "
            "folder as --current (e.g. a copy fetched with `dvc get-url`)"
        )
    return path


def version_of(new_dir: Path, sha256: str) -> str:
    """The model version's name: the export step's key (what it was made from), else the model's sha256."""
    step = new_dir / "step.json"
    key = read_json(step).get("key") if step.is_file() else None
    return f"v-{(key or sha256)[:12]}"


def run(
    cfg: PromoteConfig,
    new_dir: Path,
    data: Path,
    out: Path,
    current: str | None = None,
    registry_api: registry.Registry | None = None,
    k8s_api=None,
) -> dict[str, Any]:
    """Compare, decide, register and roll out (when promoted); write ``out``/decision.json and decision.md.
    Returns the decision record. Raises RolloutError (after writing the files) when the rollout was undone."""
    new_dir = Path(new_dir)
    new = compare.load(new_dir, "new")
    rows = compare.read_heldout(Path(data), cfg.max_rows)
    current_dir, current_from = resolve_current(cfg, cfg.current if current is None else current, registry_api, k8s_api)
    cur = compare.load(current_dir, "current") if current_dir is not None else None
    new_side, cur_side = compare.score(new, cur, rows, cfg)
    decision = compare.decide(new_side, cur_side, rows, cfg)
    version = version_of(new_dir, new_side.sha256)
    record: dict[str, Any] = {
        "decision": "promote" if decision.promote else "refuse",
        "reasons": decision.reasons,
        "current_from": current_from,
        "version": version,
        **decision.figures,
        "registry": None,
        "rollout": None,
    }
    if decision.promote:
        uri = cfg.storage_uri.format(version=version, sha256=new_side.sha256) if cfg.storage_uri else None
        record["storage_uri"] = uri
        if cfg.registry_url and uri:
            step = new_dir / "step.json"
            lineage = read_json(step).get("lineage", {}) if step.is_file() else {}
            props = registry.properties(decision.figures, lineage, {"decision": "promote"})
            opset = int(new.metadata.get("opset") or 0)
            record["registry"] = registry.register(cfg, version, uri, opset, props, registry_api)
        if cfg.target != "none" and uri:
            record["rollout"] = rollout.Target(cfg, k8s_api).rollout(uri, version)
            if record["rollout"]["status"] != "ready":
                record["decision"] = "rolled_back"
    write(out, record)
    if record["decision"] == "rolled_back":
        r = record["rollout"]
        raise rollout.RolloutError(
            f"{r['target']}: the new revision was not ready within {cfg.timeout_s:g} s; rolled back to "
            f"{r['previous_uri']} (decision in {Path(out) / 'decision.json'})"
        )
    return record


def markdown(record: dict[str, Any]) -> str:
    """decision.md: the decision, its reasons, both sides' figures, what was registered and rolled out."""
    lines = [
        f"# Promotion: {record['decision']}",
        "",
        f"Version `{record['version']}`; current: {record['current_from']}.",
    ]
    lines += ["", "## Reasons", "", *(f"- {r}" for r in record["reasons"])]
    metric = record["metric"]
    lines += ["", f"## Figures ({record['rows']} {record['split']} rows)", ""]
    lines += [f"| model | {metric} | p50 ms / batch | sha256 |", "| --- | --- | --- | --- |"]
    for side in ("new", "current"):
        s = record.get(side)
        if s:
            lines.append(f"| {side} | {s['metrics'][metric]:.4f} | {s['p50_ms']:.2f} | `{s['sha256'][:12]}` |")
    if record.get("agreement") is not None:
        lines += ["", f"Argmax agreement of new and current: {record['agreement']:.4f}."]
    if record.get("registry"):
        lines += ["", "## Registry", "", *(f"- {k}: {v}" for k, v in record["registry"].items())]
    if record.get("rollout"):
        lines += ["", "## Rollout", "", *(f"- {k}: {v}" for k, v in record["rollout"].items())]
    return "\n".join(lines) + "\n"


def write(out: Path, record: dict[str, Any]) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "decision.json", record)
    (out / "decision.md").write_text(markdown(record), encoding="utf-8")


def add_parser(sub) -> None:
    """``ikd promote``'s arguments (``sub``: the ``ikd`` subparsers)."""
    p = sub.add_parser(
        "promote",
        help="compare a new export with the served model on held-out rows; when it wins, register it and roll "
        "it out (config section promote)",
    )
    p.add_argument("--params", default="params.yaml", help="config YAML (default: params.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. promote.min_gain=0.005 (repeatable; default: none)",
    )
    p.add_argument("--data", required=True, help="prepared data folder (its calib rows, else dev)")
    p.add_argument("--new", required=True, help="the new export (output folder of `ikd export`)")
    p.add_argument(
        "--current",
        help="the served model: an export folder, registry:<name>, inferenceservice:<ns>/<name> or none "
        "(default: promote.current)",
    )
    p.add_argument("--out", required=True, help="folder for decision.json and decision.md")
    p.add_argument("--fail-on-refuse", action="store_true", help="exit non-zero (2) when the gate refuses")


def command(args: argparse.Namespace) -> None:
    """``ikd promote``: run, print the decision and its reasons on stdout."""
    from ikd.config import Config

    cfg = Config.load(args.params, args.overrides)
    record = run(cfg.promote, Path(args.new), Path(args.data), Path(args.out), args.current)
    print(f"promote: {record['decision']} ({record['version']})")
    for reason in record["reasons"]:
        print(f"  {reason}")
    if args.fail_on_refuse and record["decision"] == "refuse":
        refused = [r for r in record["reasons"] if r.startswith("refused")]
        raise PromotionRefused("promotion refused: " + "; ".join(r.removeprefix("refused: ") for r in refused))


def run_component(config: str, *, data, onnx_model, current_model: str, out, metrics, report) -> None:
    """Body of the KFP ``promote`` task: :func:`run` with the pipeline's current-model parameter, the decision
    folder as ``out``, the figures as Metrics and decision.md as the Markdown artifact."""
    import shutil

    from ikd.config import Config

    cfg = Config.from_text(config, source="pipeline parameter 'config'")
    out_dir = Path(out.path)
    record = run(cfg.promote, Path(onnx_model.path), Path(data.path), out_dir, current_model or None)
    metrics.log_metric("promoted", 1.0 if record["decision"] == "promote" else 0.0)
    for side in ("new", "current"):
        for k, v in ((record.get(side) or {}).get("metrics") or {}).items():
            metrics.log_metric(f"{side}.{k}", float(v))
        if record.get(side):
            metrics.log_metric(f"{side}.p50_ms", float(record[side]["p50_ms"]))
    for k in ("gain", "agreement", "latency_ratio"):
        if record.get(k) is not None:
            metrics.log_metric(k, float(record[k]))
    out.metadata.update({"decision": record["decision"], "version": record["version"]})
    Path(report.path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out_dir / "decision.md", report.path)
    log.info("promote: %s", json.dumps({"decision": record["decision"], "reasons": record["reasons"]}))
