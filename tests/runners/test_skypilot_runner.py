"""SkyPilot runner: every generated task passes SkyPilot's own parser and cloud feature check
(offline, against the fixture catalog that tests/conftest.py installs), and launches are mocked
at SkyPilot's API boundary (sky.launch, sky.jobs.launch, sky.stream_and_get, ...), never with
fake clouds. The follower of on-demand runs is driven with the same mocked API."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from catalog import Offer, Provider, get_model, list_offers
from planner.cli import main
from profiler import Method, Sharding, TuningConfig
from runners import LaunchSpec, RunnerError, RunState, SkyPilotRunner, Target, default_target
from runners.skypilot import (
    NO_BUCKET_MOUNTS,
    REMOTE_OUTPUT_DIR,
    import_sky,
    region_to_pin,
    task_config,
    task_yaml,
    validate_task,
)

sky = pytest.importorskip("sky")

SECRET = "hf_thisIsNotARealTokenButMustNeverBePrinted"
LLAMA = get_model("llama2-7b")


def _offer(provider: Provider, instance: str, gpu: str, count: int, **kw: Any) -> Offer:
    fields: dict[str, Any] = {
        "provider": provider,
        "service": {"aws": "ec2", "gcp": "gce", "azure": "vm"}.get(provider.value, "cloud"),
        "instance_type": instance,
        "region": "unspecified",
        "gpu": gpu,
        "gpu_count": count,
        "usd_per_hour": 2.0,
        "spot": False,
        "as_of": "2026-11-30",
        "source": "test",
    }
    return Offer(**{**fields, **kw})


def _spec(offer: Offer, *, nodes: int = 1, method: Method = Method.LORA) -> LaunchSpec:
    lora = method is not Method.FULL
    config = TuningConfig(
        method=method,
        lora_rank=16 if lora else None,
        lora_targets="all-linear" if lora else None,
        micro_batch_size=4,
        gpu_count=offer.gpu_count * nodes,
        sharding=(
            Sharding.NONE
            if offer.gpu_count * nodes == 1
            else (Sharding.DDP if lora else Sharding.FSDP)
        ),
    )
    # Random weights: Llama 2 is gated, and a real-weights launch without a token is refused.
    return LaunchSpec(model=LLAMA, config=config, offer=offer, nodes=nodes, random_init=True)


OFFERS = {
    "lambda-gh200": _offer(Provider.LAMBDA, "gpu_1x_gh200", "GH200", 1, vcpus=64, memory_gib=432),
    "lambda-h100-pcie": _offer(Provider.LAMBDA, "gpu_1x_h100_pcie", "H100 PCIe", 1),
    "runpod-h100-sxm": _offer(
        Provider.RUNPOD, "8x_H100-SXM_SECURE", "H100 SXM 80GB", 8, region="CA"
    ),
    "aws-p5-spot": _offer(
        Provider.AWS, "p5.48xlarge", "H100 SXM 80GB", 8, spot=True, region="us-east-1"
    ),
    "gcp-a100": _offer(Provider.GCP, "a2-highgpu-1g", "A100 SXM 40GB", 1, region="us-central1"),
    "azure-a100": _offer(
        Provider.AZURE, "Standard_NC24ads_A100_v4", "A100 SXM 80GB", 1, region="eastus"
    ),
}


@pytest.fixture
def data(tmp_path: Path) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "hello"}\n', encoding="utf-8")
    return str(path)


def _config(spec: LaunchSpec, data: str, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "data": data,
        "name": "ftplan-test",
        "workdir": "/tmp/ftplan-workdir",
        "output_uri": "s3://bucket/ftplan/ftplan-test",
        "region": None,
        "hf_token": True,
    }
    return task_config(spec, **{**args, **kw})


def _parsed(text: str) -> Any:
    """SkyPilot's parser on printed YAML, exactly as a user's 'sky launch task.yaml' reads it."""
    return sky.Task.from_yaml_config(yaml.safe_load(text))


@pytest.mark.parametrize("key", sorted(OFFERS))
@pytest.mark.parametrize("nodes", [1, 2])
def test_every_task_passes_skypilots_parser(key: str, nodes: int, data: str) -> None:
    """SkyPilot's own task model and cloud feature check (what its optimizer refuses before
    provisioning): output on a mounted bucket where the cloud mounts one, else nothing mounted
    (copied back), the fast interconnect for multi-node AWS, multi-node refused on RunPod."""
    offer = OFFERS[key]
    spec = _spec(offer, nodes=nodes)
    region = None if offer.region == "unspecified" else offer.region
    bucket = offer.provider not in NO_BUCKET_MOUNTS
    config = _config(spec, data, region=region, output_uri="s3://b/x" if bucket else None)
    if nodes > 1 and offer.provider is Provider.RUNPOD:
        with pytest.raises(
            RunnerError, match="SkyPilot cannot run the task on RunPod.*multi-node"
        ):
            validate_task(config, autodown=not offer.spot)
        return
    task = validate_task(config, autodown=not offer.spot)
    assert _parsed(task_yaml(config, spec=spec)).to_yaml_config() == task.to_yaml_config()
    (resources,) = task.resources
    assert str(resources.cloud).lower() == {"lambda": "lambda", "runpod": "runpod"}.get(
        offer.provider.value, offer.provider.value
    )
    assert resources.region == region
    assert sum(resources.accelerators.values()) == offer.gpu_count
    assert resources.use_spot is offer.spot
    assert resources.disk_size >= 256
    assert task.num_nodes == nodes
    assert (REMOTE_OUTPUT_DIR in task.storage_mounts) is bucket
    fast = nodes > 1 and offer.provider is Provider.AWS
    assert resources.network_tier == (
        sky.resources.resources_utils.NetworkTier.BEST if fast else None
    )
    if spec.config.gpu_count > 1:
        assert "torchrun --nnodes=$SKYPILOT_NUM_NODES" in task.run
        assert "--nproc_per_node=$SKYPILOT_NUM_GPUS_PER_NODE" in task.run
        assert "--node_rank=$SKYPILOT_NODE_RANK" in task.run
        assert '"$SKYPILOT_NODE_IPS" | head -n1' in task.run
    else:
        assert task.run.count("python -m runners.train") == 1


def test_cloud_rules_agree_with_skypilots_cloud_classes() -> None:
    """Where ftplan copies output back instead of mounting a bucket, and where it asks for the
    fast interconnect, follow SkyPilot's own list of what each cloud cannot do."""
    from sky import clouds, exceptions

    from runners.skypilot import FAST_INTERCONNECT_CLOUDS, SKYPILOT_CLOUDS

    def supports(name: str, feature: Any) -> bool:
        resources = sky.Resources(infra=name)
        try:
            resources.cloud.check_features_are_supported(resources, {feature})
        except exceptions.NotSupportedError:
            return False
        return True

    features = clouds.CloudImplementationFeatures
    for provider, name in SKYPILOT_CLOUDS.items():
        mounts = supports(name, features.STORAGE_MOUNTING)
        assert mounts is (provider not in NO_BUCKET_MOUNTS), name
        if provider in FAST_INTERCONNECT_CLOUDS:
            assert supports(name, features.CUSTOM_NETWORK_TIER), name


