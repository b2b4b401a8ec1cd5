"""D-SDS score debiasing (Hong et al., NeurIPS 2023, arXiv 2303.15413; docs/losses.md): a clipped SDS."""

from __future__ import annotations

import torch

from dreamgen.losses.dsds import DSDS, DSDSConfig
from dreamgen.losses.sds import SDS, SDSConfig
from loss_fixtures import gaussian_guidance, loss_input, run


def test_infinite_clip_is_sds():
    g0 = gaussian_guidance(sigma=0.5)
    inp = loss_input(g0, b=4)
    _, g = run(DSDS(DSDSConfig(grad_clip=float("inf")), g0), inp, seed=3)
    _, g_sds = run(SDS(SDSConfig(), g0), inp, seed=3)
    assert torch.equal(g, g_sds)


def test_clip_follows_its_schedule_and_bounds_every_element():
    """At step 5000 of [0, 2, 8, 10000], c = 5: g = clamp(g_SDS, −5, 5), with some elements actually clipped."""
    g0 = gaussian_guidance(sigma=0.5)
    inp = loss_input(g0, b=4, step=5000)
    out, g = run(DSDS(DSDSConfig(), g0), inp, seed=8)
    _, g_sds = run(SDS(SDSConfig(), g0), inp, seed=8)
    assert out.logs["clip"] == 5.0
    assert g.abs().max() <= 5.0 and (g_sds.abs() > 5.0).any() and (g_sds.abs() < 5.0).any()
    assert torch.equal(g, g_sds.clamp(-5.0, 5.0))
