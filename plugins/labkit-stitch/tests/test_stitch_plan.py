"""`labkit plan` checks every stitch cell's cut shapes on the architectures, before any
training, and names the cells that cannot stitch."""
import re
from pathlib import Path

from labkit.testing import run_here

SPEC = Path(__file__).resolve().parents[3] / "specs" / "stitch_unstitchable.json"
ENV = {"LABKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "LABKIT_PLUGINS": "stitch"}  # this plugin only


def test_plan_names_the_unstitchable_cells_and_trains_nothing(tmp_path, registries):
    result = run_here("plan", str(SPEC), cwd=tmp_path, env=ENV)
    assert result.returncode == 0, result.stderr
    # the stitch runs, after the one network given by spec that they train first (#1)
    assert re.search(r"^\s*1 [0-9a-f]{10}\s+\S+\s+#2-#13 ", result.stdout, re.M)
    rows = {int(m.group(1)): m.group(2) for m in
            re.finditer(r"^\s*(\d+) [0-9a-f]{10}\s+\S+\s+-\s+\S+\s+\S+\s+(\S+)",
                        result.stdout, re.M)}
    notes = {int(m.group(1)) for m in re.finditer(r"^#(\d+): unstitchable: cannot stitch an "
                                                  r"activation of shape \(32,\)", result.stdout,
                                                  re.M)}
    assert len(rows) == 12
    assert notes == {i for i, layer in rows.items() if layer == "flatten"} and len(notes) == 4
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.pt"))
