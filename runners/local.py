"""Local runner: trains a LaunchSpec on this machine's GPUs (or CPU, for smoke runs).

One GPU (or CPU): ``python -m runners.train ...``. Several GPUs: ``accelerate launch`` with a
written accelerate config: FSDP full-shard for full fine-tuning, DDP for LoRA/QLoRA (DESIGN.md,
"Cost, search, quality"). The training process runs under a small supervisor
(``runners._supervise``) that writes its log and records the exit in ``status.json``, so
``ftplan status RUN_ID`` works after the launching terminal is gone.

A run folder ``<runs_dir>/<run_id>/`` holds ``launch.json`` (the spec), ``command.json``,
``accelerate_config.yaml`` (several GPUs), ``train.log``, ``status.json`` and ``output/``
(metrics.jsonl, checkpoints/, final/, summary.json).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from catalog import (
    GIB,
    DataError,
    atomic_write_text,
    read_json_file,
)
from profiler.headroom import CUDA_CONTEXT_GIB
from runners._checkpoint import file_sha256, identity_mismatch, run_identity
from runners._distributed import (
    DEEPSPEED_CONFIG_FILE,
    accelerate_config,
    deepspeed_config_json,
    uses_accelerate,
    yaml_text,
)
from runners._process import RUN_TOKEN_ENV, signal_run_process
from runners._run_files import (
    ACCELERATE_CONFIG_FILE,
    COMMAND_FILE,
    LOG_FILE,
    METRICS_FILE,
    OUTPUT_DIR,
    SPEC_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
    is_run_process,
    process_running,
    progress_line,
    read_log,
    read_status,
    recorded_data_digest,
    run_state_without_supervisor,
    write_status,
)
from runners._types import (
    BYTE_TOKENIZER,
    CPU_DEVICE,
    CUDA_DEVICE,
    LaunchResult,
    LaunchSpec,
    RunnerError,
    RunState,
    RunStatus,
    Target,
    launch_spec_from_json,
    launch_spec_to_json,
)
from runners._weights import (
    HF_TOKEN_ENV,
    MissingWeightsError,
    check_architecture,
    check_tokenizer,
    gated_token_problem,
    is_s3,
    read_local_config,
    resolve_weights,
)

DEFAULT_RUNS_DIR = Path("runs")
# What PyTorch's caching allocator reserves beyond the peak it allocates (typically a few
# percent): a coarse margin, since the planner already sized the config against usable memory
# with headroom.
ALLOCATOR_FRAGMENTATION_GIB = 0.25
# Memory a GPU must have beyond the plan's peak allocated memory before a local run starts: the
# measured CUDA context (profiler.headroom.CUDA_CONTEXT_GIB, 0.75 GiB) and the allocator's margin.
CONTEXT_RESERVE_GIB = CUDA_CONTEXT_GIB + ALLOCATOR_FRAGMENTATION_GIB


@dataclass(frozen=True, slots=True, kw_only=True)
class HostGPUs:
    """The GPUs this machine has: one (name, total memory GiB) pair per device."""

    devices: tuple[tuple[str, float], ...]

    @property
    def count(self) -> int:
        return len(self.devices)


def probe_host_gpus() -> HostGPUs:
    """This machine's GPUs via ``nvidia-smi``, else ``torch.cuda`` (imported only here)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
            devices = []
            for line in out.strip().splitlines():
                name, mib = (part.strip() for part in line.rsplit(",", 1))
                devices.append((name, float(mib) / 1024))
            return HostGPUs(devices=tuple(devices))
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    try:
        import torch
    except ImportError:
        return HostGPUs(devices=())
    if not torch.cuda.is_available():
        return HostGPUs(devices=())
    return HostGPUs(
        devices=tuple(
            (
                torch.cuda.get_device_name(i),
                torch.cuda.get_device_properties(i).total_memory / GIB,
            )
            for i in range(torch.cuda.device_count())
        )
    )


