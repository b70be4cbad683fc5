"""Fingerprint, plan, crop, resample, normalise and cache (see docs/architecture.md).

Public API: `preprocess_case(images, plan, label)` -> `PreprocessedCase` and its inverse
`invert_to_original(array, properties)` -> `Volume` on the original grid; `Plan` and the cache
readers `medseg.preprocess.cache.list_cached_cases` / `load_case`.
"""

from medseg.preprocess.case import CaseProperties, PreprocessedCase, invert_to_original, preprocess_case
from medseg.preprocess.plan import ChannelNormalization, ConfigurationPlan, Plan

__all__ = [
    "CaseProperties",
    "ChannelNormalization",
    "ConfigurationPlan",
    "Plan",
    "PreprocessedCase",
    "invert_to_original",
    "preprocess_case",
]
