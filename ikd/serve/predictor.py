"""The serving predictor: an exported model folder (``ikd export``) behind ONNX Runtime, with its own tokenizer.

No torch and no transformers here: ``onnxruntime``, ``tokenizers`` and ``numpy`` only (the ``serve`` extra), so
the serving image stays small. No web code either: :mod:`ikd.serve.app` puts HTTP in front of it.
"""

from __future__ import annotations

import hashlib
import json
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ikd.errors import InvalidInput, ModelError

if TYPE_CHECKING:
    from ikd.serve.metrics import TextCounts

#: ``--graph-optimization`` values and ONNX Runtime's levels.
OPT_LEVELS = ("disable", "basic", "extended", "all")
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


@dataclass
class Prediction:
    """One row's answer: logits [C], probabilities [C] (softmax), the label name."""

    logits: list[float]
    probabilities: list[float]
    label: str


@dataclass
class Predictor:
    """A loaded model folder. Build with :meth:`load`."""

    name: str
    folder: Path
    session: Any
    tokenizer: Any
    labels: list[str]
    inputs: list[str]
    max_length: int
    pair: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0
    session_inputs: frozenset[str] = frozenset()  # a fused graph may drop an input it does not use
    instances: int = 1  # sessions of the model: batches that can run at once
    _free: queue.SimpleQueue | None = field(default=None, repr=False)  # the sessions not running, when more than one

    @classmethod
    def load(
        cls,
        folder: Path | str,
        name: str | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        threads: int | None = None,
        graph_optimization: str = "all",
        model_file: str | None = None,
        spin: bool = False,
        instances: int = 1,
    ) -> Predictor:
        """Load ``folder`` (the output of ``ikd export``), served as ``name`` (default: the name the export recorded,
        else the folder's) with the label names it recorded (an older export's: its label values): check the model
        file's sha256 against metadata.json, open an ONNX Runtime session with ``providers`` (a GPU provider that
        does not come up is an error, never a silent CPU fallback), ``threads`` intra-op threads and the given graph
        optimization level. ``spin``: let idle intra-op threads busy-wait (ONNX Runtime's default; off here,
        measured faster behind HTTP on few cores). ``instances``: sessions of the model (each with ``threads``
        threads), so that that many batches can run at once (:meth:`logits` takes a free one).
        """
        from tokenizers import Tokenizer

        start = time.perf_counter()
        folder = Path(folder)
        meta_file = folder / "metadata.json"
        if not meta_file.is_file():
            raise ModelError(f"{folder}: not an exported model folder (no metadata.json; run `ikd export`)")
        meta = json.loads(meta_file.read_text())
        path = _verified_model_file(folder, meta, model_file or meta["model_file"])
        if instances < 1:
            raise ModelError(f"instances {instances}: at least 1 session is needed")
        sessions = [_session(path, providers, threads, graph_optimization, spin) for _ in range(instances)]
        session = sessions[0]
        free: queue.SimpleQueue | None = None
        if instances > 1:
            free = queue.SimpleQueue()
            for each in sessions:
                free.put(each)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelError(f"{folder}: tokenizer.json missing (export writes it)")
        tokenizer = Tokenizer.from_file(str(tok_file))
        tokenizer.no_padding()
        tokenizer.enable_truncation(int(meta["max_length"]))
        return cls(
            name=name or meta.get("name") or folder.resolve().name,
            folder=folder,
            session=session,
            tokenizer=tokenizer,
            labels=list(meta.get("labels") or meta["label_names"]),
            inputs=list(meta["inputs"]),
            max_length=int(meta["max_length"]),
            pair=len(meta.get("text_fields", [])) == 2,
            metadata=meta,
            session_inputs=frozenset(i.name for i in session.get_inputs()),
            load_seconds=time.perf_counter() - start,
            instances=instances,
            _free=free,
        )

    # ---- inputs -------------------------------------------------------------------------------------------------
    def encode(
        self, rows: list[tuple[str, ...]], counts: TextCounts | None = None
    ) -> tuple[list[list[int]], list[list[int]]]:
        """(token ids, token type ids) per row: special tokens added, truncated to the exported max_length. A row
        holds one text, or two for pair tasks. ``counts`` (the server's metrics): texts read and rows cut."""
        want = 2 if self.pair else 1
        for i, row in enumerate(rows):
            if len(row) != want:
                raise InvalidInput(f"row {i}: this model takes {want} text(s) per row, got {len(row)}")
        if self.pair:
            encs = self.tokenizer.encode_batch([(a, b) for a, b in rows])
        else:
            encs = self.tokenizer.encode_batch([r[0] for r in rows])
        if counts is not None:
            counts.texts += want * len(rows)
            counts.cut_tokens += sum(1 for e in encs if e.overflowing)
        return [e.ids for e in encs], [e.type_ids for e in encs]

    def feeds(self, ids: list[list[int]], type_ids: list[list[int]] | None = None) -> dict[str, np.ndarray]:
        """Session inputs for rows of token ids, padded to the longest row of this batch (not max_length)."""
        n, longest = len(ids), max(len(r) for r in ids)
        input_ids = np.zeros((n, longest), dtype=np.int64)
        mask = np.zeros((n, longest), dtype=np.int64)
        types = np.zeros((n, longest), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
            if type_ids is not None:
                types[i, : len(row)] = type_ids[i]
        out = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}
        return {k: out[k] for k in self.inputs}

    # ---- inference ----------------------------------------------------------------------------------------------
    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Logits [N, C] of a free session for ``feeds`` (thread-safe: concurrent calls run on different
        sessions, and a call waits when all ``instances`` are busy)."""
        feeds = {k: v for k, v in feeds.items() if k in self.session_inputs}
        if self._free is None:
            return self.session.run(["logits"], feeds)[0]
        session = self._free.get()
        try:
            return session.run(["logits"], feeds)[0]
        finally:
            self._free.put(session)

    def answer(self, logits: np.ndarray) -> list[Prediction]:
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return [
            Prediction(row.tolist(), prob.tolist(), self.labels[int(prob.argmax())])
            for row, prob in zip(logits, p, strict=True)
        ]

    def predict(self, rows: list[tuple[str, ...]]) -> list[Prediction]:
        """Texts in, predictions out (one batch, no batching across calls)."""
        ids, types = self.encode(rows)
        return self.answer(self.logits(self.feeds(ids, types)))

    def describe(self) -> dict[str, Any]:
        """The Open Inference Protocol's model metadata."""
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1, 2] if self.pair else [-1]}] + [
            {"name": n, "datatype": "INT64", "shape": [-1, -1]} for n in self.inputs
        ]
        outputs = [
            {"name": "logits", "datatype": "FP32", "shape": [-1, len(self.labels)]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.labels)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ]
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": inputs,
            "outputs": outputs,
        }


