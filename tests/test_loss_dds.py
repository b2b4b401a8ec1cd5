"""DDS (Hertz et al., ICCV 2023, arXiv 2304.07090; docs/losses.md): closed form, identical source/target ⇒ 0, swap ⇒
−g, and the missing-source error."""

from __future__ import annotations

import pytest
import torch

from dreamgen.errors import DreamgenError
from dreamgen.losses.dds import DDS, DDSConfig
from loss_fixtures import SHAPE, alpha_sigma, exact_cfg, gaussian_guidance, loss_input, run


def _edit_input(guidance, src_prompt="a cat", tgt_prompt="a dog", same_image=False):
    inp = loss_input(guidance, b=2, prompt=tgt_prompt)
    other = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(9))
    inp.source_x = inp.x.detach().clone() if same_image else other
    inp.source_cond = guidance.encode_text([src_prompt]).expand(2, -1)
    return inp


def test_defaults_and_closed_form():
    cfg = DDSConfig()
    assert (cfg.guidance_scale, cfg.weighting) == (7.5, "uniform")
    guidance = gaussian_guidance(sigma=0.3)
    loss = DDS(cfg, guidance)
    assert loss.core.t_range(0) == (50, 948)
    inp = _edit_input(guidance)
    _, g = run(loss, inp, seed=2)

    torch.manual_seed(2)
    t = torch.randint(50, 949, (2,))
    eps = torch.randn(2, *SHAPE)
    a, s = alpha_sigma(guidance, t)
    z_tgt, z_src = a * inp.x.detach() + s * eps, a * inp.source_x + s * eps
    expected = (exact_cfg(guidance, z_tgt, t, inp.cond, inp.uncond, 7.5)
                - exact_cfg(guidance, z_src, t, inp.source_cond, inp.uncond, 7.5))
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-5)
    assert expected.abs().max() > 0.1


def test_identical_source_and_target_give_zero():
    guidance = gaussian_guidance(sigma=0.3)
    inp = _edit_input(guidance, tgt_prompt="a cat", same_image=True)
    _, g = run(DDS(DDSConfig(), guidance), inp, seed=0)
    assert g.abs().max() < 1e-5


def test_swapping_source_and_target_negates_g():
    guidance = gaussian_guidance(sigma=0.3)
    loss = DDS(DDSConfig(), guidance)
    inp = _edit_input(guidance)
    _, g = run(loss, inp, seed=5)
    swapped = loss_input(guidance, b=2)
    swapped.x = inp.source_x.clone().requires_grad_(True)
    swapped.cond, swapped.source_x, swapped.source_cond = inp.source_cond, inp.x.detach(), inp.cond
    _, g_swapped = run(loss, swapped, seed=5)
    torch.testing.assert_close(g_swapped, -g, rtol=1e-5, atol=1e-5)
    assert g.abs().max() > 0.1


def test_missing_source_says_how_to_edit():
    guidance = gaussian_guidance()
    with pytest.raises(DreamgenError, match="dreamgen edit RUN_DIR"):
        DDS(DDSConfig(), guidance)(loss_input(guidance))
