"""FAISSx side by side with the vector databases a user would pick instead (issue 17).

``make bench-peers`` (or ``python -m benchmarks.peers``): see :mod:`benchmarks.peers.run` for
what one run does, :mod:`benchmarks.peers.systems` for how each system is started and
:mod:`benchmarks.peers.agent` for the timing loops every system shares.
"""
