"""The peer of ``ikd serve`` that a KServe user would write: KServe's Python model server around the same export.

``benchmarks/serving.py --kserve`` runs this file in a separate virtual environment holding the ``kserve`` package
(it pins its own pandas and FastAPI, so it stays out of the project's environment). It is the straightforward
custom predictor of KServe's documentation, and nothing more:

* ``load``: the ONNX file that metadata.json names (the file ``ikd serve`` serves, unless ``--model_file`` says
  otherwise) in an ONNX Runtime session with the same settings as ikd's predictor (graph optimization ``all``,
  ``--threads`` intra-op threads, one inter-op thread, idle threads not spinning), and tokenizer.json through the
  ``tokenizers`` library, truncated at the exported ``max_length``, padded to the longest row of the request;
* ``predict`` (synchronous, so KServe runs it on its event loop): one request, one tokenizer call, one
  ``session.run``; no batching across requests (KServe's default path: its batcher is off unless configured, and
  only knows v1 payloads);
* the same v2 tensors as ``ikd serve``: a ``BYTES`` input ``text`` of shape ``[N]`` or ``[N, 1]`` (``[N, 2]``
  for pair tasks) in, ``logits`` and ``probabilities`` (``FP32 [N, C]``) and ``label`` (``BYTES [N]``) out, so
  the same client bodies work against both servers; REST JSON, the binary tensor extension and gRPC are
  KServe's own.

    python benchmarks/kserve_peer.py --model_dir runs/quick/export --threads 2 \\
        --http_port 8090 --grpc_port 8091 --model_name student --enable_latency_logging false

KServe's per-request latency log line is switched off by that flag (``ikd serve`` writes no access log either).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.errors import InvalidInput
from tokenizers import Tokenizer


class OnnxTextClassifier(Model):
    """An exported ikd student (ONNX file + tokenizer.json) as a KServe v2 model."""

    def __init__(self, name: str, folder: str, model_file: str | None, threads: int):
        super().__init__(name)
        self.folder = Path(folder)
        self.model_file = model_file
        self.threads = threads
        self.load()

    def load(self) -> bool:
        meta = json.loads((self.folder / "metadata.json").read_text())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads, opts.inter_op_num_threads = self.threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = self.folder / (self.model_file or meta["model_file"])
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.session_inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(meta["max_length"]))
        self.labels = [str(x) for x in (meta.get("labels") or meta["label_names"])]
        self.pair = len(meta.get("text_fields", [])) == 2
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        text = payload.get_input_by_name("text")
        if text is None or text.datatype != "BYTES":
            raise InvalidInput("this model takes a BYTES input named 'text'")
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in text.as_numpy().reshape(-1)]
        if self.pair:
            encs = self.tokenizer.encode_batch(list(zip(values[0::2], values[1::2], strict=True)))
        else:
            encs = self.tokenizer.encode_batch(values)
        longest = max(len(e.ids) for e in encs)
        feeds = {n: np.zeros((len(encs), longest), dtype=np.int64) for n in self.session_inputs}
        for i, e in enumerate(encs):
            n = len(e.ids)
            feeds["input_ids"][i, :n] = e.ids
            if "attention_mask" in feeds:
                feeds["attention_mask"][i, :n] = 1
            if "token_type_ids" in feeds:
                feeds["token_type_ids"][i, :n] = e.type_ids
        logits = self.session.run(["logits"], feeds)[0].astype(np.float32)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
        label = np.array([self.labels[int(k)] for k in probs.argmax(axis=1)], dtype=np.object_)
        binary = payload.use_binary_outputs  # gRPC with raw inputs, or REST asking for binary outputs
        outputs = []
        for name, datatype, value in (
            ("logits", "FP32", logits),
            ("probabilities", "FP32", probs),
            ("label", "BYTES", label),
        ):
            out = InferOutput(name, list(value.shape), datatype)
            out.set_data_from_numpy(value, binary_data=binary)
            outputs.append(out)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


def main() -> None:
    p = argparse.ArgumentParser(parents=[model_server.parser])  # KServe's own flags: --http_port, --grpc_port, ...
    p.add_argument("--model_dir", required=True, help="an `ikd export` folder")
    p.add_argument("--model_file", help="the ONNX file to serve (default: the one metadata.json names)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args, _ = p.parse_known_args()
    model = OnnxTextClassifier(args.model_name, args.model_dir, args.model_file, args.threads)
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start([model])


if __name__ == "__main__":
    main()
