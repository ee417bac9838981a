"""Catalog loading and name resolution: the one place that reads the catalog's CSV files.

Shipped snapshot: ``catalog/data/*.csv`` (package data). Refreshed prices: the user's cache
(``$FTPLAN_CACHE_DIR`` or ``~/.cache/ftplan``), which wins for offers when present. Stdlib ``csv``
only: this runs in every ``ftplan recommend`` and must stay fast (a few ms) and free of torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from catalog._hf_config import model_from_hf_config
from catalog._io import csv_rows, expand_user, read_text_limited
from catalog._types import GPU, CatalogError, Interconnect, ModelSpec, Offer, Provider
from catalog.errors import CONTROL_CHARS_OR_NEWLINES, DataError, ErrorKind

DATA_DIR = Path(__file__).resolve().parent / "data"
OFFERS_FILENAME = "offers.csv"
SERVICES_FILENAME = "services.csv"

#: Offer prices older than this many days trigger a warning in ``ftplan recommend``. Cloud GPU
#: list prices moved by up to 45% in one step in June 2025 (AWS P5), so a quarter is the most we
#: let pass silently.
PRICE_AGE_WARNING_DAYS = 90

MODEL_COLUMNS = (
    "name",
    "hf_id",
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "max_position_embeddings",
    "param_count",
    "num_experts",
    "experts_per_token",
    "aliases",
    "source",
    "as_of",
)
GPU_COLUMNS = (
    "name",
    "aliases",
    "arch",
    "memory_gib",
    "usable_memory_gib",
    "memory_bandwidth_tbps",
    "bf16_tflops",
    "fp16_tflops",
    "achievable_matmul_tflops",
    "achievable_bandwidth_tbps",
    "bf16_supported",
    "intra_node_interconnect",
    "intra_node_gbps",
    "source",
    "achievable_source",
    "as_of",
    "host_cpu_arch",
)
OFFER_COLUMNS = (
    "provider",
    "service",
    "instance_type",
    "region",
    "gpu",
    "gpu_count",
    "usd_per_hour",
    "spot",
    "as_of",
    "source",
    "inter_node_gbps",
    "max_nodes",
    "stale",
    "vcpus",
    "memory_gib",
    "note",
)
SERVICE_COLUMNS = (
    "provider",
    "service",
    "billing_increment_s",
    "min_billing_s",
    "billing_upfront",
    "billing_source",
    "provision_minutes",
    "image_pull_minutes",
    "startup_source",
    "as_of",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceTerms:
    """How a provider's service bills and how long it takes to start, each with its source.

    ``provision_minutes`` is instance start plus container image pull (the catalog's two
    columns), the part of the start-up that does not depend on the model.
    """

    provider: str
    service: str
    billing_increment_s: float
    min_billing_hours: float
    billing_upfront: bool
    billing_source: str
    provision_minutes: float
    startup_source: str
    as_of: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogInfo:
    """Where the offers come from and how old their prices are.

    ``age_days`` is the age in days of the oldest price, relative to the ``today`` it was built
    for. ``refreshed`` is True when the offers come from the user's cache, not the shipped data.
    """

    offers_path: str
    refreshed: bool
    offer_count: int
    oldest_price_as_of: str
    newest_price_as_of: str
    stale_offer_count: int
    age_days: int
    old_providers: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# CSV parsing with errors that name the file, the row and the column.

_MAX_CATALOG_BYTES = 256 * 1024 * 1024  # SkyPilot's full catalog is ~30 MB
_MAX_CATALOG_INTEGER = 10**15
_MAX_CATALOG_NUMBER = 1e12


class _Row:
    """One CSV row; typed getters raise CatalogError naming file, row number and column."""

    def __init__(self, path: str, line: int, values: dict[str, str]) -> None:
        self.path, self.line, self.values = path, line, values

    def fail(self, column: str, why: str) -> CatalogError:
        value = self.values.get(column, "")
        return CatalogError(
            f"catalog file {self.path}, row {self.line}, column {column!r}: {why} "
            f"(got {value!r}). Fix or delete that row; for a refreshed file, run "
            f"'ftplan catalog refresh' again or delete the file to use the shipped catalog."
        )

    def text(self, column: str, *, required: bool = True) -> str:
        value = (self.values.get(column) or "").strip()
        if required and not value:
            raise self.fail(column, "value is empty")
        if CONTROL_CHARS_OR_NEWLINES.search(value):  # echoed to terminals: refused
            raise self.fail(column, "holds control characters")
        return value

    def integer(self, column: str) -> int:
        text = self.text(column)
        if len(text) > 20:
            raise self.fail(column, "not an integer between 0 and 10**15")
        try:
            value = int(text)
        except ValueError:
            raise self.fail(column, "not an integer") from None
        if not 0 <= value <= _MAX_CATALOG_INTEGER:
            raise self.fail(column, "not an integer between 0 and 10**15")
        return value

    def number(self, column: str) -> float:
        try:
            value = float(self.text(column))
        except ValueError:
            raise self.fail(column, "not a number") from None
        # Every catalog figure (price, GiB, TB/s, TFLOP/s, Gb/s) is finite and non-negative;
        # NaN would slip through every "< 0" check downstream.
        if not (math.isfinite(value) and 0 <= value <= _MAX_CATALOG_NUMBER):
            raise self.fail(column, "not a finite number between 0 and 1e12")
        return value

    def optional_number(self, column: str) -> float | None:
        return self.number(column) if self.text(column, required=False) else None

    def boolean(self, column: str) -> bool:
        value = self.text(column).lower()
        if value not in ("true", "false"):
            raise self.fail(column, "expected true or false")
        return value == "true"

    def iso_date(self, column: str) -> str:
        value = self.text(column)
        try:
            date.fromisoformat(value)
        except ValueError:
            raise self.fail(column, "expected an ISO date YYYY-MM-DD") from None
        return value


def _rows(path: Path, columns: tuple[str, ...], *, text: str | None = None) -> list[_Row]:
    """Read a catalog CSV (or ``text`` attributed to ``path``), checking the header first."""
    try:
        content = (
            read_text_limited(path, what="catalog file", max_bytes=_MAX_CATALOG_BYTES)
            if text is None
            else text
        )
    except OSError as exc:
        raise CatalogError(f"cannot read catalog file {path}: {exc.strerror}") from None
    except DataError as exc:
        raise CatalogError(
            f"{exc}. Restore the file, or delete it if it is a cache.", kind=ErrorKind.DATA
        ) from None
    try:
        header, values = csv_rows(content, where=f"catalog file {path}")
    except DataError as exc:
        raise CatalogError(
            f"{exc}. Restore the file or delete it if it is a cache.", kind=ErrorKind.DATA
        ) from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise CatalogError(
            f"catalog file {path} lacks column(s) {', '.join(missing)}; its header is "
            f"{','.join(header) or '(empty)'}. Restore the file or delete it if it is a cache."
        )
    return [_Row(str(path), line, row) for line, row in values]


def _norm(name: str) -> str:
    """Lookup key: lower case without spaces, hyphens, underscores ('H100 SXM' = 'h100-sxm')."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def _build_index(path: Path, entries: Iterable[tuple[str, tuple[str, ...]]]) -> dict[str, str]:
    index: dict[str, str] = {}
    for canonical, names in entries:
        for name in (canonical, *names):
            key = _norm(name)
            if index.get(key, canonical) != canonical:
                raise CatalogError(
                    f"catalog file {path}: name {name!r} is claimed by both {index[key]!r} and "
                    f"{canonical!r}; make the aliases unique."
                )
            index[key] = canonical
    return index


