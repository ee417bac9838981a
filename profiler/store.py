"""The profile store: measured and extrapolated Measurement records in JSONL files.

ftplan ships measured profiles as package data (``profiler/data/profiles-*.jsonl``); a user's own
``ftplan profile`` runs go to the user cache (``$FTPLAN_CACHE_DIR`` or ``~/.cache/ftplan``,
``profiles.jsonl``). The planner looks a config up here before falling back to the estimator, so
lookups are dict hits on an index built once at load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from catalog import atomic_write_text, cache_dir, from_jsonable, to_jsonable
from profiler._types import (
    ALL_LINEAR_MODULES,
    ATTENTION_MODULES,
    TARGETS_ALL_LINEAR,
    TARGETS_ATTENTION,
    Measurement,
    Source,
    TuningConfig,
    resolve_targets,
)

SHIPPED_DATA_DIR = Path(__file__).resolve().parent / "data"
USER_PROFILES_FILE = "profiles.jsonl"

# Lower is preferred: a full-depth run beats a 2/4-layer fit, which beats the formula.
_SOURCE_RANK = {Source.MEASURED: 0, Source.EXTRAPOLATED: 1, Source.ESTIMATED: 2}

_Key = tuple[str, TuningConfig, str]


def user_profiles_path() -> Path:
    """Where ``ftplan profile`` stores its records by default."""
    return cache_dir() / USER_PROFILES_FILE


def canonical_config(config: TuningConfig) -> TuningConfig:
    """The config with equivalent spellings made equal, for matching.

    LoRA alpha ``None`` becomes its default (2 × rank); target lists become ``all-linear`` /
    ``attention`` when they name exactly those modules, else a sorted comma-separated list.
    """
    if config.lora_targets is None:
        return config
    modules = resolve_targets(config.lora_targets)
    if modules == ALL_LINEAR_MODULES:
        targets = TARGETS_ALL_LINEAR
    elif modules == ATTENTION_MODULES:
        targets = TARGETS_ATTENTION
    else:
        targets = ",".join(modules)
    return dataclasses.replace(
        config, lora_alpha=config.effective_lora_alpha, lora_targets=targets
    )


def _key(model: str, config: TuningConfig, gpu: str) -> _Key:
    return (model.strip().lower(), canonical_config(config), gpu.strip().lower())


def _preference(indexed: tuple[int, Measurement]) -> tuple[int, str, int]:
    order, record = indexed
    # The largest wins: best source, then the newest ISO date (sorts as a string, partial dates
    # such as "2026-11" included), then the record loaded last.
    return (-_SOURCE_RANK[record.source], record.provenance.date, order)


def read_records(path: Path) -> list[Measurement]:
    """Measurements in one JSONL file (blank lines skipped).

    Raises:
        ValueError: If a line is not a Measurement, naming the file and line and how to fix it.
    """
    records: list[Measurement] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(from_jsonable(Measurement, json.loads(line)))
        except (ValueError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"{path}:{number} is not a profile record ({exc}); fix or delete that line "
                f"(records are written by 'ftplan profile')"
            ) from None
    return records


class ProfileStore:
    """Measurement records from several JSONL files, indexed by (model, config, GPU).

    Missing files are treated as empty. Model and GPU names match case-insensitively; configs
    match exactly after :func:`canonical_config`.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = tuple(Path(p) for p in paths)
        self._records: list[Measurement] = []
        self._index: dict[_Key, list[tuple[int, Measurement]]] = {}
        for path in self._paths:
            if path.is_file():
                self._add(read_records(path))

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files this store reads, in load order."""
        return self._paths

    def _add(self, records: Iterable[Measurement]) -> None:
        for record in records:
            self._index.setdefault(_key(record.model, record.config, record.gpu), []).append(
                (len(self._records), record)
            )
            self._records.append(record)

    def records(self) -> list[Measurement]:
        """Every record, in load order."""
        return list(self._records)

    def lookup(self, *, model: str, config: TuningConfig, gpu: str) -> Measurement | None:
        """The best record for exactly this model, config and GPU, or ``None``.

        Measured beats extrapolated beats estimated; among equals the newest date wins, then the
        record loaded last. Records of any status are returned (an OOM is an answer too).
        """
        matches = self._index.get(_key(model, config, gpu))
        if not matches:
            return None
        return max(matches, key=_preference)[1]

    def append(self, path: Path, measurements: Sequence[Measurement]) -> Path:
        """Append records to a JSONL file atomically (the whole file is rewritten).

        The records also become visible to this store's lookups when ``path`` is one of its files.

        Returns:
            The path written.
        """
        target = Path(path)
        existing = target.read_text(encoding="utf-8") if target.is_file() else ""
        if existing and not existing.endswith("\n"):
            existing += "\n"
        lines = "".join(json.dumps(to_jsonable(m), sort_keys=True) + "\n" for m in measurements)
        atomic_write_text(target, existing + lines)
        if any(target.resolve() == p.resolve() for p in self._paths):
            self._add(measurements)
        return target


def shipped_profile_paths() -> list[Path]:
    """The profile files shipped with ftplan, in name order."""
    return sorted(SHIPPED_DATA_DIR.glob("profiles-*.jsonl"))


@functools.lru_cache(maxsize=1)
def default_store() -> ProfileStore:
    """Shipped profiles plus the user's cache (:func:`user_profiles_path`), loaded once.

    Call ``default_store.cache_clear()`` after writing to the user's file from elsewhere.
    """
    return ProfileStore([*shipped_profile_paths(), user_profiles_path()])
