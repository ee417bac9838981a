"""Tables the CLI prints: the catalog's models, GPUs and offers and ``ftplan profile``'s
measurements, as rich tables written through ``click.echo`` (so ``CliRunner`` sees them), and
``ftplan estimate``'s answer."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.table import Table

    from catalog import GPU, ModelSpec, Offer
    from profiler import Measurement

MODEL_COLUMNS = (
    "name",
    "hf id",
    "params B",
    "layers",
    "hidden",
    "heads/kv",
    "vocab",
    "tied",
    "max seq",
    "experts",
)
GPU_COLUMNS = (
    "name",
    "aliases",
    "usable GiB",
    "mem TB/s",
    "bf16 TFLOP/s",
    "fp16 TFLOP/s",
    "measured TFLOP/s / TB/s",
    "link GB/s",
)
OFFER_COLUMNS = (
    "provider",
    "service",
    "instance",
    "region",
    "gpu",
    "#",
    "$/h",
    "per GPU $/h",
    "pricing",
    "billing",
    "as of",
)
PROFILE_COLUMNS = (
    "model",
    "config",
    "gpu",
    "source",
    "status",
    "alloc GiB",
    "reserved GiB",
    "fwd+bwd GiB",
    "optim GiB",
    "step s",
    "tokens/s",
)


def echo_table(table: Table, *, min_width: int) -> None:
    """Print ``table`` through ``click.echo``, at least ``min_width`` columns wide (wider on a
    wider terminal), so pipes and ``CliRunner`` get whole rows."""
    from rich.console import Console  # deferred: only table output needs rich

    console = Console(width=max(min_width, shutil.get_terminal_size().columns))
    with console.capture() as captured:
        console.print(table)
    click.echo(captured.get(), nl=False)


def echo_catalog_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    caption: str | None = None,
) -> None:
    """A catalog listing: numeric columns (by their unit) right-aligned."""
    from rich.table import Table

    table = Table(title=title, caption=caption, header_style="bold")
    for column in columns:
        numeric = column.endswith(("GiB", "$/h", "TB/s", "TFLOP/s", "GB/s", "B", "#"))
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*row)
    echo_table(table, min_width=160)


def model_row(spec: ModelSpec) -> list[str]:
    """A row of :data:`MODEL_COLUMNS`."""
    moe = f"{spec.num_experts}x (top {spec.experts_per_token})" if spec.num_experts > 1 else ""
    return [
        spec.name,
        spec.hf_id,
        f"{spec.param_count / 1e9:.2f}",
        str(spec.num_layers),
        str(spec.hidden_size),
        f"{spec.num_heads}/{spec.num_kv_heads}",
        str(spec.vocab_size),
        "yes" if spec.tied_embeddings else "no",
        str(spec.max_seq_len),
        moe,
    ]


def gpu_row(gpu: GPU) -> list[str]:
    """A row of :data:`GPU_COLUMNS`."""
    bf16 = f"{gpu.bf16_tflops:g}" if gpu.bf16_supported and gpu.bf16_tflops else "no bf16"
    return [
        gpu.name,
        ", ".join(gpu.aliases),
        f"{gpu.usable_memory_gib:.1f}",
        f"{gpu.memory_bandwidth_tbps:g}",
        bf16,
        f"{gpu.fp16_tflops:g}",
        f"{gpu.sustained_matmul_tflops:g} / {gpu.sustained_bandwidth_tbps:g}",
        f"{gpu.intra_node_interconnect.value} {gpu.intra_node_gbps:g}",
    ]


def billing_short(offer: Offer) -> str:
    """``s ≥1m`` style: billing increment, minimum, upfront (:attr:`Offer.billing_label` in
    a table cell's width)."""
    units = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "day"}
    text = units.get(float(offer.billing_increment_s), f"{offer.billing_increment_s:g}s")
    minimum = offer.min_billing_hours
    if minimum >= 1:
        text += f" ≥{minimum:g}h"
    elif minimum > 0:
        text += f" ≥{minimum * 60:.0f}m"
    return text + (" upfront" if offer.billing_upfront else "")