#: What a local run id looks like: a plain folder name (letters, digits, '.', '_', '-'; no
#: leading dot, no '..'), so that an id can never name a folder outside the runs folder.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def run_dir_for(runs_dir: str | os.PathLike[str], run_id: str) -> Path:
    """The folder of run ``run_id`` inside ``runs_dir``, refusing ids that could leave it.

    Raises:
        RunnerError: If ``run_id`` is not a plain id (``../x``, ``/abs``, ``a/b``, ``..``), or
            its folder resolves outside ``runs_dir`` (a symbolic link elsewhere).
    """
    if not RUN_ID_PATTERN.match(run_id) or ".." in run_id:
        raise RunnerError(
            f"{run_id!r} is not a run id: ids are plain folder names of letters, digits, '.', "
            "'_' and '-' (as printed by 'ftplan launch'), not paths. To fix: pass the id and "
            "--runs-dir for the folder that holds it"
        )
    root = Path(runs_dir).resolve()
    folder = (root / run_id).resolve()
    if folder.parent != root:
        raise RunnerError(
            f"run {run_id!r} under {str(runs_dir)!r} links outside that folder; ftplan only "
            "reads and writes runs inside the runs folder"
        )
    return folder


#: Most characters of the model's part of a run id: ids stay short, valid folder, cluster and
#: job names whatever the model folder is called.
RUN_ID_MODEL_CHARS = 40


def model_slug(name: str) -> str:
    """``name`` as lower-case ASCII letters, digits and single hyphens, at most
    :data:`RUN_ID_MODEL_CHARS` long (accents dropped: ``Café`` -> ``cafe``), or ``model`` when
    nothing is left (a name in another script, or only punctuation)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:RUN_ID_MODEL_CHARS].strip("-") or "model"


def new_run_id(spec: LaunchSpec, *, now: dt.datetime | None = None) -> str:
    """``<model>-<method>-<UTC time>-<4 hex>``: always a valid run id
    (:data:`RUN_ID_PATTERN`), so ``launch --resume``, ``status`` and ``stop`` take it back."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S")
    model = model_slug(spec.model.name)
    return f"{model}-{spec.config.method.value}-{stamp}-{secrets.token_hex(2)}"


