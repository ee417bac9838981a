"""How ``ftplan recommend`` prints a plan: one line (``--quiet``), JSON, markdown or rich tables
(the ranked plans, the chosen one, why, what the budget buys, warnings, assumptions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from catalog import printable, read_text_limited
from planner._types import Plan


def render(plan: Plan, *, fmt: str, quiet: bool, report: Path) -> None:
    """Print the plan: one line (--quiet), JSON, markdown or rich tables."""
    from planner.explain import describe

    if fmt == "json":
        from planner.plan_io import plan_to_json

        click.echo(plan_to_json(plan), nl=False)
    elif quiet:
        click.echo(
            describe(plan.chosen)
            if plan.chosen
            else "no feasible plan: " + "; ".join(plan.suggestions[:1])
        )
    elif fmt == "md":
        click.echo(
            read_text_limited(report.with_suffix(".md"), what="report")
            if report.with_suffix(".md").is_file()
            else f"report: {report}"
        )
    else:
        _render_table(plan, report)
    if plan.chosen is None:
        click.echo("error: no feasible plan. To fix: " + "; or ".join(plan.suggestions), err=True)


def _render_table(plan: Plan, report: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from planner.engine.evaluate import with_nodes_label
    from planner.explain import describe

    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # piped or captured: no terminal width to respect
        console = Console(highlight=False, soft_wrap=True, width=max(console.width, 160))
    rows = plan.ranked or plan.near_misses
    title = (
        f"ftplan: {plan.model}, budget ${plan.budget.max_usd:,.2f}"
        if plan.ranked
        else f"ftplan: no feasible plan for {plan.model}; nearest misses"
    )
    table = Table(title=escape(title), title_justify="left", pad_edge=False)
    for name in (
        "#",
        "method",
        "batch",
        "GPUs",
        "offer",
        "hours",
        "USD",
        "GiB/GPU",
        "risk",
        "figures",
    ):
        numeric = name in ("hours", "USD", "GiB/GPU")
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for i, c in enumerate(rows, start=1):
        table.add_row(*(escape(cell) for cell in _row(i, c, with_nodes_label(c))))
    console.print(table)
    if plan.chosen is not None:
        console.print(f"[bold]Chosen:[/bold] {escape(describe(plan.chosen))}")
        if plan.chosen.suggested_learning_rate:
            console.print(
                f"  learning rate ~{plan.chosen.suggested_learning_rate:.0e}, "
                f"gradient accumulation {plan.chosen.grad_accum_steps}",
                markup=False,
            )
    console.print("[bold]Why:[/bold]")
    for verdict in plan.verdicts:
        console.print(f"  - {verdict.reason}", markup=False)
    if plan.budget_frontier:
        console.print(f"[bold]What ${plan.budget.max_usd:,.0f} buys:[/bold]")
        for e in plan.budget_frontier:
            rate = (
                ""
                if e.usd_per_million_tokens is None
                else (f" at ${e.usd_per_million_tokens:,.3f}/M tokens on {e.offer}")
            )
            console.print(
                f"  - {e.method.value}: {e.max_tokens:,} tokens "
                f"({e.max_epochs:,.1f} epochs){rate}",
                markup=False,
            )
    for option in plan.stronger_options:
        console.print(f"  - {option}", markup=False)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    console.print("[bold]Assumptions:[/bold]")
    for assumption in plan.assumptions:
        console.print(f"  - {assumption}", markup=False)
    console.print(
        f"Search: {plan.search.sampler}, {plan.search.trials} trials, "
        f"{plan.search.evaluated} estimates; prices {plan.search.catalog_as_of}",
        markup=False,
    )
    console.print(f"Report: {printable(report.with_suffix('.md'))} (.html, .json)", markup=False)


def _row(rank: int, c: Any, gpus: str) -> tuple[str, ...]:
    """One table row: compact cells so the table reads in a 100-column terminal."""
    cfg, m = c.config, c.measurement
    if not cfg.method.traits.adapters:
        method = f"{cfg.method.value} {cfg.precision.value}"
    else:
        method = f"{cfg.method.value} r{cfg.lora_rank} {cfg.lora_targets}"
        if cfg.precision.value != "bf16-mixed":
            method += f" {cfg.precision.value}"
    if cfg.optimizer.value != "adamw":
        method += f" {cfg.optimizer.value}"
    batch = (
        f"{cfg.micro_batch_size}×{c.grad_accum_steps}"
        + (" ckpt" if cfg.grad_checkpointing else "")
        + (" chunked-ce" if cfg.chunked_loss else "")
    )
    offer = f"{c.offer.provider.value} {c.offer.instance_type}" + (" spot" if c.offer.spot else "")
    peak = m.peak_memory_gib or 0.0
    return (
        str(rank),
        method,
        batch,
        gpus,
        offer,
        f"{c.cost.hours:,.1f}",
        f"${c.cost.usd:,.2f}",
        f"{peak:.1f}/{c.usable_memory_gib:.0f}" + (" tight" if c.fit.value == "tight" else ""),
        c.risk_level.value,
        m.source.value,
    )