def _unknown(kind: str, name: str, names: Iterable[str], index: dict[str, str], hint: str) -> str:
    """'unknown <kind> ...' message with close matches found by difflib."""
    import difflib  # deferred: only needed on the error path

    candidates = {n.lower(): index[_norm(n)] for n in names}
    close = difflib.get_close_matches(name.strip().lower(), list(candidates), n=6, cutoff=0.6)
    suggestions = list(dict.fromkeys(candidates[c] for c in close))[:3]
    did_you_mean = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    return f"unknown {kind} {name!r}.{did_you_mean} {hint}"


# --------------------------------------------------------------------------------------------
# Models


def _model_from_row(row: _Row) -> ModelSpec:
    try:
        return ModelSpec(
            name=row.text("name"),
            hf_id=row.text("hf_id"),
            model_type=row.text("model_type"),
            num_layers=row.integer("num_hidden_layers"),
            hidden_size=row.integer("hidden_size"),
            intermediate_size=row.integer("intermediate_size"),
            num_heads=row.integer("num_attention_heads"),
            num_kv_heads=row.integer("num_key_value_heads"),
            head_dim=row.integer("head_dim"),
            vocab_size=row.integer("vocab_size"),
            tied_embeddings=row.boolean("tie_word_embeddings"),
            param_count=row.integer("param_count"),
            max_seq_len=row.integer("max_position_embeddings"),
            num_experts=row.integer("num_experts"),
            experts_per_token=row.integer("experts_per_token"),
            source=row.text("source"),
            as_of=row.iso_date("as_of"),
        )
    except ValueError as exc:
        if isinstance(exc, CatalogError):
            raise
        raise CatalogError(f"catalog file {row.path}, row {row.line}: {exc}") from None


