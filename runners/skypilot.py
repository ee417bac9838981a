"""SkyPilot runner: a plan's offer on any cloud SkyPilot provisions (AWS, GCP, Azure, Lambda,
RunPod), as a SkyPilot task built from the LaunchSpec.

Spot plans run as SkyPilot managed jobs (they recover from preemption and resume from the
checkpoints on the bucket mount). On-demand plans run on a cluster that ftplan's follower
(:mod:`runners._sky_follow`) watches: when the job ends it records how, copies the output back
when there is no bucket, then takes the cluster down (SkyPilot's autodown is the safety net).
``sky`` is imported only inside the methods that talk to SkyPilot (the skypilot extra);
building and printing the task needs nothing but the standard library and PyYAML.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from catalog import (
    DataError,
    Offer,
    Provider,
    atomic_write_text,
    expand_user,
    list_offers,
    mask_secrets,
    printable,
    read_json_file,
    sky_accelerator_for_gpu,
    sky_name_is_ambiguous,
)
from catalog._sky_vms import CLOUD_PROVIDERS
from catalog.errors import CONTROL_CHARS, CONTROL_CHARS_OR_NEWLINES
from runners._run_files import LOG_FILE, process_running
from runners._sagemaker_request import (
    SOURCE_PACKAGES,
    SPEC_FILE_IN_SOURCE,
    distribution_environment,
)
from runners._sizing import SKYPILOT_DISK, node_disk_gib
from runners._sky_follow import RECORD_FILE, REMOTE_OUTPUT_DIR, REMOTE_ROOT, update_record
from runners._sky_ops import (
    AUTODOWN_IDLE_MINUTES,
    cluster_state,
    last_seen,
    managed_job_state,
    one_line,
    recorded_outcome,
    spawn_follower,
    utc_now,
)
from runners._types import (
    LaunchResult,
    LaunchSpec,
    RunnerError,
    RunState,
    RunStatus,
    Target,
    launch_spec_to_json,
    refuse_credentials_in_uri,
)
from runners._weights import HF_TOKEN_ENV, gated_token_problem, read_hf_token
from runners.local import model_slug, run_dir_for

#: SkyPilot's cloud name for each provider it launches on: the catalog's map from SkyPilot's
#: cloud names to providers (``catalog._sky_vms.CLOUD_PROVIDERS``), turned around.
SKYPILOT_CLOUDS: dict[Provider, str] = {
    provider: cloud for cloud, (provider, _service) in CLOUD_PROVIDERS.items()
}
REMOTE_DATA_DIR = f"{REMOTE_ROOT}/data"
REMOTE_EVAL_DIR = f"{REMOTE_ROOT}/eval"  # its own folder: train and eval files may share a name
TASK_FILE = "task.yaml"
TORCHRUN_PORT = 29500  # torch.distributed's conventional rendezvous port
_BUCKET_SCHEMES = ("s3://", "gs://", "r2://", "cos://", "oci://", "https://")
_NO_REGION = ("", "unspecified")


def default_target(offer: Offer | None) -> Target:
    """Where ``ftplan launch`` runs a plan without ``--target``: by its offer."""
    if offer is None or offer.provider is Provider.LOCAL:
        return Target.LOCAL
    if offer.service == "sagemaker":
        return Target.SAGEMAKER
    return Target.SKYPILOT


def task_name(spec: LaunchSpec, *, now: dt.datetime | None = None) -> str:
    """``ftplan-<model>-<method>-<UTC time>``: a valid SkyPilot cluster and job name, and a
    valid run id (``ftplan status``, ``logs`` and ``stop`` take it back)."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S")
    return f"ftplan-{model_slug(spec.model.name)}-{spec.config.method.value}-{stamp}"


