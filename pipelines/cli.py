"""The pipeline front door: ``ikd-pipeline compile|run|submit|schedule`` (console script), also reachable as
``ikd pipeline ...``: :func:`register` is the ``ikd.commands`` entry point through which ``ikd`` finds it.

Exit codes as ``ikd``: 0 success; 2 a user error (one line on stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ikd import __version__
from ikd.cli import dvc_source_args, run_command
from ikd.console import Parser, quiet_everywhere
from ikd.errors import ConfigError


def _config_args(p: argparse.ArgumentParser, data_required: bool) -> None:
    p.add_argument("--params", default="params.yaml", help="config YAML (default: params.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable; VALUE is YAML)",
    )
    p.add_argument(
        "--data",
        required=data_required,
        help="data source for prepare: a folder the pods can read, or a hub dataset id "
        "(default: nyu-mll/glue for the GLUE presets); with --dvc-repo, a path in that repository",
    )
    dvc_source_args(p)
    p.add_argument(
        "--dvc-remote",
        metavar="URL",
        default="",
        help="push teacher, student and ONNX model to this DVC remote in a last task (optional)",
    )


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default=os.environ.get("KFP_HOST"),
        help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (env KFP_HOST)",
    )
    p.add_argument(
        "--namespace", default=os.environ.get("KFP_NAMESPACE"), help="Kubeflow profile namespace (env KFP_NAMESPACE)"
    )
    p.add_argument("--experiment", default="ikd", help="experiment name (created when missing; default ikd)")
    p.add_argument("--service-account", help="Kubernetes service account the run's pods use")
    p.add_argument("--ssl-ca-cert", help="CA bundle for the API's TLS certificate")
    p.add_argument("--insecure", action="store_true", help="do not verify the API's TLS certificate")
    p.add_argument(
        "--cookies",
        default=os.environ.get("KFP_COOKIES"),
        help="session cookies for an auth proxy, 'name=value; ...' (env KFP_COOKIES)",
    )
    p.epilog = (
        "The bearer token is read from the environment (KFP_TOKEN) or from --token-file, never from "
        "the command line, so it stays out of shell history and process lists."
    )
    p.add_argument("--token-file", help="file holding a bearer token (service-account or OIDC)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of seconds above 0")
    return value


def add_actions(psub) -> None:
    """The actions ``compile``, ``run``, ``submit`` and ``schedule`` on ``psub`` (an argparse subparsers object
    whose ``dest`` is ``pipeline_command``): one definition for ``ikd-pipeline`` and ``ikd pipeline``."""
    p = psub.add_parser("compile", help="validate the config and write the pipeline's IR YAML")
    _config_args(p, data_required=False)
    p.add_argument("--out", required=True, help="pipeline YAML to write")

    p = psub.add_parser("run", help="run the pipeline offline with kfp.local, in this environment")
    _config_args(p, data_required=True)
    p.add_argument(
        "--out",
        default="runs/pipeline-local",
        help="run folder: kfp/ artifacts and <step> links, as `ikd run` (default: runs/pipeline-local)",
    )

    p = psub.add_parser("submit", help="compile and start one run on a Kubeflow cluster (--wait: until it ends)")
    _config_args(p, data_required=False)
    _cluster_args(p)
    p.add_argument("--run-name", help="default: <pipeline>-<strategy>-<time>")
    p.add_argument("--package-out", help="also keep the compiled YAML here")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the run ends; exit 2 with its state and URL unless it SUCCEEDED (default: return at once)",
    )
    p.add_argument(
        "--wait-timeout-s",
        type=_positive_seconds,
        default=6 * 3600,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long, exit 2; the run goes on (default: 21600, 6 h)",
    )
    p.add_argument(
        "--poll-s",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="with --wait: seconds between two looks at the run (default: 30)",
    )

    p = psub.add_parser("schedule", help="compile and create a recurring run (6-field cron, seconds first)")
    _config_args(p, data_required=False)
    _cluster_args(p)
    p.add_argument("--cron", required=True, help="e.g. '0 0 3 * * 1' = Mondays 03:00 (seconds first)")
    p.add_argument("--job-name", help="default: <pipeline>-<strategy>-recurring")
    p.add_argument("--max-concurrency", type=int, default=1, help="runs of this schedule at the same time")
    p.add_argument("--catchup", action="store_true", help="run missed intervals after a pause (default: no)")


def register(sub) -> None:
    """Entry point of group ``ikd.commands``: add ``pipeline`` to the ``ikd`` command's subparsers ``sub``."""
    p = sub.add_parser(
        "pipeline",
        help="Kubeflow Pipelines: compile, run locally, submit, schedule (the same as the ikd-pipeline command)",
    )
    add_actions(p.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION"))
    p.set_defaults(handler=handle)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ikd-pipeline",
        description="ikd on Kubeflow Pipelines: compile, run locally (kfp.local), submit, schedule.",
    )
    parser.add_argument("--version", action="version", version=f"ikd {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    add_actions(parser.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION"))
    return quiet_everywhere(parser)


def handle(args: argparse.Namespace) -> None:
    """Carry out the parsed action (``args.pipeline_command``); user errors are IkdErrors."""
    from ikd.config import Config
    from ikd.integrations.kubeflow import PipelineInputs, require_kfp
    from ikd.pipelines import cluster, runner

    cfg = Config.load(args.params, args.overrides)
    require_kfp()
    if args.dvc_repo and not args.data:
        raise ConfigError("--dvc-repo needs --data: the path of the data folder inside that repository")
    source = PipelineInputs(
        args.data or runner.default_source(cfg), args.dvc_repo or "", args.dvc_rev or "", args.dvc_remote
    )
    if args.pipeline_command == "compile":
        out = runner.compile_pipeline(cfg, source, Path(args.out))
        logging.getLogger("ikd").info("pipeline: wrote %s", out)
        return
    if args.pipeline_command == "run":
        result = runner.run_local(cfg, source, Path(args.out))
        keys = ("task", "teacher", "student", "majority", "export")  # what `ikd run` prints
        print(json.dumps({k: result[k] for k in keys if k in result}, indent=2))
        return
    if not args.host:
        raise ConfigError("--host (or env KFP_HOST): the KFP API endpoint is required to submit or schedule")
    if args.pipeline_command == "schedule":
        cluster.check_cron(args.cron)  # before any network call
    client = cluster.client(
        args.host,
        namespace=args.namespace,
        token=cluster.read_token(args.token_file),
        cookies=args.cookies,
        ssl_ca_cert=args.ssl_ca_cert,
        verify_ssl=False if args.insecure else None,
    )
    if args.pipeline_command == "submit":
        out = cluster.submit(
            cfg,
            source,
            client,
            experiment=args.experiment,
            run_name=args.run_name,
            namespace=args.namespace,
            service_account=args.service_account,
            package=Path(args.package_out) if args.package_out else None,
        )
        if args.wait:
            out.update(cluster.wait(client, out["run_id"], timeout_s=args.wait_timeout_s, poll_s=args.poll_s))
            print(json.dumps(out, indent=2))  # the ids and the outcome on stdout, whatever the outcome
            cluster.check_succeeded(out["run_name"], out, args.wait_timeout_s)
            return
    else:
        out = cluster.schedule(
            cfg,
            source,
            client,
            cron=args.cron,
            experiment=args.experiment,
            job_name=args.job_name,
            namespace=args.namespace,
            max_concurrency=args.max_concurrency,
            catchup=args.catchup,
            service_account=args.service_account,
        )
    print(json.dumps(out, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: handle(args), prog="ikd-pipeline", quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
