"""Typed errors. Every error a user can cause is an :class:`IkdError`; the CLI prints its message on
one line and exits with code 2. Anything else is a bug and keeps its traceback."""


class IkdError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(IkdError):
    """A config file, key, value or override is wrong. ``problems`` lists every one found."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.problems))


class DataError(IkdError):
    """A data file or folder is missing, empty or malformed (the message names file and line)."""


class ModelError(IkdError):
    """A model name resolves nowhere, or a checkpoint is incomplete or does not match."""


class TrainingError(IkdError):
    """Training diverged (a non-finite loss): the message names the step and suggests a fix."""


class CheckpointError(IkdError):
    """A training checkpoint is corrupt (checksum, unreadable) or belongs to a run with another config or inputs."""


class ExportMismatchError(IkdError):
    """ONNX Runtime outputs differ from PyTorch past the tolerance (names each output and its diff)."""


class InvalidInput(IkdError):
    """A request to the serving predictor is malformed (HTTP 400)."""