def region_to_pin(offer: Offer, offers: tuple[Offer, ...]) -> str | None:
    """The offer's region when the catalog prices that instance differently elsewhere.

    Otherwise None, and SkyPilot may fail over between regions: Lambda and RunPod charge the
    same everywhere, so pinning would only cut the capacity SkyPilot can find. On AWS, GCP and
    Azure prices differ by region, so the priced region is kept.
    """
    if offer.region in _NO_REGION:
        return None
    prices = {
        o.usd_per_hour
        for o in offers
        if o.instance_type == offer.instance_type
        and o.spot == offer.spot
        and o.region not in _NO_REGION
    }
    return offer.region if len(prices | {offer.usd_per_hour}) > 1 else None


def _data_mount(
    data: str, *, remote_dir: str = REMOTE_DATA_DIR, option: str = "--data"
) -> tuple[str, str]:
    """(remote path, source) of the training (or eval) data: a local file or a bucket URI.

    Raises:
        RunnerError: A URI with credentials, or a name holding control characters.
    """
    refuse_credentials_in_uri(data, option=option)
    if data.startswith(_BUCKET_SCHEMES):
        name = data.rstrip("/").rsplit("/", 1)[-1] or "data"
        remote = f"{remote_dir}/{name}"
        return remote, data
    path = expand_user(data).resolve()
    return f"{remote_dir}/{path.name}", str(path)


def _run_script(spec: LaunchSpec, *, data_path: str, eval_path: str | None = None) -> str:
    train = [
        "-m",
        "runners.train",
        "--spec",
        SPEC_FILE_IN_SOURCE,
        "--data",
        data_path,
        *(("--eval-data", eval_path) if eval_path is not None else ()),
        "--output-dir",
        REMOTE_OUTPUT_DIR,
        "--resume",  # a recovered spot job continues from its newest checkpoint
    ]
    args = " ".join(shlex.quote(a) for a in train)
    if spec.config.gpu_count <= 1:
        return f"set -e\npython {args}\n"
    return (
        "set -e\n"
        'MASTER_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n1)\n'
        "torchrun --nnodes=$SKYPILOT_NUM_NODES "
        "--nproc_per_node=$SKYPILOT_NUM_GPUS_PER_NODE "
        "--node_rank=$SKYPILOT_NODE_RANK "
        f"--master_addr=$MASTER_ADDR --master_port={TORCHRUN_PORT} "
        f"{args}\n"
    )


def _setup_script() -> str:
    return (
        "set -e\n"
        "python -m pip install --upgrade pip\n"
        # The project from the synced workdir, with its training extra (torch, transformers,
        # peft, bitsandbytes, accelerate); constraints pin the tested versions when present.
        "if [ -f constraints.txt ]; then C='-c constraints.txt'; else C=''; fi\n"
        "python -m pip install $C '.[train]'\n"
    )


