"""The repository's own tests: packaging, hooks, chapters, workflows, examples, the browser checks and the
benchmarks' smoke runs. All are marked ``slow``: ``pytest -m "not slow"`` runs the library's tests alone, which
need neither torchcfm nor flow_matching nor a built book."""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)
