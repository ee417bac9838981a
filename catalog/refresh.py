"""AWS price refresh: on-demand prices from the AWS Pricing API, spot prices from EC2.

Writes a new offers CSV into the user's cache (never into the installed package), atomically:
a failed or partial refresh raises CatalogError and leaves the previous catalog as it was.
boto3 is imported only inside :func:`refresh_aws`, and only when no clients are injected.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from catalog._io import atomic_write_text, csv_rows, read_text_limited
from catalog._load import (
    OFFER_COLUMNS,
    OFFERS_FILENAME,
    active_offers_path,
    parse_offers_csv,
)
from catalog._types import CatalogError
from catalog.errors import DataError, ErrorKind

PRICING_SOURCE = "aws-pricing-api get_products"
SPOT_SOURCE = "ec2 describe_spot_price_history"

#: The Pricing API is served from us-east-1 (also eu-central-1, ap-south-1); prices are global.
PRICING_API_REGION = "us-east-1"

#: Pricing API ``location`` names per region code (AWS Pricing API attribute values, as listed
#: by ``get_attribute_values(ServiceCode='AmazonEC2', AttributeName='location')``). Regions not
#: listed are filtered by the ``regionCode`` attribute instead.
REGION_LOCATIONS: dict[str, str] = {
    "us-east-1": "US East (N. Virginia)",
    "us-east-2": "US East (Ohio)",
    "us-west-1": "US West (N. California)",
    "us-west-2": "US West (Oregon)",
    "ca-central-1": "Canada (Central)",
    "eu-west-1": "EU (Ireland)",
    "eu-west-2": "EU (London)",
    "eu-west-3": "EU (Paris)",
    "eu-central-1": "EU (Frankfurt)",
    "eu-north-1": "EU (Stockholm)",
    "ap-south-1": "Asia Pacific (Mumbai)",
    "ap-northeast-1": "Asia Pacific (Tokyo)",
    "ap-northeast-2": "Asia Pacific (Seoul)",
    "ap-southeast-1": "Asia Pacific (Singapore)",
    "ap-southeast-2": "Asia Pacific (Sydney)",
    "sa-east-1": "South America (Sao Paulo)",
}

#: Services whose rows a refresh replaces; other AWS rows (e.g. capacity blocks) are kept.
_REFRESHED_SERVICES = ("ec2", "sagemaker")


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceChange:
    """One offer whose price a refresh changed, added or removed (USD per instance-hour)."""

    key: str
    old_usd_per_hour: float | None
    new_usd_per_hour: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshResult:
    """What a refresh wrote: the file, the regions, every changed price, what AWS lacked."""

    offers_path: str
    regions: tuple[str, ...]
    as_of: str
    offer_count: int
    refreshed_count: int
    changes: tuple[PriceChange, ...]
    not_offered: tuple[str, ...]


def _location_filter(region: str) -> dict[str, str]:
    if region in REGION_LOCATIONS:
        return {"Type": "TERM_MATCH", "Field": "location", "Value": REGION_LOCATIONS[region]}
    return {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}


def _term(field: str, value: str) -> dict[str, str]:
    return {"Type": "TERM_MATCH", "Field": field, "Value": value}


def ec2_price_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    """get_products filters for one EC2 instance's Linux, shared-tenancy on-demand price."""
    return [
        _term("instanceType", instance_type),
        _location_filter(region),
        _term("operatingSystem", "Linux"),
        _term("tenancy", "Shared"),
        _term("preInstalledSw", "NA"),
        _term("capacitystatus", "Used"),
    ]


def sagemaker_price_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    """get_products filters for one SageMaker training instance (``ml.*``)."""
    return [
        _term("instanceName", instance_type),
        _term("regionCode", region),
        _term("platoinstancetype", "Training"),
    ]


def parse_on_demand_usd(price_list: Iterable[str]) -> float | None:
    """Hourly on-demand USD from get_products ``PriceList`` entries (each a JSON *string*).

    Every OnDemand price dimension billed in hours with a positive USD price counts; when the
    filters leave several products (duplicate SKUs), the lowest price wins.

    Raises:
        CatalogError: An entry is not JSON or a price is not a number.
    """
    prices: list[float] = []
    for entry in price_list:
        try:
            product = json.loads(entry) if isinstance(entry, str) else entry
            for term in product.get("terms", {}).get("OnDemand", {}).values():
                for dimension in term.get("priceDimensions", {}).values():
                    usd = float(dimension.get("pricePerUnit", {}).get("USD", "0"))
                    if usd > 0 and dimension.get("unit", "Hrs").lower().startswith("hr"):
                        prices.append(usd)
        except (ValueError, AttributeError, TypeError) as exc:
            raise CatalogError(
                f"AWS Pricing API returned an unreadable price entry: {exc}"
            ) from exc
    return min(prices) if prices else None


