"""Cost model: turns a Measurement and an Offer into wall-clock hours and USD. Pure; no I/O.

hours = start-up + total tokens ÷ tokens/s + eval passes (+ spot interruption and checkpoint
overhead);
billed hours = hours rounded up to the offer's billing increment, at least its minimum;
USD = billed hours × the offer's instance price × nodes. Every constant is a documented
assumption that the plan repeats in its ``assumptions``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from catalog import Offer, Provider
from planner._types import Budget, CostEstimate
from profiler import Measurement


@dataclass(frozen=True, slots=True, kw_only=True)
class SpotAssumptions:
    """What ftplan assumes about spot capacity. Adjustable with ``ftplan recommend`` flags.

    Attributes:
        interruptions_per_hour: Expected reclaims per instance-hour. 0.1 (one every 10 h) is a
            deliberately pessimistic assumption for GPU spot capacity: the AWS Spot Instance
            Advisor only publishes monthly buckets (the worst being ">20% of instances
            interrupted per month"), which understate what large GPU instances see in busy
            regions. Not a measurement.
        restart_minutes: Time from a reclaim to training again (new instance, container,
            reload weights and the last checkpoint). Assumption, same order as the start-up.
        checkpoint_write_gib_per_s: Bandwidth to save a checkpoint (local NVMe then an
            asynchronous upload, as SageMaker checkpoint sync does). Assumption: 1 GiB/s.
    """

    interruptions_per_hour: float = 0.1
    restart_minutes: float = 10.0
    checkpoint_write_gib_per_s: float = 1.0

    def __post_init__(self) -> None:
        if self.interruptions_per_hour < 0:
            raise ValueError(
                f"spot interruptions per hour must be >= 0, got {self.interruptions_per_hour}"
            )
        if self.restart_minutes < 0:
            raise ValueError(f"spot restart minutes must be >= 0, got {self.restart_minutes}")
        if not self.checkpoint_write_gib_per_s > 0:
            raise ValueError(
                "checkpoint write bandwidth must be > 0 GiB/s, got "
                f"{self.checkpoint_write_gib_per_s}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class StartupAssumptions:
    """Time before the first training step, billed like the rest of the run.

    Attributes:
        provision_minutes: Instance start and container image pull on a cloud offer. None (the
            default) takes each offer's figure from the catalog (``catalog/data/services.csv``,
            per provider and service, with sources); a number overrides it for every cloud
            offer. ``local`` offers take 0 either way.
        download_gib_per_s: Bandwidth to fetch the weights from the hub or S3. Assumption:
            0.5 GiB/s (≈ 4 Gbit/s), then loading from local disk is included.
    """

    provision_minutes: float | None = None
    download_gib_per_s: float = 0.5

    def __post_init__(self) -> None:
        if self.provision_minutes is not None and self.provision_minutes < 0:
            raise ValueError(f"provision minutes must be >= 0, got {self.provision_minutes}")
        if not self.download_gib_per_s > 0:
            raise ValueError(f"download bandwidth must be > 0, got {self.download_gib_per_s}")


# Provisioning time of an offer that carries none (built in code, not loaded from the catalog).
FALLBACK_PROVISION_MINUTES = 5.0


def provision_s(offer: Offer, startup: StartupAssumptions) -> float:
    """Seconds from asking for the instance to running the training image: 0 on own GPUs, the
    override when given, else the offer's catalog figure (5 min when it has none)."""
    if offer.provider is Provider.LOCAL:
        return 0.0
    if startup.provision_minutes is not None:
        return startup.provision_minutes * 60
    if offer.provision_minutes is not None:
        return offer.provision_minutes * 60
    return FALLBACK_PROVISION_MINUTES * 60


def checkpoint_interval_s(
    *, step_time_s: float, save_s: float, interruptions_per_hour: float
) -> float:
    """Seconds between checkpoints: Young's optimum sqrt(2 × save time × MTBF), whole steps.

    Young, J. W. (1974), "A first order approximation to the optimum checkpoint interval",
    CACM 17(9). Rounded up to a whole number of optimizer steps and at least one step.
    """
    if interruptions_per_hour <= 0:
        return math.inf
    mtbf_s = 3600.0 / interruptions_per_hour
    young_s = math.sqrt(2.0 * max(save_s, 1e-3) * mtbf_s)
    return max(1, math.ceil(young_s / step_time_s)) * step_time_s


