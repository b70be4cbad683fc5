"""Fingerprint, plan, crop, resample, normalise and cache (see docs/architecture.md).

Public API: `preprocess_case(images, plan, label)` -> `PreprocessedCase` (its inverse, back to
the original grid, is `medseg.inference.invert`); `Plan` (schema; the planner is
`medseg.preprocess.planner`) and the cache readers `medseg.preprocess.cache.list_cached_cases` /
`load_case`.
"""

from medseg.preprocess.case import CaseProperties, PreprocessedCase, preprocess_case
from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan

__all__ = [
    "CaseProperties",
    "ChannelNormalization",
    "ConfigurationPlan",
    "Plan",
    "PreprocessedCase",
    "preprocess_case",
]


class _CallablePackage(__import__("types").ModuleType):
    """`medseg.preprocess(dataset, workdir, ...)` is `medseg.api.preprocess`: the name is both this
    package and the API function, and whichever `medseg.preprocess` resolves to must run it."""

    def __call__(self, *args, **kwargs):
        from medseg.api import preprocess

        return preprocess(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallablePackage
