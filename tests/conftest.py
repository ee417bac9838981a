"""Test-session setup shared by every module.

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