def task_config(
    spec: LaunchSpec,
    *,
    data: str,
    name: str,
    workdir: str,
    output_uri: str | None,
    region: str | None,
    hf_token: bool,
    eval_data: str | None = None,
) -> dict[str, Any]:
    """The SkyPilot task (the YAML's content) for one run. Pure: no SkyPilot, no network.

    Args:
        spec: The run.
        data: Local JSONL file, or a bucket URI (``s3://``, ``gs://``, ...) of a file or prefix.
        name: Task name (and cluster / managed-job name).
        workdir: Local folder SkyPilot syncs to the nodes (the ftplan packages and the spec).
        output_uri: Bucket URI mounted at the run's output folder (checkpoints, metrics,
            final model); None keeps the output on the node's disk.
        region: Region to pin, or None to let SkyPilot choose within the cloud.
        hf_token: Declare ``HF_TOKEN`` as a secret (its value is added only at launch).
        eval_data: Held-out data in the same forms as ``data``, mounted under its own folder
            and passed as ``--eval-data``; None: no evaluation.

    Raises:
        RunnerError: The offer cannot be expressed for SkyPilot (no offer, a provider or GPU
            SkyPilot does not launch, a spot plan without a bucket to resume from).
    """
    offer = spec.offer
    if offer is None or offer.provider not in SKYPILOT_CLOUDS:
        where = "no offer" if offer is None else f"a {offer.provider.value} offer"
        raise RunnerError(
            f"SkyPilot cannot launch this plan: it has {where}. SkyPilot launches aws, gcp, "
            f"azure, lambda and runpod offers; use --target local or sagemaker for the others"
        )
    try:
        accelerator = sky_accelerator_for_gpu(
            offer.gpu, provider=offer.provider, instance_type=offer.instance_type
        )
    except KeyError:
        raise RunnerError(
            f"SkyPilot has no accelerator name for {offer.gpu} on {offer.provider.value} "
            f"(offer {offer.instance_type}); re-plan with another --gpu or --provider"
        ) from None
    problem = output_problem(offer, output_uri=output_uri)
    if problem is not None:
        raise RunnerError(problem)
    resources: dict[str, Any] = {
        "infra": SKYPILOT_CLOUDS[offer.provider] + (f"/{region}" if region else ""),
        "accelerators": f"{accelerator}:{spec.gpus_per_node}",
        "use_spot": offer.spot,
        "disk_size": node_disk_gib(spec, SKYPILOT_DISK),
        **network_resources(offer, nodes=spec.nodes),
    }
    if sky_name_is_ambiguous(accelerator, provider=offer.provider):
        # The accelerator name alone could land on the other part (Lambda's H100 is SXM or
        # PCIe): name the priced instance. SkyPilot then checks it against its catalog.
        resources["instance_type"] = offer.instance_type
    else:
        if offer.vcpus:
            resources["cpus"] = f"{offer.vcpus}+"
        if offer.memory_gib:
            resources["memory"] = f"{offer.memory_gib:g}+"
    data_path, data_source = _data_mount(data)
    file_mounts: dict[str, Any] = {data_path: data_source}
    eval_path: str | None = None
    if eval_data is not None:
        eval_path, eval_source = _data_mount(
            eval_data, remote_dir=REMOTE_EVAL_DIR, option="--eval-data"
        )
        file_mounts[eval_path] = eval_source
    file_mounts.update(output_mount(output_uri))
    config: dict[str, Any] = {
        "name": name,
        "workdir": workdir,
        "num_nodes": spec.nodes,
        "resources": resources,
        "file_mounts": file_mounts,
        "envs": {
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **distribution_environment(spec),
        },
        "setup": _setup_script(),
        "run": _run_script(spec, data_path=data_path, eval_path=eval_path),
    }
    if hf_token:
        # Declared without a value: SkyPilot redacts secrets, and the value never reaches
        # anything ftplan prints or writes.
        config["secrets"] = {HF_TOKEN_ENV: None}
    return checked_task(config)


#: The task keys whose text may span lines: the shell scripts ftplan writes itself.
_SCRIPT_KEYS = frozenset({"setup", "run"})


def checked_task(config: Mapping[str, Any]) -> dict[str, Any]:
    """The one gate between plan text and the SkyPilot task: every key and value of
    ``config`` checked, so that nothing taken from a plan, a path or a flag can change the
    task's shape once it is YAML.

    Keys are plain text; values are text, numbers, booleans, None, lists or mappings of the
    same; text holds no control characters or newlines (the ``setup`` and ``run`` scripts
    excepted, which ftplan writes) and no credential. Returns a plain-JSON copy.

    Raises:
        RunnerError: Naming the first value that fails and where it came from.
    """

    def check(value: Any, where: str, *, script: bool = False) -> Any:
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if not isinstance(key, str) or not key or CONTROL_CHARS_OR_NEWLINES.search(key):
                    raise RunnerError(f"SkyPilot task {where}: key {printable(key)!r} is not text")
                out[key] = check(
                    item, f"{where}.{key}", script=where == "task" and key in _SCRIPT_KEYS
                )
            return out
        if isinstance(value, list | tuple):
            return [check(item, f"{where}[{i}]") for i, item in enumerate(value)]
        if isinstance(value, str):
            unsafe = CONTROL_CHARS if script else CONTROL_CHARS_OR_NEWLINES
            if unsafe.search(value):
                raise RunnerError(
                    f"SkyPilot task {where}: {printable(value)[:120]!r} holds a newline or "
                    "control characters. To fix: rename the file, or re-plan rather than edit "
                    "the plan"
                )
            if mask_secrets(value) != value:
                raise RunnerError(
                    f"SkyPilot task {where} holds a credential ({mask_secrets(value)[:120]!r}). "
                    "To fix: pass credentials through the cloud's own configuration, not a path"
                )
            return value
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        raise RunnerError(f"SkyPilot task {where}: {printable(value)[:80]!r} is not a plain value")

    return check(config, "task")


