"""The plan as GitHub-flavoured markdown: the same content as the HTML report, charts as tables.

The output is stable: no timestamps (only the data dates the plan carries), rows in the plan's
rank order or sorted. Every string that may come from a user or a catalog goes through
:func:`md_escape`, so a ``|`` cannot break a table and ``<script>`` renders as text.
"""

from __future__ import annotations

import re

from planner._types import METHOD_NAMES, Candidate, Plan
from planner.report.rows import (
    MEMORY_COMPONENTS,
    candidate_rows,
    cost_ranges,
    fmt_gib,
    fmt_hours,
    fmt_hours_band,
    fmt_tokens,
    fmt_usd,
    fmt_usd_band,
    fmt_usd_per_hour,
    gpu_label,
    memory_rows,
    memory_used_gib,
    offer_label,
    offers_in,
    params_text,
    risk_rows,
    source_counts,
    source_rows,
)
from profiler.memory import CHUNKED_LOSS_TOKENS

_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")


def md_escape(text: object) -> str:
    """Make ``text`` safe inside a GitHub markdown table cell or paragraph.

    HTML-sensitive characters become entities (``<`` → ``&lt;``), markdown syntax characters
    (`` \\ ` * [ ] | ``) get a backslash, and newlines become spaces.
    """
    value = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = _MD_SPECIAL.sub(r"\\\1", value)
    return " ".join(value.splitlines())


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def _describe(cand: Candidate) -> str:
    return (
        f"{md_escape(cand.config.label())} on {md_escape(gpu_label(cand))} "
        f"({md_escape(offer_label(cand.offer))})"
    )


def _recommendation(plan: Plan) -> list[str]:
    lines = ["## Recommendation", ""]
    cand = plan.chosen
    if cand is None:
        lines += [
            "**No feasible plan.** Every candidate breaks the memory, budget or deadline "
            "limit; the per-method verdicts below say by how much.",
            "",
        ]
        return lines
    cfg, cost, m = cand.config, cand.cost, cand.measurement
    lines += [
        f"**{_describe(cand)}**: **{fmt_usd(cost.usd)}** in **{fmt_hours(cost.hours)}**.",
        "",
    ]
    if cost_ranges(cand) is not None:
        lines += [
            f"The step time is an estimate; its 80% band (cross-validated on real H100 runs of "
            f"its regime) puts the job at {fmt_hours_band(cand)} and {fmt_usd_band(cand)}.",
            "",
        ]
    rows = [
        ["Method", cfg.method.value],
        [
            "LoRA rank / alpha / targets",
            "n/a"
            if cfg.lora_rank is None
            else f"{cfg.lora_rank} / {cfg.effective_lora_alpha} / {md_escape(cfg.lora_targets)}",
        ],
        ["Precision", cfg.precision.value],
        ["Micro-batch × sequence", f"{cfg.micro_batch_size} × {cfg.seq_len} tokens"],
        [
            "Gradient accumulation",
            f"{cand.grad_accum_steps} step(s)"
            + (
                ""
                if cand.global_batch_tokens is None
                else f", {fmt_tokens(cand.global_batch_tokens)} tokens per optimizer step"
            ),
        ],
        ["Gradient checkpointing", "yes" if cfg.grad_checkpointing else "no"],
        [
            "Chunked cross-entropy",
            f"yes, {CHUNKED_LOSS_TOKENS:,} tokens per chunk" if cfg.chunked_loss else "no",
        ],
        ["Optimizer", cfg.optimizer.value],
        [
            "GPUs",
            f"{md_escape(gpu_label(cand))} on {cand.nodes} node(s), sharding {cfg.sharding.value}",
        ],
        [
            "Host RAM per node",
            "n/a"
            if cand.measurement.host_ram_gib is None
            else f"{cand.measurement.host_ram_gib:.1f} GiB needed, "
            + (
                "available unknown"
                if cand.offer.memory_gib is None
                else f"{cand.offer.memory_gib:.0f} GiB available"
            ),
        ],
        [
            "Offer",
            f"{md_escape(offer_label(cand.offer))} at {fmt_usd_per_hour(cost.usd_per_hour)}/h",
        ],
        [
            "Time",
            f"{fmt_hours_band(cand)} = {fmt_hours(cost.train_hours)} training + "
            + (f"{fmt_hours(cost.eval_hours)} eval + " if cost.eval_hours else "")
            + f"{fmt_hours(cost.startup_hours)} start-up + "
            f"{fmt_hours(cost.spot_overhead_hours)} spot overhead",
        ],
        ["Cost", fmt_usd_band(cand)],
        [
            "Billing",
            f"{md_escape(cand.offer.billing_label)}: {fmt_hours(cost.billed_hours or cost.hours)}"
            f" billed, {fmt_hours(cost.idle_billed_hours)} idle "
            f"({fmt_usd(cost.idle_usd)})",
        ],
        [
            "Peak memory per GPU",
            f"{fmt_gib(memory_used_gib(m))} of {fmt_gib(cand.usable_memory_gib)} usable "
            f"(fit: {cand.fit.value if cand.fit else 'n/a'})",
        ],
        ["Throughput", "n/a" if m.tokens_per_s is None else f"{m.tokens_per_s:,.0f} tokens/s"],
        ["Trainable parameters", params_text(m)],
        ["Figures are", m.source.value],
        ["Quality risk", cand.risk_level.value],
    ]
    if cand.suggested_learning_rate is not None:
        rows.append(["Suggested learning rate", f"{cand.suggested_learning_rate:g}"])
    if cost.checkpoint_interval_minutes is not None:
        rows.append(["Checkpoint every", f"{cost.checkpoint_interval_minutes:g} min"])
    return lines + _table(["", ""], rows)


