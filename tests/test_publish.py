"""`bench publish`: the per-item tables as a Parquet dataset (loaded back with `datasets`), and a failed publish that
leaves the previously published results and leaderboards exactly as they were.

The run is a real stored run of the synthetic `tiny` profile (its trials fitted in-process, the files `bench run`
writes), with re-alignment results and judged policy samples made by hand in its cache in the layout that
bench/lm/realign_trial.py and bench/lm/outcomes.py write, so the completions table is built without an RLHF run."""

import dataclasses
import shutil

import pytest

from bench import config as configs
from bench import provenance, registry
from bench.cli import main
from bench.errors import BadInput
from bench.execution.fit_trial import TrialSpec, run_trial
from bench.reporting import document as leaderboard
from bench.reporting import publish as publish_module
from bench.reporting.dataset import prompt_hash
from bench.storage.artifacts import ArtifactCache, atomic_write_json
from bench.storage.results import write_result
from bench.storage.selection import MethodSelection, Selection
from bench.task import hash_texts

PROMPTS = ["the first evaluation prompt", "a second one", "and a third"]
K = 2
JUDGES = {"R*": {"type": "profanity_check"}, "eval": {"type": "bilstm", "reduce": "toxic"}}


def _samples(cache: ArtifactCache, policy: dict, offset: float):
    """A judged policy_samples artifact in outcomes.cached_judged_samples' layout (inputs and samples.json)."""
    n = len(PROMPTS) * K
    record = {"k": K, "n_prompts": len(PROMPTS), "completions": [f"{policy} says {i}" for i in range(n)],
              "p_toxic": {"R*": [round(offset + 0.01 * i, 7) for i in range(n)],
                          "eval": [round(offset / 2 + 0.02 * i, 7) for i in range(n)]},
              "logp_base": [-1.5 * (i + 1) for i in range(n)], "logp_policy": [-1.0 * (i + 1) for i in range(n)],
              "tokens": [3] * n, "decoding": {"max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "seed": 0}}
    inputs = {"policy": policy, "base": {"hub": "base"}, "prompts_sha256": hash_texts(PROMPTS, length=64),
              "n_prompts": len(PROMPTS), "k": K, "max_new_tokens": 4, "seed": 0, "batch_size": 8, "judges": JUDGES}
    art = cache.get_or_build("policy_samples", inputs,
                             lambda d: atomic_write_json(d / "samples.json", record, indent=None))
    return record, art.key


@pytest.fixture
def stored_run(tmp_path, synthetic_tiny):
    """(runs dir, selection, trial payloads, samples records by policy) of a stored synthetic tiny run."""
    task, data = synthetic_tiny
    runs = tmp_path / "runs"
    shutil.copytree(data.cache_root, runs / "cache")
    cache = ArtifactCache(runs / "cache")
    group = runs / "synthetic" / "tiny"
    methods, trials = {}, {}
    for method in ("random", "oracle"):
        config = configs.to_dict(configs.build(registry.methods()[method].Config, {}, owner=method))
        specs = [TrialSpec(method, config, seed, data.ref) for seed in (0, 1)]
        for spec in specs:
            trials[spec.trial_id] = run_trial(spec, group / "trials" / f"{spec.trial_id}.json")
        methods[method] = MethodSelection(config, [s.trial_id for s in specs])
    records, evaluations = {}, {}
    for role, offset in (("base", 0.5), ("expert", 0.1)):
        records[role], evaluations[role] = _samples(cache, {"hub": role}, offset)
    setup = {"eval": {"prompts": PROMPTS, "k": K, "max_new_tokens": 4, "seed": 0, "batch_size": 8},
             "judges": JUDGES, "evaluations": evaluations}
    setup_key = cache.get_or_build("rerlhf_setup", setup, lambda d: atomic_write_json(d / "setup.json", setup)).key
    realigned = {}
    for n, (method, seed, status, cached) in enumerate((("oracle", 0, "ok", True), ("random", 0, "ok", True),
                                                        ("random", 1, "ok", False), ("random", 2, "failed", False))):
        trial_id = f"realign{n:09d}"
        payload = {"trial_id": trial_id, "method": method, "seed": seed, "status": status, "mode": "rloo"}
        if status == "ok":
            payload["training"] = {"artifact": f"realigned{n:011d}"}
        if cached:
            record, _ = _samples(cache, {"realigned": payload["training"]["artifact"]}, 0.05 * n)
            records[f"re-aligned {method} seed {seed}"] = record
            payload["items"] = {"p_toxic": {"realigned": {j: [round(x, 6) for x in record["p_toxic"][j]]
                                                          for j in JUDGES}}}
        write_result(group / "rerlhf" / f"{trial_id}.json", payload)
        realigned.setdefault(method, []).append(trial_id)
    selection = Selection(dataclasses.replace(data, artifacts={**data.artifacts, "rerlhf": setup_key}),
                          configs.to_dict(task.config("tiny")), [0, 1], methods, {"resamples": 100, "seed": 0},
                          provenance.collect(), "rloo", realigned)
    selection.write(group)
    atomic_write_json(runs / "synthetic" / "latest.json", {"group": "tiny"})
    return runs, selection, trials, records


def _load(path, tmp_path):
    from datasets import load_dataset  # heavy; only these tests need it

    return load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


def test_publish_writes_per_item_tables_that_datasets_loads(stored_run, tmp_path):
    runs, selection, trials, records = stored_run
    results, boards = tmp_path / "results", tmp_path / "boards"
    paths = publish_module.publish("synthetic", runs, results, boards)
    out = results / "synthetic" / "tiny" / "dataset"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "completions.parquet", "items.parquet",
                                                     "pairs.parquet", "rewards.parquet"]
    assert set(out.iterdir()) <= set(paths) and (boards / "synthetic.json") in paths
    demos = selection.task_data.demos().splits
    truth = ArtifactCache(runs / "cache").load("truth", selection.task_data.truth_key).read_json("truth.json")

    items = _load(out / "items.parquet", tmp_path)
    assert len(items) == sum(len(s.items) for s in demos.values())
    test = [row for row in items if row["split"] == "test"]
    assert [row["text"] for row in test] == demos["test"].items.texts
    assert [row["r_star"] for row in test] == truth["test"]["reward"]
    assert test[5]["prompt_hash"] == prompt_hash(demos["test"].items.prompts[5])
    assert all(row["r_star"] is None for row in items if row["split"] == "train")  # R* of train is not stored

    pairs = _load(out / "pairs.parquet", tmp_path)
    assert len(pairs) == sum(len(s.pairs) for s in demos.values())
    val_pairs = [(row["chosen"], row["rejected"]) for row in pairs if row["split"] == "val"]
    assert val_pairs == [tuple(p) for p in demos["val"].pairs]

    rewards = _load(out / "rewards.parquet", tmp_path)
    assert len(rewards) == sum(len(r) for t in trials.values() for r in t["rewards"].values())
    trial_id, trial = next(iter(trials.items()))
    mine = [row for row in rewards if row["trial_id"] == trial_id and row["split"] == "test"]
    assert [row["reward"] for row in mine] == trial["rewards"]["test"]
    assert mine[0]["method"] == trial["method"] and mine[0]["seed"] == trial["seed"]

    completions = _load(out / "completions.parquet", tmp_path)
    n = len(PROMPTS) * K
    assert len(completions) == 4 * n  # base, expert, two re-aligned policies with samples in the cache
    by_policy = {}
    for row in completions:
        by_policy.setdefault(row["policy"], []).append(row)
    assert set(by_policy) == set(records) == {"base", "expert", "re-aligned oracle seed 0", "re-aligned random seed 0"}
    rows = by_policy["re-aligned random seed 0"]
    assert rows[3]["prompt"] == PROMPTS[1] and rows[3]["sample"] == 1 and rows[3]["method"] == "random"
    assert [r["p_toxic_eval"] for r in rows] == records["re-aligned random seed 0"]["p_toxic"]["eval"]
    assert [r["completion"] for r in by_policy["base"]] == records["base"]["completions"]
    assert by_policy["expert"][0]["seed"] is None and by_policy["expert"][4]["logp_policy"] == -5.0

    card = (out / "README.md").read_text()
    assert f"### completions ({4 * n:,} rows)" in card and f"### items ({len(items):,} rows)" in card
    assert "re-aligned random seed 1: its judged samples are no longer in the artifact cache" in card
    assert "seed 2" not in card  # a failed re-alignment has no policy, so nothing is missing
    assert "- config_name: rewards\n  data_files: rewards.parquet" in card

    # The published results rebuild the published leaderboard byte for byte, as CI checks for results/.
    rebuilt = leaderboard.write(leaderboard.build(results / "synthetic" / "tiny"), tmp_path / "rebuilt")
    assert all(p.read_bytes() == (boards / p.name).read_bytes() for p in rebuilt)


def _snapshot(*roots):
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_failed_publish_leaves_the_published_results_intact(stored_run, tmp_path, monkeypatch):
    runs, selection, trials, _ = stored_run
    results, boards = tmp_path / "results", tmp_path / "boards"
    publish_module.publish("synthetic", runs, results, boards)
    before = _snapshot(results, boards)
    assert any(p.name == "items.parquet" for p in before)

    # A damaged trial result: refused before anything is written, with the file named, exit status 2.
    damaged = runs / "synthetic" / "tiny" / "trials" / f"{next(iter(trials))}.json"
    good = damaged.read_bytes()
    damaged.write_bytes(good[: len(good) // 2])
    with pytest.raises(BadInput, match=f"{damaged.stem}.json \\(it is unreadable"):
        publish_module.publish("synthetic", runs, results, boards)
    args = ["publish", "--task", "synthetic", "--runs-dir", str(runs), "--results-dir", str(results),
            "--leaderboards-dir", str(boards)]
    assert main(args) == 2
    assert _snapshot(results, boards) == before
    damaged.write_bytes(good)

    # A failure late in the publish (the leaderboard cannot be built): nothing published changed, no stage is left.
    def broken(group_dir):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(publish_module.leaderboard, "build", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        publish_module.publish("synthetic", runs, results, boards)
    assert _snapshot(results, boards) == before
    assert not [p for p in (results / "synthetic").iterdir() if p.name.startswith(".")]
    assert not [p for p in boards.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()

    # A missing scored artifact in the source cache is refused too; then a good publish replaces the group.
    truth = runs / "cache" / "truth" / selection.task_data.truth_key / "truth.json"
    truth.rename(truth.with_suffix(".moved"))
    with pytest.raises(BadInput, match="truth.json is missing"):
        publish_module.publish("synthetic", runs, results, boards)
    assert _snapshot(results, boards) == before
    truth.with_suffix(".moved").rename(truth)
    (results / "synthetic" / "tiny" / "stale.txt").write_text("left by an older publish")
    assert main(args) == 0
    assert not (results / "synthetic" / "tiny" / "stale.txt").exists()
    assert (results / "synthetic" / "tiny" / "dataset" / "items.parquet").read_bytes() == \
        before[results / "synthetic" / "tiny" / "dataset" / "items.parquet"]
