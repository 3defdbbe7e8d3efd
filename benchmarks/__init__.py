"""FAISSx benchmarks (issue 7): remote vs local faiss vs a bare pyzmq echo vs the original faissx.

Run ``python -m benchmarks`` (or ``make bench``); ``--quick`` for tiny sizes, ``--no-original``
to leave out the original ``faissx`` package from PyPI. See :mod:`benchmarks.runner` for how a
run is laid out and :mod:`benchmarks.report` for the ratios and goals.
"""
