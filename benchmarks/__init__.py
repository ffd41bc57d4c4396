"""Benchmarks of fmlib: scripts that write one JSON each into ``benchmarks/results/``.

Shared pieces: :mod:`benchmarks.harness` (metadata, timing, statistics, JSON), :mod:`benchmarks.adapters` (torchcfm
and flow_matching beside fmlib), :mod:`benchmarks.figures` (the figures of ``book/benchmarks.ipynb``). Run a script
from the repository root as ``python benchmarks/NAME.py`` or ``python -m benchmarks.NAME``.
"""
