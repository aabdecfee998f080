"""The quick exit of the command-line processes: the status, atexit handlers, threads and output all survive it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from aeexp.shutdown import exit_status

SCRIPT = textwrap.dedent("""
    import atexit, pathlib, sys, threading, time
    from aeexp.shutdown import run_and_exit

    out = pathlib.Path(sys.argv[1])
    atexit.register(lambda: (out / "atexit").write_text("ran"))

    def slow_writer():
        time.sleep(0.3)
        (out / "thread").write_text("finished")

    def main():
        threading.Thread(target=slow_writer).start()  # not a daemon: the exit waits for it
        print("no newline at the end, still in the buffer", end="")
        {ending}

    run_and_exit(main)
""")


@pytest.mark.parametrize(("ending", "status", "stderr"), [
    ("return 3", 3, ""),
    ("return None", 0, ""),
    ("sys.exit(130)", 130, ""),
    ("sys.exit('error: something is wrong')", 1, "error: something is wrong"),
])
def test_the_quick_exit_keeps_status_handlers_threads_and_output(tmp_path, ending, status, stderr):
    script = tmp_path / "command.py"
    script.write_text(SCRIPT.format(ending=ending))
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == status
    assert done.stdout == "no newline at the end, still in the buffer"
    assert done.stderr.strip() == stderr
    assert (tmp_path / "thread").read_text() == "finished"
    assert (tmp_path / "atexit").read_text() == "ran"


def test_an_uncaught_error_still_ends_with_its_traceback(tmp_path):
    script = tmp_path / "command.py"
    script.write_text("from aeexp.shutdown import run_and_exit\n\ndef main():\n    raise RuntimeError('boom')\n\n"
                      "run_and_exit(main)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RuntimeError: boom" in done.stderr


def test_exit_status_is_what_sys_exit_gives():
    assert exit_status(None) == 0
    assert exit_status(0) == 0
    assert exit_status(2) == 2


POOL_SCRIPT = textwrap.dedent("""
    import json, multiprocessing, os, pathlib, sys, time
    from joblib import Parallel, delayed
    from aeexp.shutdown import stop_idle_pool_workers

    def pid(_):
        return os.getpid()

    if __name__ == "__main__":
        out = pathlib.Path(sys.argv[1])
        ran_in = set(Parallel(n_jobs=2)(delayed(pid)(i) for i in range(4)))
        loky = [p for p in multiprocessing.active_children() if type(p).__name__ == "LokyProcess"]
        other = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(1.0,))
        other.start()  # a child process this one waits for: not a pool's worker
        stop_idle_pool_workers()
        for p in loky:
            p.join(10)
        other_alive = other.is_alive()
        other.join(10)
        out.write_text(json.dumps({"workers": len(loky), "ran_in_them": ran_in <= {p.pid for p in loky},
                                   "exitcodes": [p.exitcode for p in loky], "other_alive": other_alive,
                                   "other_exitcode": other.exitcode}))
""")


def test_the_idle_workers_of_a_joblib_pool_are_killed_and_other_children_left_alone(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    result = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(script), str(result)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(result.read_text())
    assert found["workers"] == 2 and found["ran_in_them"]  # the pool's two workers, idle, waiting for more jobs
    assert found["exitcodes"] == [-signal.SIGKILL, -signal.SIGKILL]  # killed, not left to tear down their modules
    assert found["other_alive"] is True
    assert found["other_exitcode"] == 0


def test_without_joblib_nothing_is_stopped(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, sys, time
        from aeexp.shutdown import stop_idle_pool_workers

        if __name__ == "__main__":
            child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0.5,))
            child.start()
            stop_idle_pool_workers()
            child.join(10)
            sys.exit(0 if child.exitcode == 0 and "joblib" not in sys.modules else 1)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
