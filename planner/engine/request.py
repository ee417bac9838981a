"""What the user asked ``ftplan recommend`` for, resolved against the catalog into a
:class:`~planner.engine.space.RecommendRequest`: the data's size and lengths, the budget, the
offers (the clouds' and the user's own machine), the warnings the catalog raises and the model's
identity. The CLI only parses flags into :class:`RecommendOptions`; reading files goes through
the ``count`` function it passes (with or without a progress bar).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import catalog
from catalog import GIB, GPU, InputError, ModelSpec, Offer, Provider
from planner._types import DEFAULT_EVALUATIONS, Budget, QualityPolicy, Task, TokensSource
from planner.engine.cost import SpotAssumptions
from planner.engine.dataset import DatasetStats, count_dataset
from planner.engine.space import (
    DEFAULT_DATASET_TOKENS,
    DEFAULT_EPOCHS,
    DEFAULT_SEQ_LEN,
    RecommendRequest,
    SearchSpace,
)
from profiler import Method

CountFn = Callable[..., DatasetStats]
"""``count(path, *, what, size_flag) -> DatasetStats`` (:func:`count_dataset` or a wrapper)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecommendOptions:
    """``ftplan recommend``'s flags as typed values, named as the flags are (``budget`` USD,
    ``max_hours`` h, ``usd_per_hour`` and ``host_ram_gib`` of the user's own machine)."""

    model: str
    budget: float
    tokens: int | None = None
    dataset: Path | None = None
    eval_dataset: Path | None = None
    eval_tokens: int | None = None
    evaluations: int | None = None
    epochs: float | None = None
    seq_len: int | None = None
    gpu: tuple[str, ...] = ()
    gpu_count: int | None = None
    service: tuple[str, ...] = ()
    provider: tuple[str, ...] = ()
    usd_per_hour: float | None = None
    host_ram_gib: float | None = None
    max_hours: float | None = None
    spot: bool = False
    spot_interruptions_per_hour: float = 0.1
    spot_restart_minutes: float = 10.0
    task: str = Task.SFT.value
    quality: str = QualityPolicy.BALANCED.value
    method: str | None = None
    chunked_loss: bool = True
    trials: int | None = None
    seed: int = 0
    storage: str | None = None


def build_request(
    o: RecommendOptions, *, count: CountFn = count_dataset, today: date | None = None
) -> RecommendRequest:
    """Resolve ``o`` against the catalog.

    Raises:
        InputError, CatalogError: Bad input (both sizes given, an unknown name, with close
            matches); DataError: an unreadable dataset.
    """
    if o.tokens is not None and o.dataset is not None:
        raise InputError("give either --tokens or --dataset, not both")
    eval_tokens, evaluations = eval_set(o, count)
    spec = catalog.get_model(o.model)
    stats = count(o.dataset) if o.tokens is None and o.dataset is not None else None
    budget = _budget(o, stats, eval_tokens=eval_tokens, evaluations=evaluations)
    seq_len = _seq_len(o, spec, stats)
    gpus = [catalog.get_gpu(g) for g in o.gpu]
    providers = [catalog.parse_provider(p) for p in o.provider] or None
    offers = _offers(o, providers, gpus)
    info = catalog.catalog_info(providers={x.provider for x in offers})
    warnings = tuple(w for w in [catalog.catalog_age_warning(info, today or date.today())] if w)
    if seq_len > spec.max_seq_len:
        warnings += (
            f"--seq-len {seq_len} exceeds {spec.name}'s context of {spec.max_seq_len} tokens",
        )
    gpu_by_name = {g.name: g for g in catalog.list_gpus()}
    config_path, config_digest = _config_identity(spec)
    return RecommendRequest(
        spec=spec,
        budget=budget,
        space=SearchSpace(
            methods=(Method(o.method),) if o.method else SearchSpace().methods,
            chunked_loss=(False, True) if o.chunked_loss else (False,),
        ),
        offers=offers,
        seq_len=seq_len,
        seq_len_given=o.seq_len is not None,
        gpus={x.gpu: gpu_by_name[x.gpu] for x in offers},
        spot=SpotAssumptions(
            interruptions_per_hour=o.spot_interruptions_per_hour,
            restart_minutes=o.spot_restart_minutes,
        ),
        spot_allowed=o.spot,
        seed=o.seed,
        trials=o.trials,
        storage=o.storage,
        catalog_as_of=f"{info.oldest_price_as_of}..{info.newest_price_as_of}",
        # A plan travels (reports are forwarded, plans launched elsewhere): name the catalog,
        # not this machine's absolute path.
        catalog_source=(
            f"refreshed catalog in the user cache ({Path(info.offers_path).name})"
            if info.refreshed
            else "ftplan's shipped catalog (catalog/data/offers.csv)"
        ),
        warnings=warnings,
        price_references=catalog.list_offers(),
        ftplan_version=ftplan_version(),
        model_config_path=config_path,
        model_config_sha256=config_digest,
    )


