"""AWS price refresh against botocore Stubber responses shaped like the real APIs (offline)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from catalog import CatalogError, PriceChange, RefreshResult, list_offers, refresh_aws
from catalog._load import DATA_DIR
from catalog.refresh import (
    PRICING_SOURCE,
    SPOT_SOURCE,
    ec2_price_filters,
    parse_on_demand_usd,
    sagemaker_price_filters,
    spot_price_usd,
)

boto3 = pytest.importorskip("boto3")
stub_module = pytest.importorskip("botocore.stub")
Stubber, ANY = stub_module.Stubber, stub_module.ANY

TODAY = date(2026, 11, 20)


def _price_entry(instance_type: str, usd: str, *, unit: str = "Hrs") -> str:
    """One PriceList entry as get_products returns it: a JSON *string* (format aws_v1)."""
    sku = "ABCDEFGH12345678"
    product = {
        "product": {
            "productFamily": "Compute Instance",
            "sku": sku,
            "attributes": {
                "instanceType": instance_type,
                "operatingSystem": "Linux",
                "tenancy": "Shared",
                "location": "US East (N. Virginia)",
                "capacitystatus": "Used",
                "preInstalledSw": "NA",
            },
        },
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                f"{sku}.JRTCKXETXF": {
                    "offerTermCode": "JRTCKXETXF",
                    "sku": sku,
                    "effectiveDate": "2026-11-01T00:00:00Z",
                    "priceDimensions": {
                        f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                            "unit": unit,
                            "pricePerUnit": {"USD": usd},
                            "appliesTo": [],
                            "description": (
                                f"${usd} per On Demand Linux {instance_type} Instance Hour"
                            ),
                            "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7",
                            "beginRange": "0",
                            "endRange": "Inf",
                        }
                    },
                    "termAttributes": {},
                }
            }
        },
        "version": "20261101000000",
        "publicationDate": "2026-11-01T00:00:00Z",
    }
    return json.dumps(product)


def _spot(zone: str, usd: str, hour: int) -> dict[str, Any]:
    return {
        "AvailabilityZone": zone,
        "InstanceType": "g5.xlarge",
        "ProductDescription": "Linux/UNIX",
        "SpotPrice": usd,
        "Timestamp": datetime(2026, 11, 20, hour, tzinfo=UTC),
    }


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user cache holding a small catalog: g5.xlarge (on-demand, spot), ml.g5.xlarge, Lambda."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(cache))
    with (DATA_DIR / "offers.csv").open(encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = [
            r
            for r in reader
            if (r["instance_type"], r["region"])
            in {
                ("g5.xlarge", "us-east-1"),
                ("ml.g5.xlarge", "us-east-1"),
                ("gpu_1x_a10", "unspecified"),
            }
        ]
    assert len(rows) == 4
    with (cache / "offers.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return cache


@pytest.fixture()
def clients() -> Iterator[tuple[Any, Any, Any, Any]]:
    kwargs = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    pricing = boto3.client("pricing", region_name="us-east-1", **kwargs)
    ec2 = boto3.client("ec2", region_name="us-east-1", **kwargs)
    with Stubber(pricing) as pricing_stub, Stubber(ec2) as ec2_stub:
        yield pricing, ec2, pricing_stub, ec2_stub


def _expect_g5_calls(pricing_stub: Any, ec2_stub: Any) -> None:
    pricing_stub.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [_price_entry("g5.xlarge", "1.0060000000")]},
        {
            "ServiceCode": "AmazonEC2",
            "Filters": ec2_price_filters("g5.xlarge", "us-east-1"),
            "FormatVersion": "aws_v1",
        },
    )
    ec2_stub.add_response(
        "describe_spot_price_history",
        {
            "SpotPriceHistory": [
                _spot("us-east-1a", "0.9000", 1),
                _spot("us-east-1a", "0.4100", 9),
                _spot("us-east-1b", "0.4500", 8),
                _spot("us-east-1c", "0.3900", 7),
            ]
        },
        {"InstanceTypes": ["g5.xlarge"], "ProductDescriptions": ["Linux/UNIX"], "StartTime": ANY},
    )


def test_parse_on_demand_price_from_json_strings() -> None:
    entries = [
        _price_entry("p5.48xlarge", "55.0400000000"),
        _price_entry("p5.48xlarge", "0.0000000000"),  # a zero-priced duplicate SKU
        _price_entry("p5.48xlarge", "12.0", unit="Quantity"),
    ]  # not an hourly rate
    assert parse_on_demand_usd(entries) == pytest.approx(55.04)
    assert parse_on_demand_usd([]) is None
    with pytest.raises(CatalogError, match="unreadable price entry"):
        parse_on_demand_usd(["{not json"])


def test_spot_uses_latest_record_per_zone() -> None:
    records = [
        _spot("a", "0.90", 1),
        _spot("a", "0.41", 9),
        _spot("b", "0.45", 8),
        _spot("c", "0.39", 7),
    ]
    assert spot_price_usd(records) == pytest.approx(0.45)  # 0.90 is older than 0.41 in zone a
    assert spot_price_usd(records, statistic="median") == pytest.approx(0.41)
    assert spot_price_usd([]) is None


def test_filters_match_the_pricing_api_attributes() -> None:
    fields = {f["Field"]: f["Value"] for f in ec2_price_filters("g6.xlarge", "us-west-2")}
    assert fields == {
        "instanceType": "g6.xlarge",
        "location": "US West (Oregon)",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    fields = {f["Field"]: f["Value"] for f in sagemaker_price_filters("ml.g5.xlarge", "me-x-1")}
    assert fields == {
        "instanceName": "ml.g5.xlarge",
        "regionCode": "me-x-1",
        "platoinstancetype": "Training",
    }


def test_refresh_writes_new_prices_with_source_and_date(cache: Path, clients: Any) -> None:
    pricing, ec2, pricing_stub, ec2_stub = clients
    _expect_g5_calls(pricing_stub, ec2_stub)
    sagemaker_entry = _price_entry("ml.g5.xlarge", "1.4080000000")
    pricing_stub.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [sagemaker_entry]},
        {
            "ServiceCode": "AmazonSageMaker",
            "FormatVersion": "aws_v1",
            "Filters": sagemaker_price_filters("ml.g5.xlarge", "us-east-1"),
        },
    )
    lines: list[str] = []
    result = refresh_aws(
        regions=["us-east-1"],
        pricing_client=pricing,
        ec2_clients={"us-east-1": ec2},
        today=TODAY,
        progress=lines.append,
    )
    pricing_stub.assert_no_pending_responses()
    ec2_stub.assert_no_pending_responses()
    assert isinstance(result, RefreshResult)
    assert result.offers_path == str(cache / "offers.csv")
    assert (result.offer_count, result.refreshed_count) == (4, 3)
    assert lines == ["us-east-1: g5.xlarge", "us-east-1: ml.g5.xlarge"]
    assert (
        PriceChange(
            key="aws/ec2/g5.xlarge/us-east-1/spot", old_usd_per_hour=0.4177, new_usd_per_hour=0.45
        )
        in result.changes
    )
    assert (
        PriceChange(
            key="aws/sagemaker/ml.g5.xlarge/us-east-1/on-demand",
            old_usd_per_hour=1.4084,
            new_usd_per_hour=1.408,
        )
        in result.changes
    )
    assert len(result.changes) == 2  # g5.xlarge on-demand stayed at 1.006

    offers = {o.key: o for o in list_offers()}
    on_demand = offers["aws/ec2/g5.xlarge/us-east-1/on-demand"]
    spot = offers["aws/ec2/g5.xlarge/us-east-1/spot"]
    assert (on_demand.usd_per_hour, on_demand.source, on_demand.as_of) == (
        1.006,
        PRICING_SOURCE,
        "2026-11-20",
    )
    assert (spot.usd_per_hour, spot.source, spot.as_of) == (0.45, SPOT_SOURCE, "2026-11-20")
    assert on_demand.gpu == "A10G" and on_demand.vcpus == 4 and not on_demand.stale
    lambda_a10 = offers["lambda/cloud/gpu_1x_a10/unspecified/on-demand"]
    assert (lambda_a10.usd_per_hour, lambda_a10.as_of) == (0.75, "2025-05-31")


def test_throttled_refresh_keeps_the_previous_catalog(cache: Path, clients: Any) -> None:
    pricing, ec2, pricing_stub, _ = clients
    before = (cache / "offers.csv").read_bytes()
    pricing_stub.add_client_error(
        "get_products",
        service_error_code="ThrottlingException",
        service_message="Rate exceeded",
        http_status_code=400,
    )
    with pytest.raises(CatalogError, match="refresh failed.*Rate exceeded.*Nothing was written"):
        refresh_aws(
            regions=["us-east-1"],
            pricing_client=pricing,
            ec2_clients={"us-east-1": ec2},
            today=TODAY,
        )
    assert (cache / "offers.csv").read_bytes() == before
    assert [p.name for p in cache.iterdir()] == ["offers.csv"]  # no temporary file left


def test_partial_refresh_keeps_the_previous_catalog(cache: Path, clients: Any) -> None:
    pricing, ec2, pricing_stub, ec2_stub = clients
    before = (cache / "offers.csv").read_bytes()
    pricing_stub.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [_price_entry("g5.xlarge", "2.0")]},
        {"ServiceCode": "AmazonEC2", "Filters": ANY, "FormatVersion": "aws_v1"},
    )
    ec2_stub.add_client_error(
        "describe_spot_price_history", service_error_code="UnauthorizedOperation"
    )
    with pytest.raises(CatalogError, match="UnauthorizedOperation"):
        refresh_aws(
            regions=["us-east-1"],
            pricing_client=pricing,
            ec2_clients={"us-east-1": ec2},
            today=TODAY,
        )
    assert (cache / "offers.csv").read_bytes() == before


def test_refresh_with_no_prices_writes_nothing(cache: Path, clients: Any) -> None:
    pricing, ec2, pricing_stub, _ = clients
    before = (cache / "offers.csv").read_bytes()
    for _ in range(2):
        pricing_stub.add_response(
            "get_products",
            {"FormatVersion": "aws_v1", "PriceList": []},
            {"ServiceCode": ANY, "Filters": ANY, "FormatVersion": "aws_v1"},
        )
    with pytest.raises(CatalogError, match="found no prices"):
        refresh_aws(
            regions=["us-east-1"],
            pricing_client=pricing,
            ec2_clients={"us-east-1": ec2},
            today=TODAY,
        )
    assert (cache / "offers.csv").read_bytes() == before


def test_cli_refresh_prints_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    from planner.cli import catalog as _cli_catalog
    from planner.cli import main

    seen: dict[str, Any] = {}

    def fake_refresh(**kwargs: Any) -> RefreshResult:
        seen.update(kwargs)
        return RefreshResult(
            offers_path="/tmp/offers.csv",
            regions=tuple(kwargs["regions"]),
            as_of="2026-11-20",
            offer_count=120,
            refreshed_count=2,
            changes=(
                PriceChange(
                    key="aws/ec2/p5.48xlarge/us-east-1/on-demand",
                    old_usd_per_hour=98.32,
                    new_usd_per_hour=55.04,
                ),
            ),
            not_offered=("ec2/p3.2xlarge/us-west-2",),
        )

    monkeypatch.setattr(_cli_catalog, "refresh_aws", fake_refresh)
    result = CliRunner().invoke(
        main,
        [
            "catalog",
            "refresh",
            "--provider",
            "aws",
            "--region",
            "us-east-1",
            "--region",
            "us-west-2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert tuple(seen["regions"]) == ("us-east-1", "us-west-2")
    assert "aws/ec2/p5.48xlarge/us-east-1/on-demand: 98.32 -> 55.04 USD/h" in result.output
    assert "not offered there: ec2/p3.2xlarge/us-west-2" in result.output


def test_cli_refresh_rejects_other_providers() -> None:
    from planner.cli import main

    result = CliRunner().invoke(main, ["catalog", "refresh", "--provider", "gcp"])
    assert result.exit_code == 2 and "only aws" in result.output
    assert "Traceback" not in result.output


def test_refresh_follows_next_tokens(cache: Path, clients: Any) -> None:
    pricing, ec2, pricing_stub, ec2_stub = clients
    filters = ec2_price_filters("g5.xlarge", "us-east-1")
    pricing_stub.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [], "NextToken": "page-2"},
        {"ServiceCode": "AmazonEC2", "Filters": filters, "FormatVersion": "aws_v1"},
    )
    pricing_stub.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [_price_entry("g5.xlarge", "1.1000000000")]},
        {
            "ServiceCode": "AmazonEC2",
            "Filters": filters,
            "FormatVersion": "aws_v1",
            "NextToken": "page-2",
        },
    )
    ec2_stub.add_response(
        "describe_spot_price_history",
        {"SpotPriceHistory": [_spot("us-east-1a", "0.5000", 9)], "NextToken": "more"},
        {"InstanceTypes": ["g5.xlarge"], "ProductDescriptions": ["Linux/UNIX"], "StartTime": ANY},
    )
    ec2_stub.add_response(
        "describe_spot_price_history",
        {"SpotPriceHistory": [_spot("us-east-1b", "0.6000", 9)]},
        {
            "InstanceTypes": ["g5.xlarge"],
            "ProductDescriptions": ["Linux/UNIX"],
            "StartTime": ANY,
            "NextToken": "more",
        },
    )
    pricing_stub.add_response(
        "get_products",
        {"FormatVersion": "aws_v1", "PriceList": [_price_entry("ml.g5.xlarge", "1.5")]},
        {"ServiceCode": "AmazonSageMaker", "Filters": ANY, "FormatVersion": "aws_v1"},
    )
    refresh_aws(
        regions=["us-east-1"], pricing_client=pricing, ec2_clients={"us-east-1": ec2}, today=TODAY
    )
    pricing_stub.assert_no_pending_responses()
    offers = {o.key: o.usd_per_hour for o in list_offers(providers=["aws"])}
    assert offers["aws/ec2/g5.xlarge/us-east-1/on-demand"] == 1.1
    assert offers["aws/ec2/g5.xlarge/us-east-1/spot"] == 0.6  # zone b, from the second page
    assert offers["aws/sagemaker/ml.g5.xlarge/us-east-1/on-demand"] == 1.5
