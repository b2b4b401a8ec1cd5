"""DDS — Delta Denoising Score, for editing (Hertz, Aberman & Cohen-Or, "Delta Denoising Score", ICCV 2023,
arXiv 2304.07090; docs/losses.md).

Update rule, one t ~ U{50..948} and one eps ~ N(0, I) per sample, SHARED by both branches:

    z_t^tgt = a_t·x + s_t·eps,        z_t^src = a_t·x̂ + s_t·eps
    g       = w(t)·(E_ω(z_t^tgt; y_tgt) − E_ω(z_t^src; y_src)),       w = 1

x is the render being edited, x̂ the frozen source render at the same camera (``LossInput.source_x``), y_src its
prompt (``LossInput.source_cond``), y_tgt the new prompt (``LossInput.cond``). The source branch is the SDS
gradient of an image that already matches its prompt, so subtracting it removes the noisy, prompt-independent part
of the SDS direction: identical target and source give g ≡ 0, and swapping them negates g.

With Perp-Neg, each branch uses its own prompt's Perp-Neg prompts (``LossInput.perp_neg`` for the target,
``source_perp_neg`` for the source), so identical target and source still give g ≡ 0.

Defaults of ``DDS_zeroshot.ipynb``: ω = 7.5, w = 1 (``alpha_exp = sigma_exp = 0``), t ∈ [50, 949). The notebook
multiplies the loss by 2000 for plain SGD (lr 0.1) on one latent; here ``weight`` stays 1, since the 3-D optimiser
is Adam (invariant to a constant scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dreamgen.errors import DreamgenError
from dreamgen.losses.base import DistillationLoss, LossInput, LossOutput
from dreamgen.losses.core import LossConfig, surrogate_loss
from dreamgen.prompts import PerpNeg
from dreamgen.registry import register


@dataclass
class DDSConfig(LossConfig):
    name: str = "dds"
    guidance_scale: float = 7.5
    t_min: Any = 0.05  # t ~ U{50..948}
    t_max: Any = 0.948
    weighting: str = "uniform"


@register("loss", "dds", config=DDSConfig,
          summary="Delta Denoising Score (editing): E_ω(z_t^tgt; y_tgt) − E_ω(z_t^src; y_src), shared eps and t",
          paper="Delta Denoising Score (Hertz et al., 2023)", state="frozen source renders + source prompt", nfe=4)
class DDS(DistillationLoss):
    def forward(self, inp: LossInput) -> LossOutput:
        if inp.source_x is None or inp.source_cond is None:
            raise DreamgenError('dds edits an existing run: use `dreamgen edit RUN_DIR "new prompt" --loss dds`')
        if (inp.perp_neg is None) != (inp.source_perp_neg is None):
            raise DreamgenError("dds with Perp-Neg needs Perp-Neg prompts for both the target and the source prompt "
                                "(LossInput.perp_neg and source_perp_neg)")
        x, core, b = inp.x, self.core, inp.x.shape[0]
        t = core.sample_t(b, inp.step, inp.total_steps)
        eps = torch.randn_like(x)
        z_tgt = core.add_noise(x.detach(), eps, t)
        z_src = core.add_noise(inp.source_x.detach(), eps, t)
        perp_neg = None if inp.perp_neg is None else PerpNeg.cat([inp.perp_neg, inp.source_perp_neg])
        e_cfg, _, _ = core.eps_cfg(torch.cat([z_tgt, z_src]), torch.cat([t, t]),
                                   torch.cat([inp.cond, inp.source_cond]), torch.cat([inp.uncond, inp.uncond]),
                                   perp_neg=perp_neg)
        e_tgt, e_src = e_cfg.chunk(2)
        g = core.weight(t, x) * (e_tgt - e_src)
        loss = self.cfg.weight * surrogate_loss(x, g)
        return LossOutput(loss, {"t": t.float().mean().item(), "grad_norm": g.norm().item() / b})
