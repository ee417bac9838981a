"""Property tests (hypothesis): every CLI option parser and every file reader either accepts its
input or refuses it with click's BadParameter / ftplan's FtplanError, whatever the input. An
accepted number is finite and in range; an accepted run id stays inside the runs folder."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_fixtures import make_plan

from catalog import DataError, FtplanError, loads_json, model_from_hf_config
from catalog import _load as catalog_load
from planner.cli import main
from planner.cli.params import FiniteFloat, check_run_id
from planner.cli.storage import check_storage_url
from planner.engine.dataset import count_dataset
from planner.plan_io import plan_to_json, read_plan
from planner.report.write import report_slug
from profiler.calibration import read_calibration
from profiler.store import read_records
from runners import launch_spec_from_json
from runners._run_files import read_status
from runners.local import run_dir_for

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text a user can type: printable, control characters, NUL, path and URL punctuation.
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "inf",
            "-inf",
            "1e308",
            "-0",
            "0",
            "1e-320",
            "../x",
            "/dev/zero",
            "\x1b[31m",
            "\x00",
            "a" * 5000,
            "9" * 400,
            "sqlite:///",
            "s3://",
            "cuda:99",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def _params() -> Iterator[tuple[click.Command, click.Parameter]]:
    stack: list[click.Command] = [main]
    while stack:
        command = stack.pop()
        for param in command.params:
            if not (isinstance(param, click.Option) and param.is_flag):
                yield command, param
        if isinstance(command, click.Group):
            stack.extend(command.commands.values())


PARAMS = [(f"{c.name}:{p.name}", c, p) for c, p in _params()]


@pytest.mark.parametrize(("label", "command", "param"), PARAMS, ids=[p[0] for p in PARAMS])
@SETTINGS
@given(value=TEXT)
def test_every_option_parser_accepts_or_refuses_cleanly(
    label: str, command: click.Command, param: click.Parameter, value: str
) -> None:
    ctx = click.Context(command, info_name=command.name)
    raw: Any = (value,) if param.multiple or param.nargs == -1 else value
    try:
        converted = param.process_value(ctx, raw)
    except (click.BadParameter, click.UsageError, FtplanError):
        return
    for item in converted if isinstance(converted, tuple) else (converted,):
        if isinstance(item, float):
            assert math.isfinite(item), label
            if isinstance(param.type, click.FloatRange):
                assert param.type.min is None or item >= param.type.min
                assert param.type.max is None or item <= param.type.max
        if isinstance(item, int) and isinstance(param.type, click.IntRange):
            assert param.type.min is None or item >= param.type.min
            assert param.type.max is None or item <= param.type.max
        if isinstance(item, str):
            assert "\x00" not in item


def test_every_count_option_has_a_ceiling() -> None:
    ranges = [(label, p.type) for label, _, p in PARAMS if isinstance(p.type, click.IntRange)]
    assert ranges and all(t.max is not None for _, t in ranges), ranges
    assert not [label for label, _, p in PARAMS if p.type is click.INT]


def test_every_float_option_is_finite_checked() -> None:
    floats = [
        label for label, _, p in PARAMS if isinstance(p.type, click.FloatRange | type(click.FLOAT))
    ]
    assert floats
    assert all(
        isinstance(p.type, FiniteFloat)
        for _, _, p in PARAMS
        if isinstance(p.type, click.FloatRange)
    )
    assert not [label for label, _, p in PARAMS if p.type is click.FLOAT]


@SETTINGS
@given(run_id=TEXT)
def test_accepted_run_ids_stay_inside_the_runs_folder(run_id: str) -> None:
    with tempfile.TemporaryDirectory() as root:
        try:
            check_run_id(None, None, run_id)
        except click.BadParameter:
            return
        assert run_dir_for(root, run_id).parent == Path(root).resolve()


@SETTINGS
@given(url=TEXT)
def test_storage_urls_are_accepted_or_refused_cleanly(url: str) -> None:
    try:
        assert check_storage_url(url) == url
    except click.BadParameter as exc:
        assert "hunter2" not in str(exc)


def test_storage_url_errors_mask_credentials() -> None:
    with pytest.raises(click.BadParameter) as info:
        check_storage_url("postgresql://me:hunter2@")
    assert "hunter2" not in str(info.value)


@SETTINGS
@given(model=st.text(max_size=300), budget=st.floats(min_value=1e-9, max_value=1e9))
def test_slugs_are_short_plain_names(model: str, budget: float) -> None:
    slug = report_slug(model, budget, "3f9a1c2e")
    assert 0 < len(slug) <= 130
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789._-" for c in slug)
    assert ".." not in slug and not slug.startswith(".")
    assert report_slug(model, float(repr(budget)), "3f9a1c2e") == slug


def _with_file(data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "file"
        path.write_bytes(data)
        yield path


BYTES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", errors="surrogatepass")),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
)


@SETTINGS
@given(data=BYTES)
def test_plan_reader(data: bytes) -> None:
    for path in _with_file(data):
        with pytest.raises(FtplanError):
            read_plan(path)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _leaves(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _leaves(child, (*path, index))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path


PLAN = json.loads(plan_to_json(make_plan()))
PLAN_LEAVES = list(_leaves(PLAN))


@SETTINGS
@given(
    leaf=st.sampled_from(PLAN_LEAVES),
    value=st.one_of(st.floats(max_value=-1e-9), st.integers(max_value=-1), st.just(1e40)),
)
def test_a_hand_edited_plan_with_a_negative_or_absurd_figure_is_refused(
    leaf: tuple[Any, ...], value: float
) -> None:
    data = json.loads(json.dumps(PLAN))
    node = data
    for key in leaf[:-1]:
        node = node[key]
    node[leaf[-1]] = value
    for path in _with_file(json.dumps(data).encode()):
        with pytest.raises(DataError):
            read_plan(path)


def test_the_unedited_plan_reads_back() -> None:
    for path in _with_file(plan_to_json(make_plan()).encode()):
        assert read_plan(path) == make_plan()


@SETTINGS
@given(data=BYTES)
def test_status_reader(data: bytes) -> None:
    for path in _with_file(data):
        try:
            status = read_status(path)
        except DataError:
            continue
        assert "\x1b" not in status.detail


@SETTINGS
@given(data=BYTES)
def test_profile_store_reader(data: bytes) -> None:
    for path in _with_file(data):
        with contextlib.suppress(DataError):
            read_records(path)


CONFIG_KEYS = [
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "num_local_experts",
    "num_experts_per_tok",
    "tie_word_embeddings",
    "model_type",
    "text_config",
]


@SETTINGS
@given(
    config=st.dictionaries(
        st.sampled_from(CONFIG_KEYS),
        st.one_of(st.integers(-5, 10**7), JSON_VALUES),
        max_size=len(CONFIG_KEYS),
    )
)
def test_config_json_reader(config: dict[str, Any]) -> None:
    for path in _with_file(json.dumps(config).encode()):
        try:
            spec = model_from_hf_config(path)
        except FtplanError:
            continue
        assert spec.param_count > 0 and spec.num_heads % spec.num_kv_heads == 0


@SETTINGS
@given(lines=st.lists(BYTES, max_size=5))
def test_dataset_reader(lines: list[bytes]) -> None:
    for path in _with_file(b"\n".join(lines)):
        try:
            stats = count_dataset(path)
        except DataError:
            continue
        assert stats.tokens > 0 and stats.longest_sample_tokens <= stats.tokens


@SETTINGS
@given(data=BYTES)
def test_calibration_reader(data: bytes) -> None:
    for path in _with_file(data):
        with pytest.raises(DataError):
            read_calibration(path)


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), JSON_VALUES.map(json.dumps)))
def test_launch_spec_reader(text: str) -> None:
    with pytest.raises(DataError):
        launch_spec_from_json(text)


@SETTINGS
@given(text=st.text(max_size=300))
def test_json_loader(text: str) -> None:
    with contextlib.suppress(DataError):
        loads_json(text, what="x")


def _csv_text(columns: tuple[str, ...], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


CELLS = st.one_of(TEXT, st.sampled_from(["true", "false", "2026-01-01", "aws", "H100 SXM 80GB"]))


@pytest.mark.parametrize(
    ("columns", "load"),
    [
        (catalog_load.MODEL_COLUMNS, lambda p: catalog_load._models.__wrapped__(p)),
        (catalog_load.GPU_COLUMNS, lambda p: catalog_load._gpus.__wrapped__(p)),
        (catalog_load.OFFER_COLUMNS, lambda p: catalog_load._offers_at.__wrapped__(p, 0)),
    ],
    ids=["models", "gpus", "offers"],
)
@SETTINGS
@given(rows=st.lists(st.lists(CELLS, min_size=1, max_size=20), max_size=3), data=st.data())
def test_catalog_csv_readers(
    columns: tuple[str, ...], load: Any, rows: list[list[str]], data: Any
) -> None:
    header = data.draw(st.sampled_from([columns, columns[:-1], ()]))
    shaped = [(row * len(columns))[: len(header)] for row in rows]
    for path in _with_file(_csv_text(header, shaped).encode("utf-8", errors="surrogatepass")):
        with contextlib.suppress(FtplanError):
            load(path)
