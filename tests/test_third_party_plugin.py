"""A real third-party package, installed with pip, adds a model through an entry point."""
import json
from pathlib import Path

import pytest

from labkit.cli import plugins
from labkit.testing import pip_install_target, run_cli, run_here

EXAMPLE = Path(__file__).parents[1] / "examples" / "labkit-example-plugin"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return pip_install_target(EXAMPLE, tmp_path_factory.mktemp("site"))


def env(site, **extra):
    return {"PYTHONPATH": str(site), "LABKIT_DISABLE_PLUGIN_AUTOLOAD": "", **extra}


def test_installed_plugin_is_listed_with_its_version_and_used_in_a_spec(site, tmp_path,
                                                                         monkeypatch):
    # a fresh interpreter finds it through PYTHONPATH and its entry point
    listing = run_cli("list", "models", "tiny*", env=env(site))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith("tiny_convnet  [example]  width=8")

    # the rest in this process, the package found on sys.path by the same entry point
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LABKIT_DISABLE_PLUGIN_AUTOLOAD", "")
    plugins.use()
    try:
        listed = run_here("plugins")
        assert "example  labkit-example-plugin 0.3.0" in listed.stdout
        hello = run_here("example-hello", "lab")
        assert hello.returncode == 0 and hello.stdout == "hello, lab, from labkit-example-plugin\n"

        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"model": {"name": "tiny_convnet", "width": 4},
                                    "epochs": 1, "logs_dir": str(tmp_path / "logs")}))
        result = run_here("run", str(spec), "--run-id", "P", "--quiet")
        assert result.returncode == 0, result.stderr
    finally:
        monkeypatch.undo()
        plugins.use()  # the built-ins alone again, for the tests after this one
    (config,) = (tmp_path / "logs").rglob("config.json")
    recorded = json.loads(config.read_text())
    assert recorded["plugins"]["example"] == "0.3.0"
    assert recorded["config"]["model"] == {"name": "tiny_convnet", "width": 4}


def test_kill_switch_and_allow_list(site):
    off = run_cli("list", "models", "tiny*", env=env(site, LABKIT_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert off.returncode == 2 and "no models match" in off.stderr
    allowed = run_cli("list", "models", "tiny*",
                      env=env(site, LABKIT_DISABLE_PLUGIN_AUTOLOAD="1", LABKIT_PLUGINS="example"))
    assert allowed.returncode == 0 and "tiny_convnet" in allowed.stdout
