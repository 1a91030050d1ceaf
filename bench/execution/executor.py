"""The Tune executor: the only place that starts Ray. It runs lists of trial specs, each list through its own trial
function (a module-level `fn(spec_json, result_path) -> result`, e.g. fit trials or a task's re-alignment trials), as
one Tune run, each trial writing its own result file; the runs directory, not Ray, is the source of truth."""

from __future__ import annotations

import itertools
import logging
import os
import pickle
from pathlib import Path
from typing import Callable

import torch
from ray import tune

from bench.errors import BadInput
from bench.execution.plan import TrialBatch, check_resources, gpu_share, local_cpus  # noqa: F401 (validation lives with the plan)
from bench.storage.artifacts import content_hash
from bench.storage.results import record_failures

TrialFn = Callable[[dict, Path], dict]


def init_ray(address: str | None, gpus_per_trial: float) -> None:
    """Start local Ray (all cores, GPUs only if present) or join a cluster; check GPU requests can be met, so that
    no trial waits forever for a GPU that does not exist."""
    import ray  # the package itself only here: `tune` above does not start anything

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:
            raise BadInput(
                f"cannot reach a Ray cluster at {address!r} ({type(exc).__name__}); start one with "
                f"`ray start --head`, or drop --address to run locally."
            ) from None
    else:
        ray.init(num_cpus=local_cpus(), num_gpus=torch.cuda.device_count(), **kwargs)
    available = ray.cluster_resources().get("GPU", 0)
    if gpus_per_trial > available:
        ray.shutdown()
        raise BadInput(
            f"--gpus-per-trial {gpus_per_trial:g} asks for GPUs but this Ray cluster has {available:g}; "
            f"use --gpus-per-trial 0 or a cluster with GPUs."
        )


# Tune pickles its callbacks, so a callback holds only a number; the driver-side function it calls (with the ended
# trial's config) lives here, and so do the errors of the trials it saw fail: {listener: {result path: cause}}.
_ON_TRIAL_DONE: dict[int, Callable[[dict], None]] = {}
_TRIAL_ERRORS: dict[int, dict[str, str]] = {}
_listener_ids = itertools.count()
# How often Tune starts a trial again after its worker died (killed, e.g. by the out-of-memory killer) or its result
# could not be written; a trial's own exceptions never reach Tune (they are recorded in its result file).
RETRIES = 1


class TrialDone(tune.Callback):
    """Calls a driver-side function with the trial's config (e.g. to advance a progress bar) whenever a trial
    completes or fails, and keeps the cause of each failed trial."""

    def __init__(self, on_done: Callable[[dict], None] | None):
        self.listener = next(_listener_ids)
        _TRIAL_ERRORS[self.listener] = {}
        if on_done is not None:
            _ON_TRIAL_DONE[self.listener] = on_done

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.listener in _ON_TRIAL_DONE:
            _ON_TRIAL_DONE[self.listener](trial.config)

    def on_trial_error(self, iteration, trials, trial, **info):
        _TRIAL_ERRORS.setdefault(self.listener, {})[trial.config["trial"]["result_path"]] = failure_cause(trial)
        self.on_trial_complete(iteration, trials, trial, **info)


def failure_cause(trial) -> str:
    """Why a Tune trial failed, in one sentence, from the error Ray stored for it (which a full disk may have left
    empty or truncated: then that is said instead of raising)."""
    import ray.exceptions  # Ray itself only where trials run

    try:
        error = _pickled_error(trial)
    except Exception as exc:  # EOFError: Ray's own error file was cut short, e.g. by a full disk
        return (f"the trial failed and Ray could not read back its error ({type(exc).__name__} reading "
                f"{trial.pickled_error_file}; is the disk full?)")
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, BaseException):
        error = error.cause
    if isinstance(error, ray.exceptions.RayActorError):
        return ("its Ray worker process died before the trial finished (killed by a signal, e.g. by the "
                f"out-of-memory killer, {RETRIES + 1} time(s)); give trials more memory, or run fewer at once")
    if error is None:
        return "the trial failed without an error Ray could store"
    return f"{type(error).__name__}: {error}"


def _pickled_error(trial):
    """The error Tune pickled for a failed trial. Tune writes it into the driver's staging directory just before it
    calls on_trial_error and copies it to the storage path only at the next sync, so read the staged file first."""
    import ray.cloudpickle as cloudpickle

    staged = trial.pickled_error_file
    if staged and Path(staged).exists():
        with open(staged, "rb") as fh:
            return cloudpickle.load(fh)
    return trial.get_pickled_error()


