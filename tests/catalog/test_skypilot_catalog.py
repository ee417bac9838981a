"""Prices from SkyPilot's catalog: name mapping, vms.csv parsing, atomic refresh, CLI (offline).

The fixture folder tests/fixtures/skypilot_catalog/v7 mirrors SkyPilot's catalog layout: each
cloud's vms.csv has the columns, in the order, that cloud's fetcher in
sky/catalog/data_fetchers writes (Lambda and RunPod differ from each other and from AWS).
"""

from __future__ import annotations

import csv
import json
import shutil
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog import (
    Provider,
    catalog_age_warning,
    catalog_info,
    gpu_for_sky_accelerator,
    list_gpus,
    list_offers,
    refresh_from_skypilot,
    sky_accelerator_for_gpu,
    sky_name_is_ambiguous,
)
from catalog._sky_names import SKY_ACCELERATORS
from catalog._sky_vms import CLOUD_PROVIDERS, parse_gcp, parse_vms_csv
from planner.cli import main

FIXTURE = Path(__file__).parents[1] / "fixtures" / "skypilot_catalog" / "v7"
TODAY = date.today().isoformat()


def _catalog_copy(tmp_path: Path, clouds: tuple[str, ...] = ("lambda", "runpod")) -> Path:
    folder = tmp_path / "v7"
    for cloud in clouds:
        (folder / cloud).mkdir(parents=True)
        shutil.copy(FIXTURE / cloud / "vms.csv", folder / cloud / "vms.csv")
    return folder


# --------------------------------------------------------------------------------------------
# One mapping, both directions


@pytest.mark.parametrize("gpu", [g.name for g in list_gpus()])
def test_every_gpu_has_a_skypilot_name_that_maps_back(gpu: str) -> None:
    round_trips = []
    for provider in (Provider.AWS, Provider.GCP, Provider.AZURE, Provider.LAMBDA, Provider.RUNPOD):
        try:
            name = sky_accelerator_for_gpu(gpu, provider=provider)
        except KeyError:
            continue
        marker = next(
            (
                e.instance_marker
                for e in SKY_ACCELERATORS
                if e.gpu == gpu and e.sky_name == name and e.provider in (None, provider)
            ),
            "",
        )
        assert gpu_for_sky_accelerator(name, provider=provider, instance_type=marker) == gpu
        round_trips.append(provider)
    assert round_trips, f"no SkyPilot accelerator name for {gpu}"


@pytest.mark.parametrize("entry", SKY_ACCELERATORS, ids=lambda e: f"{e.provider}-{e.sky_name}")
def test_every_mapping_row_round_trips(entry: object) -> None:
    from catalog._sky_names import SkyAccelerator

    assert isinstance(entry, SkyAccelerator)
    known = {g.name for g in list_gpus()}
    assert entry.gpu in known
    provider = entry.provider or Provider.AWS
    instance = entry.instance_marker
    assert gpu_for_sky_accelerator(entry.sky_name, provider=provider, instance_type=instance) == (
        entry.gpu
    )
    assert sky_accelerator_for_gpu(entry.gpu, provider=provider, instance_type=instance) == (
        entry.sky_name
    )


def test_cloud_specific_names() -> None:
    assert gpu_for_sky_accelerator("H100", provider=Provider.RUNPOD) == "H100 PCIe"
    assert gpu_for_sky_accelerator("H100", provider=Provider.LAMBDA) == "H100 SXM 80GB"
    assert (
        gpu_for_sky_accelerator("H100", provider=Provider.LAMBDA, instance_type="gpu_1x_h100_pcie")
        == "H100 PCIe"
    )
    assert sky_accelerator_for_gpu("H100 SXM 80GB", provider=Provider.RUNPOD) == "H100-SXM"
    assert sky_accelerator_for_gpu("H100 SXM 80GB", provider=Provider.LAMBDA) == "H100"
    assert gpu_for_sky_accelerator("MI300X", provider=Provider.RUNPOD) is None
    assert sky_name_is_ambiguous("H100", provider=Provider.LAMBDA)
    assert not sky_name_is_ambiguous("H100", provider=Provider.AWS)
    assert not sky_name_is_ambiguous("GH200", provider=Provider.LAMBDA)
    with pytest.raises(KeyError):
        sky_accelerator_for_gpu("H100 PCIe", provider=Provider.AWS)


