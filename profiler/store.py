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

from catalog import (
    DataError,
    atomic_write_text,
    cache_dir,
    first_bad_value,
    from_jsonable,
    iter_lines,
    loads_json,
    locked_folder,
    read_text_limited,
    to_jsonable,
    write_target,
)
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
#: Largest profile file rewritten on append (~100k records).
MAX_PROFILE_FILE_BYTES = 256 * 1024 * 1024


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


#: Largest figure a stored measurement may hold (GiB, seconds, tokens/s, parameters).
MAX_RECORD_NUMBER = 1e30
#: Longest line of a profile file (a record is ~2 kB).
MAX_RECORD_LINE_BYTES = 1024 * 1024


def read_records(path: Path) -> list[Measurement]:
    """Measurements in one JSONL file (blank lines skipped), streamed line by line.

    Raises:
        DataError: If the path is not a regular file, or a line is not a Measurement (not JSON,
            nested too deep, a negative or non-finite figure, a missing field), naming the file
            and line and how to fix it.
    """
    records: list[Measurement] = []
    fix = "fix or delete that line (records are written by 'ftplan profile')"
    lines = iter_lines(path, what="profile file", max_line_bytes=MAX_RECORD_LINE_BYTES)
    while True:
        try:
            item = next(lines, None)
        except DataError as exc:  # not UTF-8, a line too long, not a regular file
            raise DataError(f"{exc}: not a profile record; {fix}") from None
        if item is None:
            return records
        number, line = item
        try:
            data = loads_json(line, what="the line")
            problem = first_bad_value(data, "record", max_number=MAX_RECORD_NUMBER)
            if problem:
                raise DataError(problem)
            records.append(from_jsonable(Measurement, data))
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            raise DataError(f"{path}:{number} is not a profile record ({exc}); {fix}") from None


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
        """Append records to a JSONL file atomically (the whole file is rewritten), under an
        exclusive lock on its folder, so concurrent writers never lose each other's records.

        The records also become visible to this store's lookups when ``path`` is one of its files.

        A symbolic link at ``path`` is followed: the file it names gets the records.

        Returns:
            The path written.
        """
        target = write_target(path)
        lines = "".join(json.dumps(to_jsonable(m), sort_keys=True) + "\n" for m in measurements)
        target.parent.mkdir(parents=True, exist_ok=True)
        with locked_folder(target.parent):
            existing = ""
            if target.exists():
                existing = read_text_limited(
                    target, what="profile file", max_bytes=MAX_PROFILE_FILE_BYTES
                )
            if existing and not existing.endswith("\n"):
                existing += "\n"
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


def profile_for_estimate(model: str, config: TuningConfig, gpu: str) -> Measurement | None:
    """The stored profile ``ftplan estimate`` shows in place of the estimator's figures: the
    default store's best record of exactly this model, config and GPU, when it has peak reserved
    memory (the figure the fit verdict compares; without it the estimator answers instead)."""
    found = default_store().lookup(model=model, config=config, gpu=gpu)
    return found if found is not None and found.peak_reserved_gib is not None else None