def _budget(
    o: RecommendOptions, stats: DatasetStats | None, *, eval_tokens: int, evaluations: int
) -> Budget:
    """The budget: given, counted or assumed tokens, the sample lengths, the eval set."""
    tokens, source, longest = DEFAULT_DATASET_TOKENS, TokensSource.ASSUMED, None
    if o.tokens is not None:
        tokens, source = o.tokens, TokensSource.GIVEN
    if stats is not None:
        tokens, source, longest = stats.tokens, TokensSource.COUNTED, stats.longest_sample_tokens
    return Budget(
        max_usd=o.budget,
        dataset_tokens=tokens,
        epochs=o.epochs if o.epochs is not None else DEFAULT_EPOCHS,
        tokens_source=source,
        max_hours=o.max_hours,
        task=Task(o.task),
        # The policy holds whatever is pinned: --method narrows the search to one method, whose
        # ranks, targets and precisions are still chosen under --quality.
        quality=QualityPolicy(o.quality),
        longest_sample_tokens=longest,
        p50_sample_tokens=None if stats is None else stats.p50_sample_tokens,
        p95_sample_tokens=None if stats is None else stats.p95_sample_tokens,
        eval_tokens=eval_tokens,
        evaluations=evaluations,
    )


def _seq_len(o: RecommendOptions, spec: ModelSpec, stats: DatasetStats | None) -> int:
    seq_len = o.seq_len or DEFAULT_SEQ_LEN
    if o.seq_len is None and stats is not None and stats.p95_sample_tokens > seq_len:
        # ftplan's runner packs samples into seq_len blocks, so memory is sized for the block,
        # not the longest sample: blocks of the 95th-percentile length (rounded up to 256, within
        # the model's context) keep 95% of samples whole without sizing for one outlier.
        seq_len = min(spec.max_seq_len, math.ceil(stats.p95_sample_tokens / 256) * 256)
    return seq_len


def eval_set(o: RecommendOptions, count: CountFn = count_dataset) -> tuple[int, int]:
    """(tokens of one eval pass, eval passes over the run) from ``eval_dataset`` /
    ``eval_tokens`` and ``evaluations``; (0, 0) without an eval set.

    Raises:
        InputError: Both eval sizes given, or ``evaluations`` without an eval set.
    """
    if o.eval_tokens is not None and o.eval_dataset is not None:
        raise InputError("give either --eval-tokens or --eval-dataset, not both")
    tokens = o.eval_tokens
    if o.eval_dataset is not None:
        tokens = count(o.eval_dataset, what="eval dataset", size_flag="--eval-tokens").tokens
    if tokens is None:
        if o.evaluations is not None:
            raise InputError(
                "--evaluations needs an eval set: add --eval-dataset FILE.jsonl or --eval-tokens N"
            )
        return 0, 0
    return tokens, o.evaluations if o.evaluations is not None else DEFAULT_EVALUATIONS


def _offers(
    o: RecommendOptions, providers: list[Provider] | None, gpus: list[GPU]
) -> tuple[Offer, ...]:
    """The clouds' offers (:func:`catalog.plannable_offers`) and, with ``--provider local``,
    the user's own machine."""
    offers = list(
        catalog.plannable_offers(
            providers=providers,
            gpus=gpus,
            gpu_count=o.gpu_count,
            services=o.service,
            include_spot=o.spot,
        )
    )
    if providers is not None and Provider.LOCAL in providers:
        offers.append(_local_offer(o, gpus))
    elif o.usd_per_hour is not None or o.host_ram_gib is not None:
        raise InputError(
            "--usd-per-hour and --host-ram-gib describe your own machine: use them with "
            "--provider local"
        )
    return tuple(offers)


def _local_offer(o: RecommendOptions, gpus: list[GPU]) -> Offer:
    """The user's own machine: its GPU and count, its price (0 unless given) and its RAM (given,
    else read from this machine)."""
    if len(gpus) != 1:
        raise InputError(
            "--provider local needs exactly one --gpu NAME (your card) and --gpu-count N"
        )
    local = catalog.local_offer(
        gpu=gpus[0], gpu_count=o.gpu_count or 1, usd_per_hour=o.usd_per_hour or 0.0
    )
    ram, origin = o.host_ram_gib, "given with --host-ram-gib"
    if ram is None:
        ram = machine_ram_gib()
        origin = "read from this machine (--host-ram-gib names another's)"
    if ram is None:
        return local
    source = f"{local.source}; host RAM {ram:,.0f} GiB {origin}"
    return dataclasses.replace(local, memory_gib=ram, source=source)


def machine_ram_gib() -> float | None:
    """This machine's physical memory, GiB (``os.sysconf``: pages × page size, the MemTotal of
    /proc/meminfo on Linux); None where the platform does not say. ``--provider local`` plans
    are checked against it unless ``--host-ram-gib`` names another machine's."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size / GIB if pages > 0 and size > 0 else None


def _config_identity(spec: ModelSpec) -> tuple[str | None, str | None]:
    """For a model read from a config.json: its resolved path and SHA-256, which the plan
    records so a launch notices a changed file; nothing for a catalog model, whose name is its
    identity."""
    source = Path(spec.source)
    if source.suffix != ".json" or not source.is_file():
        return None, None
    return str(source.resolve()), catalog.config_sha256(source)


def ftplan_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ftplan")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = [
    "RecommendOptions",
    "build_request",
    "eval_set",
    "ftplan_version",
    "machine_ram_gib",
]
