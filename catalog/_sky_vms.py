"""Reading SkyPilot's ``<cloud>/vms.csv`` catalog files into priced GPU rows.

Columns are read by name (each cloud's fetcher in ``sky/catalog/data_fetchers`` writes its own
order). Every error names the file, the line and the column. Pure apart from reading the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from catalog._io import csv_rows, read_text_limited
from catalog._sky_names import gpu_for_sky_accelerator
from catalog._types import CatalogError, Provider
from catalog.errors import DataError, ErrorKind

#: Largest vms.csv read (SkyPilot's largest, AWS, is ~10 MB).
MAX_VMS_CSV_BYTES = 256 * 1024 * 1024
#: Largest figure in a vms.csv (USD/h, vCPUs, GiB, GPUs): far above any real machine.
MAX_VMS_NUMBER = 1e9

#: Columns every cloud's vms.csv must have (SkyPilot catalog schema, all versions since v5).
REQUIRED_COLUMNS = (
    "InstanceType",
    "AcceleratorName",
    "AcceleratorCount",
    "vCPUs",
    "MemoryGiB",
    "Price",
    "SpotPrice",
    "Region",
)

#: SkyPilot's cloud folder names for the providers ftplan prices, and the service they sell.
CLOUD_PROVIDERS: dict[str, tuple[Provider, str]] = {
    "aws": (Provider.AWS, "ec2"),
    "gcp": (Provider.GCP, "gce"),
    "azure": (Provider.AZURE, "vm"),
    "lambda": (Provider.LAMBDA, "cloud"),
    "runpod": (Provider.RUNPOD, "pod"),
}


#: GCP sells A100, H100, H200, B200 and L4 only inside fixed VM families; the price of such a VM
#: is its host row plus its GPU row. Host type per accelerator and count, from
#: ``sky/catalog/gcp_catalog._ACC_INSTANCE_TYPE_DICTS`` (first, smallest type of each count).
GCP_HOST_TYPES: dict[str, dict[int, str]] = {
    "A100": {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g"},
    "A100-80GB": {
        1: "a2-ultragpu-1g",
        2: "a2-ultragpu-2g",
        4: "a2-ultragpu-4g",
        8: "a2-ultragpu-8g",
    },
    "L4": {1: "g2-standard-4", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"},
    "H100": {1: "a3-highgpu-1g", 2: "a3-highgpu-2g", 4: "a3-highgpu-4g", 8: "a3-highgpu-8g"},
    "H200": {8: "a3-ultragpu-8g"},
    "B200": {8: "a4-highgpu-8g"},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """One priced row of a vms.csv: a GPU machine in a zone."""

    instance_type: str
    region: str
    gpu: str
    gpu_count: int
    usd_per_hour: float | None
    spot_usd_per_hour: float | None
    vcpus: int | None
    memory_gib: float | None


class Tally:
    """Counts of what a parse left out, for the report."""

    def __init__(self) -> None:
        self.unknown: dict[tuple[str, str], int] = {}
        self.skipped: dict[str, int] = {}

    def unknown_accelerator(self, cloud: str, name: str) -> None:
        self.unknown[(cloud, name)] = self.unknown.get((cloud, name), 0) + 1

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _fail(path: Path, line: int, column: str, why: str, value: str) -> CatalogError:
    return CatalogError(
        f"SkyPilot catalog file {path}, line {line}, column {column!r}: {why} (got {value!r}). "
        f"Nothing was written. Fix the file or fetch it again from SkyPilot's catalog."
    )


def _number(path: Path, line: int, row: Mapping[str, str], column: str) -> float | None:
    value = (row.get(column) or "").strip()
    if not value or value.lower() == "nan":
        return None
    try:
        number = float(value)
    except ValueError:
        raise _fail(path, line, column, "not a number", value) from None
    if number < 0:
        raise _fail(path, line, column, "negative", value)
    if not math.isfinite(number) or number > MAX_VMS_NUMBER:
        raise _fail(path, line, column, f"not a figure below {MAX_VMS_NUMBER:g}", value[:40])
    return number


def _read_vms_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """Rows of one vms.csv with their line numbers; the header is checked first. The file is
    read through the bounded reader (a regular file of at most 256 MiB)."""
    try:
        text = read_text_limited(path, what="SkyPilot catalog file", max_bytes=MAX_VMS_CSV_BYTES)
        header, rows = csv_rows(text, where=f"SkyPilot catalog file {path}")
    except OSError as exc:
        raise CatalogError(
            f"cannot read SkyPilot catalog file {path}: {exc.strerror or exc}"
        ) from None
    except DataError as exc:
        raise CatalogError(f"{exc}. Nothing was written.", kind=ErrorKind.DATA) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CatalogError(
            f"SkyPilot catalog file {path}, line 1, column {missing[0]!r}: column missing "
            f"(header is {','.join(header) or '(empty)'}; needs {', '.join(REQUIRED_COLUMNS)})"
            f". Nothing was written."
        )
    for line, values in rows:
        short = [c for c in REQUIRED_COLUMNS if values.get(c) is None]
        if short:
            raise _fail(path, line, short[0], "line ends before this column", "")
    return rows


def _count(path: Path, line: int, row: Mapping[str, str], tally: Tally) -> int | None:
    count = _number(path, line, row, "AcceleratorCount")
    if count is None:
        raise _fail(path, line, "AcceleratorCount", "empty for an accelerator", "")
    if count != int(count) or count < 1:
        tally.skip("fractional GPU share (e.g. AWS g6f, Azure NV*ads_A10_v5)")
        return None
    return int(count)


def _price(
    path: Path, line: int, row: Mapping[str, str], *, gpu: str, count: int, instance_type: str
) -> Price:
    vcpus = _number(path, line, row, "vCPUs")
    return Price(
        instance_type=instance_type,
        region=(row.get("Region") or "").strip(),
        gpu=gpu,
        gpu_count=count,
        usd_per_hour=_number(path, line, row, "Price"),
        spot_usd_per_hour=_number(path, line, row, "SpotPrice"),
        vcpus=int(vcpus) if vcpus is not None else None,
        memory_gib=_number(path, line, row, "MemoryGiB"),
    )


def parse_vms_csv(path: Path, *, cloud: str, tally: Tally | None = None) -> list[Price]:
    """Priced GPU rows of one SkyPilot ``<cloud>/vms.csv`` (not GCP: see :func:`parse_gcp`).

    Raises:
        CatalogError: Missing column, malformed CSV or a bad number: one line naming the file,
            the line and the column.
    """
    provider = CLOUD_PROVIDERS[cloud][0]
    tally = tally or Tally()
    prices: list[Price] = []
    for line, row in _read_vms_csv(path):
        name = (row.get("AcceleratorName") or "").strip()
        instance_type = (row.get("InstanceType") or "").strip()
        if not name or name.lower() == "nan":
            continue  # a CPU-only machine
        if not instance_type:
            raise _fail(path, line, "InstanceType", "empty for a GPU row", "")
        if not (row.get("Region") or "").strip():
            raise _fail(path, line, "Region", "empty", "")
        gpu = gpu_for_sky_accelerator(name, provider=provider, instance_type=instance_type)
        if gpu is None:
            tally.unknown_accelerator(cloud, name)
            continue
        count = _count(path, line, row, tally)
        if count is None:
            continue
        prices.append(_price(path, line, row, gpu=gpu, count=count, instance_type=instance_type))
    return prices


def parse_gcp(path: Path, *, tally: Tally | None = None) -> list[Price]:
    """GCP GPU VMs from ``gcp/vms.csv``: host row + GPU row of the same zone.

    GPUs that attach to any N1 host (T4, V100, P100, ...) are skipped and counted: their price
    depends on the host size SkyPilot picks for the job.
    """
    tally = tally or Tally()
    rows = _read_vms_csv(path)
    hosts: dict[tuple[str, str], tuple[int, dict[str, str]]] = {}
    for line, row in rows:
        if (row.get("InstanceType") or "").strip() and not (row.get("AcceleratorName") or ""):
            zone = (row.get("AvailabilityZone") or row.get("Region") or "").strip()
            hosts[(row["InstanceType"].strip(), zone)] = (line, row)
    prices: list[Price] = []
    for line, row in rows:
        name = (row.get("AcceleratorName") or "").strip()
        if not name or (row.get("InstanceType") or "").strip():
            continue
        if name.lower().startswith("tpu"):
            tally.skip("TPU (not a GPU)")
            continue
        gpu = gpu_for_sky_accelerator(name, provider=Provider.GCP)
        if gpu is None:
            tally.unknown_accelerator("gcp", name)
            continue
        count = _count(path, line, row, tally)
        if count is None:
            continue
        host_type = GCP_HOST_TYPES.get(name, {}).get(count)
        if host_type is None:
            tally.skip("GCP GPU for N1 hosts (price depends on the host size)")
            continue
        zone = (row.get("AvailabilityZone") or row.get("Region") or "").strip()
        host = hosts.get((host_type, zone))
        if host is None:
            tally.skip("GCP GPU without its host VM in that zone")
            continue
        gpu_row = _price(path, line, row, gpu=gpu, count=count, instance_type=host_type)
        host_row = _price(path, host[0], host[1], gpu=gpu, count=count, instance_type=host_type)
        prices.append(
            Price(
                instance_type=host_type,
                region=gpu_row.region,
                gpu=gpu,
                gpu_count=count,
                usd_per_hour=_sum(host_row.usd_per_hour, gpu_row.usd_per_hour),
                spot_usd_per_hour=_sum(host_row.spot_usd_per_hour, gpu_row.spot_usd_per_hour),
                vcpus=host_row.vcpus,
                memory_gib=host_row.memory_gib,
            )
        )
    return prices


def _sum(host: float | None, gpu: float | None) -> float | None:
    return None if host is None or gpu is None else round(host + gpu, 5)