def accelerate_config_yaml(spec: LaunchSpec) -> str:
    """The accelerate config of a run under ``accelerate launch`` (several GPUs, or CPU offload
    on one), generated from the plan's sharding (:mod:`runners._distributed`)."""
    config = accelerate_config(spec.config, num_processes=spec.gpus_per_node)
    return "# Written by ftplan for this run.\n" + yaml_text(config)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class LocalRunner:
    """Launch on this machine. See the module docstring for the layout of a run folder.

    Args:
        runs_dir: Folder holding one sub-folder per run.
        python: Interpreter that runs the training (default: this one).
        gpu_probe: Returns this machine's GPUs (injectable for tests).
        echo: Where dry-run descriptions and followed logs are printed (None: silent).
    """

    target = Target.LOCAL

    def __init__(
        self,
        *,
        runs_dir: str | Path = DEFAULT_RUNS_DIR,
        python: str = sys.executable,
        gpu_probe: Callable[[], HostGPUs] = probe_host_gpus,
        echo: TextIO | None = None,
    ) -> None:
        self.runs_dir = Path(runs_dir)
        self._python = python
        self._probe = gpu_probe
        self._echo = echo
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # -- building -------------------------------------------------------------------------
    def command(
        self,
        spec: LaunchSpec,
        *,
        data: str,
        run_dir: Path,
        resume: bool = False,
        eval_data: str | None = None,
    ) -> tuple[str, ...]:
        """The exact argv of the run (training under accelerate for several GPUs)."""
        train_args = [
            "-m",
            "runners.train",
            "--spec",
            str(run_dir / SPEC_FILE),
            "--data",
            data,
            *(("--eval-data", eval_data) if eval_data is not None else ()),
            "--output-dir",
            str(run_dir / OUTPUT_DIR),
        ]
        if resume:
            train_args.append("--resume")
        if spec.device == CUDA_DEVICE and uses_accelerate(spec.config):
            return (
                self._python,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                str(run_dir / ACCELERATE_CONFIG_FILE),
                *train_args,
            )
        return (self._python, *train_args)

    def environment(self, spec: LaunchSpec) -> dict[str, str]:
        """Extra environment variables of the run."""
        code_root = str(Path(__file__).resolve().parent.parent)
        env = {"PYTHONPATH": code_root, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        if spec.device == CPU_DEVICE:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def check_host(self, spec: LaunchSpec) -> list[str]:
        """Refuse a run this machine cannot hold; returns warnings for softer mismatches.

        Raises:
            RunnerError: Several nodes, too few GPUs, or less GPU memory than the plan's peak.
        """
        if spec.nodes > 1:
            raise RunnerError(
                f"the plan uses {spec.nodes} nodes; the local runner drives one machine. "
                "To fix: launch with --target sagemaker, or re-plan with one node"
            )
        if spec.device == CPU_DEVICE:
            return ["device=cpu: a smoke run; speed and memory say nothing about the GPU plan"]
        host = self._probe()
        need = spec.gpus_per_node
        planned_gpu = spec.offer.gpu if spec.offer is not None else "GPU"
        if host.count < need:
            raise RunnerError(
                f"the plan needs {need} × {planned_gpu} but this machine has {host.count} GPU(s)"
                f"{' (' + ', '.join(n for n, _ in host.devices) + ')' if host.devices else ''}. "
                "To fix: run on a machine with those GPUs, use --target sagemaker, or re-plan "
                "with --provider local and the GPUs you have"
            )
        warnings: list[str] = []
        peak = spec.expected_peak_allocated_gib
        for index, (name, total_gib) in enumerate(host.devices[:need]):
            if peak is not None and total_gib < peak + CONTEXT_RESERVE_GIB:
                raise RunnerError(
                    f"GPU {index} ({name}) has {total_gib:.1f} GiB but the plan's peak is "
                    f"{peak:.1f} GiB per GPU (+{CONTEXT_RESERVE_GIB:.1f} GiB for the CUDA "
                    "context). To fix: use the planned GPU, or re-plan for this one with "
                    f"--gpu '{name}'"
                )
            if spec.offer is not None and spec.offer.gpu.lower() not in name.lower():
                warnings.append(
                    f"GPU {index} is {name}, the plan priced {spec.offer.gpu}: "
                    "expect different speed"
                )
        return warnings

    # -- Runner protocol ------------------------------------------------------------------
    def launch(
        self,
        spec: LaunchSpec,
        *,
        data: str,
        eval_data: str | None = None,
        dry_run: bool = False,
        resume_run_id: str | None = None,
    ) -> LaunchResult:
        """Start the run in the background (or only describe it with ``dry_run``).

        Args:
            spec: The run.
            data: Local JSONL file.
            eval_data: Held-out local JSONL file, evaluated every ``spec.eval_every_steps``
                and after the last step (``--eval-data`` of runners.train); None: no eval.
            dry_run: Print and return the command, environment and spec; start nothing.
            resume_run_id: Continue that run (its folder, newest checkpoint) instead of a new one.

        Raises:
            RunnerError: If the data or eval data file is missing, the weights are not the
                planned model (or their tokenizer does not load), or the host lacks the planned
                GPUs/memory.
        """
        if not Path(data).is_file():
            raise RunnerError(
                f"data file {data!r} does not exist or is not a regular file. To fix: pass "
                "--data with a JSONL file of 'text', 'prompt'/'completion' or 'messages' lines"
            )
        if eval_data is not None and not Path(eval_data).is_file():
            raise RunnerError(
                f"eval data file {eval_data!r} does not exist or is not a regular file. To fix: "
                "pass --eval-data with a held-out JSONL file of 'text', 'prompt'/'completion' or "
                "'messages' lines, or leave it out"
            )
        warnings: list[str] = []
        if resume_run_id is not None:
            try:
                self._check_resumable(resume_run_id, spec, data=data)
            except RunnerError as exc:
                if not dry_run or not run_dir_for(self.runs_dir, resume_run_id).is_dir():
                    raise
                warnings.append(f"it could not resume {resume_run_id}: {exc}")
        try:
            warnings += self.check_host(spec)
        except RunnerError as exc:
            if not dry_run:
                raise
            warnings.append(f"this machine could not run it: {exc}")
        try:
            spec = prepare_weights(spec)
        except MissingWeightsError as exc:
            if not dry_run:
                raise
            warnings.append(f"this machine could not run it: {exc}")
        run_id = resume_run_id or new_run_id(spec)
        run_dir = run_dir_for(self.runs_dir, run_id)
        argv = self.command(
            spec,
            data=str(Path(data).resolve()),
            eval_data=None if eval_data is None else str(Path(eval_data).resolve()),
            run_dir=run_dir,
            resume=resume_run_id is not None,
        )
        env = self.environment(spec)
        spec_json = launch_spec_to_json(spec)
        result = LaunchResult(
            run_id=run_id,
            target=Target.LOCAL,
            dry_run=dry_run,
            command=argv,
            env=tuple(sorted(env.items())),
            run_dir=str(run_dir),
            log_path=str(run_dir / LOG_FILE),
            spec_json=spec_json,
        )
        token_problem = gated_token_problem(
            spec.model,
            weights=spec.checkpoint,
            random_init=spec.random_init,
            has_token=_local_token_available(),
            where=f"export {HF_TOKEN_ENV}=hf_... or log in with 'hf auth login'",
        )
        if token_problem is not None:
            if not dry_run:
                raise RunnerError(token_problem)
            warnings.append(token_problem)
        for warning in warnings:
            self._say(f"warning: {warning}")
        if dry_run:
            self._say(describe(result))
            return result
        self._start(result, spec, env, data=data)
        return result

    def _check_resumable(self, run_id: str, spec: LaunchSpec, *, data: str) -> None:
        """Refuse to resume a run that is still going (a second trainer would write into the
        same folder), or with another plan or data than the run's own launch record
        (``launch.json`` and the data digest in ``command.json``): its checkpoints would
        resume into something else, or be pruned by a run starting over.

        Raises:
            RunnerError: No such run, it is running, or the plan or data differ.
        """
        run_dir = run_dir_for(self.runs_dir, run_id)
        if not (run_dir / SPEC_FILE).is_file():
            raise RunnerError(
                f"no local run {run_id!r} to resume under "
                f"{str(self.runs_dir)!r}. To fix: check the id (ftplan status)"
            )
        current = self.status(run_id)
        if not current.state.finished:
            raise RunnerError(
                f"run {run_id!r} is still {current.state.value} (pid {current.pid}): a second "
                "trainer would write into the same folder. To fix: wait for it to end, or "
                f"'ftplan stop {run_id}' and resume once it has stopped"
            )
        recorded = launch_spec_from_json(
            read_json_file(run_dir / SPEC_FILE, what="launch record", max_bytes=4 * 1024 * 1024),
            where=f"launch record {str(run_dir / SPEC_FILE)!r}",
        )
        digest = recorded_data_digest(run_dir)
        mine = run_identity(spec, world_size=spec.config.gpu_count, data_sha256=digest or "")
        theirs = run_identity(
            recorded, world_size=recorded.config.gpu_count, data_sha256=digest or ""
        )
        if digest is not None:
            mine["data_sha256"] = file_sha256(Path(data))
        problem = identity_mismatch(theirs, mine)
        if problem is not None:
            raise RunnerError(
                f"run {run_id!r} was launched with another plan or data ({problem}); resuming "
                "would continue its checkpoints as something else. To fix: resume with the plan "
                f"file and --data it was launched with (recorded in {str(run_dir)!r}: "
                f"{SPEC_FILE}, {COMMAND_FILE}), or start a new run without --resume"
            )

    def status(self, run_id: str) -> RunStatus:
        """Read ``status.json``; a run whose processes vanished without an exit is failed.

        Raises:
            RunnerError: If there is no such run folder.
        """
        run_dir = run_dir_for(self.runs_dir, run_id)
        path = run_dir / STATUS_FILE
        if not path.is_file():
            raise RunnerError(
                f"no local run {run_id!r} under {str(self.runs_dir)!r}. To fix: "
                "check the id printed by 'ftplan launch' (or pass --runs-dir)"
            )
        child = self._children.get(run_id)
        if child is not None:
            child.poll()  # reap a finished supervisor so its pid reads as gone
        data = read_status(path)
        state = data.state
        detail = data.detail
        supervisor = data.supervisor(run_dir)
        if (
            not state.finished
            and supervisor is not None
            and not is_run_process(supervisor)  # gone, or its pid reused since
            and (child is None or child.returncode is not None)
        ):
            data = read_status(path)  # it may have just finished
            state, detail = data.state, data.detail
            if not state.finished:
                state, detail = run_state_without_supervisor(
                    data, run_dir / OUTPUT_DIR / METRICS_FILE, run_dir=run_dir
                )
        # The run's own folder, never a path status.json names: a status file is data.
        progress = progress_line(run_dir / OUTPUT_DIR / METRICS_FILE)
        summary = run_dir / OUTPUT_DIR / SUMMARY_FILE
        return RunStatus(
            run_id=run_id,
            target=Target.LOCAL,
            state=state,
            detail="; ".join(x for x in (detail, progress) if x),
            started_at=data.started_at,
            ended_at=data.ended_at,
            log_path=str(run_dir / LOG_FILE),
            pid=data.pid,
            summary_path=str(summary) if summary.is_file() else "",
        )

    def wait(self, run_id: str, *, poll_s: float = 2.0, follow: bool = True) -> RunStatus:
        """Block until the run finishes, echoing new log lines when ``follow``."""
        for line in self.follow(run_id, poll_s=poll_s):
            if follow:
                self._say(line)
        return self.status(run_id)

    def follow(self, run_id: str, *, poll_s: float = 2.0) -> Iterator[str]:
        """Yield the run's log lines as they appear, until the run has finished."""
        log_path = run_dir_for(self.runs_dir, run_id) / LOG_FILE
        position = 0
        while True:
            finished = self.status(run_id).state.finished
            while True:  # everything written so far, a bounded piece at a time
                lines, position, more = read_log(log_path, position)
                yield from lines
                if not more:
                    break
            if finished:
                return
            time.sleep(poll_s)

    def logs(self, run_id: str, *, follow: bool = False, poll_s: float = 2.0) -> Iterator[str]:
        """The run's ``train.log`` lines; ``follow`` keeps reading until the run has finished.

        Raises:
            RunnerError: If there is no such run.
        """
        self.status(run_id)  # raises for an unknown run
        if follow:
            yield from self.follow(run_id, poll_s=poll_s)
            return
        log_path = run_dir_for(self.runs_dir, run_id) / LOG_FILE
        position, more = 0, True
        while more:
            lines, position, more = read_log(log_path, position)
            yield from lines

    def stop(self, run_id: str) -> None:
        """SIGTERM to the run's supervisor, which forwards it (or, when the supervisor was
        killed, to the training process itself): the training process finishes its step,
        writes a checkpoint and exits; ``status`` then says ``stopped``.

        A pid in ``status.json`` is signalled only when that process is the run's own
        (:func:`runners._process.process_problem`): a stale pid after a reboot, or a status
        file edited by hand, never stops an unrelated process.

        Raises:
            RunnerError: If the run is unknown, already finished, or its processes are not
                the run's.
        """
        status = self.status(run_id)
        run_dir = run_dir_for(self.runs_dir, run_id)
        data = read_status(run_dir / STATUS_FILE)
        candidates = [
            process
            for process in (data.supervisor(run_dir), data.trainer(run_dir))
            if process is not None and process_running(process.pid)
        ]
        if status.state.finished or not candidates:
            why = f" ({status.detail})" if status.detail else ""
            raise RunnerError(
                f"run {run_id!r} is {status.state.value}{why}; there is nothing to stop"
            )
        problems = []
        for process in candidates:
            try:
                problem = signal_run_process(process, signal.SIGTERM)
            except ProcessLookupError:
                problem = f"process {process.pid} is gone"
            if problem is None:
                return
            problems.append(problem)
        raise RunnerError(
            f"run {run_id!r}: {problems[0]}, so nothing was signalled. To fix: if the run is "
            "still training, stop its process yourself (see 'ftplan logs'); ftplan only "
            "signals the processes it started"
        )

    def list_runs(self) -> list[RunStatus]:
        """Every run under ``runs_dir``, newest first."""
        if not self.runs_dir.is_dir():
            return []
        found = []
        for child in self.runs_dir.iterdir():
            if not (RUN_ID_PATTERN.match(child.name) and (child / STATUS_FILE).is_file()):
                continue
            try:
                found.append(self.status(child.name))
            except (DataError, RunnerError):
                continue  # a damaged or foreign folder does not hide the other runs
        return sorted(found, key=lambda r: (r.started_at, r.run_id), reverse=True)

    # -- effects --------------------------------------------------------------------------
    def _start(
        self, result: LaunchResult, spec: LaunchSpec, env: dict[str, str], *, data: str
    ) -> None:
        run_dir = Path(result.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / SPEC_FILE, result.spec_json + "\n")
        if spec.device == CUDA_DEVICE and uses_accelerate(spec.config):
            atomic_write_text(run_dir / ACCELERATE_CONFIG_FILE, accelerate_config_yaml(spec))
            if spec.config.sharding.deepspeed:
                atomic_write_text(
                    run_dir / DEEPSPEED_CONFIG_FILE,
                    deepspeed_config_json(
                        spec.config,
                        grad_accum_steps=spec.grad_accum_steps,
                        learning_rate=spec.peak_learning_rate,
                    ),
                )
        record = {
            "argv": list(result.command),
            "env": dict(result.env),
            "data_sha256": file_sha256(Path(data)),
        }
        atomic_write_text(run_dir / COMMAND_FILE, json.dumps(record, indent=2) + "\n")
        token = secrets.token_hex(16)  # proves which process is this run's (ftplan stop)
        write_status(
            run_dir,
            {
                "run_id": result.run_id,
                "state": RunState.PENDING.value,
                "log_path": result.log_path,
                "started_at": _now(),
                "command": list(result.command),
                "run_token": token,
            },
        )
        supervisor = [
            self._python,
            "-m",
            "runners._supervise",
            str(run_dir),
            "--",
            *result.command,
        ]
        child = subprocess.Popen(  # noqa: S603 - argv built above, no shell
            supervisor,
            env={**os.environ, **env, RUN_TOKEN_ENV: token},
            cwd=str(run_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # survives Ctrl-C in the launching terminal
        self._children[result.run_id] = child
        self._say(f"started run {result.run_id} (log: {result.log_path})")

    def _say(self, text: str) -> None:
        if self._echo is not None:
            print(text, file=self._echo, flush=True)


def prepare_weights(spec: LaunchSpec) -> LaunchSpec:
    """The spec with a local ``--weights`` folder made absolute (the run's working folder is its
    run folder) after checking its architecture and tokenizer; hub ids are checked by the
    training process before any weights load.

    Raises:
        RunnerError: Missing folder, another architecture, or a tokenizer that does not load.
    """
    if spec.checkpoint is None:
        return spec
    if is_s3(spec.checkpoint):
        raise RunnerError(
            f"--weights {spec.checkpoint!r} is on S3; a local run reads a local folder or a hub "
            "id. To fix: copy it down (aws s3 sync URI DIR) and pass --weights DIR"
        )
    weights = resolve_weights(spec.checkpoint)
    if Path(weights).is_dir():
        check_architecture(spec.model, read_local_config(weights), source=spec.checkpoint)
        if not spec.random_init and spec.tokenizer != BYTE_TOKENIZER:
            check_tokenizer(weights)
    return dataclasses.replace(spec, checkpoint=weights)


def _local_token_available() -> bool:
    """Whether a Hugging Face token reaches a local run: ``$HF_TOKEN`` or the login's cache
    (huggingface_hub reads both)."""
    if os.environ.get(HF_TOKEN_ENV):
        return True
    try:
        from huggingface_hub import get_token  # deferred: the train extra's
    except ImportError:
        return False
    return bool(get_token())


def describe(result: LaunchResult) -> str:
    """Human-readable dry run: the command, its environment and the spec."""
    import shlex

    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in result.env)
    return "\n".join(
        [
            f"run id:  {result.run_id}",
            f"run dir: {result.run_dir}",
            f"command: {env} {shlex.join(result.command)}",
            "launch spec:",
            result.spec_json,
        ]
    )
