"""``graceful.exit_without_collecting``: what the interpreter leaves at exit is not scanned."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from canaryws.adapters.server import graceful


def test_after_a_shutdown_the_objects_left_are_frozen_and_the_collector_is_off() -> None:
    # In a child: this test process's collector stays as it is.
    code = textwrap.dedent("""
        import gc, sys
        from canaryws.adapters.server.graceful import exit_without_collecting

        class Node:
            def __init__(self):
                self.me = self  # a cycle: only the collector could free it

        left = [Node() for _ in range(50_000)]  # what 5,000 drained connections leave, in small
        del left
        exit_without_collecting()
        assert not gc.isenabled()
        assert gc.get_freeze_count() >= 50_000, gc.get_freeze_count()
        assert gc.collect() == 0  # nothing left for a collection to walk, so none at exit either
        print("ok")
        sys.exit(3)  # the exit status still reaches the parent: exit handlers and streams run
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "ok\n"


def test_the_server_run_ends_with_it() -> None:
    import inspect

    source = inspect.getsource(graceful.run)
    assert source.rstrip().endswith("exit_without_collecting()")
