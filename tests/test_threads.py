"""A job's thread budget (aeexp.threads, trainer.threads): what it sets in a real process, who decides it, what a run
records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import FAST
from mlflow_store import runs_in

from aeexp import threads
from aeexp.config import validate
from aeexp.errors import ConfigError

# In a fresh process: the budget applied before and after the libraries with thread pools of their own are loaded
# (scikit-learn's OpenMP and SciPy's OpenBLAS load with them), then applied again as a second job in the same
# process would; what torch and every pool threadpoolctl finds say each time.
APPLY_AND_READ = """
import json, sys
from aeexp import threads
def pools():
    import torch, threadpoolctl
    return [torch.get_num_threads()] + [pool["num_threads"] for pool in threadpoolctl.threadpool_info()]
seen = {}
threads.apply(1)
seen["first"] = pools()
import sklearn.cluster, scipy.linalg  # libraries loaded after the budget was applied
seen["loaded_later"] = pools()
threads.apply(2)
seen["second_job"] = pools()
seen["current"] = threads.current()
print(json.dumps(seen))
"""


def test_the_budget_sets_torch_blas_and_openmp_also_for_libraries_loaded_later():
    done = subprocess.run([sys.executable, "-c", APPLY_AND_READ], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["first"] and set(seen["first"]) == {1}
    assert len(seen["loaded_later"]) > len(seen["first"])  # more pools, each at the budget
    assert set(seen["loaded_later"]) == {1}
    assert set(seen["second_job"]) == {2} and seen["current"] == 2


def test_an_explicit_setting_wins_and_the_default_is_the_launchers_share():
    cores = threads.usable_cores()
    assert threads.budget(None) == threads.default_budget() == cores  # a single run: every core it may use
    assert threads.budget(3) == 3
    assert threads.share(1) == cores and threads.share(2) == max(1, cores // 2)
    assert threads.share(10 * cores) == 1  # never none

    def job(config: str) -> tuple[int, int, str]:
        return threads.budget(None), threads.budget(5), config

    assert threads.WithShare(job, 1)("cfg") == (1, 5, "cfg")  # the launcher's share, while the job runs
    assert threads.default_budget() == cores  # and not after it


def test_a_run_uses_and_records_the_threads_it_is_given(run_cli, tracking_uri):
    done = run_cli(f"tracking.uri={tracking_uri}", "trainer.threads=1", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(tracking_uri, "digits")
    assert run.data.tags["threads"] == "1" and run.data.params["trainer.threads"] == "1"


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_thread_count_below_one_is_refused(make_config, value):
    with pytest.raises(ConfigError) as info:
        validate(make_config(f"trainer.threads={value}"))
    assert str(info.value).startswith(f"trainer.threads={value} is invalid: it must be positive")


def test_parallel_jobs_get_their_share_unless_they_say_otherwise(run_cli, tracking_uri):
    done = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.threads=3,null",
                   f"tracking.uri={tracking_uri}", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    children = [r for r in runs_in(tracking_uri, "digits") if "mlflow.parentRunId" in r.data.tags]
    assert sorted((c.data.params["trainer.threads"], c.data.tags["threads"]) for c in children) == [
        ("3", "3"), ("None", str(threads.share(2)))]


WAIT_POLICY_AT_TORCH_IMPORT = """
import os, sys
import aeexp.cli  # what `python -m aeexp` imports before a job starts
assert "torch" not in sys.modules, "torch is imported before the job's budget is applied"
from aeexp import threads
threads.apply(1)
import torch
print(os.environ["OMP_WAIT_POLICY"], os.environ["OMP_NUM_THREADS"], torch.get_num_threads())
"""


@pytest.mark.parametrize(("environment", "expected"), [({}, "PASSIVE 1 1"), ({"OMP_WAIT_POLICY": "ACTIVE"},
                                                                           "ACTIVE 1 1")])
def test_waiting_openmp_threads_sleep_unless_the_environment_says(environment, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | environment
    done = subprocess.run([sys.executable, "-c", WAIT_POLICY_AT_TORCH_IMPORT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == expected
