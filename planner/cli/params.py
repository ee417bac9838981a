"""Validated click parameter types: every number finite and within a stated range, every text
free of NUL and bounded in length, every path something ftplan can really use.

:func:`harden` walks the command tree once at start-up and swaps click's plain ``FLOAT``,
``STRING`` and ``Path`` types for the checked ones here, so an option added later is covered
without anyone remembering to. Commands still give their own ranges (``finite_float(...)``,
``click.IntRange(...)``).
"""

from __future__ import annotations

import math
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from catalog import expand_user, printable
from profiler import _types as run_shape

#: Longest text any option takes (a path, a URL, a comma list); longer is a mistake or an attack.
MAX_TEXT_CHARS = 4096
#: Upper bounds shared by several commands (a run's shape: profiler._types, where a config is
#: checked against the same ones).
MAX_GPUS_PER_NODE = 64
MAX_BATCH = run_shape.MAX_MICRO_BATCH
MAX_SEQ_LEN = run_shape.MAX_SEQ_LEN
MAX_LORA_RANK = run_shape.MAX_LORA_RANK
MAX_LORA_ALPHA = run_shape.MAX_LORA_ALPHA
MAX_SEED = 2**32 - 1  # numpy's RandomState (optuna's samplers) takes 0..2**32-1
#: Ceiling for any count option that states no maximum of its own.
MAX_INT_OPTION = 10**15


class FiniteFloat(click.FloatRange):
    """A float range that also refuses NaN and +-Infinity (click's ``FloatRange`` lets NaN by,
    since every comparison with NaN is false)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{printable(value)!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def finite_float(
    min: float | None = None,
    max: float | None = None,
    *,
    min_open: bool = False,
    max_open: bool = False,
) -> FiniteFloat:
    """A finite float in ``[min, max]`` (bounds open when asked)."""
    return FiniteFloat(min=min, max=max, min_open=min_open, max_open=max_open)


def int_range(min: int, max: int) -> click.IntRange:
    """An int in ``[min, max]`` (click refuses non-integers, including ``1e3`` and ``inf``)."""
    return click.IntRange(min=min, max=max)


class SafeText(click.ParamType):
    """Text without NUL, at most :data:`MAX_TEXT_CHARS` characters, and not empty when given."""

    name = "text"

    def __init__(self, *, allow_empty: bool = False, max_chars: int = MAX_TEXT_CHARS) -> None:
        self.allow_empty = allow_empty
        self.max_chars = max_chars

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = click.STRING.convert(value, param, ctx)
        if "\x00" in text:
            self.fail("contains a NUL character.", param, ctx)
        if len(text) > self.max_chars:
            self.fail(f"is {len(text)} characters long; at most {self.max_chars}.", param, ctx)
        if not self.allow_empty and not text.strip():
            self.fail("is empty.", param, ctx)
        return text


class SafePath(click.Path):
    """``click.Path`` that refuses NUL and over-long text; ``regular_file`` also refuses devices,
    FIFOs and sockets (``/dev/zero`` never ends, a FIFO blocks), and ``dir_okay=False`` outputs
    refuse a path whose parent is a regular file."""

    def __init__(self, *, regular_file: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.regular_file = regular_file

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value) if isinstance(value, Path) else value
        if isinstance(text, str):
            if "\x00" in text:
                self.fail("contains a NUL character.", param, ctx)
            if len(text) > MAX_TEXT_CHARS:
                self.fail(f"is longer than {MAX_TEXT_CHARS} characters.", param, ctx)
            if not text.strip():
                self.fail("is empty.", param, ctx)
            if self.allow_dash and text == "-":
                return super().convert(value, param, ctx)
            try:
                mode = expand_user(text).stat().st_mode
            except OSError:
                mode = None
            except ValueError:
                self.fail("is not a valid path.", param, ctx)
            if self.regular_file and mode is not None and not stat.S_ISREG(mode):
                self.fail(
                    f"{printable(text)!r} is not a regular file (a folder, device, FIFO or "
                    "socket); give a file.",
                    param,
                    ctx,
                )
            if mode is None:
                blocker = file_in_the_way(expand_user(text))
                if blocker is not None:
                    self.fail(
                        f"{printable(text)!r} cannot be created: {printable(blocker)!r} is a "
                        "file, not a folder. To fix: choose another path.",
                        param,
                        ctx,
                    )
        return super().convert(value, param, ctx)


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (so ``path`` cannot be
    created), else None."""
    for parent in path.parents:
        try:
            mode = parent.stat().st_mode
        except OSError:
            continue
        return None if stat.S_ISDIR(mode) else parent
    return None


