"""Shared fixtures: tiny random Stable Diffusion pipeline folders and a tiny random embedded prior, built once per test
session (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ε-prediction SD pipeline folder (32² renders, [4,8,8] latents, 32-d text embeddings)."""
    from dreamgen.testing.tiny_sd import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipe", seed=0, prediction_type="epsilon")


@pytest.fixture(scope="session")
def tiny_sd_vpred_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same weights as ``tiny_sd_path`` (same seed), but a v-prediction scheduler config."""
    from dreamgen.testing.tiny_sd import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd-v") / "pipe", seed=0, prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_shapes_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of a tiny random embedded prior (the packaged architecture, narrower), for ``ShapesGuidance``."""
    import torch

    from dreamgen.prior.io import save_prior
    from dreamgen.prior.model import PriorSpec, ShapesPrior

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ShapesPrior(PriorSpec(block_out_channels=[32, 32, 32], layers_per_block=1, attention_head_dim=16,
                                      slot_dim=8))
        torch.nn.init.normal_(model.unet.conv_out.weight, std=0.1)  # zero-initialised: every input should reach ε
    return save_prior(model.eval(), tmp_path_factory.mktemp("shapes") / "tiny.safetensors")


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: many tiny ops are slower with a thread pool on 2 shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
