"""The base of every config section: strict (unknown keys are errors), frozen, validated defaults, no inf/nan.

It lives apart from :mod:`ikd.config` so that strategies can declare their own section (``distill.<name>``) without
importing the config, which reads the strategy registry to validate those sections.
"""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)