@lru_cache(maxsize=4)
def _models(path: Path = DATA_DIR / "models.csv") -> tuple[dict[str, ModelSpec], dict[str, str]]:
    specs: dict[str, ModelSpec] = {}
    names: list[tuple[str, tuple[str, ...]]] = []
    for row in _rows(path, MODEL_COLUMNS):
        spec = _model_from_row(row)
        aliases = tuple(a for a in row.text("aliases", required=False).split(";") if a)
        hf_tail = spec.hf_id.rsplit("/", 1)[-1]
        names.append((spec.name, (*aliases, spec.hf_id, hf_tail)))
        specs[spec.name] = spec
    return specs, _build_index(path, names)


def list_models() -> tuple[ModelSpec, ...]:
    """Every model in the shipped catalog, in file order (grouped by family)."""
    return tuple(_models()[0].values())


def model_aliases(name: str) -> tuple[str, ...]:
    """Other names (aliases, Hugging Face id) that resolve to the catalog model ``name``."""
    specs, index = _models()
    canonical = get_model(name).name
    return tuple(sorted(k for k, v in index.items() if v == canonical and k != _norm(canonical)))


def get_model(name: str) -> ModelSpec:
    """Resolve a model by short name, alias or Hugging Face id (case-insensitive), or by path.

    Args:
        name: ``llama2-7b``, ``meta-llama/Llama-2-7b-hf``, or a path to a Hugging Face
            ``config.json`` or to a folder holding one.

    Returns:
        The model's architecture facts. For a path, ``param_count`` is computed from the config
        (see :func:`model_from_hf_config`) and ``source`` is the path.

    Raises:
        CatalogError: Unknown name (with close matches), or an unreadable config file.
    """
    specs, index = _models()
    canonical = index.get(_norm(name))
    if canonical is not None:
        return specs[canonical]
    path = expand_user(name)
    if path.is_dir() or path.suffix == ".json" or path.exists():
        return model_from_hf_config(path)
    raise CatalogError(
        _unknown(
            "model",
            name,
            _index_names(specs, index),
            index,
            "See 'ftplan catalog models', or pass a path to a Hugging Face config.json.",
        )
    )


def _index_names(specs: dict[str, ModelSpec], index: dict[str, str]) -> list[str]:
    """Short names first, then every other accepted spelling (for close-match suggestions)."""
    return [*specs, *index]


# --------------------------------------------------------------------------------------------
# GPUs