# --------------------------------------------------------------------------------------------
# Parsing


def test_lambda_and_runpod_column_orders_parse() -> None:
    lam = parse_vms_csv(FIXTURE / "lambda" / "vms.csv", cloud="lambda")
    gh200 = [p for p in lam if p.instance_type == "gpu_1x_gh200"]
    assert {p.region for p in gh200} == {"us-east-1", "us-west-1"}
    assert gh200[0].usd_per_hour == 1.99 and gh200[0].spot_usd_per_hour is None
    assert gh200[0].vcpus == 64 and gh200[0].memory_gib == 432.0
    pcie = next(p for p in lam if p.instance_type == "gpu_1x_h100_pcie")
    assert pcie.gpu == "H100 PCIe"
    pod = parse_vms_csv(FIXTURE / "runpod" / "vms.csv", cloud="runpod")
    sxm = next(p for p in pod if p.instance_type == "8x_H100-SXM_SECURE")
    assert (sxm.gpu, sxm.gpu_count, sxm.usd_per_hour, sxm.spot_usd_per_hour) == (
        "H100 SXM 80GB",
        8,
        21.52,
        14.0,
    )


def test_gcp_price_is_host_plus_gpu() -> None:
    prices = parse_gcp(FIXTURE / "gcp" / "vms.csv")
    a2 = next(p for p in prices if p.instance_type == "a2-highgpu-1g")
    assert a2.gpu == "A100 SXM 40GB"
    assert a2.usd_per_hour == pytest.approx(0.73948 + 2.93391)
    assert a2.spot_usd_per_hour == pytest.approx(0.29576 + 1.1472)
    assert not any(p.gpu == "T4" for p in prices)  # N1-attached: host size unknown


# --------------------------------------------------------------------------------------------
# Refresh


def test_refresh_replaces_the_clouds_it_read_and_reports_unknowns(
    tmp_path: Path, user_cache: Path
) -> None:
    before_aws = [o for o in list_offers(providers=["aws"])]
    result = refresh_from_skypilot(catalog_dir=_catalog_copy(tmp_path))
    assert result.clouds == ("lambda", "runpod")
    assert result.offers_path == str(user_cache / "offers.csv")
    assert ("runpod", "MI300X", 4) in result.unknown_accelerators
    assert ("lambda", "RTX6000", 2) in result.unknown_accelerators
    lam = list_offers(providers=["lambda"])
    assert {o.source for o in lam} == {"SkyPilot catalog v7/lambda/vms.csv"}
    assert {o.as_of for o in lam} == {TODAY}
    gh200 = [o for o in lam if o.instance_type == "gpu_1x_gh200"]
    assert {(o.region, o.usd_per_hour, o.spot) for o in gh200} == {
        ("us-east-1", 1.99, False),
        ("us-west-1", 1.99, False),
    }
    spot = [o for o in list_offers(providers=["runpod"]) if o.spot]
    assert {o.instance_type for o in spot} >= {"1x_H100-SXM_SECURE", "8x_H100-SXM_SECURE"}
    assert "1x_H200-SXM_SECURE" not in {o.instance_type for o in spot}  # no spot price
    assert list_offers(providers=["aws"]) == tuple(before_aws)  # untouched


