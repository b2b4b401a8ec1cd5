"""Guidance models: frozen denoisers that score renders (Stable Diffusion via diffusers, the embedded prior)."""

from dreamgen.guidance.base import Guidance, TrainableScore

__all__ = ["Guidance", "TrainableScore"]
