"""A plan's candidate as a launch: the hand-off from the planner to the runners.

Runners may not import the planner, so a plan's candidate becomes a :class:`runners.LaunchSpec`
here: which candidate, which model (the plan's config.json, checked), the spec, its run length,
cost and eval schedule recomputed from the data the run really gets, and what stops a launch or
is worth a warning (a plan the recipe or the GPUs cannot load, a SageMaker price above the
plan's EC2 one). ``ftplan launch`` parses flags, calls :func:`prepare_launch` and prints.
Pure apart from reading the plan's config.json, the catalog and the data files it counts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from catalog import (
    InputError,
    ModelSpec,
    config_sha256,
    expand_user,
    get_gpu,
    get_model,
    list_offers,
    model_from_hf_config,
)
from planner._types import Candidate, Plan
from profiler import chunked_loss_problem
from profiler.recipes import DEFAULT_LEARNING_RATE
from runners import LaunchSpec, Target, evaluations_in_run, parse_checkpoint_every
from runners._length import RunLength, dataset_tokens, difference_note, run_length
from runners._types import CUDA_DEVICE

DEFAULT_CHECKPOINT_MINUTES = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchChoices:
    """What a launch asks for beyond the plan (``ftplan launch``'s flags; None: the plan's).

    Attributes:
        data: Training data (a local JSONL file, or a URI the target reads).
        eval_data: Held-out data evaluated over the run (None: no evaluation).
        eval_every_steps: Evaluate every N optimizer steps (None: the plan's passes spread).
        rank: Launch the N-th ranked candidate (1-based) instead of the chosen one.
        device: ``cuda``, or ``cpu`` for a local smoke run.
        max_steps: Stop after N optimizer steps.
        weights: Hub id, folder or ``s3://`` URI of the weights (None: the model's hub id).
        random_init: Random weights from the model's config (no download).
        grad_accum_steps: Micro-batches per optimizer step (None: the plan's).
        checkpoint_every: ``200steps`` or ``15m`` (None: the plan's spot interval, else 30 min).
        tokens: Tokens per epoch of data that cannot be counted here (None: the plan's).
        dry_run: Describe the launch only; problems of the machine become warnings.
    """

    data: str
    eval_data: str | None = None
    eval_every_steps: int | None = None
    rank: int | None = None
    device: str = CUDA_DEVICE
    max_steps: int | None = None
    weights: str | None = None
    random_init: bool = False
    grad_accum_steps: int | None = None
    checkpoint_every: str | None = None
    tokens: int | None = None
    dry_run: bool = False


def prepare_launch(plan: Plan, choices: LaunchChoices) -> tuple[LaunchSpec, list[str]]:
    """The spec that launches ``plan`` as ``choices`` ask, and the lines to print once the
    launch is accepted (run length, eval schedule, differences from the plan, warnings).

    Raises:
        InputError: No such candidate, a candidate that cannot be launched as written, a
            plan the recipe or (outside a dry run) the GPUs cannot load, eval flags that do
            not go together.
        DataFormatError: On a malformed line of a local data file.
    """
    candidate = plan_candidate(plan, rank=choices.rank)
    spec = launch_spec_from_plan(
        plan,
        candidate,
        device=choices.device,
        max_steps=choices.max_steps,
        weights=choices.weights,
        random_init=choices.random_init,
        grad_accum_steps=choices.grad_accum_steps,
        checkpoint_every=choices.checkpoint_every,
    )
    spec, notes = with_real_length(
        plan,
        candidate,
        spec,
        data=choices.data,
        tokens=choices.tokens,
        eval_data=choices.eval_data,
        eval_every_steps=choices.eval_every_steps,
    )
    return spec, notes + check_launchable(spec, dry_run=choices.dry_run)


def check_launchable(spec: LaunchSpec, *, dry_run: bool) -> list[str]:
    """Refuse a spec the recipe cannot run, or (outside a dry run) the planned GPUs cannot
    load; a dry run gets the latter as a warning line.

    Raises:
        InputError: What stops the launch, with how to fix it.
    """
    problem = _chunked_loss_problem(spec)
    if problem is not None:
        raise InputError(problem)
    problem = _load_problem(spec)
    if problem is None:
        return []
    if not dry_run:
        raise InputError(
            f"{problem}. To fix: re-plan with larger GPUs (e.g. --gpu h100 --gpu h200) or "
            "without --gpu/--gpu-count"
        )
    return [f"warning: {problem}"]


def target_warnings(spec: LaunchSpec, target: Target) -> list[str]:
    """Lines to print once the launch on ``target`` is accepted: where the plan's price does
    not hold there."""
    warning = sagemaker_price_warning(spec) if target is Target.SAGEMAKER else None
    return [] if warning is None else [f"warning: {warning}"]


def plan_candidate(plan: Plan, *, rank: int | None = None) -> Candidate:
    """The plan's chosen candidate, or its ``rank``-th ranked one (1-based).

    Raises:
        InputError: If nothing was chosen or the rank is out of range.
    """
    if rank is not None:
        if not 1 <= rank <= len(plan.ranked):
            raise InputError(
                f"--candidate {rank} is out of range: the plan ranks "
                f"{len(plan.ranked)} candidates (1..{len(plan.ranked)})"
            )
        return plan.ranked[rank - 1]
    if plan.chosen is None:
        raise InputError(
            "the plan has no chosen candidate (nothing was feasible within the budget). To fix: "
            "re-run 'ftplan recommend' with a larger --budget, or pick one with --candidate N"
        )
    return plan.chosen


def plan_model(plan: Plan) -> ModelSpec:
    """The plan's model: the config.json it was made from (by resolved path, refused when its
    SHA-256 changed since), else its config folder named by the hub id, else the catalog entry.

    Raises:
        CatalogError / InputError: If none resolves, or the config.json changed since the plan.
    """
    if plan.model_config_path is not None:
        path = Path(plan.model_config_path)
        if not path.is_file():
            raise InputError(
                f"the plan was made from {str(path)!r}, which is gone. To fix: restore it, or "
                "re-plan with 'ftplan recommend --model PATH/TO/config.json'"
            )
        if plan.model_config_sha256 and config_sha256(path) != plan.model_config_sha256:
            raise InputError(
                f"{str(path)!r} changed since the plan was made (its SHA-256 differs), so the "
                "plan's memory and cost figures are for another model. To fix: re-plan with "
                "'ftplan recommend'"
            )
        return model_from_hf_config(path)
    folder = expand_user(plan.model_hf_id)
    if (folder / "config.json").is_file():
        return model_from_hf_config(folder)
    return get_model(plan.model)


def launch_spec_from_plan(
    plan: Plan,
    candidate: Candidate,
    *,
    device: str = CUDA_DEVICE,
    max_steps: int | None = None,
    weights: str | None = None,
    random_init: bool = False,
    grad_accum_steps: int | None = None,
    learning_rate: float | None = None,
    checkpoint_every: str | None = None,
) -> LaunchSpec:
    """Turn a plan's candidate into the runners' LaunchSpec.

    Weights come from ``weights`` or else the catalog model's hub id; gradient accumulation
    and learning rate from the arguments when given, else from the candidate; the checkpoint
    interval from ``checkpoint_every`` (``200steps``, ``15m``), else the plan's spot interval,
    else 30 minutes.

    The expectation carried along (peak allocated GiB per GPU, tokens/s over all GPUs) is the
    candidate's measurement, which the run's summary compares with what it measures.

    Raises:
        CatalogError: If the plan's model is not in the catalog.
        InputError: If ``checkpoint_every`` is not an interval, or the candidate does not hold
            together (a plan edited by hand: GPUs that do not match its offer, no hours).
    """
    every_steps, every_minutes = (
        parse_checkpoint_every(checkpoint_every)
        if checkpoint_every
        else (None, candidate.cost.checkpoint_interval_minutes or DEFAULT_CHECKPOINT_MINUTES)
    )
    measurement = candidate.measurement
    method = candidate.config.method
    model = plan_model(plan)
    try:
        return LaunchSpec(
            model=model,
            config=candidate.config,
            checkpoint=weights,
            random_init=random_init,
            offer=candidate.offer,
            nodes=candidate.nodes,
            device=device,
            grad_accum_steps=grad_accum_steps or candidate.grad_accum_steps,
            learning_rate=learning_rate
            or candidate.suggested_learning_rate
            or DEFAULT_LEARNING_RATE[method],
            epochs=plan.budget.epochs,
            max_steps=max_steps,
            checkpoint_every_steps=every_steps,
            checkpoint_every_minutes=every_minutes,
            expected_peak_allocated_gib=measurement.peak_allocated_gib,
            expected_tokens_per_s=measurement.tokens_per_s,
            expected_source=measurement.source.value,
            max_hours=candidate.cost.hours,
        )
    except ValueError as exc:
        raise InputError(
            f"the plan's candidate cannot be launched as it is written: {exc}. To fix: re-plan "
            "with 'ftplan recommend' rather than editing the plan"
        ) from None


def eval_schedule(
    plan: Plan, *, steps: int, eval_data: str | None, eval_every_steps: int | None
) -> tuple[int | None, int, list[str]]:
    """``(eval_every_steps, evaluations, notes)`` of a run of ``steps`` optimizer steps: the
    plan's eval passes spread evenly over the steps (the last after the final step) unless
    ``--eval-every-steps`` says otherwise, and a note where the run evaluates other than the plan
    priced.

    Raises:
        InputError: ``--eval-every-steps`` without ``--eval-data``.
    """
    planned = plan.budget.evaluations
    if eval_data is None:
        if eval_every_steps is not None:
            raise InputError("--eval-every-steps needs --eval-data FILE.jsonl")
        notes = (
            [
                f"note: the plan priced {planned} eval passes; without --eval-data this run "
                "does not evaluate"
            ]
            if planned
            else []
        )
        return None, 0, notes
    if eval_every_steps is None and planned:
        eval_every_steps = max(1, math.ceil(steps / planned))
    count = evaluations_in_run(steps, eval_every_steps)
    notes = [
        f"eval: {count} pass{'' if count == 1 else 'es'} over --eval-data, "
        + (f"every {eval_every_steps} steps and " if eval_every_steps is not None else "")
        + "after the last step"
    ]
    if not planned:
        notes.append(
            "note: the plan priced no eval passes, so its hours and cost leave them out. To fix:"
            " re-plan with --eval-dataset FILE.jsonl"
        )
    return eval_every_steps, count, notes


def with_real_length(
    plan: Plan,
    candidate: Candidate,
    spec: LaunchSpec,
    *,
    data: str,
    tokens: int | None,
    eval_data: str | None = None,
    eval_every_steps: int | None = None,
) -> tuple[LaunchSpec, list[str]]:
    """The spec with ``max_hours`` re-derived from the data the run really gets (a local file
    counted with its tokenizer, else ``--tokens``, else the plan's figure) and with its eval
    schedule (:func:`eval_schedule`), and the lines to print once the launch is accepted: which
    figure, and the difference from the plan when it is over 10%.

    Raises:
        DataFormatError: On a malformed line of a local data file.
        InputError: ``--eval-every-steps`` without ``--eval-data``.
    """
    cost = candidate.cost
    rate = candidate.measurement.tokens_per_s
    if not rate:
        every, _count, eval_notes = eval_schedule(
            plan, steps=0, eval_data=eval_data, eval_every_steps=eval_every_steps
        )
        return dataclasses.replace(spec, eval_every_steps=every), eval_notes
    tokens_per_step = spec.config.micro_batch_size * spec.config.seq_len * spec.grad_accum_steps
    overhead = cost.spot_overhead_hours / cost.train_hours if cost.train_hours else 0.0

    def length(dataset: int, source: str, eval_hours: float = cost.eval_hours) -> RunLength:
        return run_length(
            dataset_tokens=dataset,
            source=source,
            epochs=spec.epochs,
            tokens_per_step=tokens_per_step * spec.config.gpu_count,
            tokens_per_s=rate,
            max_steps=spec.max_steps,
            startup_hours=cost.startup_hours,
            overhead_fraction=overhead,
            usd_per_hour=cost.usd_per_hour,
            eval_hours=eval_hours,
        )

    planned = length(plan.budget.dataset_tokens, "the plan's assumption")
    found = dataset_tokens(spec, data=data, tokens=tokens)
    actual = planned if found is None else length(*found)
    every, count, eval_notes = eval_schedule(
        plan, steps=actual.steps, eval_data=eval_data, eval_every_steps=eval_every_steps
    )
    # The plan's eval hours per pass, for the passes this run makes over the eval set it gets
    # (a local file counted with the run's tokenizer; none priced: none).
    scale = 1.0
    found_eval = None if eval_data is None else dataset_tokens(spec, data=eval_data, tokens=None)
    if found_eval is not None and plan.budget.eval_tokens:
        scale = found_eval[0] / plan.budget.eval_tokens
        eval_notes.append(
            f"eval set: {found_eval[0]:,} tokens ({found_eval[1]}), the plan assumed "
            f"{plan.budget.eval_tokens:,}"
        )
    if count != plan.budget.evaluations or scale != 1.0:
        per_pass = cost.eval_hours / plan.budget.evaluations if plan.budget.evaluations else 0.0
        actual = length(actual.dataset_tokens, actual.source, eval_hours=per_pass * count * scale)
    notes = [
        f"run length: {actual.dataset_tokens:,} tokens per epoch ({actual.source}), "
        f"{actual.steps:,} steps, {actual.hours:.2f} h, {actual.usd:.2f} USD"
    ]
    note = difference_note(planned, actual)
    if note:
        notes.append(f"note: {note}")
    notes += eval_notes
    return (
        dataclasses.replace(spec, max_hours=max(actual.hours, 1 / 60), eval_every_steps=every),
        notes,
    )


def _load_problem(spec: LaunchSpec) -> str | None:
    """Why the runner cannot load the plan on its GPUs (:func:`planner.explain.load_problem`)."""
    from planner.explain import load_problem

    if spec.offer is None:
        return None
    return load_problem(spec.model, spec.config, get_gpu(spec.offer.gpu))


def _chunked_loss_problem(spec: LaunchSpec) -> str | None:
    """Why the recipe cannot run the plan's chunked cross-entropy (a plan edited by hand: the
    search offers it on one unsharded GPU, for model types it reproduces), or None."""
    config = spec.config
    if not config.chunked_loss:
        return None
    problem = chunked_loss_problem(
        model_type=spec.model.model_type, gpu_count=config.gpu_count, sharding=config.sharding
    )
    if problem is None:
        return None
    return f"{problem}. To fix: re-plan with 'ftplan recommend', or set chunked_loss to false"


def sagemaker_price_warning(spec: LaunchSpec) -> str | None:
    """Say so when the plan was priced on an EC2 offer but will run as a SageMaker job.

    SageMaker's ``ml.*`` instances cost more than the same EC2 instance (e.g. ml.g5.xlarge
    1.408 vs g5.xlarge 1.006 USD/h in the shipped catalog), so the plan's dollars do not hold.
    """
    offer = spec.offer
    if offer is None or offer.service == "sagemaker":
        return None
    ml_type = f"ml.{offer.instance_type}"
    priced = [
        o
        for o in list_offers(providers=[offer.provider])
        if o.service == "sagemaker" and o.instance_type == ml_type and o.spot == offer.spot
    ]
    kind = "spot" if offer.spot else "on-demand"
    planned = (
        f"the plan priced EC2 {offer.instance_type} at {offer.usd_per_hour:.4g} USD/h ({kind})"
    )
    if not priced:
        return (
            f"{planned}; the catalog has no {kind} price for {ml_type}, so the job may cost more "
            f"than planned. To fix: re-plan with --provider aws --service sagemaker"
        )
    usd = priced[0].usd_per_hour
    if usd <= offer.usd_per_hour:
        return None
    # A plan priced at 0 USD/h (a hand edit, a local offer) has no ratio to state.
    ratio = f", {usd / offer.usd_per_hour:.2f}× the planned cost" if offer.usd_per_hour else ""
    return (
        f"{planned}; SageMaker's {ml_type} costs {usd:.4g} USD/h{ratio}. To fix: re-plan with "
        "--provider aws --service sagemaker, or launch on that EC2 instance (--target local "
        "there)"
    )
