"""Test-suite setup: no entry-point plugins unless a test asks for one; a cache of
validated grids of the session's own (labkit.cli.spec_cache), removed at the end."""
import atexit
import os
import shutil
import tempfile

from labkit.testing import isolate_plugins

isolate_plugins()
# this process and every labkit it starts cache into a folder of this session's
_CACHE = tempfile.mkdtemp(prefix="labkit-test-cache-")
os.environ["LABKIT_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
# threads competing with another process slow every step by orders of magnitude
os.environ["OMP_NUM_THREADS"] = "1"

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.cli import plugins

torch.set_num_threads(1)


@pytest.fixture
def registries():
    """Fresh registries with the built-ins only."""
    return plugins.use()


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec dict to tmp_path/spec.json, with logs under tmp_path/logs."""
    def write(spec: dict, name: str = "spec.json") -> Path:
        spec = {"logs_dir": str(tmp_path / "logs"), **spec}
        path = tmp_path / name
        path.write_text(json.dumps(spec))
        return path
    return write