def test_refresh_keeps_sagemaker_rows_and_network_facts(tmp_path: Path) -> None:
    refresh_from_skypilot(catalog_dir=_catalog_copy(tmp_path, ("aws",)))
    aws = list_offers(providers=["aws"])
    assert any(o.service == "sagemaker" for o in aws)
    p5 = next(o for o in aws if o.key == "aws/ec2/p5.48xlarge/us-east-1/on-demand")
    assert p5.usd_per_hour == 55.04 and p5.max_nodes > 1 and p5.inter_node_gbps > 0
    assert p5.source == "SkyPilot catalog v7/aws/vms.csv"
    g5 = next(o for o in aws if o.instance_type == "g5.xlarge" and o.spot)
    assert g5.usd_per_hour == 0.45  # the dearer of the two zones


def test_age_warning_goes_away_for_refreshed_providers(tmp_path: Path) -> None:
    refresh_from_skypilot(catalog_dir=_catalog_copy(tmp_path))
    today = date.today()
    assert catalog_age_warning(catalog_info(providers=["lambda", "runpod"]), today) is None
    warning = catalog_age_warning(catalog_info(providers=["aws", "lambda"]), today) or ""
    assert "(aws)" in warning and "refresh --from skypilot" in warning


def _assert_refused(tmp_path: Path, cache: Path, folder: Path, *needles: str) -> None:
    target = cache / "offers.csv"
    refresh_from_skypilot(catalog_dir=_catalog_copy(tmp_path / "ok"))
    before = target.read_bytes()
    result = CliRunner().invoke(
        main, ["catalog", "refresh", "--from", "skypilot", "--catalog-dir", str(folder)]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert target.read_bytes() == before  # byte-identical
    assert [p.name for p in cache.iterdir()] == ["offers.csv"]  # no temporary left over


def _rewrite(path: Path, edit: dict[tuple[int, str], str] | None = None, drop: str = "") -> None:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in rows[0] if c != drop]
    for (index, column), value in (edit or {}).items():
        rows[index][column] = value
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_bad_price_names_file_line_and_column(tmp_path: Path, user_cache: Path) -> None:
    folder = _catalog_copy(tmp_path)
    _rewrite(folder / "runpod" / "vms.csv", {(2, "Price"): "2,69x"})
    path = folder / "runpod" / "vms.csv"
    _assert_refused(tmp_path, user_cache, folder, str(path), "line 4", "'Price'")


def test_missing_column_names_file_and_column(tmp_path: Path, user_cache: Path) -> None:
    folder = _catalog_copy(tmp_path)
    _rewrite(folder / "lambda" / "vms.csv", drop="AcceleratorCount")
    path = folder / "lambda" / "vms.csv"
    _assert_refused(tmp_path, user_cache, folder, str(path), "line 1", "'AcceleratorCount'")


def test_malformed_csv_names_the_line(tmp_path: Path, user_cache: Path) -> None:
    folder = _catalog_copy(tmp_path)
    path = folder / "lambda" / "vms.csv"
    with path.open("a", encoding="utf-8") as handle:
        handle.write("gpu_1x_a10,A10,1.0,30.0,200.0,0.75,us-east-1,,,extra\n")
    _assert_refused(tmp_path, user_cache, folder, str(path), "line 22", "more fields")


def test_unknown_cloud_folder_is_refused(tmp_path: Path, user_cache: Path) -> None:
    folder = _catalog_copy(tmp_path)
    (folder / "lambada").mkdir()
    shutil.copy(FIXTURE / "lambda" / "vms.csv", folder / "lambada" / "vms.csv")
    _assert_refused(tmp_path, user_cache, folder, "unknown cloud 'lambada'", "line 1")


