"""Pipeline steps."""
from ikd.steps.io import (
    STEP_SECTIONS,
    STEPS,
    StepResult,
    adapt,
    atomic_dir,
    distill,
    dvc_fingerprint,
    evaluate,
    export,
    prepare,
    read_key,
    source_fingerprint,
    step_key,
)

__all__ = ["STEP_SECTIONS", "STEPS", "StepResult", "adapt", "atomic_dir", "distill", "dvc_fingerprint", "evaluate",
           "export", "prepare", "read_key", "source_fingerprint", "step_key"]
