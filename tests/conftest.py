import pytest
import torch

# Small tensors: one thread is as fast as two on a quiet machine and many times faster on a busy one.
torch.set_num_threads(1)


@pytest.fixture
def gen():
    """A seeded CPU generator: every test draws the same numbers on every run."""
    return torch.Generator().manual_seed(1234)
