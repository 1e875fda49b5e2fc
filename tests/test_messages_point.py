"""Messages that point the right way (issue 25 item 7): run-ids of this spec's runs only,
channels named when channels differ, a download fix that says where "download" goes,
and a one-run grid labelled by its model."""
from labkit.analyses.evaluate import shape_mismatch
from labkit.cli.commands.common import load_runs
from labkit.core.errors import UserError
from labkit.data.torchvision_sets import _MNIST, _load
from labkit.store.identity import display_labels
from labkit.testing import invoke

GRID = {"model": "mlp_s", "dataset": {"name": "digits", "resolution": 8}, "epochs": 1,
        "seed": [0, 1]}


def test_status_of_a_run_id_never_used_names_the_run_ids_of_these_runs_only(write_spec):
    spec = write_spec(GRID)
    mine = load_runs(str(spec), "A")[0].directory
    mine.mkdir(parents=True)  # this spec's first run exists under run-id A
    sibling = mine.parent.parent / "Z" / "some_other_run"  # another spec's run, run-id Z
    sibling.mkdir(parents=True)
    result = invoke("status", str(spec), "--run-id", "B")
    assert result.exit_code == 0, result.output
    assert "run-ids these runs were trained under: A" in result.output
    assert "Z" not in result.output.split("trained under:")[1]


def test_evaluate_names_channels_when_channels_differ_and_the_resolution_otherwise():
    channels = shape_mismatch({"name": "colour_cue"}, (3, 16), (1, 16))
    assert "3-channel images" in channels and "1-channel" in channels
    assert "does not convert channels" in channels and "resolution" not in channels
    resolution = shape_mismatch({"name": "mnist"}, (1, 28), (1, 16))
    assert "give its resolution" in resolution
    assert '--on \'{"name": "mnist", "resolution": 16}\'' in resolution
    assert shape_mismatch({"name": "mnist"}, (1, 16), (1, 16)) is None


def test_a_missing_download_says_how_to_allow_it_on_the_command_line(tmp_path):
    try:
        _load(_MNIST, str(tmp_path), download=False)
    except UserError as error:
        message = str(error)
    else:
        raise AssertionError("no files, yet MNIST loaded")
    assert "labkit evaluate --on '{\"name\": \"mnist\", \"download\": true}'" in message
    assert "in the spec's dataset object" not in message


def test_a_grid_of_one_run_is_labelled_by_its_model():
    labels, keys = display_labels([{"model": {"name": "cnn_s", "width": 8}, "seed": 0}])
    assert labels == ["cnn_s"] and keys == []