def _job(plan: Plan) -> list[str]:
    b = plan.budget
    rows = [
        ["Model", f"{md_escape(plan.model)} ({md_escape(plan.model_hf_id)})"],
        ["Dataset", f"{fmt_tokens(b.dataset_tokens)} tokens per epoch ({b.tokens_source.value})"],
        ["Epochs", f"{b.epochs:g}"],
        ["Total tokens", fmt_tokens(b.total_tokens)],
        ["Budget", fmt_usd(b.max_usd)],
        ["Deadline", "none" if b.max_hours is None else fmt_hours(b.max_hours)],
        ["Task", b.task.value],
        ["Quality policy", b.quality.value],
    ]
    if b.evaluations:
        rows.append(
            [
                "Evaluation",
                f"{b.evaluations} passes over {fmt_tokens(b.eval_tokens)} eval tokens "
                "(forward only, at the training micro-batch)",
            ]
        )
    if b.longest_sample_tokens is not None:
        if b.p50_sample_tokens is not None and b.p95_sample_tokens is not None:
            rows.append(
                [
                    "Sample length (tokens)",
                    f"median {fmt_tokens(b.p50_sample_tokens)}, 95th percentile "
                    f"{fmt_tokens(b.p95_sample_tokens)}, longest "
                    f"{fmt_tokens(b.longest_sample_tokens)}; packed into fixed-length blocks",
                ]
            )
        else:
            rows.append(["Longest sample", f"{fmt_tokens(b.longest_sample_tokens)} tokens"])
    return ["## The job", ""] + _table(["", ""], rows)


def _verdicts(plan: Plan) -> list[str]:
    rows = []
    for v in plan.verdicts:
        best = v.best
        rows.append(
            [
                METHOD_NAMES[v.method],
                "none" if best is None else _describe(best),
                "n/a" if best is None else fmt_usd(best.cost.usd),
                "n/a" if best is None else fmt_hours(best.cost.hours),
                md_escape(v.reason),
            ]
        )
    return ["## Each method's best option, and why it wins or loses", ""] + _table(
        ["Method", "Best option", "Cost", "Time", "Verdict"], rows
    )


def _candidates(plan: Plan, *, near_misses: bool = False) -> list[str]:
    listed = plan.near_misses if near_misses else plan.ranked
    if not listed:
        return []
    rows = []
    for r in candidate_rows(plan, near_misses=near_misses):
        notes = ", ".join(n for n, on in (("chosen", r.chosen), ("Pareto", r.pareto)) if on)
        rows.append(
            [
                str(r.rank),
                md_escape(r.config),
                md_escape(r.gpus),
                md_escape(r.offer),
                r.usd_per_hour,
                r.hours,
                r.usd,
                f"{r.peak_memory} / {r.usable_memory}",
                r.status,
                r.risk,
                r.source,
                notes,
            ]
        )
    header = [
        "#",
        "Config",
        "GPUs",
        "Offer",
        "$/h",
        "Time",
        "Cost",
        "Peak / usable memory",
        "Status",
        "Risk",
        "Figures",
        "Notes",
    ]
    if near_misses:
        intro = (
            f"Nothing is feasible; the {len(rows)} closest candidates and the limits they break:"
        )
        return ["## Near misses", "", intro, ""] + _table(header, rows)
    return ["## Candidates", "", f"{len(rows)} candidates, in ranked order.", ""] + _table(
        header, rows
    )


def _pareto(plan: Plan) -> list[str]:
    b = plan.budget
    limits = f"budget {fmt_usd(b.max_usd)}"
    if b.max_hours is not None:
        limits += f", deadline {fmt_hours(b.max_hours)}"
    lines = [
        "## Cost vs time",
        "",
        f"The HTML report plots every candidate's cost against its time ({limits}). "
        "The Pareto front (no other feasible candidate is both cheaper and faster):",
        "",
    ]
    if not plan.pareto:
        return lines + ["No feasible candidate, so no Pareto front.", ""]
    rows = [
        [_describe(c), fmt_hours(c.cost.hours), fmt_usd(c.cost.usd)]
        for c in sorted(plan.pareto, key=lambda c: (c.cost.hours, c.cost.usd))
    ]
    return lines + _table(["Candidate", "Time", "Cost"], rows)


