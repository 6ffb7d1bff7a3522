"""Benchmarks of the IceProd server, run with ``python -m bench`` (``make bench``).

Each benchmark runs the real server (``iceprod-server serve``) as a separate process on
loopback and reports ratios against a baseline measured in the same run, because absolute
figures on a small shared machine move from one minute to the next. See
``docs/benchmarks.md``.
"""
