"""Search: finds the cheapest feasible (config, offer, nodes) with an optuna study.

The space is method × LoRA rank × targets × precision × optimizer × micro-batch × gradient
checkpointing × GPU type × GPUs per node × nodes × offer. optuna chooses the *structural* cell
(method variant × hardware) and each cell's inner dimensions are solved exactly (micro-batches
in increasing order until one runs out of memory, the cheapest offer of the hardware, the
smallest LoRA rank the quality policy accepts). Constraints (memory, budget, deadline, quality)
are set with optuna's ``Trial.set_constraint`` (each value ≤ 0 means satisfied), never as
penalties. :func:`exhaustive_search` walks the same space point by point for tests and the regret
benchmark. optuna itself is imported only inside :func:`search`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from catalog import EnvironmentProblem, InputError, mask_secrets
from planner._types import Budget, Candidate, QualityPolicy, RiskLevel
from planner.engine.evaluate import CONSTRAINT_NAMES, Evaluator, constraints, sort_key
from planner.engine.measurer import Measurer, host_ram_unknown
from planner.engine.space import Hardware, RecommendRequest, Variant
from profiler import FitVerdict, Method

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchResult:
    """What a search found. ``candidates`` holds every priced point, sorted by
    (feasible first, USD, hours, instance type, offer key, config label)."""

    candidates: tuple[Candidate, ...]
    sampler: str
    trials: int
    evaluated: int
    storage: str | None = None

    @property
    def feasible(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.feasible)

    @property
    def best(self) -> Candidate | None:
        feasible = self.feasible
        return feasible[0] if feasible else None


def _finish(
    candidates: Iterable[Candidate],
    *,
    sampler: str,
    trials: int,
    evaluated: int,
    storage: str | None = None,
) -> SearchResult:
    unique = {(c.config, c.offer.key, c.nodes): c for c in candidates}
    ranked = tuple(sorted(unique.values(), key=sort_key))
    return SearchResult(
        candidates=ranked, sampler=sampler, trials=trials, evaluated=evaluated, storage=storage
    )


def exhaustive_search(request: RecommendRequest, measurer: Measurer) -> SearchResult:
    """Price every point of the space (no pruning): the reference the optuna search must match.

    Args:
        request: Model, job, offers and assumptions.
        measurer: The estimator, stored profiles and memory-fit rule.

    Returns:
        Every priced candidate, best first.
    """
    evaluator = Evaluator(request, measurer)
    out: list[Candidate] = []
    cells = 0
    for variant in evaluator.variants():
        for hw in evaluator.hardware():
            cells += 1
            out += evaluator.walk_cell_exhaustively(variant, hw)
    return _finish(
        out, sampler="exhaustive grid", trials=cells, evaluated=evaluator.estimator_calls
    )


def search(request: RecommendRequest, measurer: Measurer) -> SearchResult:
    """The default search: an optuna study over structural cells with exact inner solves.

    Cells whose per-GPU memory cannot hold the weights are pruned before the study. When
    ``trials`` is None or covers every remaining cell, a seeded ``GridSampler`` visits each cell
    once (exact over the reduced space); otherwise a seeded multi-objective ``TPESampler``
    (constraints via ``Trial.set_constraint``) runs ``trials`` trials, warm-started with
    ``enqueue_trial`` on the cheapest-per-GPU-hour hardware of each variant.

    Args:
        request: Model, job, offers and assumptions, and how to search: ``seed`` (same inputs
            and seed give the same result), ``trials`` (None means every cell) and ``storage``
            (an optuna URL such as ``sqlite:///study.db``; an existing study of the same inputs
            is resumed with ``load_if_exists`` and its finished cells are not re-run).
        measurer: The estimator, stored profiles and memory-fit rule.

    With ``--quality balanced`` the bounds prune against low-risk plans only, so the one search
    finds both the cheapest plan the policy accepts and the cheapest low-risk one.

    Returns:
        Every priced candidate, best first, with the sampler, trial and estimator-call counts.

    Raises:
        ValueError: If ``trials`` is not positive.
    """
    import optuna

    seed, trials, storage = request.seed, request.trials, request.storage
    if trials is not None and trials <= 0:
        raise ValueError(f"--trials must be > 0, got {trials}")
    # ERROR, not WARNING: a trial that fails re-raises its error, which the CLI reports in one
    # line (Ctrl-C: "interrupted"); optuna's warning would print its traceback first.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    evaluator = Evaluator(request, measurer)
    cells = {
        f"{v.key}@{h.key}": (v, h)
        for v in evaluator.variants()
        for h in evaluator.hardware()
        if evaluator.worth_searching(v, h)
    }
    if not cells:
        return _finish(
            [], sampler="none (no hardware can hold the weights)", trials=0, evaluated=0
        )
    exact = trials is None or trials >= len(cells)
    run = _StudyRun(
        optuna,
        evaluator,
        cells,
        study=_create_study(optuna, request, exact=exact, seed=seed, storage=storage),
        exact=exact,
        low_risk_only=request.budget.quality is QualityPolicy.BALANCED,
    )
    run.optimize(trials)
    label = (
        "optuna: every cell queued in lower-bound order, branch-and-bound pruning"
        if exact
        else f"optuna TPESampler(seed={seed}), warm-started"
    )
    return _finish(
        run.found,
        sampler=f"{label}; exact inner solve",
        trials=sum(t.state.is_finished() for t in run.study.get_trials(deepcopy=False)),
        evaluated=evaluator.estimator_calls,
        storage=storage,
    )


class _StudyRun:
    """One search's optuna study as named steps: replay the cells a stored study finished,
    queue the rest in lower-bound order (exact) or warm-start TPE, solve each trial's cell,
    prune by branch and bound against the cheapest plan found per method."""

    def __init__(
        self,
        optuna: Any,
        evaluator: Evaluator,
        cells: dict[str, tuple[Variant, Hardware]],
        *,
        study: optuna.Study,
        exact: bool,
        low_risk_only: bool,
    ) -> None:
        self.optuna, self.evaluator, self.cells, self.study = optuna, evaluator, cells, study
        self.exact, self.low_risk_only = exact, low_risk_only
        self.names = sorted(cells)
        self.bound = {n: evaluator.lower_bound_usd(*cells[n]) for n in self.names}
        self.found: list[Candidate] = []
        self.incumbent: dict[Method, float] = {}
        self.pending: list[str] = []
        self.waiting: set[str | None] = set()

    def solve(self, name: str) -> list[Candidate]:
        """Price the cell's points; plans no preference would set aside become incumbents."""
        found = self.evaluator.solve_cell(*self.cells[name])
        self.found.extend(found)
        for c in found:
            # Only plans no preference would set aside bound the rest: a tight plan gives way
            # to one with margin, one whose host RAM nothing checked to one whose RAM is known,
            # and those may cost more (plan.py), so they must not be pruned by it.
            if (
                c.fit is FitVerdict.FITS
                and c.quality_accepted
                and c.within_deadline
                and not host_ram_unknown(c)
                and (c.risk_level is RiskLevel.LOW or not self.low_risk_only)
            ):
                method = c.config.method
                self.incumbent[method] = min(self.incumbent.get(method, math.inf), c.cost.usd)
        return found

    def optimize(self, trials: int | None) -> None:
        """Replay what a stored study finished, then run the trials left."""
        optuna = self.optuna
        finished = [t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()]
        done = {_cell_name(t.params, self.names) for t in finished}
        for t in finished:  # cells an earlier run of this stored study completed
            name = _cell_name(t.params, self.names)
            if t.state == optuna.trial.TrialState.COMPLETE and name in self.cells:
                self.solve(name)
        if self.exact:
            self.waiting = {
                _cell_name(t.system_attrs.get("fixed_params", t.params), self.names)
                for t in self.study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.WAITING,)
                )
            }
            ordered = [
                n for n in sorted(self.names, key=lambda n: (self.bound[n], n)) if n not in done
            ]
            # Cells a stored study already queued run first; the rest are queued one at a time,
            # in lower-bound order, so incumbents prune early and bounded-out cells are never
            # written.
            self.pending = [n for n in ordered if n in self.waiting]
            self.pending += [n for n in ordered if n not in self.waiting]
            n_trials = len(self.pending)
        else:
            _warm_start(self.study, self.cells, self.names, done)
            n_trials = max(0, (trials or 0) - len(finished))
        if n_trials and not self.bounded():
            self.enqueue_next()
            self.study.optimize(
                self.objective,
                n_trials=n_trials,
                gc_after_trial=False,
                callbacks=[self.stop_when_bounded],
            )

    def objective(self, trial: optuna.Trial) -> tuple[float, float]:
        if self.exact:  # an int index: a 300-way categorical costs optuna ms per trial to compare
            name = self.names[trial.suggest_int("cell_index", 0, len(self.names) - 1)]
        else:
            name = str(trial.suggest_categorical("cell", self.names))
        method = self.cells[name][0].method
        if self.bound[name] > self.incumbent.get(method, math.inf):
            # Branch and bound: even at peak FLOP/s this cell costs more than a plan already
            # found for the same method, so it cannot hold that method's optimum.
            trial.set_user_attr("lower_bound_usd", self.bound[name])
            raise self.optuna.TrialPruned()
        values, cons = _trial_values(self.solve(name), self.evaluator.request.budget)
        for key, value in zip(CONSTRAINT_NAMES, cons, strict=True):
            trial.set_constraint(key, value)
        return values

    def bounded(self) -> bool:
        """Whether every cell left costs more, at its lower bound, than its method's incumbent."""
        return self.exact and all(
            self.bound[n] > self.incumbent.get(self.cells[n][0].method, math.inf)
            for n in self.pending
        )

    def enqueue_next(self) -> None:
        if self.exact and self.pending and self.pending[0] not in self.waiting:
            self.study.enqueue_trial({"cell_index": self.names.index(self.pending[0])})

    def stop_when_bounded(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Stop once every cell left would be pruned (they come in bound order), else queue
        the next one."""
        if not self.exact:
            return
        if self.pending:
            self.pending.pop(0)
        if not self.pending or self.bounded():
            study.stop()
        else:
            self.enqueue_next()


def _cell_name(params: Mapping[str, Any], names: list[str]) -> str | None:
    if "cell_index" in params:
        index = int(params["cell_index"])
        return names[index] if 0 <= index < len(names) else None
    cell = params.get("cell")
    return None if cell is None else str(cell)


def _create_study(
    optuna: Any, request: RecommendRequest, *, exact: bool, seed: int, storage: str | None
) -> optuna.Study:
    # Constraints reach TPE through Trial.set_constraint (optuna >= 5). In exact mode every
    # trial is enqueued, so the sampler only records them.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
    try:
        return optuna.create_study(
            study_name=f"ftplan-{request.fingerprint()}-{'exact' if exact else 'tpe'}",
            storage=storage,
            load_if_exists=storage is not None,
            sampler=sampler,
            directions=["minimize", "minimize"],
        )
    except ImportError as exc:
        raise EnvironmentProblem(
            f"the study storage {mask_secrets(storage or '')!r} needs a database driver that "
            f"is not installed ({exc.name or exc}). To fix: pip install it, or use sqlite:///FILE"
        ) from None
    except Exception as exc:
        if storage is None or not _is_storage_error(exc):
            raise
        raise InputError(
            f"cannot open the study storage {mask_secrets(storage)!r}: "
            f"{mask_secrets(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}. "
            "To fix: give a SQLite file ftplan wrote (sqlite:///study.db) or a reachable database"
        ) from None


def _is_storage_error(exc: BaseException) -> bool:
    """A failure of the storage backend (SQLAlchemy, optuna's storage layer), not of ftplan."""
    module = type(exc).__module__
    return module.startswith(("sqlalchemy", "optuna.storages", "sqlite3")) or (
        type(exc).__name__ == "StorageInternalError"
    )


def _warm_start(
    study: Any, cells: Mapping[str, tuple[Variant, Hardware]], names: list[str], done: set[Any]
) -> None:
    """Enqueue, per variant, the cell with the cheapest on-demand price per GPU-hour."""
    best: dict[str, tuple[float, str]] = {}
    for name in names:
        variant, hw = cells[name]
        usd_per_gpu_hour = min(o.usd_per_hour for o in hw.offers) / hw.gpus_per_node
        current = best.get(variant.key)
        if current is None or (usd_per_gpu_hour, name) < current:
            best[variant.key] = (usd_per_gpu_hour, name)
    for _, name in sorted(best.values()):
        if name not in done:
            study.enqueue_trial({"cell": name}, skip_if_exists=True)


def _trial_values(
    found: list[Candidate], budget: Budget
) -> tuple[tuple[float, float], tuple[float, ...]]:
    """The cell's best candidate as (USD, hours) and its constraints (nearest miss if none)."""
    if not found:
        return (math.inf, math.inf), (1.0, 1.0, 1.0, 1.0)
    best = min(
        found, key=lambda c: (sum(max(0.0, v) for v in constraints(c, budget)), *sort_key(c))
    )
    values = (best.cost.usd, best.cost.hours)
    if not all(math.isfinite(v) for v in values):
        values = (1e18, 1e18)
    return values, constraints(best, budget)


__all__ = ["SearchResult", "exhaustive_search", "search"]