def test_task_details(data: str) -> None:
    spec = _spec(OFFERS["lambda-h100-pcie"])
    config = _config(spec, "s3://bucket/datasets/chat.jsonl", output_uri=None)
    assert config["resources"]["accelerators"] == "H100:1"  # Lambda calls the PCIe card H100
    assert config["resources"]["instance_type"] == "gpu_1x_h100_pcie"  # ... and the SXM one
    gh200 = _config(_spec(OFFERS["lambda-gh200"]), data)["resources"]
    assert "instance_type" not in gh200 and gh200["cpus"] == "64+"  # unambiguous: not pinned
    assert config["file_mounts"] == {"/ftplan/data/chat.jsonl": "s3://bucket/datasets/chat.jsonl"}
    assert "--data /ftplan/data/chat.jsonl" in config["run"]
    assert "'.[train]'" in config["setup"]
    assert config["secrets"] == {"HF_TOKEN": None}
    full = _spec(OFFERS["runpod-h100-sxm"], method=Method.FULL)
    envs = _config(full, data, output_uri=None)["envs"]
    assert envs["ACCELERATE_USE_FSDP"] == "true"  # the same FSDP settings as SageMaker's
    assert _config(full, data, output_uri=None)["resources"]["accelerators"] == "H100-SXM:8"
    big = task_config(
        replace(full, model=get_model("llama2-70b")) if _has("llama2-70b") else full,
        data=data,
        name="x",
        workdir="/w",
        output_uri=None,
        region=None,
        hf_token=False,
    )
    assert "secrets" not in big and big["resources"]["disk_size"] >= 256