def test_cli_refresh_changes_offers_json(tmp_path: Path) -> None:
    runner = CliRunner()
    before = json.loads(runner.invoke(main, ["catalog", "offers", "--format", "json"]).output)
    result = runner.invoke(
        main,
        [
            "catalog",
            "refresh",
            "--from",
            "skypilot",
            "--catalog-dir",
            str(_catalog_copy(tmp_path)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "runpod:MI300X (4 rows)" in result.output
    assert "lambda/cloud/gpu_1x_gh200/on-demand: 1.49 -> 1.99 USD/h" in result.output
    after = json.loads(runner.invoke(main, ["catalog", "offers", "--format", "json"]).output)
    fresh = [o for o in after if o["provider"] in ("lambda", "runpod")]
    assert fresh and all(o["as_of"] == TODAY and "SkyPilot" in o["source"] for o in fresh)
    assert any(o["spot"] and o["instance_type"] == "1x_H100-SXM_SECURE" for o in fresh)
    old = {(o["instance_type"], o["spot"]): o["usd_per_hour"] for o in before}
    assert old[("gpu_1x_gh200", False)] != 1.99
    assert {o["usd_per_hour"] for o in fresh if o["instance_type"] == "gpu_1x_gh200"} == {1.99}


def test_cli_pricing_api_refuses_other_providers() -> None:
    result = CliRunner().invoke(main, ["catalog", "refresh", "--provider", "lambda"])
    assert result.exit_code == 2 and "--from skypilot" in result.output


def test_refresh_through_skypilots_catalog_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --catalog-dir, SkyPilot's read_catalog fetches the files; ftplan reads them."""
    pytest.importorskip("sky")
    from sky.catalog import common as sky_catalog

    sky_dir = tmp_path / "sky-catalogs" / "v8"
    fetched: list[str] = []

    real_read_catalog = sky_catalog.read_catalog

    def fetch(filename: str, pull_frequency_hours: int | None = None) -> object:
        # SkyPilot's own LazyDataFrame over a file placed where its download would put it.
        fetched.append(filename)
        (sky_dir / filename).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURE / filename, sky_dir / filename)
        return real_read_catalog(filename, pull_frequency_hours=None)

    monkeypatch.setattr(sky_catalog, "read_catalog", fetch)
    monkeypatch.setattr(sky_catalog, "get_catalog_path", lambda name: str(sky_dir / name))
    result = refresh_from_skypilot(clouds=["lambda"])
    assert fetched == ["lambda/vms.csv"]
    assert result.clouds == ("lambda",) and result.catalog_dir == str(sky_dir)
    assert {o.source for o in list_offers(providers=["lambda"])} == {
        "SkyPilot catalog v8/lambda/vms.csv"
    }


def test_every_refreshed_cloud_is_a_provider() -> None:
    assert {p.value for p, _ in CLOUD_PROVIDERS.values()} == {
        p.value for p in Provider if p is not Provider.LOCAL
    }


def test_recommend_prices_the_cheapest_region_of_each_instance(tmp_path: Path) -> None:
    from dataclasses import replace

    from catalog import cheapest_per_instance

    refresh_from_skypilot(catalog_dir=_catalog_copy(tmp_path))
    lam = list_offers(providers=["lambda"])
    kept = cheapest_per_instance(lam)
    assert len(kept) == len({o.instance_type for o in lam})  # one region each (same price)
    assert {o.region for o in kept} == {"us-east-1"}  # ties: the first region by name
    dear = replace(kept[0], region="aa-dear-1", usd_per_hour=kept[0].usd_per_hour + 1)
    assert cheapest_per_instance((dear, *kept)) == kept
    spot = replace(kept[0], spot=True)
    assert len(cheapest_per_instance((*kept, spot))) == len(kept) + 1


def test_failed_skypilot_fetch_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_cache: Path
) -> None:
    pytest.importorskip("sky")
    from sky.catalog import common as sky_catalog

    def offline(filename: str, pull_frequency_hours: int | None = None) -> object:
        raise ConnectionError(f"cannot reach the hosted catalog for {filename}")

    monkeypatch.setattr(sky_catalog, "read_catalog", offline)
    result = CliRunner().invoke(main, ["catalog", "refresh", "--from", "skypilot"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "could not fetch its aws catalog" in result.output
    assert not user_cache.exists()
