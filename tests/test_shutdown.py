"""The quick exit of the command-line processes: the status, atexit handlers, threads and output all survive it."""

from __future__ import annotations

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
