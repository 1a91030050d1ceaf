"""The executor runs several kinds of trials (fits, re-alignments) as one Ray Tune run: a later kind's trial takes
the core an earlier kind's long trial leaves idle, and every result lands in its own kind's directory."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Run as a script so that Ray's workers get the trial functions by value (they are defined in __main__).
SCRIPT = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path
    from bench.execution.executor import execute_batches
    from bench.execution.plan import TrialBatch
    from bench.storage.results import write_result

    class Spec:
        def __init__(self, trial_id, flag):
            self.trial_id, self.flag = trial_id, flag
        def to_json(self):
            return {"id": self.trial_id, "flag": self.flag}

    def fit(spec, result_path):
        """The long fit waits (up to 120 s) for the flag a re-alignment trial writes; the others return at once."""
        deadline = time.time() + (120 if spec["id"] == "long" else 0)
        while not Path(spec["flag"]).exists() and time.time() < deadline:
            time.sleep(0.2)
        payload = {"status": "ok", "kind": "fit", "saw_realignment": Path(spec["flag"]).exists()}
        write_result(result_path, payload)
        return payload

    def realign(spec, result_path):
        Path(spec["flag"]).touch()
        payload = {"status": "ok", "kind": "realign"}
        write_result(result_path, payload)
        return payload

    work = Path(sys.argv[1])
    flag = str(work / "a re-alignment ran")
    ended = {"fits": 0, "realign": 0}

    def counter(name):
        def advance():
            ended[name] += 1
        return advance

    execute_batches([
        TrialBatch("fits", [Spec("long", flag), Spec("short", flag)], fit, work / "group" / "trials",
               counter("fits")),
        TrialBatch("re-alignments", [Spec("r0", flag), Spec("r1", flag)], realign, work / "group" / "rerlhf",
               counter("realign")),
    ])
    print(json.dumps(ended))
''')


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two trials at once need two cores")
def test_a_later_kind_of_trial_runs_beside_an_earlier_kinds_long_trial(tmp_path):
    script = tmp_path / "run_batches.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IRL_BENCH_CPUS": "2", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"fits": 2, "realign": 2}

    def payload(kind_dir, trial_id):
        return json.loads((tmp_path / "group" / kind_dir / f"{trial_id}.json").read_text())["payload"]

    assert {payload("trials", t)["kind"] for t in ("long", "short")} == {"fit"}
    assert {payload("rerlhf", t)["kind"] for t in ("r0", "r1")} == {"realign"}
    # Run kind by kind, the long fit would have ended (after 120 s) before any re-alignment started.
    assert payload("trials", "long")["saw_realignment"] is True
    assert sorted(p.name for p in (tmp_path / "group").iterdir()) == ["ray", "rerlhf", "trials"]