def _memory(plan: Plan) -> list[str]:
    rows = [
        [
            md_escape(r.label),
            *r.parts,
            r.allocated,
            r.reserved,
            r.usable,
            md_escape(r.phases),
        ]
        for r in memory_rows(plan)
    ]
    header = [
        "Candidate",
        *(name.capitalize() for _, name, _ in MEMORY_COMPONENTS),
        "Peak allocated",
        "Peak reserved",
        "Usable",
        "Phase peaks",
    ]
    return ["## Memory per GPU by component (GiB)", ""] + _table(header, rows)


def _risks(plan: Plan) -> list[str]:
    rows = [
        [r.method, r.level, md_escape(r.message), md_escape(r.source)] for r in risk_rows(plan)
    ]
    if not rows:
        return ["## Quality risks", "", "None identified.", ""]
    return ["## Quality risks", ""] + _table(["Method", "Level", "Risk", "Source"], rows)


def _bullets(title: str, items: tuple[str, ...]) -> list[str]:
    if not items:
        return []
    return [f"## {title}", ""] + [f"- {md_escape(i)}" for i in items] + [""]


def _sources(plan: Plan) -> list[str]:
    counts = source_counts(plan)
    summary = ", ".join(f"{n} {name}" for name, n in counts.items())
    rows = [
        [
            r.source,
            md_escape(r.device),
            md_escape(r.versions or "n/a"),
            md_escape(r.date or "n/a"),
            md_escape(r.method or "n/a"),
            md_escape(r.notes),
            str(r.count),
            md_escape(r.figures),
        ]
        for r in source_rows(plan)
    ]
    return [
        "## Where the numbers come from",
        "",
        f"Candidates by figure source: {summary}. Measured = a run of the full model; "
        "extrapolated = a 2/4-layer fit evaluated at full depth; estimated = ftplan's "
        "analytic formula.",
        "",
    ] + _table(["Source", "Device", "Versions", "Date", "How", "Notes", "Figures", "For"], rows)


def _prices(plan: Plan) -> list[str]:
    rows = [
        [
            md_escape(offer_label(o)),
            md_escape(f"{o.gpu_count}× {o.gpu}"),
            fmt_usd_per_hour(o.usd_per_hour),
            md_escape(o.as_of),
            md_escape(o.source),
            "**stale**" if o.stale else "no",
        ]
        for o in offers_in(plan)
    ]
    s = plan.search
    return [
        "## Prices",
        "",
        f"Catalog as of {md_escape(s.catalog_as_of)} ({md_escape(s.catalog_source)}).",
        "",
    ] + _table(["Offer", "GPUs", "$/h", "As of", "Source", "Stale"], rows)


def _search(plan: Plan) -> list[str]:
    s = plan.search
    rows = [
        ["Sampler", md_escape(s.sampler)],
        ["Seed", str(s.seed)],
        ["Trials", str(s.trials)],
        ["Configs evaluated", str(s.evaluated)],
        ["Study storage", md_escape(s.storage or "in memory")],
    ]
    return ["## Search", ""] + _table(["", ""], rows)


def _frontier(plan: Plan) -> list[str]:
    if not plan.budget_frontier:
        return []
    rows = [
        [
            e.method.value,
            fmt_tokens(e.max_tokens),
            f"{e.max_epochs:,.1f}",
            "n/a" if e.usd_per_million_tokens is None else f"${e.usd_per_million_tokens:,.3f}",
            md_escape(e.offer or "nothing fits"),
        ]
        for e in plan.budget_frontier
    ]
    lines = ["## What the budget buys", ""]
    lines += [
        f"The most training tokens {fmt_usd(plan.budget.max_usd)} pays for with each method, "
        "on its best offer (billing units and start-up included).",
        "",
    ]
    lines += _table(["method", "max tokens", "epochs", "USD per M tokens", "offer"], rows)
    return lines + _bullets("Stronger options within the budget", plan.stronger_options)


def render_markdown(plan: Plan) -> str:
    """The whole report as one markdown document (ends with a newline)."""
    lines = [f"# ftplan plan: {md_escape(plan.model)}", ""]
    lines += _bullets("Warnings", plan.warnings)
    lines += _recommendation(plan)
    lines += _bullets("What would make it work", plan.suggestions)
    lines += _job(plan)
    lines += _verdicts(plan)
    lines += _frontier(plan)
    lines += _candidates(plan)
    lines += _candidates(plan, near_misses=True)
    lines += _pareto(plan)
    lines += _memory(plan)
    lines += _risks(plan)
    lines += _bullets("Assumptions", plan.assumptions)
    lines += _sources(plan)
    lines += _prices(plan)
    lines += _search(plan)
    lines += [
        f"Generated by ftplan {md_escape(plan.ftplan_version)} from the plan file; the only "
        "dates are those of the data.",
        "",
    ]
    return "\n".join(lines)
