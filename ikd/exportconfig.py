"""The sections of the steps after training: ``evaluate`` (dev metrics, latency) and ``export`` (ONNX files, the
int8 guard, which file is served, the Triton layout). Part of :class:`ikd.config.Config`, importable from there."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ikd.section import Section


class EvaluateConfig(Section):
    batch_size: int = Field(32, ge=1)
    latency_rows: int = Field(256, ge=1, description="Dev rows timed for latency / throughput.")
    latency_batch_size: int = Field(32, ge=1)


class ExportConfig(Section):
    opset: int = Field(18, ge=14, le=23)
    atol: float = Field(1e-4, gt=0.0, description="Max |ORT - torch| on logits before ExportMismatchError.")
    parity_rows: int = Field(128, ge=2, description="Dev rows compared between ONNX Runtime and torch.")
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo",
        description="torch.onnx exporter. 'torchscript' (eager attention, legacy exporter) is the graph "
        "whose attention ONNX Runtime's transformer optimizer can fuse; 'dynamo' gets LayerNorm/GELU fusions only.",
    )
    optimize: bool = Field(
        False,
        description="Also write model.opt.onnx: ONNX Runtime's transformer optimizer "
        "(fused attention, SkipLayerNorm, BiasGelu), checked against PyTorch like model.onnx.",
    )
    quantize: bool = Field(
        False,
        description="Also write model.int8.onnx (dynamic int8 weights) when a candidate passes the int8 guard "
        "(int8_min_agreement and int8_max_loss, measured on the prepared calib rows); the fastest passing one.",
    )
    int8_schemes: list[Literal["per_channel", "per_tensor"]] = Field(
        ["per_channel", "per_tensor"],
        min_length=1,
        description="int8 schemes tried; the fastest one that passes the guard is kept.",
    )
    int8_exclude: list[str] = Field(
        default_factory=list,
        description="Regular expressions of ONNX node names kept "
        "in fp32 in every candidate (e.g. the last layer's FFN: 'layer\\.5/output').",
    )
    int8_retry_fp32_tail: bool = Field(
        True,
        description="When no scheme passes the guard, try each again with the classifier head and the last "
        "transformer layer kept in fp32 (nodes found in the graph; listed in the export report).",
    )
    int8_reduce_range: bool = Field(
        False,
        description="Quantize weights to 7 bits (the quantizer's reduce_range), for CPUs without VNNI whose int8 "
        "matmul can saturate; applies to every candidate.",
    )
    int8_min_agreement: float = Field(
        0.99,
        ge=0.0,
        le=1.0,
        description="Smallest fraction (0..1) of calibration rows (data.calib_rows; dev rows when the prepared data "
        "has none) on which an int8 candidate must predict the same class (argmax) as the PyTorch student.",
    )
    int8_max_loss: float = Field(
        0.5,
        ge=0.0,
        description="Largest drop of the first metric (points, x100) against the PyTorch student an int8 candidate "
        "may have, on the same calibration rows as int8_min_agreement.",
    )
    int8_on_loss: Literal["error", "skip"] = Field(
        "skip",
        description="When no int8 candidate passes the guard: skip = write no int8 file and serve the optimized (else "
        "fp32) graph, with one warning line saying why; error = fail the export.",
    )
    serve: Literal["auto", "fp32", "optimized", "int8"] = Field(
        "auto",
        description="Which file metadata.json names for `ikd serve` and Triton; auto: int8, else optimized, "
        "else fp32, among those written.",
    )
    speed_rows: int = Field(
        256, ge=0, description="Dev rows timed per model (batch 32 sorted, and a batch-1 slice); 0: no speed figures."
    )
    triton: bool = Field(False, description="Also write a Triton model repository: triton/<triton_name>/1/model.onnx.")
    triton_name: str = Field(
        "student",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The model's name: `ikd serve`'s default (metadata.json `name`) and the Triton layout's folder.",
    )
    triton_max_batch_size: int = Field(32, ge=1, description="Triton dynamic batching: rows per batch.")
    triton_max_delay_us: int = Field(5000, ge=0, description="Triton dynamic batching: longest queue delay.")

    @model_validator(mode="after")
    def _served_file_is_written(self) -> ExportConfig:
        needs = {"optimized": ("optimize", self.optimize), "int8": ("quantize", self.quantize)}.get(self.serve)
        if needs and not needs[1]:
            raise ValueError(f"serve: {self.serve} needs export.{needs[0]}: true (that file is not written otherwise)")
        return self
