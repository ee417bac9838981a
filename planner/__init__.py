"""Planner: cost model, search, quality risk, the Plan and its reports, and the ftplan CLI.
Importing it never imports torch or boto3."""

from __future__ import annotations

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
from planner.engine.evaluate import Measurer
from planner.engine.plan import recommend
from planner.engine.quality import assess_quality
from planner.engine.search import exhaustive_search, search
from planner.engine.space import RecommendRequest, SearchSpace

__all__ = [
    "Budget",
    "Candidate",
    "CostEstimate",
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
