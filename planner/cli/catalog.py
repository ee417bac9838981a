"""CLI commands: ``ftplan catalog models|gpus|offers|refresh`` (list catalog, refresh prices)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import click

from catalog import (
    RefreshResult,
    SkyPilotRefreshResult,
    catalog_age_warning,
    catalog_info,
    list_gpus,
    list_models,
    model_aliases,
    parse_provider,
    refresh_aws,
    refresh_from_skypilot,
    select_offers,
    to_jsonable,
)
from planner.cli._tables import (
    GPU_COLUMNS,
    MODEL_COLUMNS,
    OFFER_COLUMNS,
    echo_catalog_table,
    gpu_row,
    model_row,
    offer_row,
)
from planner.cli.params import check_region

_FORMAT = click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=True))


@click.command("models")
@_FORMAT
def models_command(output_format: str) -> None:
    """List the models ftplan knows (architecture facts from each Hugging Face config.json).

    \b
    Examples:
      ftplan catalog models
      ftplan catalog models --format json
    Any other model: pass --model PATH/TO/config.json (or its folder) to other commands.
    """
    models = list_models()
    if output_format == "json":
        _echo_json([{**to_jsonable(m), "aliases": list(model_aliases(m.name))} for m in models])
        return
    echo_catalog_table("Models", MODEL_COLUMNS, [model_row(m) for m in models])


@click.command("gpus")
@_FORMAT
def gpus_command(output_format: str) -> None:
    """List GPUs: usable memory, bandwidth, dense 16-bit TFLOP/s, GPU-to-GPU link.

    \b
    Examples:
      ftplan catalog gpus
      ftplan catalog gpus --format json
    Any name or alias in the second column works for --gpu (case-insensitive).
    """
    gpus = list_gpus()
    if output_format == "json":
        _echo_json(list(gpus))
        return
    echo_catalog_table(
        "GPUs",
        GPU_COLUMNS,
        [gpu_row(g) for g in gpus],
        caption="TFLOP/s are dense datasheet peaks; measured = what microbenchmarks reached "
        "(the estimator's rates; sources: --format json, achievable_source); link = intra-node "
        "GPU-to-GPU bandwidth",
    )


@click.command("offers")
@click.option(
    "--gpu",
    "gpu_names",
    multiple=True,
    metavar="NAME",
    help="Only offers with this GPU (name or alias; repeatable).",
)
@click.option(
    "--provider",
    "provider_names",
    multiple=True,
    metavar="NAME",
    help="Only this provider: aws, gcp, azure, lambda, runpod (repeatable).",
)
@click.option(
    "--spot/--no-spot",
    default=True,
    show_default=True,
    help="Include spot / interruptible prices.",
)
@_FORMAT
def offers_command(
    gpu_names: tuple[str, ...], provider_names: tuple[str, ...], spot: bool, output_format: str
) -> None:
    """List priced offers (USD per instance-hour), cheapest per GPU first.

    \b
    Examples:
      ftplan catalog offers --gpu h100
      ftplan catalog offers --provider aws --no-spot
      ftplan catalog offers --gpu a100 --gpu a100-40gb --format json
    """
    offers = select_offers(providers=provider_names, gpus=gpu_names, include_spot=spot)
    if output_format == "json":
        _echo_json(list(offers))
        return
    info = catalog_info()
    caption = (
        f"{len(offers)} offers from {info.offers_path}; billing units and start-up times: "
        "catalog/data/services.csv (--format json has them per offer, with sources)"
    )
    warning = catalog_age_warning(info, date.today())
    echo_catalog_table("Offers", OFFER_COLUMNS, [offer_row(o) for o in offers], caption=caption)
    if warning:
        click.echo(f"warning: {warning}", err=True)


def _status_printer() -> tuple[Callable[[str], None], Callable[[], None]]:
    from rich.console import Console  # deferred: only the refresh command needs a spinner

    status = Console(stderr=True).status("asking AWS for prices ...")
    status.start()
    return (lambda line: status.update(f"pricing {line}")), status.stop


def _print_changes(result: RefreshResult) -> None:
    click.echo(
        f"wrote {result.offer_count} offers to {result.offers_path} "
        f"({result.refreshed_count} AWS prices as of {result.as_of})"
    )
    for change in result.changes:
        old = "-" if change.old_usd_per_hour is None else f"{change.old_usd_per_hour:.4g}"
        new = "-" if change.new_usd_per_hour is None else f"{change.new_usd_per_hour:.4g}"
        click.echo(f"  {change.key}: {old} -> {new} USD/h")
    if not result.changes:
        click.echo("  no price changed")
    if result.not_offered:
        click.echo(f"not offered there: {', '.join(result.not_offered)}")


@click.command("refresh")
@click.option(
    "--from",
    "source",
    type=click.Choice(["aws-pricing-api", "skypilot"]),
    default="aws-pricing-api",
    show_default=True,
    help="aws-pricing-api: AWS's own Pricing API (boto3). skypilot: SkyPilot's daily catalog "
    "for aws, gcp, azure, lambda and runpod.",
)
@click.option(
    "--provider",
    "provider_names",
    multiple=True,
    metavar="NAME",
    help="Provider to refresh (repeatable; default: aws for the Pricing API, every provider "
    "in SkyPilot's catalog).",
)
@click.option(
    "--region",
    "regions",
    callback=check_region,
    multiple=True,
    default=("us-east-1",),
    show_default=True,
    help="AWS region to price with the Pricing API (repeatable).",
)
@click.option(
    "--catalog-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="SkyPilot catalog folder (<cloud>/vms.csv, layout v7); default: the installed "
    "SkyPilot's catalog, fetched when online.",
)
def refresh_command(
    source: str,
    provider_names: tuple[str, ...],
    regions: tuple[str, ...],
    catalog_dir: Path | None,
) -> None:
    """Fetch current prices into your cache: AWS's Pricing API, or SkyPilot's catalog.

    Writes $FTPLAN_CACHE_DIR/offers.csv (default ~/.cache/ftplan) atomically; on any error
    nothing is written. The Pricing API needs AWS credentials allowed pricing:GetProducts and
    ec2:DescribeSpotPriceHistory.

    \b
    Examples:
      ftplan catalog refresh --provider aws --region us-east-1
      ftplan catalog refresh --from skypilot
      ftplan catalog refresh --from skypilot --catalog-dir skypilot-catalog/catalogs/v7
    """
    providers = [parse_provider(p).value for p in provider_names]
    if source == "skypilot":
        _print_skypilot(refresh_from_skypilot(catalog_dir=catalog_dir, clouds=providers or None))
        return
    if catalog_dir is not None:
        raise click.UsageError("--catalog-dir reads SkyPilot's catalog: add --from skypilot")
    if any(p != "aws" for p in providers):
        raise click.UsageError(
            f"the AWS Pricing API prices only aws, not {', '.join(providers)}; for other "
            f"providers use --from skypilot"
        )
    update, stop = _status_printer()
    try:
        result = refresh_aws(regions=regions, progress=update)
    finally:
        stop()
    _print_changes(result)


def _print_skypilot(result: SkyPilotRefreshResult) -> None:
    click.echo(
        f"wrote {result.offer_count} offers to {result.offers_path} ({result.refreshed_count} "
        f"from SkyPilot's catalog in {result.catalog_dir}, as of {result.as_of}; clouds: "
        f"{', '.join(result.clouds)})"
    )
    added = sum(c.old_usd_per_hour is None for c in result.changes)
    removed = sum(c.new_usd_per_hour is None for c in result.changes)
    changed = [c for c in result.changes if None not in (c.old_usd_per_hour, c.new_usd_per_hour)]
    click.echo(
        f"  instance types (cheapest region): {len(changed)} prices changed, {added} added, "
        f"{removed} gone"
    )
    for change in changed:
        click.echo(
            f"  {change.key}: {change.old_usd_per_hour:.4g} -> {change.new_usd_per_hour:.4g} USD/h"
        )
    if result.unknown_accelerators:
        unknown = ", ".join(f"{c}:{n} ({k} rows)" for c, n, k in result.unknown_accelerators)
        total = sum(k for _, _, k in result.unknown_accelerators)
        click.echo(f"skipped {total} rows with accelerators ftplan does not know: {unknown}")
    for reason, count in result.skipped:
        click.echo(f"skipped {count} rows: {reason}")
    if result.skipped_clouds:
        click.echo(f"clouds ftplan does not price yet: {', '.join(result.skipped_clouds)}")


@click.group("catalog")
def catalog_group() -> None:
    """What ftplan knows: models, GPUs, priced offers; refresh prices.

    \b
    Examples:
      ftplan catalog models
      ftplan catalog gpus --format json
      ftplan catalog offers --gpu h100 --no-spot
      ftplan catalog refresh --provider aws --region us-east-1
      ftplan catalog refresh --from skypilot
    """


for _command in (models_command, gpus_command, offers_command, refresh_command):
    catalog_group.add_command(_command)

COMMANDS: list[click.Command] = [catalog_group]