def _verified_model_file(folder: Path, meta: dict[str, Any], model_file: str) -> Path:
    """``folder/model_file``, present, listed in metadata.json and matching the sha256 recorded there."""
    path = folder / model_file
    if not path.is_file():
        raise ModelError(f"{path}: model file missing")
    files = meta.get("files") or {meta["model_file"]: {"sha256": meta["sha256"]}}
    if model_file not in files:
        raise ModelError(f"{path}: not one of the files metadata.json vouches for ({', '.join(sorted(files))})")
    want = files[model_file]["sha256"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != want:
        raise ModelError(
            f"{path}: sha256 {digest[:12]}… does not match metadata.json "
            f"({want[:12]}…); the file was changed or damaged after export"
        )
    return path


def _session(path: Path, providers: tuple[str, ...], threads: int | None, graph_optimization: str, spin: bool):
    """An ONNX Runtime session of ``path`` with exactly ``providers`` active (see :meth:`Predictor.load`)."""
    import onnxruntime as ort

    if graph_optimization not in OPT_LEVELS:
        raise ModelError(f"graph optimization '{graph_optimization}': use one of {', '.join(OPT_LEVELS)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:  # idle ONNX Runtime threads would busy-wait on cores the event loop (HTTP, tokenizer) needs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise ModelError(
            f"ONNX Runtime provider(s) {', '.join(missing)} not available here (available: "
            f"{', '.join(available)}); GPU providers need the onnxruntime-gpu package and CUDA"
        )
    session = ort.InferenceSession(str(path), opts, providers=list(providers))
    active = session.get_providers()
    lost = [p for p in providers if p in GPU_PROVIDERS and p not in active]
    if lost:  # onnxruntime-gpu falls back to CPU when CUDA libraries are missing: refuse instead
        raise ModelError(
            f"ONNX Runtime did not activate {', '.join(lost)} (active: {', '.join(active)}); "
            "check the CUDA/cuDNN libraries, or serve with --providers CPUExecutionProvider"
        )
    return session
