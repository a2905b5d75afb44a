"""Fixtures shared by the memory, diffusion and training test modules.

Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread", "offline")``.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: on tiny tensors OpenMP hand-offs cost more than they save,
    and on a shared 2-core machine the contention makes multi-threaded tiny matmuls far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline(monkeypatch):
    """No Hugging Face hub access: every encoder must load from local files."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def bert():
    """The tiny in-code BERT text encoder (no download)."""
    from pentachora.memory import FrozenTextEncoder

    return FrozenTextEncoder.from_pretrained("tiny-bert", layers=(1, 2))


@pytest.fixture(scope="module")
def clip():
    """The tiny in-code CLIP text encoder (no download)."""
    from pentachora.memory import FrozenTextEncoder

    return FrozenTextEncoder.from_pretrained("tiny-clip", layers=(1, 2))
