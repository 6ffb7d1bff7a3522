"""``iceprod-pilot``: a reference pilot that speaks the IceProd pilot protocol.

It offers this machine's resources with ``new_task``, runs every task it is given (several
at once when they fit), heartbeats with ``stillrunning``, uploads ``stdout``, ``stderr`` and
``stdlog`` and reports ``finish_task`` or ``task_error``. A task whose claim the server
withdrew (``stillrunning`` false, or -32004) is killed and dropped without a report.

- :mod:`.main`: the claim loop, the heartbeat and the command line;
- :mod:`.task`: one task run (modules as subprocesses, logs, the report);
- :mod:`.modules`: how a config's modules and data become commands and files.
"""

from iceprod_server.pilot.main import main

__all__ = ["main"]