# Clouds where SkyPilot cannot mount a bucket (sky/clouds/runpod.py: STORAGE_MOUNTING is in
# RunPod's unsupported features; it copies bucket data in with ``mode: COPY`` only). Their
# output is copied back from the node before the cluster goes down; checked against
# SkyPilot's own cloud classes by the tests.
NO_BUCKET_MOUNTS = frozenset({Provider.RUNPOD})
# AWS instances reach their priced inter-node bandwidth only over EFA, which SkyPilot attaches
# for ``network_tier: best`` (sky/clouds/aws.py); the catalog prices p4d/p5 multi-node at
# 50-400 Gbps. Azure's ND-series have InfiniBand without asking (SkyPilot offers no tier there).
FAST_INTERCONNECT_CLOUDS = frozenset({Provider.AWS})


def output_problem(offer: Offer, *, output_uri: str | None) -> str | None:
    """Why the run's output could not be kept on this cloud, with the fix; None when it can.

    A bucket is mounted at the output folder where SkyPilot can mount one; without a bucket
    (or where it cannot, RunPod) an on-demand run's output is copied back to this machine
    before its cluster goes down. Spot runs need the mounted bucket: a recovered job resumes
    from the checkpoints there.
    """
    mounts = offer.provider not in NO_BUCKET_MOUNTS
    cloud = offer.provider.value
    if offer.spot and not mounts:
        return (
            f"a spot plan on {cloud} cannot resume after a preemption: its checkpoints must be "
            f"on a bucket, and SkyPilot cannot mount buckets on {cloud}. To fix: re-plan with "
            "--no-spot (the output is copied back before the pod goes), or with another provider"
        )
    if offer.spot and output_uri is None:
        return (
            "a spot plan needs a bucket for its checkpoints, so a recovered job resumes. To "
            "fix: pass --output-dir s3://BUCKET/PREFIX (or gs://...), or re-plan with --no-spot"
        )
    if output_uri is not None and not mounts:
        return (
            f"SkyPilot cannot mount buckets on {cloud}, so --output-dir {output_uri} cannot hold "
            "the run's output. To fix: leave --output-dir out: the output (metrics, checkpoints, "
            "final model) is copied back to runs/<run id>/output before the pod goes down"
        )
    return None


def output_mount(output_uri: str | None) -> dict[str, Any]:
    """The bucket mounted at the output folder: MOUNT_CACHED writes locally and uploads in the
    background (checkpoint renames work, and a recovered spot job sees the uploaded
    checkpoints). Without a bucket the output stays on the node until ftplan copies it back."""
    if output_uri is None:
        return {}
    return {REMOTE_OUTPUT_DIR: {"source": output_uri.rstrip("/"), "mode": "MOUNT_CACHED"}}


def network_resources(offer: Offer, *, nodes: int) -> dict[str, Any]:
    """``network_tier: best`` for multi-node runs on clouds where the priced interconnect needs
    it (:data:`FAST_INTERCONNECT_CLOUDS`); nothing otherwise."""
    if nodes > 1 and offer.provider in FAST_INTERCONNECT_CLOUDS:
        return {"network_tier": "best"}
    return {}