def estimate_cost(
    measurement: Measurement,
    offer: Offer,
    budget: Budget,
    *,
    nodes: int,
    spot_policy: SpotAssumptions,
    startup: StartupAssumptions | None = None,
    weights_gib: float = 0.0,
    checkpoint_size_gib: float = 0.0,
    eval_step_fraction: float | None = None,
) -> CostEstimate:
    """Estimate wall-clock hours and USD for one candidate.

    Args:
        measurement: Throughput (``tokens_per_s`` over all GPUs) and ``step_time_s`` of the
            config; from a stored profile or the estimator.
        offer: Instance price in USD/hour for ``offer.gpu_count`` GPUs.
        budget: Dataset tokens per epoch and epochs.
        nodes: Number of instances (each billed at ``offer.usd_per_hour``).
        spot_policy: Interruption rate, restart time and checkpoint bandwidth (spot offers only).
        startup: Provisioning and weight download; defaults to :class:`StartupAssumptions`.
        weights_gib: Size of the weights downloaded at start-up, GiB.
        checkpoint_size_gib: Size of one resumable checkpoint, GiB (spot offers save one every
            checkpoint interval).
        eval_step_fraction: An eval micro-batch's time over a training step's
            (:attr:`profiler.EvalEstimate.step_fraction`); needed when the budget has
            evaluations: they read ``budget.eval_total_tokens`` at ``tokens_per_s`` ÷ it.

    Returns:
        A CostEstimate whose ``hours`` = train + eval + start-up + spot overhead hours and whose
        ``usd``
        = billed hours (``offer.billed_hours(hours)``) × ``offer.usd_per_hour`` × ``nodes``.
        ``checkpoint_interval_minutes`` is set for spot offers only.

    Raises:
        ValueError: If the measurement has no positive throughput, ``nodes`` < 1, or the budget
            has evaluations and no positive ``eval_step_fraction``.
    """
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    tokens_per_s = measurement.tokens_per_s
    if tokens_per_s is None or not tokens_per_s > 0:
        raise ValueError(
            f"cannot price {measurement.config.label()} on {offer.instance_type}: "
            f"tokens_per_s is {tokens_per_s}"
        )
    startup = startup or StartupAssumptions()
    train_s = budget.total_tokens / tokens_per_s
    eval_s = 0.0
    if budget.evaluations:
        if eval_step_fraction is None or not eval_step_fraction > 0:
            raise ValueError(
                f"pricing {budget.evaluations} eval passes needs the eval step fraction, got "
                f"{eval_step_fraction}"
            )
        eval_s = budget.eval_total_tokens / tokens_per_s * eval_step_fraction
    startup_s = provision_s(offer, startup) + weights_gib / startup.download_gib_per_s
    overhead_s = 0.0
    interval_minutes: float | None = None
    if offer.spot:
        step_s = measurement.step_time_s or 1.0
        save_s = checkpoint_size_gib / spot_policy.checkpoint_write_gib_per_s
        interval_s = checkpoint_interval_s(
            step_time_s=step_s,
            save_s=save_s,
            interruptions_per_hour=spot_policy.interruptions_per_hour,
        )
        checkpoints_s = 0.0 if math.isinf(interval_s) else train_s / interval_s * save_s
        # Any node's reclaim stops the whole job, so the rate scales with the node count.
        exposed_hours = (train_s + eval_s + checkpoints_s) / 3600
        interruptions = spot_policy.interruptions_per_hour * nodes * exposed_hours
        redo_s = 0.0 if math.isinf(interval_s) else interval_s / 2
        overhead_s = checkpoints_s + interruptions * (redo_s + spot_policy.restart_minutes * 60)
        interval_minutes = None if math.isinf(interval_s) else interval_s / 60
    hours = (train_s + eval_s + startup_s + overhead_s) / 3600
    billed = offer.billed_hours(hours)
    usd_per_hour = offer.usd_per_hour * nodes
    return CostEstimate(
        train_hours=train_s / 3600,
        startup_hours=startup_s / 3600,
        spot_overhead_hours=overhead_s / 3600,
        hours=hours,
        usd=billed * usd_per_hour,
        usd_per_hour=usd_per_hour,
        checkpoint_interval_minutes=interval_minutes,
        billed_hours=billed,
        idle_billed_hours=billed - hours,
        eval_hours=eval_s / 3600,
    )