def _has(model: str) -> bool:
    try:
        get_model(model)
    except ValueError:
        return False
    return True


def test_offers_skypilot_cannot_express_are_refused(data: str) -> None:
    local = _offer(Provider.LOCAL, "local-1xh100", "H100 SXM 80GB", 1, region="local")
    with pytest.raises(RunnerError, match="local offer"):
        _config(_spec(local), data)
    pcie_on_aws = _offer(Provider.AWS, "made-up.xlarge", "H100 PCIe", 1, region="us-east-1")
    with pytest.raises(RunnerError, match="no accelerator name for H100 PCIe on aws"):
        _config(_spec(pcie_on_aws), data)
    with pytest.raises(RunnerError, match="spot plan needs a bucket"):
        _config(_spec(OFFERS["aws-p5-spot"]), data, output_uri=None)
    # RunPod: SkyPilot mounts no bucket there, so no --output-dir and no spot (no resume).
    runpod = OFFERS["runpod-h100-sxm"]
    with pytest.raises(RunnerError, match="cannot mount buckets on runpod.*leave --output-dir"):
        _config(_spec(runpod), data, output_uri="s3://b/x")
    with pytest.raises(RunnerError, match="spot plan on runpod cannot resume.*--no-spot"):
        _config(_spec(replace(runpod, spot=True)), data, output_uri=None)
    assert REMOTE_OUTPUT_DIR not in _config(_spec(runpod), data, output_uri=None)["file_mounts"]


def test_region_is_pinned_only_where_it_changes_the_price() -> None:
    east = _offer(Provider.AWS, "p5.48xlarge", "H100 SXM 80GB", 8, region="us-east-1")
    west = replace(east, region="us-west-2", usd_per_hour=3.0)
    assert region_to_pin(east, (east, west)) == "us-east-1"
    lam = _offer(Provider.LAMBDA, "gpu_1x_gh200", "GH200", 1, region="us-east-1")
    assert region_to_pin(lam, (lam, replace(lam, region="us-west-1"))) is None
    assert region_to_pin(replace(lam, region="unspecified"), ()) is None


def test_default_target_follows_the_offer() -> None:
    assert default_target(None) is Target.LOCAL
    assert default_target(replace(OFFERS["aws-p5-spot"], service="sagemaker")) is Target.SAGEMAKER
    assert default_target(OFFERS["aws-p5-spot"]) is Target.SKYPILOT
    assert default_target(OFFERS["lambda-gh200"]) is Target.SKYPILOT
    local = _offer(Provider.LOCAL, "local-1xh100", "H100 SXM 80GB", 1, region="local")
    assert default_target(local) is Target.LOCAL