def task_yaml(config: Mapping[str, Any], *, spec: LaunchSpec) -> str:
    """The task as YAML, headed by comments naming the priced offer.

    The values go through :func:`checked_task`; the comments are escaped to one line each; and
    the text is parsed back and compared with ``config``, so the YAML says exactly what the task
    holds (a newline in a plan's instance type cannot add a key).

    Raises:
        RunnerError: ``config`` fails :func:`checked_task` (or the YAML does not read back as
            it, which would be a bug).
    """
    import yaml  # deferred: only printing a task needs PyYAML

    checked = checked_task(config)
    offer = spec.offer
    header = [f"SkyPilot task written by ftplan for {spec.model.name}: {spec.config.label()}"]
    if offer is not None:
        kind = "spot" if offer.spot else "on-demand"
        header.append(
            f"offer: {offer.provider.value} {offer.instance_type} {offer.region}, {kind}, "
            f"{offer.usd_per_hour:.4g} USD/h per node ({offer.source}, {offer.as_of})"
        )

    class _Dumper(yaml.SafeDumper):
        """Multi-line scripts as literal blocks (``|``), as people write SkyPilot YAML."""

    def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _text)
    body = yaml.dump(checked, Dumper=_Dumper, sort_keys=False, width=100)
    text = "".join(f"# {printable(line)}\n" for line in header) + body
    if yaml.safe_load(text) != checked:
        raise RunnerError("the SkyPilot task does not read back as written; nothing was started")
    return text


def validate_task(config: Mapping[str, Any], *, autodown: bool = False) -> Any:
    """SkyPilot's own parser on the task (``sky.Task.from_yaml_config``) and its cloud feature
    check (what SkyPilot's optimizer refuses before provisioning: the task's features, such as
    multi-node and bucket mounts, and each resource's, such as spot and a network tier, plus
    autodown for clusters); returns the Task.

    Raises:
        RunnerError: SkyPilot is not installed, rejects the task, or the cloud lacks a feature.
    """
    sky = import_sky()
    from sky import clouds, exceptions

    try:
        task = sky.Task.from_yaml_config(json.loads(json.dumps(config)))
    except (ValueError, KeyError, TypeError) as exc:
        raise RunnerError(f"SkyPilot rejects the task: {exc}") from None
    needed = set(task.get_required_cloud_features())
    if autodown:
        needed.add(clouds.CloudImplementationFeatures.AUTODOWN)
    for resources in task.resources:
        try:
            resources.cloud.check_features_are_supported(
                resources, needed | set(resources.get_required_cloud_features())
            )
        except exceptions.NotSupportedError as exc:
            first = " ".join(str(exc).split())
            raise RunnerError(
                f"SkyPilot cannot run the task on {resources.cloud}: {first}"
            ) from None
    return task


def import_sky() -> Any:
    """``import sky``, or one clear line saying what to install."""
    try:
        import sky  # deferred: the skypilot extra; importing it takes seconds
    except ImportError:
        raise RunnerError(
            "launching on SkyPilot needs SkyPilot: pip install 'ftplan[skypilot]' "
            "(then 'sky check' to set up cloud credentials)"
        ) from None
    return sky


def stage_workdir(spec_json: str, workdir: Path, *, code_root: Path | None = None) -> Path:
    """Copy what the nodes need into ``workdir``: the ftplan packages, pyproject.toml,
    constraints.txt (when present) and the launch spec."""
    root = code_root or Path(__file__).resolve().parent.parent
    workdir.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in (*SOURCE_PACKAGES, "planner"):  # pyproject.toml installs all four
        shutil.copytree(root / package, workdir / package, ignore=ignore, dirs_exist_ok=True)
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        if (root / name).is_file():
            shutil.copy2(root / name, workdir / name)
    atomic_write_text(workdir / SPEC_FILE_IN_SOURCE, spec_json)
    return workdir


