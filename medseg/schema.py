"""`StrictModel`: the one base of medseg's typed schemas (plan, planner settings, training config).

Unknown fields are refused, so a typo in a YAML or JSON file is an error naming the field instead of
a silently ignored setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that refuses fields it does not declare (`extra="forbid"`)."""

    model_config = ConfigDict(extra="forbid")
