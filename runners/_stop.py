"""When to checkpoint: the interval (steps or minutes, never shorter than writing one takes) and
a stop request (SIGTERM from a spot reclaim or StopTrainingJob, SIGINT from Ctrl-C) that makes
the run save a checkpoint after the current step and exit.

SageMaker sends SIGTERM and kills the job 120 seconds later (StopTrainingJob; managed spot
interruptions likewise): a step plus one checkpoint write must fit in that grace period.
"""

from __future__ import annotations

import re
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(steps?|m|min|minutes?|h|hours?)?\s*$", re.IGNORECASE)


class NonFiniteLoss(Exception):
    """The loss became NaN or infinite: the run stops at once without saving (the weights that
    produced it are not worth keeping) and ends failed; its newest checkpoint is older."""

    def __init__(self, *, step: int, loss: float, last_checkpoint_step: int | None) -> None:
        kept = (
            f"the newest checkpoint is step {last_checkpoint_step}"
            if last_checkpoint_step is not None
            else "no checkpoint was written"
        )
        super().__init__(
            f"the loss became {loss} at step {step}; training stopped without saving ({kept}). "
            "To fix: lower the learning rate or check the data, then launch again (--resume "
            "continues from the newest checkpoint)"
        )
        self.step = step
        self.loss = loss


class TrainingStopped(Exception):
    """The run saved a checkpoint and stopped on a signal (exit code 128 + signum)."""

    def __init__(self, *, signum: int, step: int) -> None:
        super().__init__(f"stopped by signal {signum} after step {step}")
        self.signum = signum
        self.step = step


def parse_checkpoint_every(text: str) -> tuple[int | None, float | None]:
    """``"200steps"`` / ``"200"`` -> (200, None); ``"15m"`` -> (None, 15.0); ``"2h"`` ->
    (None, 120.0).

    Raises:
        ValueError: If the text is not a positive count of steps or minutes/hours.
    """
    match = _EVERY.match(text)
    value = float(match.group(1)) if match else 0.0
    if not match or value <= 0:
        raise ValueError(
            f"--checkpoint-every {text!r} is not an interval; use N steps (e.g. 200steps) or "
            "minutes (e.g. 15m)"
        )
    unit = (match.group(2) or "steps").lower()
    if unit.startswith("step"):
        if not value.is_integer():
            raise ValueError(f"--checkpoint-every {text!r}: a step count must be a whole number")
        return int(value), None
    return None, value * 60 if unit.startswith("h") else value


@dataclass(slots=True, kw_only=True)
class CheckpointClock:
    """Decides when a checkpoint is due: every ``every_steps`` optimizer steps and/or every
    ``every_s`` seconds, but never sooner after the last one than writing it took."""

    every_steps: int | None
    every_s: float | None
    last_save_s: float
    write_s: float = 0.0
    _raised: bool = field(default=False)

    def due(self, *, done: int, now_s: float) -> bool:
        since = now_s - self.last_save_s
        wanted = (self.every_steps is not None and done % self.every_steps == 0) or (
            self.every_s is not None and since >= self.every_s
        )
        return wanted and since >= self.write_s

    def saved(self, *, now_s: float, write_s: float) -> bool:
        """Record a save; True the first time the write took longer than the interval."""
        self.last_save_s = now_s
        self.write_s = write_s
        shorter = self.every_s is not None and self.every_s < write_s
        if shorter and not self._raised:
            self._raised = True
            return True
        return False


@dataclass(slots=True)
class StopRequest:
    """SIGTERM/SIGINT handlers that only record the signal; the loop checks it between steps."""

    signum: int | None = None
    _previous: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def install(cls) -> StopRequest:
        request = cls()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                request._previous[sig] = signal.signal(sig, request._record)
        return request

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, *, accelerator: Any, device: str) -> int | None:
        """The signal, agreed across ranks (any rank's request stops all of them together, so
        the checkpoint's collectives line up); None to go on."""
        return self.agreed_with(accelerator=accelerator, device=device, nonfinite=False)[0]

    def agreed_with(
        self, *, accelerator: Any, device: str, nonfinite: bool
    ) -> tuple[int | None, bool]:
        """(the signal or None, whether any rank's loss is not finite), agreed across ranks in
        one all-reduce per step, so every rank stops at the same step."""
        if accelerator is None:
            return self.signum, nonfinite
        import torch
        import torch.distributed as dist

        flags = torch.tensor([self.signum or 0, int(nonfinite)], device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum, bad = (int(x) for x in flags.tolist())
        return signum or None, bool(bad)
