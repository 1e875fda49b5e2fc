"""The plugin installed on its own with pip (a plain copy, not this checkout) is found by
labkit through its entry point, lists its components and validates the example spec."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from distill_helpers import CLI_ENV

from labkit.testing import pip_install_target, run_cli

PLUGIN = Path(__file__).parents[1]
SPEC = Path(__file__).parents[3] / "specs" / "distill_cues.json"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return pip_install_target(PLUGIN, tmp_path_factory.mktemp("site"))


# in a fresh process: where the plugin comes from, and what labkit loaded from it
PROBE = """
from labkit.api import plugin_infos, plugin_manager, registries as labkit_registries
registries = labkit_registries()
import labkit_distill
print(labkit_distill.__file__)
for info in plugin_infos(plugin_manager()):
    print(info.name, info.distribution, info.version)
for kind in ("methods", "datasets"):
    print(kind, *(e.name for e in registries[kind].entries() if e.plugin == "distill"))
"""


def test_installed_plugin_is_found_listed_and_validates_the_example_spec(site):
    env = {**CLI_ENV, "PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                           env={**os.environ, **env})
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0].startswith(str(site))  # the installed copy, not this checkout
    assert "distill labkit-distill 0.1.0" in lines
    assert "methods distill" in lines
    assert "datasets box_cue colour_cue dominoes shapes train_on_eval" in lines
    plan = run_cli("plan", str(SPEC), "--run-id", "check", env=env)
    assert plan.returncode == 0, plan.stderr
    assert "4 run(s)" in plan.stdout
