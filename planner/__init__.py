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

__all__ = [
    "Budget",
    "Candidate",
    "CostEstimate",
    "MethodVerdict",
    "NoFeasiblePlanError",
    "Plan",
    "QualityPolicy",
    "QualityRisk",
    "RiskLevel",
    "SearchInfo",
    "Task",
    "TokensSource",
]
