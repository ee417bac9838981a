"""Test-session setup shared by every module.

Every test sees its own empty ftplan cache (``$FTPLAN_CACHE_DIR`` in the test's ``tmp_path``,
the ``user_cache`` fixture), never the user's ``~/.cache/ftplan``, and starts with no calibration
or profile store loaded by a test before it.

SkyPilot keeps its state and its price catalog under ``$SKY_RUNTIME_DIR/.sky`` (default ``~``).
Tests point it, before anything imports ``sky``, at a private folder whose catalog is the
fixture copy of SkyPilot's catalog, so SkyPilot's parser validates regions offline and no test
reads or writes the user's ~/.sky.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

SKYPILOT_CATALOG_FIXTURE = Path(__file__).parent / "fixtures" / "skypilot_catalog" / "v7"


def _private_sky_runtime() -> str:
    root = tempfile.mkdtemp(prefix="ftplan-sky-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    catalogs = Path(root) / ".sky" / "catalogs"
    # SkyPilot reads <runtime>/.sky/catalogs/<its schema version>; v7 and v8 share the columns.
    for version in ("v7", "v8"):
        shutil.copytree(SKYPILOT_CATALOG_FIXTURE, catalogs / version)
    return root


os.environ["SKY_RUNTIME_DIR"] = _private_sky_runtime()


import pytest  # noqa: E402 - after the environment above, which must precede any sky import


@pytest.fixture(autouse=True)
def _no_real_skypilot_follower(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test starts the detached follower of an on-demand SkyPilot run: it would talk to a
    real SkyPilot API server (and start one). Tests pass ``start_follower`` or patch this."""
    import runners.skypilot

    def refuse(run_dir: Path) -> int:
        raise AssertionError(f"a test tried to start SkyPilot's follower for {run_dir}")

    monkeypatch.setattr(runners.skypilot, "spawn_follower", refuse)


def _forget_loaded_user_state() -> None:
    from profiler.calibration import load_calibration
    from profiler.store import default_store

    load_calibration.cache_clear()  # type: ignore[attr-defined]
    default_store.cache_clear()


@pytest.fixture(autouse=True)
def user_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """This test's ftplan cache folder (not created): empty, private, forgotten afterwards.

    It lies beside ``tmp_path``, not in it, so tests that list what a command wrote into
    ``tmp_path`` do not see the template cache the HTML report keeps.
    """
    cache = tmp_path_factory.mktemp("ftplan-cache") / "cache"
    monkeypatch.setenv("FTPLAN_CACHE_DIR", str(cache))
    _forget_loaded_user_state()
    yield cache
    _forget_loaded_user_state()