class _SkyCalls:
    """Records what ftplan hands to SkyPilot's client API (the calls are replaced, not faked
    clouds: SkyPilot's own Task objects flow through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        for where, name in [
            (sky, "launch"),
            (sky.jobs, "launch"),
            (sky, "down"),
            (sky, "cancel"),
            (sky.jobs, "cancel"),
            (sky, "status"),
            (sky.jobs, "queue"),
            (sky, "queue"),
            (sky, "tail_logs"),
            (sky.jobs, "tail_logs"),
        ]:
            label = f"{'jobs.' if where is sky.jobs else ''}{name}"
            monkeypatch.setattr(where, name, self._recorder(label))
        monkeypatch.setattr(sky, "stream_and_get", lambda request: None)
        self.results: dict[str, Any] = {}
        self.errors: dict[str, Exception] = {}
        monkeypatch.setattr(sky, "get", self._get)
        self.followers: list[Path] = []

    def _get(self, request: str) -> Any:
        if request in self.errors:
            raise self.errors[request]
        return self.results.get(request, [])

    def start_follower(self, run_dir: Path) -> int:
        """Stands in for the detached follower process (tests drive runners._sky_follow)."""
        self.followers.append(run_dir)
        return 2**31 - 1  # no such process

    def _recorder(self, label: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> str:
            self.calls.append((label, args, kwargs))
            return f"request-{label}"

        return call


def test_on_demand_launches_a_followed_cluster_and_status_outlives_it(
    tmp_path: Path, data: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = _SkyCalls(monkeypatch)
    runner = SkyPilotRunner(
        runs_dir=tmp_path / "runs", env={"HF_TOKEN": SECRET}, start_follower=calls.start_follower
    )
    result = runner.launch(_spec(OFFERS["lambda-gh200"]), data=data, name="ftplan-run-1")
    ((label, args, kwargs),) = calls.calls
    # Not torn down when the job ends: the follower keeps the result first; autodown is the net.
    assert label == "launch" and kwargs == {
        "cluster_name": "ftplan-run-1",
        "idle_minutes_to_autostop": 15,
        "down": True,
    }
    run_dir = Path(result.run_dir)
    assert calls.followers == [run_dir]
    task = args[0]
    assert isinstance(task, sky.Task)
    assert task.secrets["HF_TOKEN"].get_secret_value() == SECRET
    assert not task.storage_mounts  # no bucket: the output stays on the node until copied back
    workdir = Path(task.workdir)
    assert (workdir / "runners" / "train.py").is_file() and (workdir / "pyproject.toml").is_file()
    assert json.loads((workdir / "ftplan_launch.json").read_text())["format"] == "ftplan-launch/1"
    written = "".join(p.read_text(errors="ignore") for p in run_dir.rglob("*") if p.is_file())
    out = capsys.readouterr()
    assert SECRET not in written + out.out + out.err + result.request_json
    # While the cluster is up, status comes from its job queue.
    calls.results["request-status"] = [{"name": "ftplan-run-1"}]
    calls.results["request-queue"] = [{"job_id": 1, "status": sky.JobStatus.RUNNING}]
    running = runner.status("ftplan-run-1")
    assert running.state is RunState.RUNNING and "copied back" in running.detail
    # Torn down with no outcome recorded (nothing followed it): unknown, never "stopped".
    calls.results["request-status"] = []
    gone = runner.status("ftplan-run-1")
    assert gone.state is RunState.UNKNOWN and "no outcome was recorded" in gone.detail
    runner.stop("ftplan-run-1")  # cancels the job; the follower (started again) keeps the rest
    assert calls.calls[-1][0] == "cancel" and calls.calls[-1][1] == ("ftplan-run-1",)
    assert calls.calls[-1][2] == {"all": True} and len(calls.followers) == 2
    runner.logs("ftplan-run-1", follow=False)
    assert calls.calls[-1][0] == "tail_logs"


def test_the_follower_records_the_outcome_copies_the_output_then_downs_the_cluster(
    tmp_path: Path, data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runners._sky_follow import follow

    calls = _SkyCalls(monkeypatch)
    echo = _Echo()
    runner = SkyPilotRunner(
        runs_dir=tmp_path / "runs", env={}, start_follower=calls.start_follower, echo=echo
    )
    run_dir = Path(runner.launch(_spec(OFFERS["lambda-gh200"]), data=data, name="r1").run_dir)

    def tail_logs(name: str, **kwargs: Any) -> int:
        kwargs["output_stream"].write("step 1 loss 2.0\nstep 2 loss 1.5\n")
        return 0

    monkeypatch.setattr(sky, "tail_logs", tail_logs)
    calls.results["request-status"] = [{"name": "r1"}]
    calls.results["request-queue"] = [{"job_id": 1, "status": sky.JobStatus.SUCCEEDED}]
    copied: list[tuple[str, Path]] = []

    def copy(name: str, dest: Path) -> str | None:
        copied.append((name, dest))
        (dest / "summary.json").parent.mkdir(parents=True, exist_ok=True)
        (dest / "summary.json").write_text("{}")
        return None

    final = follow(run_dir, sky=sky, copy=copy, poll_s=0)
    assert final["state"] == "succeeded" and copied == [("r1", run_dir / "output")]
    assert calls.calls[-1][0] == "down" and calls.calls[-1][1] == ("r1",)
    # After teardown: status from the record (no SkyPilot call), success told from failure.
    before = len(calls.calls)
    calls.errors["request-status"] = RuntimeError("must not be asked")
    status = runner.status("r1")
    assert status.state is RunState.SUCCEEDED and "output copied to" in status.detail
    assert status.summary_path == str(run_dir / "output" / "summary.json")
    assert len(calls.calls) == before
    runner.logs("r1", follow=False)  # the cluster is gone: the follower's copy of the log
    assert "step 2 loss 1.5" in echo.text and "cluster is down" in echo.text
    with pytest.raises(RunnerError, match="has ended"):
        runner.stop("r1")


@pytest.mark.parametrize(
    ("job", "copy_error", "state", "downed"),
    [
        ("FAILED", None, "failed", True),
        ("CANCELLED", None, "stopped", True),
        ("SUCCEEDED", "Connection refused", "succeeded", False),  # keep the node: copy by hand
    ],
)
def test_the_follower_says_how_a_run_ended(
    tmp_path: Path,
    data: str,
    monkeypatch: pytest.MonkeyPatch,
    job: str,
    copy_error: str | None,
    state: str,
    downed: bool,
) -> None:
    from runners._sky_follow import follow

    calls = _SkyCalls(monkeypatch)
    runner = SkyPilotRunner(
        runs_dir=tmp_path / "runs", env={}, start_follower=calls.start_follower
    )
    run_dir = Path(runner.launch(_spec(OFFERS["lambda-gh200"]), data=data, name="r2").run_dir)
    calls.results["request-status"] = [{"name": "r2"}]
    calls.results["request-queue"] = [{"job_id": 1, "status": getattr(sky.JobStatus, job)}]
    final = follow(run_dir, sky=sky, copy=lambda name, dest: copy_error, poll_s=0)
    assert final["state"] == state
    assert (calls.calls[-1][0] == "down") is downed
    if copy_error:
        assert "rsync -a r2:/ftplan/output/" in final["detail"] and "autodown" in final["detail"]
    assert runner.status("r2").state.value == state


def test_spot_launches_a_managed_job(
    tmp_path: Path, data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _SkyCalls(monkeypatch)
    runner = SkyPilotRunner(
        runs_dir=tmp_path / "runs",
        output_uri="s3://bucket/ftplan",
        env={},
        start_follower=calls.start_follower,
    )
    runner.launch(_spec(OFFERS["aws-p5-spot"]), data=data, name="ftplan-spot")
    ((label, args, kwargs),) = calls.calls
    assert label == "jobs.launch" and kwargs == {"name": "ftplan-spot"}
    assert not calls.followers  # SkyPilot's jobs controller keeps a managed job's state
    task = args[0]
    assert not task.secrets  # no token in the environment: none declared
    (resources,) = task.resources
    assert resources.use_spot and resources.region == "us-east-1"  # the catalog differs: pinned
    (mount,) = task.storage_mounts.values()
    assert mount.source == "s3://bucket/ftplan/ftplan-spot"
    calls.results["request-jobs.queue"] = [
        {"job_name": "ftplan-spot", "job_id": 3, "status": sky.jobs.ManagedJobStatus.RECOVERING}
    ]
    assert runner.status("ftplan-spot").state is RunState.RUNNING
    runner.stop("ftplan-spot")
    # graceful: SkyPilot finishes the MOUNT_CACHED uploads (the checkpoints) before it cancels
    assert calls.calls[-1][0] == "jobs.cancel"
    assert calls.calls[-1][2] == {"name": "ftplan-spot", "graceful": True}


def test_a_jobs_controller_that_is_down_is_said_not_crashed(
    tmp_path: Path, data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SkyPilot's jobs controller stops when idle; status, logs and stop then say so (the last
    state ftplan saw, the saved log) instead of failing with an internal error."""
    from sky import exceptions

    calls = _SkyCalls(monkeypatch)
    runs = tmp_path / "runs"
    SkyPilotRunner(runs_dir=runs, output_uri="s3://b/f", env={}).launch(
        _spec(OFFERS["aws-p5-spot"]), data=data, name="ftplan-spot"
    )
    calls.results["request-jobs.queue"] = [
        {"job_name": "ftplan-spot", "job_id": 3, "status": sky.jobs.ManagedJobStatus.RUNNING}
    ]
    cli = CliRunner()
    first = cli.invoke(main, ["status", "ftplan-spot", "--runs-dir", str(runs)])
    assert first.exit_code == 0 and "running" in first.output
    down = exceptions.ClusterNotUpError("sky-jobs-controller-1234 is not up")
    calls.errors["request-jobs.queue"] = down
    calls.errors["request-jobs.cancel"] = down

    def tail_logs(**kwargs: Any) -> None:
        raise down

    monkeypatch.setattr(sky.jobs, "tail_logs", tail_logs)
    status = cli.invoke(
        main, ["status", "ftplan-spot", "--runs-dir", str(runs), "--format", "json"]
    )
    assert status.exit_code == 0, status.output
    record = json.loads(status.stdout)
    assert record["state"] == "running"  # the last state seen, and it says it is that
    assert "SkyPilot cannot answer (ClusterNotUpError" in record["detail"]
    assert "sky jobs queue --refresh" in record["detail"]
    logs = cli.invoke(main, ["logs", "ftplan-spot", "--runs-dir", str(runs)])
    assert logs.exit_code == 0 and "SkyPilot could not stream it (ClusterNotUpError" in logs.output
    stop = cli.invoke(main, ["stop", "ftplan-spot", "--runs-dir", str(runs)])
    assert stop.exit_code == 2 and "could not cancel ftplan-spot" in stop.output
    assert len(stop.output.strip().splitlines()) == 1


