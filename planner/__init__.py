"""Planner: cost model, search, quality risk, the Plan and its reports, and the ftplan CLI.
Importing it never imports torch or boto3.

The names below load on first use (PEP 562), so that ``import planner`` itself is instant: the
``ftplan`` command starts in :mod:`planner._entry`, which must be running before a Ctrl-C in
the first moments can end as "interrupted" rather than a traceback.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing alone takes milliseconds here
if TYPE_CHECKING:
    from typing import Any

    from planner._types import (
        Budget,
        Candidate,
        CostEstimate,
        MethodVerdict,
        Plan,
        QualityPolicy,
        QualityRisk,
        RiskLevel,
        SearchInfo,
        Task,
        TokensSource,
    )
    from planner.engine.cost import SpotAssumptions, StartupAssumptions, estimate_cost
    from planner.engine.measurer import EstimateFunctions, Measurer
    from planner.engine.plan import recommend
    from planner.engine.quality import assess_quality
    from planner.engine.search import exhaustive_search, search
    from planner.engine.space import RecommendRequest, SearchSpace

_HOMES = {
    "planner._types": (
        "Budget",
        "Candidate",
        "CostEstimate",
        "MethodVerdict",
        "Plan",
        "QualityPolicy",
        "QualityRisk",
        "RiskLevel",
        "SearchInfo",
        "Task",
        "TokensSource",
    ),
    "planner.engine.cost": ("SpotAssumptions", "StartupAssumptions", "estimate_cost"),
    "planner.engine.measurer": ("EstimateFunctions", "Measurer"),
    "planner.engine.plan": ("recommend",),
    "planner.engine.quality": ("assess_quality",),
    "planner.engine.search": ("exhaustive_search", "search"),
    "planner.engine.space": ("RecommendRequest", "SearchSpace"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'planner' has no attribute {name!r}")
    value = getattr(__import__(module, fromlist=[name]), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME_OF])


__all__ = [
    "Budget",
    "Candidate",
    "CostEstimate",
    "EstimateFunctions",
    "Measurer",
    "MethodVerdict",
    "Plan",
    "QualityPolicy",
    "QualityRisk",
    "RecommendRequest",
    "RiskLevel",
    "SearchInfo",
    "SearchSpace",
    "SpotAssumptions",
    "StartupAssumptions",
    "Task",
    "TokensSource",
    "assess_quality",
    "estimate_cost",
    "exhaustive_search",
    "recommend",
    "search",
]