def _trainable(trial_fns: list[TrialFn]):
    def trainable(config: dict) -> None:
        """One Ray Tune trial (runs in a Ray worker)."""
        trial = config["trial"]
        torch.set_num_threads(max(1, int(trial["threads"])))
        result = trial_fns[trial["batch"]](trial["spec"], Path(trial["result_path"]))
        tune.report({"ok": result["status"] == "ok",
                     "val_pair_accuracy": result.get("val_pair_accuracy", float("nan")),
                     "seconds": result.get("seconds", float("nan"))})

    return trainable


def tracker_callbacks(tracker: str | None, results_dir: Path, experiment: str) -> list:
    """Ray Tune's own logger callback for `--tracker` (checked by bench/execution/plan.py check_tracker): TensorBoard
    event files in each trial's directory under `<group>/ray`, a local MLflow file store `<group>/mlruns` (unless
    MLFLOW_TRACKING_URI names a server), or W&B offline runs under `<group>/wandb` (`wandb sync` uploads them)."""
    group = results_dir.parent
    if tracker == "tensorboard":
        from ray.tune.logger import TBXLoggerCallback  # the integrations load only when asked for

        return [TBXLoggerCallback()]
    if tracker == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (group / "mlruns").as_uri()
        return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment)]
    if tracker == "wandb":
        from ray.air.integrations.wandb import WandbLoggerCallback

        os.environ.setdefault("WANDB_MODE", "offline")
        return [WandbLoggerCallback(project="irl-bench", group=experiment, dir=str(group))]
    return []


def execute(specs: list, trial_fn: TrialFn, results_dir: Path, *, address=None, gpus_per_trial=None,
            cpus_per_trial=1, progress: Callable[[], None] | None = None, tracker: str | None = None) -> None:
    """Run each spec (with `trial_id` and `to_json`) as a Ray Tune trial of `trial_fn`: `execute_batches` with one
    batch."""
    execute_batches([TrialBatch("trials", specs, trial_fn, results_dir, progress)], address=address,
                    gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial, tracker=tracker)


def execute_batches(batches: list[TrialBatch], *, address=None, gpus_per_trial=None, cpus_per_trial=1,
                    tracker: str | None = None) -> None:
    """Run every spec of every batch as a trial of one Ray Tune run, in the order given, each writing its own result
    file. One run rather than one per batch, so that a later batch's trials take the cores an earlier batch's long
    trial leaves idle. A trial whose worker died is started once more; one that still fails without a result file
    gets one recording it as failed, with the cause (`record_failures`), and the run goes on. A trial that never
    started (the run was interrupted) gets no file. The batches' results directories share a parent (the run group),
    under which Tune keeps its own files (`ray/`)."""
    batches = [b for b in batches if b.specs]
    if not batches:
        return
    gpus_per_trial = gpu_share(gpus_per_trial, address)
    init_ray(address, gpus_per_trial)
    results_dirs = [b.results_dir.resolve() for b in batches]  # Tune runs each trial in its own working directory
    group = results_dirs[0].parent
    experiment = f"{group.parent.name}-{group.name}"  # <task>-<group>
    space = [{"spec": s.to_json(), "result_path": str(results_dir / f"{s.trial_id}.json"), "threads": cpus_per_trial,
              "batch": index}
             for index, (batch, results_dir) in enumerate(zip(batches, results_dirs)) for s in batch.specs]

    def ended(config: dict) -> None:
        progress = batches[config["trial"]["batch"]].progress
        if progress is not None:
            progress()

    done = TrialDone(ended)
    trial_ids = [s.trial_id for b in batches for s in b.specs]
    tuner = tune.Tuner(
        tune.with_resources(_trainable([b.trial_fn for b in batches]), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space={"trial": tune.grid_search(space)},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"run-{content_hash(trial_ids, 12)}",
            storage_path=str(group / "ray"),
            verbose=0,
            callbacks=[done, *tracker_callbacks(tracker, results_dirs[0], experiment)],
            failure_config=tune.FailureConfig(max_failures=RETRIES),
        ),
    )
    try:
        tuner.fit()
    except (EOFError, pickle.UnpicklingError):
        pass  # Ray could not read back a trial's stored error (a full disk): the failure is recorded below
    errors = _TRIAL_ERRORS.pop(done.listener, {})
    _ON_TRIAL_DONE.pop(done.listener, None)
    for batch, results_dir in zip(batches, results_dirs):
        record_failures(batch.specs, results_dir, errors)