class _Echo:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        return None


def test_bad_input_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _SkyCalls(monkeypatch)
    runner = SkyPilotRunner(runs_dir=tmp_path / "runs", env={})
    with pytest.raises(RunnerError, match="does not exist"):
        runner.launch(_spec(OFFERS["lambda-gh200"]), data=str(tmp_path / "missing.jsonl"))
    with pytest.raises(RunnerError, match="bucket URI"):
        SkyPilotRunner(output_uri="/local/folder")
    with pytest.raises(RunnerError, match="no SkyPilot run"):
        runner.status("nope")
    assert not calls.calls and not (tmp_path / "runs").exists()


def test_missing_skypilot_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sky", None)
    with pytest.raises(RunnerError, match=r"pip install 'ftplan\[skypilot\]'"):
        import_sky()


def test_cli_plan_to_skypilot_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The judged path: recommend --provider lambda, then launch --target skypilot --dry-run."""
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.chdir(tmp_path)
    Path("train.jsonl").write_text('{"text": "hi"}\n', encoding="utf-8")
    calls = _SkyCalls(monkeypatch)
    runner = CliRunner()
    planned = runner.invoke(
        main,
        ["recommend", "--model", "llama2-7b", "--budget", "200", "--provider", "lambda"],
    )
    assert planned.exit_code == 0, planned.output
    (plan_file,) = Path("reports").glob("*.json")
    plan = json.loads(plan_file.read_text())
    launched = runner.invoke(
        main,
        ["launch", str(plan_file), "--target", "skypilot", "--data", "./train.jsonl", "--dry-run"],
    )
    assert launched.exit_code == 0, launched.output
    assert SECRET not in launched.output
    task = _parsed(launched.stdout)
    (resources,) = task.resources
    assert str(resources.cloud) == "Lambda"
    chosen = plan["plan"]["chosen"]
    assert sum(resources.accelerators.values()) == chosen["offer"]["gpu_count"]
    assert task.num_nodes == chosen["nodes"]
    assert task.secrets == {} and "HF_TOKEN" in yaml.safe_load(launched.stdout)["secrets"]
    assert Path(task.workdir).is_dir()  # staged, so 'sky launch' of the printed YAML works
    assert (Path(task.workdir) / "ftplan_launch.json").is_file()
    validate_task(yaml.safe_load(launched.stdout), autodown=True)  # features: SkyPilot's check
    assert not calls.calls  # a dry run starts nothing
    assert {p.name for p in Path(task.workdir).parent.iterdir()} == {"workdir"}
    # without --target the Lambda offer goes to SkyPilot as well
    auto = runner.invoke(main, ["launch", str(plan_file), "--data", "train.jsonl", "--dry-run"])
    assert auto.exit_code == 0 and _parsed(auto.stdout).num_nodes == task.num_nodes


def test_refreshed_lambda_offer_launches_without_pinning_a_region(
    tmp_path: Path, data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from catalog import refresh_from_skypilot

    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(tmp_path / "cache"))
    fixture = Path(__file__).parents[1] / "fixtures" / "skypilot_catalog" / "v7"
    refresh_from_skypilot(catalog_dir=fixture, clouds=["lambda", "aws"])
    gh200 = next(o for o in list_offers(providers=["lambda"]) if o.instance_type == "gpu_1x_gh200")
    assert gh200.region in ("us-east-1", "us-west-1")
    runner = SkyPilotRunner(runs_dir=tmp_path / "runs", env={})
    config = runner.build_task(_spec(gh200), data=data, name="ftplan-x")
    assert config["resources"]["infra"] == "lambda"  # same price in every region: not pinned
    p5 = next(
        o for o in list_offers(providers=["aws"]) if o.key == "aws/ec2/p5.48xlarge/us-east-1/spot"
    )
    pinned = SkyPilotRunner(runs_dir=tmp_path / "runs", region="us-east-1", output_uri="gs://b")
    config = pinned.build_task(_spec(p5), data=data, name="ftplan-y")
    assert config["resources"]["infra"] == "aws/us-east-1"
    assert _parsed(task_yaml(config, spec=_spec(p5))).resources.pop().region == "us-east-1"


def test_cli_status_logs_and_stop_go_through_skypilot(
    tmp_path: Path, data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _SkyCalls(monkeypatch)
    runs = tmp_path / "runs"
    SkyPilotRunner(runs_dir=runs, env={}, start_follower=calls.start_follower).launch(
        _spec(OFFERS["lambda-gh200"]), data=data, name="ftplan-cli"
    )
    calls.results["request-status"] = [{"name": "ftplan-cli"}]
    calls.results["request-queue"] = [{"job_id": 1, "status": sky.JobStatus.SUCCEEDED}]
    monkeypatch.setattr("runners.skypilot.spawn_follower", calls.start_follower)
    runner = CliRunner()
    status = runner.invoke(
        main, ["status", "ftplan-cli", "--runs-dir", str(runs), "--format", "json"]
    )
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["state"] == "succeeded"
    assert json.loads(status.stdout)["target"] == "skypilot"
    assert runner.invoke(main, ["logs", "ftplan-cli", "--runs-dir", str(runs)]).exit_code == 0
    stopped = runner.invoke(main, ["stop", "ftplan-cli", "--runs-dir", str(runs)])
    assert stopped.exit_code == 0 and "cancelled ftplan-cli" in stopped.output
    assert [c[0] for c in calls.calls[-2:]] == ["tail_logs", "cancel"]
    missing = runner.invoke(
        main, ["stop", "nope", "--runs-dir", str(runs), "--target", "skypilot"]
    )
    assert missing.exit_code == 2 and "no SkyPilot run 'nope'" in missing.output


def test_hf_token_env_names_the_variable(tmp_path: Path, data: str) -> None:
    runner = SkyPilotRunner(runs_dir=tmp_path, hf_token_env="MY_HF", env={"MY_HF": SECRET})
    config = runner.build_task(_spec(OFFERS["lambda-gh200"]), data=data, name="x")
    assert config["secrets"] == {"HF_TOKEN": None} and SECRET not in json.dumps(config)
    with pytest.raises(RunnerError, match="--hf-token-env MY_HF: the variable is not set"):
        SkyPilotRunner(hf_token_env="MY_HF", env={})


def test_eval_data_gets_its_own_mount_and_flag(
    tmp_path: Path, data: str, capsys: pytest.CaptureFixture[str]
) -> None:
    heldout = tmp_path / "heldout" / "train.jsonl"  # the same file name as the training data
    heldout.parent.mkdir()
    heldout.write_text('{"text": "held out"}\n', encoding="utf-8")
    runner = SkyPilotRunner(runs_dir=tmp_path / "runs", env={}, echo=sys.stdout)
    spec = _spec(OFFERS["lambda-gh200"])
    result = runner.launch(spec, data=data, eval_data=str(heldout), dry_run=True, name="x")
    task = _parsed(capsys.readouterr().out)  # the dry run prints exactly the task YAML
    assert Path(task.workdir) == (tmp_path / "runs" / "x" / "workdir").resolve()
    assert task.file_mounts == {
        "/ftplan/data/train.jsonl": str(Path(data).resolve()),
        "/ftplan/eval/train.jsonl": str(heldout.resolve()),
    }
    assert "--data /ftplan/data/train.jsonl --eval-data /ftplan/eval/train.jsonl" in task.run
    assert json.loads(result.request_json)["file_mounts"] == task.file_mounts
    bucket = _parsed(
        task_yaml(_config(spec, data, eval_data="s3://bucket/datasets/heldout/"), spec=spec)
    )
    assert bucket.file_mounts["/ftplan/eval/heldout"] == "s3://bucket/datasets/heldout/"
    assert "--eval-data /ftplan/eval/heldout" in bucket.run
    assert "--eval-data" not in _parsed(task_yaml(_config(spec, data), spec=spec)).run


def test_missing_eval_data_starts_nothing(
    tmp_path: Path, data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _SkyCalls(monkeypatch)
    runner = SkyPilotRunner(runs_dir=tmp_path / "runs", env={})
    missing = str(tmp_path / "heldout.jsonl")
    with pytest.raises(
        RunnerError, match=r"eval data file .*heldout.jsonl does not exist.*--eval"
    ):
        runner.launch(_spec(OFFERS["lambda-gh200"]), data=data, eval_data=missing)
    assert not calls.calls and not (tmp_path / "runs").exists()