class SkyPilotRunner:
    """Launch a plan through SkyPilot's Python API and follow it.

    Args:
        runs_dir: Local folder for each run's record, task YAML and staged workdir.
        output_uri: Bucket prefix for the run's output and checkpoints (``s3://``, ``gs://``);
            the run writes to ``<output_uri>/<run id>``. Required for spot plans.
        region: Region to pin (default: the offer's region when its price depends on it).
        hf_token_env: Environment variable holding the Hugging Face token, sent as the
            ``HF_TOKEN`` secret; None: ``$HF_TOKEN`` when set.
        echo: Where dry runs and progress are printed (None: silent; logs go to stdout).
        env: Environment to read the token from (default: os.environ).
        start_follower: Starts the follower of an on-demand run's folder and returns its pid
            (default: ``python -m runners._sky_follow RUN_DIR``, detached; tests pass their own).
    """

    target = Target.SKYPILOT

    def __init__(
        self,
        *,
        runs_dir: str | Path = "runs",
        output_uri: str | None = None,
        region: str | None = None,
        hf_token_env: str | None = None,
        echo: TextIO | None = None,
        env: Mapping[str, str] | None = None,
        start_follower: Callable[[Path], int] | None = None,
    ) -> None:
        if output_uri is not None:
            refuse_credentials_in_uri(output_uri, option="--output-dir")
        if output_uri is not None and not output_uri.startswith(_BUCKET_SCHEMES):
            raise RunnerError(
                f"--output-dir {output_uri!r} must be a bucket URI for SkyPilot "
                f"(s3://, gs://, r2://, ...): checkpoints must outlive the nodes"
            )
        self._runs_dir = Path(runs_dir)
        self._output_uri = output_uri.rstrip("/") if output_uri else None
        self._region = region
        self._echo = echo
        self._env = dict(os.environ if env is None else env)
        self._token = read_hf_token(self._env, hf_token_env)
        self._start_follower = start_follower or spawn_follower

    def build_task(
        self, spec: LaunchSpec, *, data: str, name: str, eval_data: str | None = None
    ) -> dict[str, Any]:
        """The task for ``spec`` (see :func:`task_config`); pure apart from reading the catalog.

        Raises:
            RunnerError: The offer cannot be expressed for SkyPilot.
        """
        offer = spec.offer
        region = self._region
        if region is None and offer is not None and offer.provider in SKYPILOT_CLOUDS:
            region = region_to_pin(offer, list_offers(providers=[offer.provider]))
        return task_config(
            spec,
            data=data,
            eval_data=eval_data,
            name=name,
            workdir=str((self._runs_dir / name / "workdir").resolve()),
            output_uri=f"{self._output_uri}/{name}" if self._output_uri else None,
            region=region,
            hf_token=self._token is not None,
        )

    # -- Runner protocol ------------------------------------------------------------------
    def launch(
        self,
        spec: LaunchSpec,
        *,
        data: str,
        eval_data: str | None = None,
        dry_run: bool = False,
        name: str | None = None,
    ) -> LaunchResult:
        """Launch (spot: a managed job; on-demand: a cluster torn down after the job).

        With ``dry_run`` only the task YAML is printed; nothing is written or started.
        ``eval_data`` (a local file or bucket URI, like ``data``) is mounted and evaluated
        every ``spec.eval_every_steps`` and after the last step.

        Raises:
            RunnerError: Bad input (nothing started), SkyPilot missing, or the launch failed.
        """
        run_id = name or task_name(spec)
        for option, path in (("--data", data), ("--eval-data", eval_data)):
            if path is None or path.startswith(_BUCKET_SCHEMES) or expand_user(path).exists():
                continue
            what = "data" if option == "--data" else "eval data"
            message = (
                f"{what} file {printable(path)} does not exist. To fix: pass {option} FILE.jsonl "
                "or a bucket URI"
            )
            if not dry_run:
                raise RunnerError(message)
            sys.stderr.write(f"warning: {message}\n")  # stdout carries only the task YAML
        config = self.build_task(spec, data=data, eval_data=eval_data, name=run_id)
        token_problem = gated_token_problem(
            spec.model,
            weights=spec.checkpoint,
            random_init=spec.random_init,
            has_token=self._token is not None,
            where=f"export {HF_TOKEN_ENV}=hf_... (or --hf-token-env VAR)",
        )
        if token_problem is not None:
            if not dry_run:
                raise RunnerError(token_problem)
            sys.stderr.write(f"warning: {token_problem}\n")  # stdout carries only the task
        text = task_yaml(config, spec=spec)
        spec_json = launch_spec_to_json(spec)
        result = LaunchResult(
            run_id=run_id,
            target=Target.SKYPILOT,
            dry_run=dry_run,
            request_json=json.dumps(config, sort_keys=True),
            run_dir=str(self._runs_dir / run_id),
            spec_json=spec_json,
        )
        kind = "managed-job" if config["resources"]["use_spot"] else "cluster"
        run_dir = self._runs_dir / run_id
        if dry_run:
            self._dry_run(config, text=text, spec_json=spec_json, run_dir=run_dir, kind=kind)
            return result
        # SkyPilot refuses before anything is staged or billed
        task = validate_task(config, autodown=kind == "cluster")
        stage_workdir(spec_json, run_dir / "workdir")
        atomic_write_text(run_dir / TASK_FILE, text)
        if self._token:
            task.update_secrets({HF_TOKEN_ENV: self._token})
        record = {
            "run_id": run_id,
            "kind": kind,
            "task": str(run_dir / TASK_FILE),
            "bucket": self._output_uri is not None,
            "output": f"{self._output_uri}/{run_id}" if self._output_uri else "",
            "launched_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        atomic_write_text(run_dir / RECORD_FILE, json.dumps(record, indent=2, sort_keys=True))
        sky = import_sky()
        try:
            if kind == "managed-job":
                request = sky.jobs.launch(task, name=run_id)
            else:
                # Not torn down when the job ends: the follower records the outcome and copies
                # the output back first; autodown after idle minutes is the safety net.
                request = sky.launch(
                    task,
                    cluster_name=run_id,
                    idle_minutes_to_autostop=AUTODOWN_IDLE_MINUTES,
                    down=True,
                )
            sky.stream_and_get(request)
        except Exception as exc:  # SkyPilot raises its own exception types per cloud
            raise RunnerError(
                f"SkyPilot could not launch {run_id}: {type(exc).__name__}: {exc}"
            ) from None
        if kind == "cluster":
            update_record(run_dir, follower_pid=self._start_follower(run_dir))
        return result

    def _dry_run(
        self, config: dict[str, Any], *, text: str, spec_json: str, run_dir: Path, kind: str
    ) -> None:
        """Print the task; stage the workdir it names (so ``sky launch`` of the printed YAML
        finds it) and check it with SkyPilot's own parser and feature check where SkyPilot is
        installed. Problems are warnings on stderr: stdout carries only the task YAML."""
        stage_workdir(spec_json, run_dir / "workdir")
        try:
            validate_task(config, autodown=kind == "cluster")
        except RunnerError as exc:
            sys.stderr.write(f"warning: {exc}\n")
        sys.stderr.write(
            f"note: staged the task's workdir in {run_dir / 'workdir'}; this task, run with "
            "'sky launch' directly, is not followed by ftplan (no outcome recorded, no output "
            "copied back)\n"
        )
        self._say(text)

    def _record(self, run_id: str) -> dict[str, Any]:
        path = run_dir_for(self._runs_dir, run_id) / RECORD_FILE
        if not path.is_file():
            raise RunnerError(
                f"no SkyPilot run {run_id!r} under {self._runs_dir} (no {RECORD_FILE}); "
                f"see 'sky status' and 'sky jobs queue'"
            )
        record = read_json_file(path, what="SkyPilot run record", max_bytes=1024 * 1024)
        if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
            raise DataError(f"SkyPilot run record {str(path)!r} is not one ftplan wrote")
        return record

    def status(self, run_id: str) -> RunStatus:
        """The run's state: how it ended when ftplan's follower recorded it (the cluster may be
        gone), else from SkyPilot (managed-job queue, or the cluster's job queue). When
        SkyPilot cannot answer (its jobs controller or API server is down) the last state
        ftplan saw, saying so.

        Raises:
            RunnerError: No such run.
        """
        record = self._record(run_id)
        run_dir = run_dir_for(self._runs_dir, run_id)
        ended = recorded_outcome(record, run_id, run_dir)
        if ended is not None:
            return ended
        sky = import_sky()
        try:
            state, detail = (
                managed_job_state(sky, run_id)
                if record["kind"] == "managed-job"
                else cluster_state(sky, run_id, record)
            )
        except Exception as exc:  # controller or API server down: SkyPilot's own errors
            return last_seen(record, run_id, why=one_line(exc))
        if record.get("bucket") and state is RunState.SUCCEEDED:
            detail += f"; output in {record.get('output')}"
        seen = {"state": state.value, "detail": detail, "at": utc_now()}
        update_record(run_dir, last_seen=seen)
        return RunStatus(run_id=run_id, target=self.target, state=state, detail=detail)

    def logs(self, run_id: str, *, follow: bool = True) -> None:
        """Stream the run's log through SkyPilot; when SkyPilot cannot (the cluster is gone,
        the jobs controller is down), print the copy ftplan's follower kept, and why."""
        record = self._record(run_id)
        local = run_dir_for(self._runs_dir, run_id) / LOG_FILE
        out = self._echo or sys.stdout
        if record["kind"] == "cluster" and isinstance(record.get("final"), dict):
            self._print_copy(local, out, why="the run has ended and its cluster is down")
            return
        sky = import_sky()
        try:
            if record["kind"] == "managed-job":
                sky.jobs.tail_logs(name=run_id, follow=follow)
            else:
                sky.tail_logs(run_id, job_id=None, follow=follow)
        except Exception as exc:  # SkyPilot's errors: cluster gone, controller down
            why = f"SkyPilot could not stream it ({one_line(exc)})"
            if record["kind"] == "managed-job":
                why += "; 'sky jobs queue --refresh' starts the jobs controller again"
            self._print_copy(local, out, why=why)

    def _print_copy(self, local: Path, out: TextIO, *, why: str) -> None:
        if local.is_file() and local.stat().st_size:
            out.write(f"[ftplan] {why}; the log as ftplan's follower saved it ({local}):\n")
            with local.open(encoding="utf-8", errors="replace") as handle:
                shutil.copyfileobj(handle, out)
        else:
            out.write(f"[ftplan] {why}; ftplan kept no copy of the log ({local} is empty)\n")
        out.flush()

    def stop(self, run_id: str) -> None:
        """Cancel the managed job (gracefully: its bucket uploads finish), or the cluster's
        job: the follower then records the outcome, copies the output back and takes the
        cluster down (started again here when it is not running).

        Raises:
            RunnerError: The run has ended, or SkyPilot could not cancel it (said why).
        """
        record = self._record(run_id)
        run_dir = run_dir_for(self._runs_dir, run_id)
        if isinstance(record.get("final"), dict):
            raise RunnerError(f"run {run_id!r} has ended ({record['final'].get('state')})")
        sky = import_sky()
        try:
            if record["kind"] == "managed-job":
                sky.get(sky.jobs.cancel(name=run_id, graceful=True))
            else:
                sky.get(sky.cancel(run_id, all=True))
        except Exception as exc:  # controller down, cluster gone: SkyPilot's own errors
            raise RunnerError(
                f"SkyPilot could not cancel {run_id}: {one_line(exc)}. To fix: check "
                "'sky status' / 'sky jobs queue --refresh', then 'sky down' or 'sky jobs cancel'"
            ) from None
        pid = record.get("follower_pid")
        if record["kind"] == "cluster" and not (isinstance(pid, int) and process_running(pid)):
            update_record(run_dir, follower_pid=self._start_follower(run_dir))

    def _say(self, text: str) -> None:
        if self._echo is not None:
            self._echo.write(text if text.endswith("\n") else text + "\n")
            self._echo.flush()