@lru_cache(maxsize=4)
def _gpus(path: Path = DATA_DIR / "gpus.csv") -> tuple[dict[str, GPU], dict[str, str]]:
    gpus: dict[str, GPU] = {}
    for row in _rows(path, GPU_COLUMNS):
        try:
            interconnect = Interconnect(row.text("intra_node_interconnect").lower())
        except ValueError:
            raise row.fail("intra_node_interconnect", "expected nvlink, pcie or none") from None
        try:
            gpu = GPU(
                name=row.text("name"),
                aliases=tuple(a for a in row.text("aliases", required=False).split(";") if a),
                arch=row.text("arch"),
                memory_gib=row.number("memory_gib"),
                usable_memory_gib=row.number("usable_memory_gib"),
                memory_bandwidth_tbps=row.number("memory_bandwidth_tbps"),
                bf16_tflops=row.optional_number("bf16_tflops"),
                fp16_tflops=row.number("fp16_tflops"),
                bf16_supported=row.boolean("bf16_supported"),
                intra_node_interconnect=interconnect,
                intra_node_gbps=row.number("intra_node_gbps"),
                source=row.text("source"),
                as_of=row.iso_date("as_of"),
                host_cpu_arch=row.text("host_cpu_arch"),
                achievable_matmul_tflops=row.optional_number("achievable_matmul_tflops"),
                achievable_bandwidth_tbps=row.optional_number("achievable_bandwidth_tbps"),
                achievable_source=row.text("achievable_source", required=False),
            )
        except ValueError as exc:
            if isinstance(exc, CatalogError):
                raise
            raise CatalogError(f"catalog file {path}, row {row.line}: {exc}") from None
        gpus[gpu.name] = gpu
    return gpus, _build_index(path, ((g.name, g.aliases) for g in gpus.values()))


def list_gpus() -> tuple[GPU, ...]:
    """Every GPU in the catalog, in file order (newest data-centre parts first)."""
    return tuple(_gpus()[0].values())


def get_gpu(name: str) -> GPU:
    """Resolve a GPU by canonical name or alias, ignoring case, spaces, hyphens and underscores.

    Raises:
        CatalogError: Unknown name, with close matches.
    """
    gpus, index = _gpus()
    canonical = index.get(_norm(name))
    if canonical is None:
        aliases = [a for g in gpus.values() for a in g.aliases]
        raise CatalogError(
            _unknown("GPU", name, [*gpus, *aliases], index, "See 'ftplan catalog gpus'.")
        )
    return gpus[canonical]


# --------------------------------------------------------------------------------------------
# Offers


def cache_dir() -> Path:
    """The user's ftplan cache: ``$FTPLAN_CACHE_DIR`` or ``~/.cache/ftplan``."""
    configured = os.environ.get("FTPLAN_CACHE_DIR")
    return expand_user(configured) if configured else Path.home() / ".cache" / "ftplan"


def user_offers_path() -> Path:
    """Where ``ftplan catalog refresh`` writes offers (it may not exist yet)."""
    return cache_dir() / OFFERS_FILENAME


def shipped_offers_path() -> Path:
    """The offers snapshot shipped with ftplan."""
    return DATA_DIR / OFFERS_FILENAME


def active_offers_path() -> Path:
    """The refreshed offers in the user's cache when present, else the shipped snapshot."""
    user = user_offers_path()
    return user if user.is_file() else shipped_offers_path()


