import os
import warnings

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=50)
settings.load_profile("ci")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _quiet_transformers():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="transformers")
        warnings.filterwarnings("ignore", message=".*default network.*")
        yield


@pytest.fixture
def debug_verifier(monkeypatch, tmp_path):
    """Run the IR verifier after every pass, dumping into a temp folder."""
    monkeypatch.setenv("DORA_DEBUG", "1")
    monkeypatch.setenv("DORA_DUMP_DIR", str(tmp_path / "dump"))
    return tmp_path / "dump"
