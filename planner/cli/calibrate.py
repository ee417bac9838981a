"""CLI command: ``ftplan calibrate`` (fit the estimator to measurements of one GPU).

The fit and its errors come from :func:`profiler.calibrated.recalibrate`; this module reads the
flags, writes the calibration where the estimator finds it and prints the errors before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from catalog import atomic_write_text, get_gpu, get_model, printable, same_file
from planner.cli.errors import UserInputError
from planner.cli.params import SafePath

if TYPE_CHECKING:
    from profiler.calibrated import Recalibration


@click.command("calibrate")
@click.option("--gpu", "gpu_name", required=True, help="GPU the measurements were taken on.")
@click.option(
    "--from",
    "sources",
    multiple=True,
    type=SafePath(exists=True, dir_okay=False, regular_file=True, path_type=Path),
    help="Measurement JSONL files (default: the profile store).",
)
@click.option(
    "--out",
    type=SafePath(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write (default: the user cache, where the estimator finds it).",
)
def calibrate_command(gpu_name: str, sources: tuple[Path, ...], out: Path | None) -> None:
    """Fit the estimator to stored measurements of one GPU and save the calibration.

    \b
    Examples:
      ftplan calibrate --gpu h100
      ftplan calibrate --gpu h100 --from benchmarks/results/h100-validation.jsonl
    """
    from profiler.calibrated import read_measurement_files, recalibrate
    from profiler.calibration import (
        calibration_file_name,
        calibration_to_json,
        load_calibration,
        user_calibration_dir,
    )
    from profiler.store import default_store

    gpu = get_gpu(gpu_name)
    if sources:
        records = read_measurement_files(sources, gpu, what="--from")
    else:
        records = default_store().records()
    found = recalibrate(records, get_model, gpu)
    target = out or user_calibration_dir() / calibration_file_name(gpu.name)
    for source in sources:
        if same_file(target, source):
            raise UserInputError(
                f"--out {printable(target)!r} is the measurements file being read (--from); "
                "writing the calibration there would replace them. To fix: choose another --out"
            )
    atomic_write_text(target, calibration_to_json(found.fitted), follow_link=out is not None)
    load_calibration.cache_clear()  # type: ignore[attr-defined]
    _echo_errors(gpu.name, found)
    click.echo(f"wrote {printable(target)}")


def _echo_errors(gpu_name: str, found: Recalibration) -> None:
    """What the fit used, and its errors against those of the calibration before it."""
    fitted, before = found.fitted, found.errors_before
    click.echo(f"fitted {gpu_name} on {fitted.fit_inputs} measurements")
    click.echo(
        f"before: peak memory error median {before.memory_median_pct:.1f}% (worst "
        f"{before.memory_max_pct:.1f}%), step time median {before.time_median_pct:.1f}% (worst "
        f"{before.time_max_pct:.1f}%)"
    )
    click.echo(
        f"after:  peak memory error median {fitted.memory_error_median_pct:.1f}% (worst "
        f"{fitted.memory_error_max_pct:.1f}%), step time median "
        f"{fitted.time_error_median_pct:.1f}% (worst {fitted.time_error_max_pct:.1f}%)"
    )


COMMANDS: list[click.Command] = [calibrate_command]
