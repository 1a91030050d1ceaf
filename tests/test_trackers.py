"""`bench run --tracker`: Ray Tune's own logger callbacks log every trial where researchers look (TensorBoard here
for real; MLflow and W&B are the optional `tracking` extra and refuse clearly when their package is missing)."""

import importlib.util
import json
import struct

import pytest

import bench
from bench.cli import main
from bench.errors import BadInput
from bench.storage.results import read_result


def scalars(event_file) -> dict[str, list[float]]:
    """tag -> values of a TensorBoard event file (TFRecord framing: length, its CRC, the Event, the Event's CRC)."""
    from tensorboardX.proto import event_pb2

    data, at, found = event_file.read_bytes(), 0, {}
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            found.setdefault(value.tag, []).append(value.simple_value)
    return found


@pytest.mark.slow
def test_tensorboard_tracker_logs_every_trial_s_metrics(tmp_path):
    runs = tmp_path / "runs"
    bench.run("synthetic", methods="random,bradley_terry", profile="tiny", seeds=2, runs_dir=runs,
              tracker="tensorboard", bootstrap=100)
    group = runs / "synthetic/tiny"
    logged = {}
    for params in (group / "ray").rglob("params.json"):
        events = list(params.parent.glob("events.out.tfevents.*"))
        assert len(events) == 1
        logged[json.loads(params.read_text())["trial"]["result_path"]] = scalars(events[0])
    results = {str(p): read_result(p) for p in (group / "trials").glob("*.json")}
    assert len(results) == 4 and set(logged) == set(results)
    for path, result in results.items():
        assert logged[path]["ray/tune/val_pair_accuracy"] == [pytest.approx(result["val_pair_accuracy"], abs=1e-6)]
        assert logged[path]["ray/tune/seconds"] == [pytest.approx(result["seconds"], abs=1e-3)]
        assert logged[path]["ray/tune/ok"] == [1.0]


@pytest.mark.parametrize("tracker, package", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_tracker_without_its_package_is_bad_input(tracker, package, tmp_path, capsys):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    runs = tmp_path / "runs"
    assert main(["run", "--task", "synthetic", "--profile", "tiny", "--tracker", tracker,
                 "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --tracker {tracker} needs the {package} package") and len(err.splitlines()) == 1
    assert not (runs / "synthetic").exists()


def test_an_unknown_tracker_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="choose one of tensorboard, mlflow, wandb"):
        bench.run("synthetic", profile="tiny", runs_dir=tmp_path / "runs", tracker="neptune")
