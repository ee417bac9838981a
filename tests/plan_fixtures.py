"""A realistic :class:`Plan` built from fixed numbers, for report, CLI and launch tests.

llama2-7b, 50M tokens × 2 epochs, $200 budget, 48 h deadline, priced on H100, A10G and L4 offers.
The H100 LoRA figure is a real measurement (profiler/data/reference-h100.jsonl: llama2-7b
LoRA r16 all-linear, batch 4, seq 1024, gradient checkpointing, on an H100 80GB HBM3 with torch
2.11, transformers 5.17, peft 0.21.0, bitsandbytes 0.50.2). The QLoRA memory is that
measurement's peak labelled as a 2/4-layer extrapolation, and every other figure is a plausible
analytic estimate typed in for the tests: none of them is a measurement.

Prices are the reference catalog's rows (skypilot-catalog v7 snapshot, H1 2025): g6.xlarge L4
$0.8048/h on demand and $0.3879/h spot, g5.2xlarge A10G $1.212/h, Lambda gpu_1x_h100_sxm5
$3.29/h, p5.48xlarge 8×H100 $98.32/h (stale: predates the June 2025 price cut).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from catalog import Offer, Provider
from planner import (
    Budget,
    Candidate,
    CostEstimate,
    MethodVerdict,
    Plan,
    QualityRisk,
    RiskLevel,
    SearchInfo,
    TokensSource,
)
from profiler import Measurement, Method, TuningConfig
from profiler._types import (
    MemoryBreakdown,
    OptimizerKind,
    Precision,
    Provenance,
    Sharding,
    Source,
    Status,
)
from runners import LaunchSpec

HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_INSTANCE = "<b>g6</b><img src=x onerror=alert(2)>"
DATASET_TOKENS = 50_000_000
EPOCHS = 2.0
STARTUP_HOURS = 0.25
SPOT_OVERHEAD_FRACTION = 0.10
GLOBAL_BATCH_TOKENS = 131_072

H100_PROVENANCE = Provenance(
    device="NVIDIA H100 80GB HBM3",
    date="2026-11-20",
    versions=(
        ("bitsandbytes", "0.50.2"),
        ("peft", "0.21.0"),
        ("torch", "2.11.0"),
        ("transformers", "5.17.0"),
    ),
    method="full-depth run, median of 5 timed steps after 2 warm-up steps",
    notes="profiler/data/reference-h100.jsonl",
)
FIT_PROVENANCE = Provenance(
    device="NVIDIA H100 80GB HBM3",
    date="2026-11-20",
    versions=H100_PROVENANCE.versions,
    method="2- and 4-layer models measured, line in the layer count evaluated at 32 layers",
    notes="step time on L4 scaled from the H100 by bf16 TFLOP/s",
)
ESTIMATOR_PROVENANCE = Provenance(
    device="analytic estimator",
    date="2026-11-23",
    method="Korthikanti et al. (2022) activations + roofline step time",
)

_RISK_LORA = QualityRisk(
    level=RiskLevel.LOW,
    message="LoRA on all linear layers (incl. MLP) matches full fine-tuning on small/medium "
    "instruction data; use ~10× the full-FT learning rate.",
    source='Schulman et al., "LoRA Without Regret", Thinking Machines Lab, 2025',
)
_RISK_CAPACITY = QualityRisk(
    level=RiskLevel.MEDIUM,
    message="100M training tokens approach the capacity of r=16 adapters (40.0M parameters × "
    "~2 bits); LoRA may learn less than full FT here.",
    source='Biderman et al., "LoRA Learns Less and Forgets Less", 2024 (arXiv:2405.09673)',
)
_RISK_NF4 = QualityRisk(
    level=RiskLevel.LOW,
    message="NF4 QLoRA reaches 16-bit LoRA quality.",
    source='Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", 2023 '
    "(arXiv:2305.14314)",
)


def _offer(
    *,
    provider: Provider,
    service: str,
    instance: str,
    region: str,
    gpu: str,
    count: int,
    usd_per_hour: float,
    spot: bool = False,
    stale: bool = False,
) -> Offer:
    return Offer(
        provider=provider,
        service=service,
        instance_type=instance,
        region=region,
        gpu=gpu,
        gpu_count=count,
        usd_per_hour=usd_per_hour,
        spot=spot,
        as_of="2025-05-01",
        source="skypilot-org/skypilot-catalog catalogs/v7",
        stale=stale,
    )


OFFER_H100 = _offer(
    provider=Provider.LAMBDA,
    service="cloud",
    instance="gpu_1x_h100_sxm5",
    region="us-east-1",
    gpu="H100 SXM 80GB",
    count=1,
    usd_per_hour=3.29,
)
OFFER_P5 = _offer(
    provider=Provider.AWS,
    service="ec2",
    instance="p5.48xlarge",
    region="us-east-1",
    gpu="H100 SXM 80GB",
    count=8,
    usd_per_hour=98.32,
    stale=True,
)
OFFER_L4 = _offer(
    provider=Provider.AWS,
    service="ec2",
    instance="g6.xlarge",
    region="us-east-1",
    gpu="L4",
    count=1,
    usd_per_hour=0.8048,
)
OFFER_L4_SPOT = _offer(
    provider=Provider.AWS,
    service="ec2",
    instance="g6.xlarge",
    region="us-east-1",
    gpu="L4",
    count=1,
    usd_per_hour=0.3879,
    spot=True,
)
OFFER_A10G = _offer(
    provider=Provider.AWS,
    service="ec2",
    instance="g5.2xlarge",
    region="us-east-1",
    gpu="A10G",
    count=1,
    usd_per_hour=1.212,
)

USABLE_GIB = {"H100 SXM 80GB": 80.0, "L4": 22.35, "A10G": 22.35}


def _cost(tokens_per_s: float, offer: Offer, *, nodes: int = 1) -> CostEstimate:
    train_hours = DATASET_TOKENS * EPOCHS / tokens_per_s / 3600
    spot_hours = train_hours * SPOT_OVERHEAD_FRACTION if offer.spot else 0.0
    hours = train_hours + STARTUP_HOURS + spot_hours
    usd_per_hour = offer.usd_per_hour * nodes
    return CostEstimate(
        train_hours=train_hours,
        startup_hours=STARTUP_HOURS,
        spot_overhead_hours=spot_hours,
        hours=hours,
        usd=hours * usd_per_hour,
        usd_per_hour=usd_per_hour,
        checkpoint_interval_minutes=30.0 if offer.spot else None,
    )


def _lora(method: Method) -> TuningConfig:
    return TuningConfig(
        method=method,
        lora_rank=16,
        lora_alpha=32,
        lora_targets="all-linear",
        micro_batch_size=4,
        seq_len=1024,
        grad_checkpointing=True,
    )


def _candidate(
    config: TuningConfig,
    offer: Offer,
    measurement: Measurement,
    *,
    risks: tuple[QualityRisk, ...],
    lr: float,
    max_usd: float = 200.0,
    max_hours: float | None = 48.0,
) -> Candidate:
    assert measurement.tokens_per_s is not None
    cost = _cost(measurement.tokens_per_s, offer)
    usable = USABLE_GIB[offer.gpu]
    peak = measurement.peak_reserved_gib or 0.0
    # Gradient accumulation up to ~131,072 tokens per optimizer step (the planner's target).
    step_tokens = config.tokens_per_step * config.gpu_count
    accum = max(1, GLOBAL_BATCH_TOKENS // step_tokens)
    return Candidate(
        config=config,
        offer=offer,
        nodes=1,
        measurement=measurement,
        cost=cost,
        grad_accum_steps=accum,
        global_batch_tokens=accum * step_tokens,
        fits=peak <= usable * 0.95,
        usable_memory_gib=usable,
        risks=risks,
        suggested_learning_rate=lr,
        within_budget=cost.usd <= max_usd,
        within_deadline=max_hours is None or cost.hours <= max_hours,
    )


def _measurement(
    config: TuningConfig,
    gpu: str,
    *,
    source: Source,
    alloc: float,
    reserved: float,
    tokens_per_s: float,
    breakdown: MemoryBreakdown | None,
    provenance: Provenance = ESTIMATOR_PROVENANCE,
    fit: tuple[tuple[str, float], ...] = (),
    phase_peaks: tuple[tuple[str, float], ...] = (),
) -> Measurement:
    tokens = config.tokens_per_step * config.gpu_count
    return Measurement(
        model="llama2-7b",
        gpu=gpu,
        config=config,
        status=Status.OK,
        source=source,
        provenance=provenance,
        peak_allocated_gib=alloc,
        peak_reserved_gib=reserved,
        step_time_s=tokens / tokens_per_s,
        tokens_per_s=tokens_per_s,
        trainable_params=(6_738_415_616 if config.method is Method.FULL else 39_976_960),
        total_params=6_778_392_576,
        breakdown=breakdown,
        fit=fit,
        phase_peaks_gib=phase_peaks,
    )


def _fixture_measurements() -> dict[str, Measurement]:
    """The measurements behind :func:`make_candidates` (measured, extrapolated, estimated)."""
    return {**_adapter_measurements(), **_full_measurements()}


def _adapter_measurements() -> dict[str, Measurement]:
    """LoRA on an H100 (measured) and an A10G (estimated), QLoRA on an L4 (extrapolated)."""
    lora, qlora = _lora(Method.LORA), _lora(Method.QLORA)
    m_lora_h100 = _measurement(
        lora,
        "H100 SXM 80GB",
        source=Source.MEASURED,
        alloc=15.588,
        reserved=16.961,
        tokens_per_s=7277.6,
        provenance=H100_PROVENANCE,
        breakdown=MemoryBreakdown(
            weights_gib=12.55,
            gradients_gib=0.149,
            optimizer_gib=0.298,
            activations_gib=1.65,
            logits_gib=0.488,
            overhead_gib=0.453,
        ),
    )
    qlora_breakdown = MemoryBreakdown(
        weights_gib=3.70,
        gradients_gib=0.149,
        optimizer_gib=0.298,
        activations_gib=1.65,
        logits_gib=0.488,
        overhead_gib=2.112,
    )
    qlora_fit = (("layers_fitted_2", 5.912), ("layers_fitted_4", 6.069), ("gib_per_layer", 0.0786))
    m_qlora_l4 = _measurement(
        qlora,
        "L4",
        source=Source.EXTRAPOLATED,
        alloc=8.397,
        reserved=10.467,
        tokens_per_s=690.0,
        breakdown=qlora_breakdown,
        provenance=FIT_PROVENANCE,
        fit=qlora_fit,
    )
    m_lora_a10g = _measurement(
        lora,
        "A10G",
        source=Source.ESTIMATED,
        alloc=15.60,
        reserved=17.05,
        tokens_per_s=520.0,
        breakdown=MemoryBreakdown(
            weights_gib=12.55,
            gradients_gib=0.149,
            optimizer_gib=0.298,
            activations_gib=1.65,
            logits_gib=0.488,
            overhead_gib=0.465,
        ),
    )
    return {"lora_h100": m_lora_h100, "qlora_l4": m_qlora_l4, "lora_a10g": m_lora_a10g}


def _full_measurements() -> dict[str, Measurement]:
    """Full fine-tuning on H100s: FSDP over 8 (estimated), bf16-mixed on one (does not fit)."""
    full_fsdp = TuningConfig(
        method=Method.FULL,
        precision=Precision.BF16,
        micro_batch_size=4,
        seq_len=1024,
        grad_checkpointing=True,
        gpu_count=8,
        sharding=Sharding.FSDP,
    )
    full_mixed = TuningConfig(
        method=Method.FULL,
        precision=Precision.BF16_MIXED,
        micro_batch_size=1,
        seq_len=1024,
        grad_checkpointing=True,
        optimizer=OptimizerKind.ADAMW,
    )
    m_full_fsdp = _measurement(
        full_fsdp,
        "H100 SXM 80GB",
        source=Source.ESTIMATED,
        alloc=19.10,
        reserved=21.40,
        tokens_per_s=31000.0,
        breakdown=MemoryBreakdown(
            weights_gib=1.57,
            gradients_gib=1.57,
            optimizer_gib=3.14,
            activations_gib=9.80,
            logits_gib=0.98,
            overhead_gib=2.04,
        ),
    )
    m_full_mixed = _measurement(
        full_mixed,
        "H100 SXM 80GB",
        source=Source.ESTIMATED,
        alloc=125.3,
        reserved=127.9,
        tokens_per_s=2900.0,
        phase_peaks=(("forward_backward", 125.3), ("optimizer_step", 103.56)),
        breakdown=MemoryBreakdown(
            weights_gib=25.10,
            gradients_gib=25.10,
            optimizer_gib=50.20,
            activations_gib=21.50,
            logits_gib=0.24,
            overhead_gib=3.16,
        ),
    )
    return {"full_fsdp": m_full_fsdp, "full_mixed": m_full_mixed}


def make_candidates(
    *, max_usd: float = 200.0, max_hours: float | None = 48.0
) -> tuple[Candidate, ...]:
    """Six priced candidates, feasible ones first by USD, then the infeasible ones."""
    lora, qlora = _lora(Method.LORA), _lora(Method.QLORA)
    m = _fixture_measurements()
    full_fsdp, full_mixed = m["full_fsdp"].config, m["full_mixed"].config
    m_lora_h100, m_qlora_l4, m_lora_a10g = m["lora_h100"], m["qlora_l4"], m["lora_a10g"]
    m_full_fsdp, m_full_mixed = m["full_fsdp"], m["full_mixed"]
    kw: dict[str, Any] = {"max_usd": max_usd, "max_hours": max_hours}
    lora_risks = (_RISK_LORA, _RISK_CAPACITY)
    qlora_risks = (_RISK_NF4, _RISK_CAPACITY)
    c_lora_h100 = _candidate(lora, OFFER_H100, m_lora_h100, risks=lora_risks, lr=2e-4, **kw)
    c_qlora_spot = _candidate(qlora, OFFER_L4_SPOT, m_qlora_l4, risks=qlora_risks, lr=2e-4, **kw)
    c_qlora_l4 = _candidate(qlora, OFFER_L4, m_qlora_l4, risks=qlora_risks, lr=2e-4, **kw)
    c_full_fsdp = _candidate(full_fsdp, OFFER_P5, m_full_fsdp, risks=(), lr=2e-5, **kw)
    c_full_mixed = _candidate(full_mixed, OFFER_H100, m_full_mixed, risks=(), lr=2e-5, **kw)
    c_lora_a10g = _candidate(lora, OFFER_A10G, m_lora_a10g, risks=lora_risks, lr=2e-4, **kw)
    everything = (c_lora_h100, c_qlora_spot, c_qlora_l4, c_full_fsdp, c_full_mixed, c_lora_a10g)
    feasible = sorted((c for c in everything if c.feasible), key=lambda c: c.cost.usd)
    infeasible = [c for c in everything if not c.feasible]
    return tuple(feasible) + tuple(infeasible)


def _pareto(candidates: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
    feasible = [c for c in candidates if c.feasible]
    front = [
        c
        for c in feasible
        if not any(
            o.cost.usd <= c.cost.usd
            and o.cost.hours <= c.cost.hours
            and (o.cost.usd, o.cost.hours) != (c.cost.usd, c.cost.hours)
            for o in feasible
        )
    ]
    return tuple(sorted(front, key=lambda c: c.cost.hours))


def _best(candidates: tuple[Candidate, ...], method: Method) -> Candidate | None:
    own = [c for c in candidates if c.config.method is method]
    return own[0] if own else None


def _base_plan() -> Plan:
    ranked = make_candidates()
    best = {m: _best(ranked, m) for m in Method}
    verdicts = (
        MethodVerdict(
            method=Method.LORA,
            best=best[Method.LORA],
            reason=(
                "LoRA r16 all-linear on 1× H100 SXM 80GB (lambda gpu_1x_h100_sxm5): $13.38 in "
                "4.1 h, measured peak 17.0 of 80.0 GiB: the cheapest feasible plan."
            ),
        ),
        MethodVerdict(
            method=Method.QLORA,
            best=best[Method.QLORA],
            reason=(
                "QLoRA fits a 24 GB L4 (10.5 GiB peak) but runs at ~690 tokens/s: $17.27 on spot "
                "in 44.5 h, 1.29× the LoRA plan's cost and 10.9× its time."
            ),
        ),
        MethodVerdict(
            method=Method.FULL,
            best=best[Method.FULL],
            reason=(
                "Full FT in bf16-mixed needs ~127.9 GiB per GPU (> 80.0 GiB on one H100); "
                "pure-bf16 FSDP on 8× H100 fits at 21.4 GiB per GPU but costs $112.68, 8.4× the "
                "LoRA plan."
            ),
        ),
    )
    return Plan(
        model="llama2-7b",
        model_hf_id="meta-llama/Llama-2-7b-hf",
        budget=Budget(
            max_usd=200.0,
            dataset_tokens=DATASET_TOKENS,
            epochs=EPOCHS,
            tokens_source=TokensSource.GIVEN,
            max_hours=48.0,
            longest_sample_tokens=1024,
        ),
        chosen=ranked[0],
        ranked=ranked,
        verdicts=verdicts,
        pareto=_pareto(ranked),
        assumptions=(
            "Dataset: 50,000,000 tokens per epoch (--tokens), 2 epochs, sequences packed to "
            "1024 tokens.",
            "Start-up (image pull, weight download, model load): 15 min per run.",
            "Spot runs lose 10% of training time to interruptions and checkpoint every 30 min.",
            "Memory must stay under 95% of the GPU's usable memory (5% headroom).",
            "PyTorch SDPA attention; loss over the full sequence.",
        ),
        search=SearchInfo(
            sampler="TPESampler",
            seed=0,
            trials=200,
            evaluated=184,
            catalog_as_of="2025-05-01",
            catalog_source="ftplan catalog (skypilot-catalog v7 snapshot)",
        ),
        ftplan_version="0.1.0",
        warnings=(
            "AWS p5.48xlarge price predates the June 2025 P5 price cut (stale): refresh "
            "with 'ftplan catalog refresh'.",
        ),
    )


def make_plan(**overrides: Any) -> Plan:
    """The fixture plan, with any :class:`Plan` fields replaced by ``overrides``."""
    return dataclasses.replace(_base_plan(), **overrides)


def make_no_feasible_plan() -> Plan:
    """Same job with a $5 budget: every candidate misses it, so nothing is chosen or ranked; the
    closest candidates are near misses, with suggestions."""
    ranked = make_candidates(max_usd=5.0)
    verdicts = tuple(
        MethodVerdict(method=m, best=_best(ranked, m), reason=reason)
        for m, reason in (
            (
                Method.LORA,
                "LoRA's cheapest run (1× H100, 4.1 h) costs $13.38, 2.7× the $5.00 budget.",
            ),
            (
                Method.QLORA,
                "QLoRA's cheapest run (L4 spot, 44.5 h) costs $17.27, 3.5× the $5.00 budget.",
            ),
            (
                Method.FULL,
                "Full FT's cheapest fitting run (8× H100 FSDP) costs $112.68, 22.5× "
                "the $5.00 budget.",
            ),
        )
    )
    base = _base_plan()
    return dataclasses.replace(
        base,
        budget=dataclasses.replace(base.budget, max_usd=5.0),
        chosen=None,
        ranked=(),
        verdicts=verdicts,
        pareto=(),
        near_misses=ranked[:5],
        warnings=("No candidate meets the $5.00 budget: the cheapest needs $13.38.",),
        suggestions=(
            "raise --budget to $14 (lora r16 all-linear bf16-mixed b4 s1024 ckpt on 1× H100 SXM "
            "80GB, lambda gpu_1x_h100_sxm5, on-demand)",
            "reduce --tokens or --epochs: 50,000,000 tokens × 2 epochs cost at least $13.38",
        ),
    )


def make_hostile_plan() -> Plan:
    """A plan whose user-supplied strings try to inject HTML and break markdown tables: the
    model name, and the chosen offer's instance type (shown in tables and chart hover text)."""
    base = _base_plan()
    chosen = base.chosen
    assert chosen is not None
    hostile_offer = dataclasses.replace(chosen.offer, instance_type=HOSTILE_INSTANCE)
    hostile_chosen = dataclasses.replace(chosen, offer=hostile_offer)

    def swap(cands: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
        return tuple(hostile_chosen if c is chosen else c for c in cands)

    return dataclasses.replace(
        base,
        model=HOSTILE_NAME,
        model_hf_id=f"evil/{HOSTILE_NAME}|x",
        assumptions=(f"Model {HOSTILE_NAME} | pipes | and <b>bold</b> & ampersands.",),
        chosen=hostile_chosen,
        ranked=swap(base.ranked),
        pareto=swap(base.pareto),
        verdicts=tuple(
            dataclasses.replace(v, best=hostile_chosen) if v.best is chosen else v
            for v in base.verdicts
        ),
    )


def make_empty_plan() -> Plan:
    """Nothing fits any offered GPU: no candidates, no near misses, verdicts without a best."""
    base = make_no_feasible_plan()
    verdicts = tuple(
        MethodVerdict(
            method=v.method,
            best=None,
            reason=(
                f"{v.method.value} fits no offered GPU: the weights alone need more than the "
                "largest card's 22.35 GiB."
            ),
        )
        for v in base.verdicts
    )
    return dataclasses.replace(
        base, near_misses=(), verdicts=verdicts, suggestions=("use a larger GPU (--gpu h100)",)
    )


# The execution role the AWS tests launch with, and IAM's GetRole answer for it.
SAGEMAKER_ROLE = "arn:aws:iam::123456789012:role/ftplan-sagemaker"
SAGEMAKER_GET_ROLE = {
    "Role": {
        "Path": "/",
        "RoleName": "ftplan-sagemaker",
        "RoleId": "AROAEXAMPLEEXAMPLE1",
        "Arn": SAGEMAKER_ROLE,
        "CreateDate": dt.datetime(2025, 1, 1),
    }
}


def sagemaker_qlora_spec(*, spot: bool = False) -> LaunchSpec:
    """Llama 2 7B QLoRA r16 all-linear on one SageMaker ml.g5.xlarge (A10G), as the AWS tests
    launch it."""
    from model_specs import LLAMA2_7B

    offer = Offer(
        provider=Provider.AWS,
        service="sagemaker",
        instance_type="ml.g5.xlarge",
        region="us-east-1",
        gpu="A10G",
        gpu_count=1,
        usd_per_hour=1.4,
        spot=spot,
        as_of="2025-05-01",
        source="test",
    )
    config = TuningConfig(
        method=Method.QLORA,
        precision=Precision.BF16_MIXED,
        lora_rank=16,
        lora_targets="all-linear",
    )
    # Random weights: Llama 2 is gated, and a real-weights launch without a token is refused.
    return LaunchSpec(model=LLAMA2_7B, config=config, offer=offer, random_init=True)
