import pytest
import torch


@pytest.fixture
def gen():
    """A seeded CPU generator: every test draws the same numbers on every run."""
    return torch.Generator().manual_seed(1234)