def parse_provider(name: str) -> Provider:
    """Parse a provider name (``aws``, ``gcp``, ``azure``, ``lambda``, ``runpod``, ``local``).

    Raises:
        CatalogError: Unknown provider, listing the known ones.
    """
    try:
        return Provider(name.strip().lower())
    except ValueError:
        import difflib  # deferred: only needed on the error path

        known = [p.value for p in Provider]
        close = difflib.get_close_matches(name.strip().lower(), known, n=2, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise CatalogError(
            f"unknown provider {name!r}.{hint} Known providers: {', '.join(known)}."
        ) from None


@lru_cache(maxsize=1)
def _service_terms() -> dict[tuple[str, str], ServiceTerms]:
    path = DATA_DIR / SERVICES_FILENAME
    out: dict[tuple[str, str], ServiceTerms] = {}
    for row in _rows(path, SERVICE_COLUMNS):
        key = (row.text("provider").lower(), row.text("service"))
        out[key] = ServiceTerms(
            provider=key[0],
            service=key[1],
            billing_increment_s=row.number("billing_increment_s"),
            min_billing_hours=row.number("min_billing_s") / 3600,
            billing_upfront=row.boolean("billing_upfront"),
            billing_source=row.text("billing_source"),
            provision_minutes=row.number("provision_minutes") + row.number("image_pull_minutes"),
            startup_source=row.text("startup_source"),
            as_of=row.iso_date("as_of"),
        )
    return out


def service_terms(provider: Provider | str, service: str) -> ServiceTerms:
    """Billing unit and start-up time of ``provider``'s ``service`` (e.g. ``aws``, ``ec2``).

    Falls back to the provider's ``*`` row, so offers of a service the table does not name
    (e.g. a refreshed catalog's) still get their provider's terms.

    Raises:
        CatalogError: The provider has no row in ``catalog/data/services.csv``.
    """
    name = provider.value if isinstance(provider, Provider) else provider.lower()
    terms = _service_terms()
    found = terms.get((name, service)) or terms.get((name, "*"))
    if found is None:
        raise CatalogError(
            f"no billing terms for provider {name!r} (service {service!r}) in "
            f"{DATA_DIR / SERVICES_FILENAME}; add a row for it"
        )
    return found


def with_service_terms(offer: Offer) -> Offer:
    """``offer`` with the billing unit and start-up time of its provider and service."""
    return dataclasses.replace(
        offer, **_billing_fields(service_terms(offer.provider, offer.service))
    )


def _billing_fields(terms: ServiceTerms) -> dict[str, Any]:
    """The :class:`Offer` fields that come from its provider's and service's terms."""
    return {
        "billing_increment_s": terms.billing_increment_s,
        "min_billing_hours": terms.min_billing_hours,
        "billing_upfront": terms.billing_upfront,
        "billing_source": terms.billing_source,
        "provision_minutes": terms.provision_minutes,
        "startup_source": terms.startup_source,
    }


def _offer_from_row(row: _Row) -> Offer:
    try:
        provider = Provider(row.text("provider").lower())
    except ValueError:
        raise row.fail("provider", "unknown provider") from None
    try:
        gpu = get_gpu(row.text("gpu")).name
    except CatalogError:
        raise row.fail("gpu", "not a GPU in the catalog (see 'ftplan catalog gpus')") from None
    vcpus = row.text("vcpus", required=False)
    memory = row.text("memory_gib", required=False)
    try:
        terms = service_terms(provider, row.text("service"))
    except CatalogError:
        raise row.fail("provider", "no billing terms for this provider") from None
    try:
        return Offer(
            provider=provider,
            service=row.text("service"),
            instance_type=row.text("instance_type"),
            region=row.text("region"),
            gpu=gpu,
            gpu_count=row.integer("gpu_count"),
            usd_per_hour=row.number("usd_per_hour"),
            spot=row.boolean("spot"),
            as_of=row.iso_date("as_of"),
            source=row.text("source"),
            inter_node_gbps=row.number("inter_node_gbps"),
            max_nodes=row.integer("max_nodes"),
            stale=row.boolean("stale"),
            vcpus=row.integer("vcpus") if vcpus else None,
            memory_gib=row.number("memory_gib") if memory else None,
            **_billing_fields(terms),
        )
    except ValueError as exc:
        if isinstance(exc, CatalogError):
            raise
        raise CatalogError(f"catalog file {row.path}, row {row.line}: {exc}") from None


def parse_offers_csv(text: str, *, path: Path) -> tuple[Offer, ...]:
    """Parse offers CSV ``text``; errors are reported against ``path``.

    Raises:
        CatalogError: Missing column, bad value, unknown GPU or provider (file, row, column).
    """
    return tuple(_offer_from_row(row) for row in _rows(path, OFFER_COLUMNS, text=text))


@lru_cache(maxsize=8)
def _offers_at(path: Path, mtime_ns: int) -> tuple[Offer, ...]:
    del mtime_ns  # part of the cache key only: a refreshed file is re-read
    return tuple(_offer_from_row(row) for row in _rows(path, OFFER_COLUMNS))


def _all_offers() -> tuple[Path, tuple[Offer, ...]]:
    path = active_offers_path()
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError as exc:
        raise CatalogError(f"cannot read catalog file {path}: {exc.strerror}") from None
    return path, _offers_at(path, mtime_ns)


def list_offers(
    *,
    providers: Iterable[Provider | str] | None = None,
    gpus: Iterable[GPU | str] | None = None,
    include_spot: bool = True,
) -> tuple[Offer, ...]:
    """Priced offers, from the user's refreshed cache when present, else the shipped snapshot.

    Args:
        providers: Keep only these providers (enum or name); None keeps all.
        gpus: Keep only these GPUs (GPU or any name/alias); None keeps all.
        include_spot: False drops spot offers.

    Returns:
        Offers in file order. ``usd_per_hour`` is per instance (all its GPUs).

    Raises:
        CatalogError: Unknown provider or GPU name, or a broken offers file.
    """
    offers = _all_offers()[1]
    if providers is not None:
        wanted = {p if isinstance(p, Provider) else parse_provider(p) for p in providers}
        offers = tuple(o for o in offers if o.provider in wanted)
    if gpus is not None:
        names = {g.name if isinstance(g, GPU) else get_gpu(g).name for g in gpus}
        offers = tuple(o for o in offers if o.gpu in names)
    if not include_spot:
        offers = tuple(o for o in offers if not o.spot)
    return offers


def select_offers(
    *, providers: Sequence[str] = (), gpus: Sequence[str] = (), include_spot: bool = True
) -> tuple[Offer, ...]:
    """The offers ``ftplan catalog offers`` lists: those of ``providers`` and ``gpus`` (names or
    aliases; empty keeps all), cheapest per GPU-hour first (ties: by :attr:`Offer.key`).

    Raises:
        CatalogError: Unknown provider or GPU name, or a broken offers file.
    """
    wanted = [parse_provider(p) for p in providers] or None
    offers = list_offers(providers=wanted, gpus=list(gpus) or None, include_spot=include_spot)
    return tuple(sorted(offers, key=lambda o: (o.usd_per_hour / o.gpu_count, o.key)))


def cheapest_per_instance(offers: Iterable[Offer]) -> tuple[Offer, ...]:
    """One offer per provider, service, instance type and pricing (spot or on-demand): the
    cheapest region's (ties: the first region by name). Pure.

    The same instance in a dearer region can never win a plan (its GPUs, network and node
    limit are the same), so dropping it keeps the answer and spares the search: SkyPilot's
    catalog lists most instances in 10 to 40 regions.
    """
    best: dict[tuple[str, str, str, bool], Offer] = {}
    for offer in offers:
        key = (offer.provider.value, offer.service, offer.instance_type, offer.spot)
        kept = best.get(key)
        if kept is None or (offer.usd_per_hour, offer.region) < (kept.usd_per_hour, kept.region):
            best[key] = offer
    return tuple(best.values())


def plannable_offers(
    *,
    providers: Iterable[Provider] | None = None,
    gpus: Iterable[GPU] = (),
    gpu_count: int | None = None,
    services: Iterable[str] = (),
    include_spot: bool = False,
) -> tuple[Offer, ...]:
    """The cloud offers a plan chooses among: the cheapest region of each instance
    (:func:`cheapest_per_instance`), of these providers (None: all clouds; ``local`` is not a
    cloud and is skipped), GPUs (empty: all), GPUs per instance and services (e.g.
    ``sagemaker`` to price what SageMaker would run; empty: all).

    Raises:
        CatalogError: An unknown GPU, or a service none of these offers has (with close matches).
    """
    cloud = None if providers is None else [p for p in providers if p is not Provider.LOCAL]
    if cloud is not None and not cloud:
        return ()
    gpu_list = list(gpus)
    listed = list_offers(providers=cloud, gpus=gpu_list or None, include_spot=include_spot)
    offers = list(cheapest_per_instance(listed))
    if gpu_count is not None:
        offers = [x for x in offers if x.gpu_count == gpu_count]
    wanted = {s.strip().lower() for s in services}
    if not wanted:
        return tuple(offers)
    known = sorted({x.service for x in offers})
    for name in sorted(wanted - set(known)):
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise CatalogError(
            f"unknown service {name!r} for these offers.{hint} Known: {', '.join(known)}.",
            kind=ErrorKind.USER_INPUT,
        )
    return tuple(x for x in offers if x.service in wanted)


def local_offer(
    *, gpu: GPU, gpu_count: int, usd_per_hour: float = 0.0, as_of: str | None = None
) -> Offer:
    """An offer for the user's own machine with ``gpu_count`` × ``gpu``.

    Args:
        gpu: The local GPU model.
        gpu_count: GPUs in the machine.
        usd_per_hour: What an hour of the machine costs the user (power, amortisation); 0 if free.
        as_of: Date of that price; defaults to today.
    """
    slug = _norm(gpu.name)
    offer = Offer(
        provider=Provider.LOCAL,
        service="local",
        instance_type=f"local-{gpu_count}x{slug}",
        region="local",
        gpu=gpu.name,
        gpu_count=gpu_count,
        usd_per_hour=usd_per_hour,
        spot=False,
        as_of=as_of or date.today().isoformat(),
        source="the user's own machine (price given by the user)",
        max_nodes=1,
    )
    return with_service_terms(offer)


def catalog_info(
    *, today: date | None = None, providers: Iterable[Provider | str] | None = None
) -> CatalogInfo:
    """Summarise the active offers file: where it is and how old its prices are.

    Args:
        today: The date ages are measured against; defaults to today.
        providers: Only these providers' offers count (e.g. the ones a plan priced); None: all.
    """
    path, offers = _all_offers()
    if providers is not None:
        wanted = {p if isinstance(p, Provider) else parse_provider(p) for p in providers}
        offers = tuple(o for o in offers if o.provider in wanted)
    dates = sorted(o.as_of for o in offers) or [date.today().isoformat()]
    today = today or date.today()
    cutoff = date.fromordinal(today.toordinal() - PRICE_AGE_WARNING_DAYS).isoformat()
    old = sorted({o.provider.value for o in offers if o.as_of < cutoff})
    return CatalogInfo(
        offers_path=str(path),
        refreshed=path != shipped_offers_path(),
        offer_count=len(offers),
        oldest_price_as_of=dates[0],
        newest_price_as_of=dates[-1],
        stale_offer_count=sum(o.stale for o in offers),
        age_days=(today - date.fromisoformat(dates[0])).days,
        old_providers=tuple(old),
    )


def catalog_age_warning(info: CatalogInfo, today: date) -> str | None:
    """A one-line warning when the oldest price is more than 90 days old, else None."""
    age_days = (today - date.fromisoformat(info.oldest_price_as_of)).days
    if age_days <= PRICE_AGE_WARNING_DAYS and not info.stale_offer_count:
        return None
    stale = f"; {info.stale_offer_count} offers are marked stale" if info.stale_offer_count else ""
    if age_days <= PRICE_AGE_WARNING_DAYS:
        return (
            f"{info.stale_offer_count} offers are marked stale (prices known to have "
            f"changed); run 'ftplan catalog refresh --from skypilot'"
        )
    which = f" ({', '.join(info.old_providers)})" if info.old_providers else ""
    return (
        f"prices{which} are {age_days} days old (oldest {info.oldest_price_as_of}){stale}; run "
        f"'ftplan catalog refresh --from skypilot'"
    )
