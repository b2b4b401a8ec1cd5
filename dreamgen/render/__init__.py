"""Renderers (volume rendering of fields), DreamFusion shading and backgrounds."""

from dreamgen.render.background import Background, BackgroundConfig
from dreamgen.render.shading import shade
from dreamgen.render.volume import EmptySpaceGrid, RendererConfig, VolumeRenderer

__all__ = ["Background", "BackgroundConfig", "shade", "EmptySpaceGrid", "RendererConfig", "VolumeRenderer"]
