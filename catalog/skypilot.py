"""Prices from SkyPilot's catalog: ``<dir>/<cloud>/vms.csv`` files (catalog layout v7 and later).

SkyPilot keeps a daily-updated price catalog per cloud (github.com/skypilot-org/skypilot-catalog,
``catalogs/v7/<cloud>/vms.csv``). Columns differ in order by cloud (each cloud's fetcher in
``sky/catalog/data_fetchers`` writes its own), so they are read by name. This module turns those
rows into ftplan offers and writes them, atomically, into the user's cache; on any error nothing
is written. ``sky`` is imported only by :func:`skypilot_catalog_dir`, which reads through the
installed SkyPilot's own catalog API (it fetches SkyPilot's hosted catalog when online).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from catalog._io import atomic_write_text
from catalog._load import OFFERS_FILENAME, active_offers_path, parse_offers_csv
from catalog._sky_vms import (
    CLOUD_PROVIDERS,
    Price,
    Tally,
    parse_gcp,
    parse_vms_csv,
)
from catalog._types import CatalogError, Provider
from catalog.refresh import PriceChange, _read_rows, _to_csv

#: Other clouds SkyPilot keeps a catalog for (sky/catalog/*_catalog.py, SkyPilot 0.14). Their
#: files are skipped and reported: ftplan has no provider for them yet.
OTHER_SKYPILOT_CLOUDS = frozenset(
    {
        "cudo",
        "do",
        "fluidstack",
        "hyperbolic",
        "ibm",
        "kubernetes",
        "mithril",
        "nebius",
        "oci",
        "paperspace",
        "primeintellect",
        "scp",
        "seeweb",
        "shadeform",
        "vast",
        "verda",
        "vsphere",
        "yotta",
    }
)

#: AWS rows a SkyPilot refresh replaces: SkyPilot's AWS catalog is EC2; SageMaker and capacity
#: block rows keep their own source.
_AWS_REFRESHED_SERVICE = "ec2"


@dataclass(frozen=True, slots=True, kw_only=True)
class SkyPilotRefreshResult:
    """What a refresh from SkyPilot's catalog wrote, changed, and skipped.

    Attributes:
        offers_path: The offers file written.
        catalog_dir: The SkyPilot catalog folder read.
        clouds: Clouds whose rows were replaced.
        as_of: Date stamped on the new rows.
        offer_count: Offers in the file written.
        refreshed_count: Offers that came from SkyPilot's catalog.
        changes: Every price that changed, appeared or went away (per instance type and
            pricing, at the cheapest region).
        unknown_accelerators: ``(cloud, accelerator name, rows)`` for names ftplan does not map.
        skipped: ``(reason, rows)`` for other rows left out (fractional GPUs, no price, ...).
        skipped_clouds: SkyPilot clouds found in the folder that ftplan does not price.
    """

    offers_path: str
    catalog_dir: str
    clouds: tuple[str, ...]
    as_of: str
    offer_count: int
    refreshed_count: int
    changes: tuple[PriceChange, ...]
    unknown_accelerators: tuple[tuple[str, str, int], ...]
    skipped: tuple[tuple[str, int], ...]
    skipped_clouds: tuple[str, ...]


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def offer_rows(
    prices: Iterable[Price],
    *,
    cloud: str,
    source: str,
    today: str,
    templates: Mapping[tuple[str, str, str], Mapping[str, str]],
) -> list[dict[str, str]]:
    """Offer CSV rows: one on-demand and (where priced) one spot row per instance and region.

    Zones of a region are merged: the highest price of the zones counts, as in the AWS refresh
    (a plan priced at the dearest zone is not beaten by where capacity lands). Network facts
    (``inter_node_gbps``, ``max_nodes``) come from the catalog's row for the same instance type,
    else the instance counts as one node.
    """
    provider, service = CLOUD_PROVIDERS[cloud]
    merged: dict[tuple[str, str, bool], list[Price]] = {}
    for price in prices:
        for spot, usd in ((False, price.usd_per_hour), (True, price.spot_usd_per_hour)):
            if usd is not None and usd > 0:
                merged.setdefault((price.instance_type, price.region, spot), []).append(price)
    rows: list[dict[str, str]] = []
    for (instance_type, region, spot), group in sorted(merged.items()):
        usds = [(p.spot_usd_per_hour if spot else p.usd_per_hour) or 0.0 for p in group]
        first = group[0]
        template = templates.get((provider.value, service, instance_type), {})
        zones = f"; highest of {len(usds)} zone prices (min {_fmt(min(usds))})"
        rows.append(
            {
                "provider": provider.value,
                "service": service,
                "instance_type": instance_type,
                "region": region,
                "gpu": first.gpu,
                "gpu_count": str(first.gpu_count),
                "usd_per_hour": _fmt(max(usds)),
                "spot": "true" if spot else "false",
                "as_of": today,
                "source": source,
                "inter_node_gbps": template.get("inter_node_gbps") or "0.0",
                "max_nodes": template.get("max_nodes") or "1",
                "stale": "false",
                "vcpus": "" if first.vcpus is None else str(first.vcpus),
                "memory_gib": "" if first.memory_gib is None else _fmt(first.memory_gib),
                "note": f"refreshed {today} from SkyPilot's catalog"
                + (zones if len(usds) > 1 and max(usds) != min(usds) else ""),
            }
        )
    return rows


def instance_changes(
    old: Iterable[Mapping[str, str]], new: Iterable[Mapping[str, str]]
) -> tuple[PriceChange, ...]:
    """Price changes per instance type and pricing, at each side's cheapest region.

    Keyed ``provider/service/instance/(spot|on-demand)``: the shipped catalog names one region
    (or none), SkyPilot's names many, so a per-region diff would list every offer as added.
    """

    def cheapest(rows: Iterable[Mapping[str, str]]) -> dict[str, float]:
        prices: dict[str, float] = {}
        for row in rows:
            kind = "spot" if row["spot"] == "true" else "on-demand"
            key = f"{row['provider']}/{row['service']}/{row['instance_type']}/{kind}"
            usd = float(row["usd_per_hour"])
            prices[key] = min(usd, prices.get(key, usd))
        return prices

    before, after = cheapest(old), cheapest(new)
    return tuple(
        PriceChange(key=k, old_usd_per_hour=before.get(k), new_usd_per_hour=after.get(k))
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k)
    )


def catalog_version(catalog_dir: Path) -> str:
    """The catalog schema version named by the folder (``.../v7``), else ``v7`` (the layout)."""
    match = re.fullmatch(r"v\d+", catalog_dir.name)
    return match.group(0) if match else "v7"


def _cloud_files(
    catalog_dir: Path, clouds: Iterable[str] | None
) -> tuple[list[tuple[str, Path]], list[str]]:
    if not catalog_dir.is_dir():
        raise CatalogError(
            f"SkyPilot catalog folder {catalog_dir} does not exist; pass the folder that holds "
            f"<cloud>/vms.csv (e.g. a copy of skypilot-catalog's catalogs/v7)"
        )
    wanted = set(clouds) if clouds is not None else None
    found: list[tuple[str, Path]] = []
    skipped: list[str] = []
    for path in sorted(catalog_dir.glob("*/vms.csv")):
        cloud = path.parent.name
        if cloud in CLOUD_PROVIDERS:
            if wanted is None or cloud in wanted:
                found.append((cloud, path))
        elif cloud in OTHER_SKYPILOT_CLOUDS:
            skipped.append(cloud)
        else:
            known = ", ".join(sorted([*CLOUD_PROVIDERS, *OTHER_SKYPILOT_CLOUDS]))
            raise CatalogError(
                f"SkyPilot catalog file {path}, line 1, column 'cloud': unknown cloud {cloud!r} "
                f"(the folder name); SkyPilot's clouds are {known}. Nothing was written."
            )
    if not found:
        raise CatalogError(
            f"no <cloud>/vms.csv for {', '.join(sorted(wanted or CLOUD_PROVIDERS))} under "
            f"{catalog_dir}; nothing was written"
        )
    return found, skipped


def _replaced(row: Mapping[str, str], providers: set[str]) -> bool:
    if row["provider"] not in providers:
        return False
    return row["provider"] != Provider.AWS.value or row["service"] == _AWS_REFRESHED_SERVICE


def refresh_from_skypilot(
    *,
    catalog_dir: Path | None = None,
    clouds: Iterable[str] | None = None,
    cache_dir: Path | None = None,
    today: date | None = None,
) -> SkyPilotRefreshResult:
    """Re-price ftplan's offers from SkyPilot's catalog and write them into the user's cache.

    Every offer of a cloud found in the catalog is replaced by the catalog's offers of that
    cloud (for AWS: EC2 offers; SageMaker offers keep their own source). Other clouds' offers
    stay as they were. The new file is validated, then written atomically.

    Args:
        catalog_dir: A folder in SkyPilot's layout (``<cloud>/vms.csv``); None reads the
            installed SkyPilot's catalog (see :func:`skypilot_catalog_dir`).
        clouds: Refresh only these SkyPilot clouds (``aws``, ``gcp``, ``azure``, ``lambda``,
            ``runpod``); None refreshes every one found.
        cache_dir: Where to write; defaults to ``$FTPLAN_CACHE_DIR`` or ``~/.cache/ftplan``.
        today: Date stamped on refreshed rows; defaults to today.

    Returns:
        What was written, every price change, and what was skipped (unknown accelerators).

    Raises:
        CatalogError: Unknown cloud folder, missing column, malformed CSV or value (naming the
            file, line and column), no GPU price at all, or SkyPilot not installed. Nothing is
            written then, and the previous offers file stays byte-identical.
    """
    from catalog._load import cache_dir as default_cache_dir

    wanted = None if clouds is None else tuple(dict.fromkeys(clouds))
    for cloud in wanted or ():
        if cloud not in CLOUD_PROVIDERS:
            raise CatalogError(
                f"ftplan does not price SkyPilot cloud {cloud!r}; choose from "
                f"{', '.join(CLOUD_PROVIDERS)}"
            )
    source_dir = catalog_dir if catalog_dir is not None else skypilot_catalog_dir(wanted)
    files, skipped_clouds = _cloud_files(source_dir, wanted)
    stamp = (today or date.today()).isoformat()
    version = catalog_version(source_dir)
    old_rows = _read_rows(active_offers_path())
    templates = {(r["provider"], r["service"], r["instance_type"]): r for r in old_rows}
    tally = Tally()
    fresh: list[dict[str, str]] = []
    for cloud, path in files:
        prices = (
            parse_gcp(path, tally=tally)
            if cloud == "gcp"
            else parse_vms_csv(path, cloud=cloud, tally=tally)
        )
        source = f"SkyPilot catalog {version}/{cloud}/vms.csv"
        fresh += offer_rows(prices, cloud=cloud, source=source, today=stamp, templates=templates)
    if not fresh:
        raise CatalogError(
            f"SkyPilot's catalog under {source_dir} holds no GPU price ftplan knows; nothing "
            f"was written"
        )
    providers = {CLOUD_PROVIDERS[cloud][0].value for cloud, _ in files}
    replaced = [r for r in old_rows if _replaced(r, providers)]
    new_rows = [*[r for r in old_rows if not _replaced(r, providers)], *fresh]
    target = (cache_dir or default_cache_dir()) / OFFERS_FILENAME
    text = _to_csv(new_rows)
    parse_offers_csv(text, path=target)  # never write a file the loader would reject
    atomic_write_text(target, text)
    return SkyPilotRefreshResult(
        offers_path=str(target),
        catalog_dir=str(source_dir),
        clouds=tuple(cloud for cloud, _ in files),
        as_of=stamp,
        offer_count=len(new_rows),
        refreshed_count=len(fresh),
        changes=instance_changes(replaced, fresh),
        unknown_accelerators=tuple(
            (cloud, name, n) for (cloud, name), n in sorted(tally.unknown.items())
        ),
        skipped=tuple(sorted(tally.skipped.items())),
        skipped_clouds=tuple(skipped_clouds),
    )


def skypilot_catalog_dir(clouds: Iterable[str] | None = None) -> Path:
    """The installed SkyPilot's catalog folder, after its catalog API fetched ``clouds``' files.

    SkyPilot's ``sky.catalog.common.read_catalog`` downloads the hosted catalog of its schema
    version when the local copy is missing or older than the pull interval (7 hours).

    Raises:
        CatalogError: SkyPilot is not installed, or a file could not be fetched.
    """
    try:
        from sky import sky_logging  # deferred: the skypilot extra
        from sky.catalog import common as sky_catalog
    except ImportError:
        raise CatalogError(
            "reading SkyPilot's catalog needs SkyPilot: pip install 'ftplan[skypilot]' (or pass "
            "--catalog-dir with a copy of SkyPilot's catalog)"
        ) from None
    for cloud in clouds or CLOUD_PROVIDERS:
        try:
            # silent(): no spinner payloads on stdout; ftplan reports a failure in one line.
            with sky_logging.silent():
                _fetch(sky_catalog, cloud)
        except Exception as exc:  # requests or pandas errors from SkyPilot's fetch
            raise CatalogError(
                f"SkyPilot could not fetch its {cloud} catalog ({type(exc).__name__}: {exc}); "
                f"nothing was written. Check the network, or pass --catalog-dir"
            ) from None
    return Path(sky_catalog.get_catalog_path("x")).parent


def _fetch(sky_catalog: Any, cloud: str) -> None:
    # SkyPilot logs a failed download itself; ftplan reports it once, as a CatalogError.
    logger = logging.getLogger(sky_catalog.__name__)
    was_disabled, logger.disabled = logger.disabled, True
    try:
        # The frame loads lazily; reading its columns makes SkyPilot fetch the file when
        # needed (LazyDataFrame forwards attributes, not len(), to the loaded frame).
        _ = sky_catalog.read_catalog(f"{cloud}/vms.csv", pull_frequency_hours=7).columns
    finally:
        logger.disabled = was_disabled