def spot_price_usd(
    history: Iterable[Mapping[str, Any]], *, statistic: str = "max"
) -> float | None:
    """One spot price from ``describe_spot_price_history`` records of one instance type.

    Takes each availability zone's latest record, then the highest of those (``statistic='max'``,
    the default: a plan priced at the dearest zone is not beaten by where capacity lands) or their
    median (``'median'``).
    """
    latest: dict[str, tuple[datetime, float]] = {}
    for record in history:
        zone, stamp = str(record["AvailabilityZone"]), record["Timestamp"]
        price = float(record["SpotPrice"])
        if zone not in latest or stamp > latest[zone][0]:
            latest[zone] = (stamp, price)
    if not latest:
        return None
    prices = [price for _, price in latest.values()]
    if statistic == "max":
        return max(prices)
    import statistics  # deferred: keeps 'import catalog' light

    return float(statistics.median(prices))


def _get_products(client: Any, service_code: str, filters: list[dict[str, str]]) -> list[str]:
    entries: list[str] = []
    kwargs: dict[str, Any] = {
        "ServiceCode": service_code,
        "Filters": filters,
        "FormatVersion": "aws_v1",
    }
    while True:
        response = client.get_products(**kwargs)
        entries.extend(response.get("PriceList", []))
        token = response.get("NextToken")
        if not token:
            return entries
        kwargs["NextToken"] = token


def _spot_history(client: Any, instance_type: str, now: datetime) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "InstanceTypes": [instance_type],
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": now,
    }
    while True:
        response = client.describe_spot_price_history(**kwargs)
        records.extend(response.get("SpotPriceHistory", []))
        token = response.get("NextToken")
        if not token:
            return records
        kwargs["NextToken"] = token


#: Largest offers file read back (SkyPilot's full catalog is ~30 MB).
MAX_OFFERS_FILE_BYTES = 256 * 1024 * 1024


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        text = read_text_limited(path, what="catalog file", max_bytes=MAX_OFFERS_FILE_BYTES)
    except DataError as exc:
        raise CatalogError(f"{exc}. Nothing was written.", kind=ErrorKind.DATA) from None
    parse_offers_csv(text, path=path)  # refuse to build on a broken file
    return [row for _, row in csv_rows(text, where=f"catalog file {path}")[1]]


def _key(row: Mapping[str, str]) -> str:
    kind = "spot" if row["spot"] == "true" else "on-demand"
    return f"{row['provider']}/{row['service']}/{row['instance_type']}/{row['region']}/{kind}"


def _price_rows(
    templates: dict[tuple[str, str], dict[str, str]],
    region: str,
    pricing: Any,
    ec2: Any,
    today: str,
    now: datetime,
    not_offered: list[str],
    progress: Callable[[str], None],
) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for (service, instance_type), template in sorted(templates.items()):
        progress(f"{region}: {instance_type}")
        base = {**template, "region": region, "as_of": today, "stale": "false"}
        if service == "ec2":
            entries = _get_products(pricing, "AmazonEC2", ec2_price_filters(instance_type, region))
        else:
            entries = _get_products(
                pricing, "AmazonSageMaker", sagemaker_price_filters(instance_type, region)
            )
        on_demand = parse_on_demand_usd(entries)
        if on_demand is None:
            not_offered.append(f"{service}/{instance_type}/{region}")
            continue
        rows.append(
            {
                **base,
                "usd_per_hour": f"{on_demand:g}",
                "spot": "false",
                "source": PRICING_SOURCE,
                "note": f"refreshed {today}",
            }
        )
        if service == "ec2":
            spot = spot_price_usd(_spot_history(ec2, instance_type, now))
            if spot is not None:
                rows.append(
                    {
                        **base,
                        "usd_per_hour": f"{spot:g}",
                        "spot": "true",
                        "source": SPOT_SOURCE,
                        "note": f"refreshed {today}; spot = highest latest per-zone price",
                    }
                )
    return rows


