"""Progress of a training job (adapt, distill) pushed to a Prometheus Pushgateway.

Batch jobs cannot be scraped, so they push: :class:`JobMetrics` keeps the job's gauges in its own registry and a
background thread PUTs them to ``<gateway>/metrics/job/<job>/run/<run>`` every ``interval`` seconds (and once at
the start and at the end). A job that succeeds deletes its group at the end, because a Pushgateway never forgets a
group by itself; a job that fails pushes ``ikd_job_status{status="failed"} 1`` and keeps its group, so the failed
run stays visible (and alerted on) until someone deletes the group or the run starts again. A gateway that is
down, slow or refusing never stops the training: the first failure is logged as a warning, later ones are retried
quietly on the next push, and the recovery is logged.

Series (all gauges, labels ``job`` and ``run`` from the grouping key): ``ikd_job_step``, ``ikd_job_total_steps``,
``ikd_job_epoch``, ``ikd_job_loss``, ``ikd_job_teacher_loss`` (strategies whose teacher learns),
``ikd_job_samples_per_second``, ``ikd_job_eta_seconds``, ``ikd_job_progress_ratio``, ``ikd_job_resumed_from_step``,
``ikd_job_last_update_timestamp_seconds``, ``ikd_job_status`` (label ``status``: ``running``, ``succeeded``,
``failed``; 1 for the job's state, 0 for the others) and ``ikd_job_end_timestamp_seconds`` (0 while it runs).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("ikd")

_GAUGES = {
    "step": "Optimizer steps done",
    "total_steps": "Optimizer steps the job will take",
    "epoch": "Current epoch (1-based)",
    "loss": "Training loss of the last step",
    "teacher_loss": "Objective of the last teacher update: prokt's teacher loss, the quiz loss of metadistil/ikd",
    "samples_per_second": "Training rows per second since this process started training",
    "eta_seconds": "Estimated seconds until the last step, at the rate of this process",
    "progress_ratio": "step / total_steps",
    "resumed_from_step": "Step of the checkpoint this process resumed from (0: started fresh)",
    "last_update_timestamp_seconds": "Unix time of the last progress update",
    "end_timestamp_seconds": "Unix time the job ended (0 while it runs)",
}
#: The ``status`` label of ``ikd_job_status``.
STATES = ("running", "succeeded", "failed")


def build_registry() -> tuple[Any, dict[str, Any]]:
    """A registry holding a job's series: (registry, {key: gauge}), ``status`` being the labelled state gauge."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauges: dict[str, Any] = {k: Gauge(f"ikd_job_{k}", doc, registry=registry) for k, doc in _GAUGES.items()}
    gauges["status"] = Gauge("ikd_job_status", "1 for the job's state, 0 for the others", ["status"], registry=registry)
    return registry, gauges


def default_run_id(out_dir: Path | str) -> str:
    """A run label stable across restarts of the same command (so a resumed job pushes to its own group): the
    output folder's name and a digest of its absolute path; ``IKD_RUN_ID`` (e.g. a pipeline run id) wins."""
    env = os.environ.get("IKD_RUN_ID")
    if env:
        return env
    path = Path(out_dir).resolve()
    return f"{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


class JobMetrics:
    """Gauges of one job pushed to ``gateway`` under ``job`` and grouping key {"run": run}."""

    def __init__(self, gateway: str, job: str, run: str, interval: float = 10.0, timeout: float = 5.0):
        self.gateway = gateway if "://" in gateway else f"http://{gateway}"
        self.job, self.grouping = job, {"run": run}
        self.interval, self.timeout = interval, timeout
        self.registry, self.gauges = build_registry()
        self._state("running")
        self.failing = False
        self._dirty = threading.Event()
        self._stop = threading.Event()
        # one push at a time: a PUT replaces the group, so two in flight may land out of order and an older
        # snapshot would overwrite a newer one (a background push taken before flush()'s values, landing after)
        self._pushing = threading.Lock()
        self._rate_from: tuple[float, int] | None = None
        self._thread = threading.Thread(target=self._run, name="ikd-pushgateway", daemon=True)
        self._thread.start()

    # ---- what the training loop calls ----------------------------------------------------------------
    def start(self, step: int, total: int, epoch: int) -> None:
        """The job's position before its first step (``step`` > 0 when it resumed from a checkpoint)."""
        self._rate_from = (time.perf_counter(), step)
        self.gauges["resumed_from_step"].set(step)
        self.update(step, total, epoch, {})
        self.flush()

    def update(
        self, step: int, total: int, epoch: int, logs: dict[str, Any], samples_per_second: float | None = None
    ) -> None:
        """Set the gauges after a step (cheap: the push happens on the background thread)."""
        now = time.perf_counter()
        g = self.gauges
        g["step"].set(step)
        g["total_steps"].set(total)
        g["epoch"].set(epoch)
        g["progress_ratio"].set(step / total if total else 0.0)
        # the teacher's objective: ProKT's teacher loss, the quiz loss of metadistil / ikd
        teacher = logs.get("teacher_loss", logs.get("quiz_loss"))
        for key, value in (("loss", logs.get("loss")), ("teacher_loss", teacher)):
            if isinstance(value, int | float) and not isinstance(value, bool):
                g[key].set(float(value))
        if samples_per_second is not None:
            g["samples_per_second"].set(samples_per_second)
        if self._rate_from is not None and step > self._rate_from[1]:
            per_step = (now - self._rate_from[0]) / (step - self._rate_from[1])
            g["eta_seconds"].set(per_step * (total - step))
        g["last_update_timestamp_seconds"].set(time.time())
        self._dirty.set()

    def flush(self) -> None:
        """Push now, on the caller's thread (start and end)."""
        self._push()

    def close(self, failed: bool = False, delete: bool = True) -> None:
        """Stop the thread and push the last values with the job's end state; then delete the job's group
        (``delete``), unless the job ``failed``: a failed job's group stays, with ``status="failed"``."""
        self._stop.set()
        self._dirty.set()
        self._thread.join(timeout=self.timeout + 1)
        self._state("failed" if failed else "succeeded")
        self.gauges["end_timestamp_seconds"].set(time.time())
        self._push()
        if delete and not failed:
            from prometheus_client import delete_from_gateway

            try:
                delete_from_gateway(self.gateway, job=self.job, grouping_key=self.grouping, timeout=self.timeout)
            except Exception as exc:
                log.warning(
                    "pushgateway %s: could not delete group job=%s run=%s (%s); it stays until deleted",
                    self.gateway,
                    self.job,
                    self.grouping["run"],
                    _short(exc),
                )

    def _state(self, state: str) -> None:
        for name in STATES:
            self.gauges["status"].labels(name).set(1 if name == state else 0)

    # ---- pushing ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            self._push()
            self._stop.wait(self.interval)

    def _push(self) -> None:
        from prometheus_client import push_to_gateway

        try:
            # the values are read inside push_to_gateway, under the lock: the last push to land is the newest.
            # The training thread waits here only in flush() / close() (start and end), at most one timeout.
            with self._pushing:
                push_to_gateway(
                    self.gateway, job=self.job, registry=self.registry, grouping_key=self.grouping, timeout=self.timeout
                )
        except Exception as exc:
            if not self.failing:
                log.warning(
                    "pushgateway %s unreachable (%s); training goes on, retrying every %.0f s",
                    self.gateway,
                    _short(exc),
                    self.interval,
                )
            self.failing = True
            return
        if self.failing:
            log.warning("pushgateway %s reachable again", self.gateway)
        self.failing = False


def _short(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
