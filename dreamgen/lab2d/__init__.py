"""The 2-D exact-score lab: every registered distillation loss, driven against a target whose perturbed score is exact.

The "guidance" lives in R² (x is [B,2,1,1]) and its ε-prediction is the exact one of its data distribution under the
diffusers ``scaled_linear`` DDPM schedule (the same as ``GaussianGuidance``), ᾱ_t, a_t = √ᾱ_t, s_t = √(1 − ᾱ_t):

    Gaussian N(m, Σ):            ε̂(x_t) = s_t·(a_t²Σ + s_t²I)⁻¹(x_t − a_t·m)
    mixture Σ_k π_k N(m_k, Σ_k): ε̂(x_t) = Σ_k r_k(x_t)·ε̂_k(x_t),  r_k = posterior of component k at x_t

Prompts: ``TARGET_PROMPT`` → the target; "" and every other text (the negative prompts of CSD/NFSD/BSD/CFD) → the
uninformative N(0, UNCOND_STD²·I), since a 2-D point has no notion of "blurry". With ω = 1 (the lab's default)
E_ω = e_y, the pure conditional score, and the unconditional branch only matters to losses built on dC = e_y − e_0.

Two settings, i.e. two views of what the optimised parameters θ render:

- ``particles`` (ProlificDreamer's view): θ = n points, q = their empirical distribution. The particle score ε_ψ that
  VSD/ESD/ASD learn is given exactly, as the score of q_t(x_t) = mean_j N(a_t·θ_j, s_t²I) — what an ideal LoRA would
  learn — or, with ``score="mlp"``, learnt by a small MLP trained by the loss's own LoRA step.
- ``camera`` (ESD's view, closest to 3-D): x = g(θ, c) = m + B·c, θ = (m, B), a random camera c ~ N(0, I₂) per
  sample. ``LossInput.camera`` is [c, 1]: the trailing 1 flags a real camera, so the losses' null camera (zeros) is
  told apart. Camera-conditioned score: that of q(x_t | c) = N(a_t·g(θ, c), s_t²I) (a point mass, so VSD is SDS here);
  camera-free score: that of the marginal q(x_t) = N(a_t·m, a_t²BBᵀ + s_t²I).

θ is optimised by Adam on the surrogate loss of the registered loss class itself (``registry.lookup("loss", name)``);
nothing of the losses is re-implemented here. Every loss runs with the lab's ω, w = s_t² and t ∈ [0.02, 0.98] of T
(``LAB_LOSS_DEFAULTS``); its other settings are its own defaults unless ``loss_overrides`` changes them.

Modules: ``targets`` (the distributions and their exact perturbed scores), ``models`` (what θ renders, its exact
particle score, the 2-D guidance), ``run`` (one run, the table of every loss), ``report`` (terminal lines, scatter
plots, the markdown table).
"""

from dreamgen.lab2d.models import (CAMERA_DIM, SCORES, TARGET_PROMPT, CameraGenerator, ExactParticleScore,
                                   Lab2DGuidance, MLPParticleScore, ParticleCloud)
from dreamgen.lab2d.report import (TABLE_BEGIN, TABLE_END, format_result, markdown_table, plot_name, save_scatter,
                                   write_report)
from dreamgen.lab2d.run import SETTINGS, VARIANTS, LabResult, LabSkip, initial_model, main_table, run_lab
from dreamgen.lab2d.targets import (TARGETS, UNCOND_STD, Mixture2D, esd_camera_trace_ratio, make_target,
                                    scaled_linear_alphas)

__all__ = ["CAMERA_DIM", "SCORES", "SETTINGS", "TABLE_BEGIN", "TABLE_END", "TARGETS", "TARGET_PROMPT", "UNCOND_STD",
           "VARIANTS", "CameraGenerator", "ExactParticleScore", "Lab2DGuidance", "LabResult", "LabSkip",
           "MLPParticleScore", "Mixture2D", "ParticleCloud", "esd_camera_trace_ratio", "format_result", "initial_model",
           "main_table", "make_target", "markdown_table", "plot_name", "run_lab", "save_scatter",
           "scaled_linear_alphas", "write_report"]
