"""``ikd serve``: its arguments and its handler, apart from ``ikd/cli.py`` (as ``ikd predict``'s are in
:mod:`ikd.serve.offline`). Imports nothing heavy until the command runs: the parser is built for every ``ikd`` call.
"""

from __future__ import annotations

import argparse
import logging
import os

from ikd.errors import IkdError


def add_parser(sub) -> None:
    """``ikd serve``'s arguments (``sub``: the ``ikd`` subparsers)."""
    p = sub.add_parser(
        "serve",
        help="serve an exported model: Open Inference Protocol v2 over HTTP, with batching "
        "and Prometheus /metrics (ONNX Runtime; no torch)",
    )
    p.add_argument("--model-dir", required=True, help="the output folder of `ikd export`")
    p.add_argument(
        "--model-file",
        help="model file in it (default: the one metadata.json names, see export.serve; "
        "model.onnx, model.opt.onnx or model.int8.onnx)",
    )
    p.add_argument(
        "--name", help="model name in the v2 URLs (default: the one the export recorded, else the folder's name)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    p.add_argument("--grpc-port", type=int, help="also serve the v2 gRPC API on this port (default: off; 8081 in k8s)")
    p.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="ONNX Runtime providers, comma-separated, in order (e.g. CUDAExecutionProvider,"
        "CPUExecutionProvider); a GPU provider that does not come up is an error",
    )
    p.add_argument(
        "--instances",
        type=int,
        default=2,
        help="sessions of the model, so that this many batches run at once (default 2: on CPU a short batch "
        "need not wait for a long one, and one session's threads idle less)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="intra-op threads of each session (default: the CPUs this process may use, divided by --instances; "
        "set --instances x --threads to the container's CPU limit)",
    )
    p.add_argument(
        "--graph-optimization",
        default="all",
        choices=["disable", "basic", "extended", "all"],
        help="ONNX Runtime's graph optimization level for the session",
    )
    p.add_argument(
        "--spin",
        action="store_true",
        help="let idle ONNX Runtime threads busy-wait (its default; off here: the cores are shared with "
        "HTTP and tokenization)",
    )
    p.add_argument("--max-batch-size", type=int, default=32, help="rows per ONNX Runtime batch (default 32)")
    p.add_argument(
        "--max-delay-ms",
        type=float,
        default=0.0,
        help="how long an idle server holds a request for company (default 0: under load, batches fill while "
        "others run)",
    )
    p.add_argument(
        "--batch-overhead-tokens",
        type=float,
        default=16.0,
        help="fixed cost of one batch, in padded tokens, when rows are cut into batches by length "
        "(default 16, CPU; raise it on a GPU, where small batches cost more)",
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--max-rows", type=int, default=256, help="rows (texts or pairs) per request (default 256)")
    p.add_argument("--max-chars", type=int, default=10_000, help="characters per text (default 10000)")
    p.add_argument(
        "--on-long-text",
        default="truncate",
        choices=["truncate", "reject"],
        help="a text longer than --max-chars: cut it there, or refuse the request (HTTP 400)",
    )
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request inference timeout (default 30)")


def command(args: argparse.Namespace) -> None:
    """``ikd serve``: check the flags, load the export, serve REST (and gRPC when asked) until stopped."""
    import uvicorn

    from ikd.serve.app import Limits, create_app
    from ikd.serve.predictor import Predictor

    for flag in (
        "port",
        "grpc_port",
        "max_batch_size",
        "max_rows",
        "max_chars",
        "max_body_bytes",
        "instances",
        "threads",
    ):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise IkdError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.batch_overhead_tokens < 0:
        raise IkdError("--batch-overhead-tokens must be at least 0")
    if args.max_delay_ms < 0:
        raise IkdError("--max-delay-ms must be at least 0")
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // args.instances)
    predictor = Predictor.load(
        args.model_dir,
        name=args.name,
        providers=tuple(args.providers.split(",")),
        threads=threads,
        graph_optimization=args.graph_optimization,
        model_file=args.model_file,
        spin=args.spin,
        instances=args.instances,
    )
    limits = Limits(args.max_body_bytes, args.max_rows, args.max_chars, args.on_long_text, args.timeout_s)
    grpc_address = (args.host, args.grpc_port) if args.grpc_port else None
    if grpc_address is not None:  # a taken port is one line now, not a failed start-up inside uvicorn
        import socket

        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(grpc_address)
            except OSError as exc:
                raise IkdError(f"--grpc-port: cannot listen on {args.host}:{args.grpc_port} ({exc.strerror})") from None
    app = create_app(
        predictor, limits, args.max_batch_size, args.max_delay_ms, args.batch_overhead_tokens, grpc_address
    )
    logging.getLogger("ikd").info(
        "serve: model '%s' (%s; %d session(s) x %d thread(s)) on http://%s:%d/v2/models/%s%s",
        predictor.name,
        ", ".join(predictor.session.get_providers()),
        args.instances,
        threads,
        args.host,
        args.port,
        predictor.name,
        f" and gRPC {args.host}:{args.grpc_port}" if args.grpc_port else "",
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