def offer_row(offer: Offer) -> list[str]:
    """A row of :data:`OFFER_COLUMNS`."""
    return [
        offer.provider.value,
        offer.service,
        offer.instance_type,
        offer.region,
        offer.gpu,
        str(offer.gpu_count),
        f"{offer.usd_per_hour:.4g}",
        f"{offer.usd_per_hour / offer.gpu_count:.4g}",
        "spot" if offer.spot else "on-demand",
        billing_short(offer),
        offer.as_of + (" (stale)" if offer.stale else ""),
    ]


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def echo_profile_table(results: Sequence[Measurement], note: str) -> None:
    """``ftplan profile``'s measurements, one row each, ``note`` as the caption; then each
    failed run's error."""
    from rich.table import Table

    from profiler._worker import PHASE_FORWARD_BACKWARD, PHASE_OPTIMIZER_STEP

    table = Table(title="ftplan profile", caption=note or None, header_style="bold")
    for column in PROFILE_COLUMNS:
        numeric = column.endswith(("GiB", "s"))
        table.add_column(
            column,
            justify="right" if numeric else "left",
            no_wrap=column in ("model", "config", "gpu", "source"),
        )
    for m in results:
        phases = dict(m.phase_peaks_gib)
        table.add_row(
            m.model,
            m.config.label(),
            m.gpu,
            m.source.value,
            m.status.value,
            _cell(m.peak_allocated_gib, 2),
            _cell(m.peak_reserved_gib, 2),
            _cell(phases.get(PHASE_FORWARD_BACKWARD), 2),
            _cell(phases.get(PHASE_OPTIMIZER_STEP), 2),
            _cell(m.step_time_s, 4),
            _cell(m.tokens_per_s, 0),
        )
    echo_table(table, min_width=200)
    for m in results:
        if m.error:
            click.echo(f"{m.model} {m.config.label()}: {m.status.value}: {m.error[:300]}")


def _range(result: dict[str, Any], quantity: str, spec: str, unit: str) -> str:
    """`` (80% band 0.41–0.52 s)`` when the result has a band for ``quantity``, else ''."""
    low, high = result.get(f"{quantity}_low"), result.get(f"{quantity}_high")
    if low is None or high is None:
        return ""
    return f" (80% band {format(low, spec)}–{format(high, spec)} {unit})"


def print_estimate_table(result: dict[str, Any]) -> None:
    """``ftplan estimate``'s answer (:func:`profiler.results.estimate_result`): a table of the
    figures, the fit sentence and the notes, printed by rich on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['model']} on {result['gpu']} ({result['source']})")
    table.add_column("quantity")
    table.add_column("value", justify="right")

    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    table.add_row(
        "peak allocated",
        f"{fmt(result['peak_allocated_gib'], '.2f')} GiB"
        + _range(result, "peak_allocated_gib", ".2f", "GiB"),
    )
    table.add_row(
        "peak reserved",
        f"{fmt(result['peak_reserved_gib'], '.2f')} GiB"
        + _range(result, "peak_reserved_gib", ".2f", "GiB"),
    )
    table.add_row("memory limit (torch's − CUDA context)", f"{result['memory_limit_gib']:.2f} GiB")
    table.add_row("fit", result["fit"] if result["fits"] else "NO")
    table.add_row("sharding", result["sharding"])
    table.add_row("host RAM per node", f"{fmt(result['host_ram_gib'], '.1f')} GiB")
    table.add_row(
        "step time",
        f"{fmt(result['step_time_s'], '.4f')} s" + _range(result, "step_time_s", ".4f", "s"),
    )
    table.add_row("throughput", f"{fmt(result['tokens_per_s'], ',.0f')} tokens/s")
    table.add_row("trainable params", fmt(result["trainable_params"], ","))
    for name, value in (result["breakdown"] or {}).items():
        table.add_row(f"  {name.removesuffix('_gib')}", f"{value:.2f} GiB")
    for phase, value in result["phase_peaks_gib"].items():
        table.add_row(f"  phase {phase}", f"{value:.2f} GiB")
    if result.get("eval"):
        ev = result["eval"]
        table.add_row(
            "eval pass",
            f"{ev['pass_s']:,.1f} s for {ev['tokens']:,} tokens ({ev['tokens_per_s']:,.0f} "
            "tokens/s, estimated)",
        )
    console = Console()
    console.print(table)
    console.print(result["fit_detail"])
    for note in result["notes"]:
        console.print(f"note: {note}")
