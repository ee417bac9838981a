"""Planner: cost model, search, quality risk, the Plan and its reports, and the ftplan CLI.
Importing it never imports torch or boto3."""

from __future__ import annotations

from planner._types import (
    Budget,
    Candidate,
    CostEstimate,
    MethodVerdict,
    NoFeasiblePlanError,
    Plan,
    QualityPolicy,
    QualityRisk,
    RiskLevel,
    SearchInfo,
    Task,
    TokensSource,
)
from planner.cost import SpotAssumptions, StartupAssumptions, estimate_cost
from planner.quality import assess_quality
from planner.recommend import RecommendRequest, recommend
from planner.search import SearchProblem, SearchSpace, exhaustive_search, search

__all__ = [
    "Budget",
    "Candidate",
    "CostEstimate",
    "MethodVerdict",
    "NoFeasiblePlanError",
    "Plan",
    "QualityPolicy",
    "QualityRisk",
    "RecommendRequest",
    "RiskLevel",
    "SearchInfo",
    "SearchProblem",
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