def check_run_id(
    _ctx: click.Context | None, _param: click.Parameter | None, value: str | None
) -> str | None:
    """A click callback: ``value`` is a plain run id (``runners.local.RUN_ID_PATTERN``), never
    a path, so it cannot name a folder outside the runs folder."""
    from runners.local import RUN_ID_PATTERN

    if value is None:
        return None
    if not RUN_ID_PATTERN.match(value) or ".." in value:
        raise click.BadParameter(
            f"{printable(value)!r} is not a run id: ids are plain names of letters, digits, "
            "'.', '_' and '-' as 'ftplan launch' prints them, not paths (use --runs-dir for "
            "the folder)"
        )
    return value


def _hardened(param_type: click.ParamType) -> click.ParamType | None:
    if param_type is click.STRING:
        return SafeText()
    if param_type is click.FLOAT:
        return FiniteFloat()
    if isinstance(param_type, click.IntRange) and param_type.max is None:
        # An open-ended count (steps, tokens, trials) still has a ceiling: past 10**15 it is a
        # typo, and such ints overflow the floats they are multiplied into.
        return click.IntRange(min=param_type.min, max=MAX_INT_OPTION, min_open=param_type.min_open)
    if isinstance(param_type, click.FloatRange) and not isinstance(param_type, FiniteFloat):
        return FiniteFloat(
            min=param_type.min,
            max=param_type.max,
            min_open=param_type.min_open,
            max_open=param_type.max_open,
        )
    if isinstance(param_type, click.Path) and not isinstance(param_type, SafePath):
        hardened = SafePath(
            exists=param_type.exists,
            file_okay=param_type.file_okay,
            dir_okay=param_type.dir_okay,
            writable=param_type.writable,
            readable=param_type.readable,
            resolve_path=param_type.resolve_path,
            allow_dash=param_type.allow_dash,
            path_type=param_type.type,
        )
        return hardened
    return None


def harden(commands: Iterable[click.Command]) -> None:
    """Swap plain text, float and path types for the checked ones, in every command and group."""
    for command in commands:
        for param in command.params:
            replacement = _hardened(param.type)
            if replacement is not None:
                param.type = replacement
        if isinstance(command, click.Group):
            harden(command.commands.values())


_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{1,40}$")
_DEVICE = re.compile(r"^(cpu|cuda(:[0-9]{1,3})?)$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_region(_ctx: click.Context | None, _param: click.Parameter | None, value: Any) -> Any:
    """A click callback: cloud region names such as ``us-east-1`` or ``us-central1`` (one, or a
    tuple of them for a repeatable option)."""
    for region in value if isinstance(value, tuple) else (value,):
        if region is not None and not _REGION.match(region):
            raise click.BadParameter(
                f"{printable(region)!r} is not a region name (e.g. us-east-1)"
            )
    return value


def check_device(text: str) -> str:
    """``text`` when it names a device ftplan can profile on: ``cuda``, ``cuda:<i>`` or ``cpu``."""
    if not _DEVICE.match(text.strip().lower()):
        raise click.BadParameter(f"{text!r} is not cuda, cuda:<index> or cpu")
    return text.strip().lower()


def check_env_var(
    _ctx: click.Context | None, _param: click.Parameter | None, value: str | None
) -> str | None:
    """A click callback: the name (not the value) of an environment variable."""
    if value is not None and not _ENV_VAR.match(value):
        raise click.BadParameter(
            "give the name of an environment variable (e.g. HF_TOKEN), not its value"
        )
    return value


def check_checkpoint_every(
    _ctx: click.Context | None, _param: click.Parameter | None, value: str | None
) -> str | None:
    """A click callback: ``200steps`` / ``15m`` / ``2h``, finite and at most a week or 10**9
    steps."""
    from runners._stop import parse_checkpoint_every

    if value is None:
        return None
    try:
        steps, minutes = parse_checkpoint_every(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if (steps is not None and not 1 <= steps <= 10**9) or (
        minutes is not None and not (math.isfinite(minutes) and 0 < minutes <= 7 * 24 * 60)
    ):
        raise click.BadParameter(
            f"{printable(value)!r} is out of range: at most 10**9 steps or a week"
        )
    return value
