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