def refresh_aws(
    *,
    regions: Iterable[str],
    pricing_client: Any = None,
    ec2_clients: Mapping[str, Any] | None = None,
    cache_dir: Path | None = None,
    today: date | None = None,
    progress: Callable[[str], None] | None = None,
) -> RefreshResult:
    """Re-price every AWS EC2 and SageMaker instance type in the catalog for ``regions``.

    Rows for those regions are replaced by freshly priced ones (on-demand from the Pricing API,
    spot from EC2 for ``ec2`` rows) with ``as_of = today``; other rows keep their values. The new
    file is validated, then written atomically to ``<cache_dir>/offers.csv``.

    Args:
        regions: AWS region codes, e.g. ``["us-east-1"]``.
        pricing_client: A boto3 ``pricing`` client; created in us-east-1 when None.
        ec2_clients: boto3 ``ec2`` clients by region; created per region when None.
        cache_dir: Where to write; defaults to ``$FTPLAN_CACHE_DIR`` or ``~/.cache/ftplan``.
        today: Date stamped on refreshed rows; defaults to today.
        progress: Called with a short status line before each instance type is priced.

    Returns:
        The file written and every price that changed.

    Raises:
        CatalogError: AWS returned an error (credentials, throttling, ...) or no price at all;
            nothing is written in that case.
    """
    region_list = tuple(dict.fromkeys(r.strip() for r in regions if r.strip()))
    if not region_list:
        raise CatalogError("no AWS region given; pass e.g. --region us-east-1")
    from catalog._load import cache_dir as default_cache_dir

    target = (cache_dir or default_cache_dir()) / OFFERS_FILENAME
    previous = active_offers_path()
    old_rows = _read_rows(previous)
    templates = {
        (r["service"], r["instance_type"]): r
        for r in old_rows
        if r["provider"] == "aws" and r["service"] in _REFRESHED_SERVICES and r["spot"] == "false"
    }
    stamp = (today or date.today()).isoformat()
    fresh, not_offered = _fetch_prices(
        templates, region_list, pricing_client, ec2_clients, stamp, progress, previous
    )
    if not fresh:
        raise CatalogError(
            f"AWS price refresh found no prices in {', '.join(region_list)}; nothing was "
            f"written. Check the region names (e.g. us-east-1)."
        )
    replaced = [
        r
        for r in old_rows
        if r["provider"] == "aws"
        and r["service"] in _REFRESHED_SERVICES
        and r["region"] in region_list
    ]
    kept = [r for r in old_rows if not any(r is x for x in replaced)]
    new_rows = [*kept, *fresh]
    text = _to_csv(new_rows)
    parse_offers_csv(text, path=target)  # never write a file the loader would reject
    atomic_write_text(target, text)
    return RefreshResult(
        offers_path=str(target),
        regions=region_list,
        as_of=stamp,
        offer_count=len(new_rows),
        refreshed_count=len(fresh),
        changes=_changes(replaced, fresh),
        not_offered=tuple(not_offered),
    )


def _fetch_prices(
    templates: dict[tuple[str, str], dict[str, str]],
    region_list: tuple[str, ...],
    pricing_client: Any,
    ec2_clients: Mapping[str, Any] | None,
    stamp: str,
    progress: Callable[[str], None] | None,
    previous: Path,
) -> tuple[list[dict[str, str]], list[str]]:
    """Freshly priced rows for ``region_list`` and the instance types AWS no longer offers there.

    Clients are created with boto3 when not given. Any AWS error becomes a ``CatalogError`` that
    says nothing was written and ``previous`` stays in use.
    """
    now = datetime.now(UTC)
    report = progress or (lambda _line: None)
    try:
        import botocore.exceptions as boto_errors  # deferred: only refresh needs botocore

        if pricing_client is None or ec2_clients is None:
            import boto3  # deferred: only refresh needs boto3

            pricing_client = pricing_client or boto3.client(
                "pricing", region_name=PRICING_API_REGION
            )
            ec2_clients = ec2_clients or {
                r: boto3.client("ec2", region_name=r) for r in region_list
            }
        missing_clients = [r for r in region_list if r not in ec2_clients]
        if missing_clients:
            raise CatalogError(f"no EC2 client given for region(s) {', '.join(missing_clients)}")
        fresh: list[dict[str, str]] = []
        not_offered: list[str] = []
        for region in region_list:
            fresh += _price_rows(
                templates,
                region,
                pricing_client,
                ec2_clients[region],
                stamp,
                now,
                not_offered,
                report,
            )
    except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
        raise CatalogError(
            f"AWS price refresh failed: {exc}. Nothing was written; ftplan keeps using "
            f"{previous}. Check your AWS credentials (pricing:GetProducts and "
            f"ec2:DescribeSpotPriceHistory) and retry in a minute if AWS throttled the calls."
        ) from None
    return fresh, not_offered


def _to_csv(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=list(OFFER_COLUMNS), lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _changes(old: list[dict[str, str]], new: list[dict[str, str]]) -> tuple[PriceChange, ...]:
    before = {_key(r): float(r["usd_per_hour"]) for r in old}
    after = {_key(r): float(r["usd_per_hour"]) for r in new}
    return tuple(
        PriceChange(key=k, old_usd_per_hour=before.get(k), new_usd_per_hour=after.get(k))
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k)
    )
