"""Mesh renderer for the fine stage: marching-tets mesh → rasteriser → DreamFusion shading → the volume dict.

Each forward extracts the mesh of the geometry (``extract() -> verts, faces``), rasterises it
(:func:`dreamgen.render.raster.rasterize`), interpolates the surface point and the smooth vertex normal at every
covered pixel, evaluates the texture field there and shades as the NeRF stage does (``shade``, a random point light
near the camera in training). Images are composited over the background with the rasteriser's soft coverage, which
is also the ``opacity``; ``depth`` and ``normal`` are weighted by it like the volume renderer's Σw·t and Σw·n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamgen.cameras import Cameras, rays
from dreamgen.render.background import Background
from dreamgen.render.raster import BACKENDS, rasterize
from dreamgen.render.shading import (MODES_NEEDING_NORMALS, ShadingConfig, light_positions, mean_albedo,
                                     resolve_shading, shade, surface_points)
from dreamgen.schema import bounded


@dataclass
class MeshRendererConfig(ShadingConfig):
    backend: str = bounded("auto", choices=BACKENDS)  # auto: nvdiffrast when it imports and the tensors are CUDA


def face_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """verts [V,3], faces [F,3] -> unnormalised normals [F,3] (length = twice the area)."""
    t = verts[faces]
    return torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals [V,3]."""
    fn = face_normals(verts, faces)
    vn = verts.new_zeros(verts.shape).index_add(0, faces.reshape(-1), fn.repeat_interleave(3, dim=0))
    return F.normalize(vn, dim=-1)


def _edge_face_pairs(faces: Tensor) -> Tensor:
    """[M,2] indices of face pairs that share an edge (consecutive faces around an edge if more than two)."""
    F_ = faces.shape[0]
    e = torch.stack([faces, faces.roll(-1, 1)], -1).reshape(-1, 2)  # [3F,2] the three edges of each face
    n = int(faces.max()) + 1
    key = e.amin(-1) * n + e.amax(-1)
    key, order = torch.sort(key, stable=True)
    same = key[1:] == key[:-1]
    face_of = torch.arange(F_, device=faces.device).repeat_interleave(3)[order]
    return torch.stack([face_of[:-1][same], face_of[1:][same]], -1)


def normal_consistency_loss(verts: Tensor, faces: Tensor) -> Tensor:
    """Mean of 1 − cos between the normals of faces sharing an edge, weighted by the product of their areas.

    The area weights keep it smooth: slivers (a marching-tets crossing next to a grid vertex) have ill-defined normals
    whose 1/area gradients would otherwise dominate.
    """
    fn = face_normals(verts, faces)
    pairs = _edge_face_pairs(faces)
    a, b = fn[pairs[:, 0]], fn[pairs[:, 1]]
    weight = a.norm(dim=-1) * b.norm(dim=-1)  # 4·area_a·area_b
    return (weight - (a * b).sum(-1)).sum() / weight.sum().clamp_min(1e-20)


def laplacian_loss(verts: Tensor, faces: Tensor) -> Tensor:
    """Uniform Laplacian: mean over vertices of |mean(neighbours) − v|²."""
    e = torch.stack([faces, faces.roll(-1, 1)], -1).reshape(-1, 2)
    n = verts.shape[0]
    e = torch.unique(e.amin(-1) * n + e.amax(-1))
    i, j = e // n, e % n
    src, dst = torch.cat([i, j]), torch.cat([j, i])
    degree = verts.new_zeros(n).index_add(0, dst, torch.ones_like(dst, dtype=verts.dtype))
    mean = verts.new_zeros(verts.shape).index_add(0, dst, verts[src]) / degree.clamp_min(1)[:, None]
    return (mean - verts).square().sum(-1).mean()


class MeshRenderer(nn.Module):
    """``forward(cams, shading, train)`` -> the same dict as :class:`VolumeRenderer`, for a mesh geometry
    (a :class:`~dreamgen.geometry.base.SurfaceField`: ``surface()``, ``albedo(points)``)."""

    def __init__(self, geometry: nn.Module, background: Background, cfg: MeshRendererConfig):
        super().__init__()
        self.geometry, self.background, self.cfg = geometry, background, cfg

    def update_occupancy(self, step: int) -> None:
        """No empty space to track for a mesh; kept so the trainer treats renderers alike."""

    def forward(self, cams: Cameras, shading: str = "random", train: bool = True, step: int = 0) -> dict:
        """Render ``cams`` (shading as :meth:`VolumeRenderer.forward`).

        Returns rgb [B,H,W,3] over the background, opacity [B,H,W,1] (soft coverage), depth [B,H,W,1] (ray distance
        to the surface × coverage), points [B,H,W,3] (surface point; the ray origin on background), normal [B,H,W,3] (interpolated unit vertex normal × coverage; zeros in albedo
        mode), normal_consistency_loss, laplacian_loss, orient/sparsity/opacity losses (0: volume-only
        regularisers) and shading (the mode used).
        """
        c = self.cfg
        mode = resolve_shading(shading, train, c, step)
        B, H, W = len(cams), cams.height, cams.width
        origins, dirs = rays(cams)
        bg = self.background(dirs, train=train)  # [B,H,W,3]
        light_pos = light_positions(cams.c2w[:, :3, 3], c, train)  # [B,3]

        verts, faces = self.geometry.surface()
        zero = verts.sum() * 0.0  # keeps the scalars on the graph (and device) of the geometry
        if faces.shape[0] == 0:  # an SDF without a zero crossing renders as background
            return {"rgb": bg, "opacity": bg.new_zeros(B, H, W, 1), "depth": bg.new_zeros(B, H, W, 1),
                    "points": origins, "normal": bg.new_zeros(B, H, W, 3), "normal_consistency_loss": zero, "laplacian_loss": zero,
                    "orient_loss": zero, "sparsity_loss": zero, "opacity_loss": zero, "shading": mode}

        frags = rasterize(verts, faces, cams, c.backend)
        batch = frags.pixel // (H * W)  # [N] camera of each fragment
        points = frags.interpolate(verts, faces)  # [N,3] surface points
        need_normals = mode in MODES_NEEDING_NORMALS
        if need_normals:
            normal = F.normalize(frags.interpolate(vertex_normals(verts, faces), faces), dim=-1)
            light_dir = F.normalize(light_pos[batch] - points, dim=-1)
        else:
            normal, light_dir = torch.zeros_like(points), None
        tinted = mode == "textureless" and c.textureless_albedo == "mean"
        # White textureless and normal shading ignore the albedo: skip the texture field there.
        albedo = (self.geometry.albedo(points) if mode in ("albedo", "lambertian") or tinted
                  else torch.ones_like(points))  # [N,3]
        colour = shade(albedo, normal if need_normals else None, light_dir, mode, c.ambient, c.diffuse)
        if tinted:  # one albedo per image, the mean of its fragments' (detached): only the shape is judged
            count = torch.bincount(batch, minlength=B).to(albedo)[:, None]  # [B,1]
            colour = colour * mean_albedo(albedo.new_zeros(B, 3).index_add_(0, batch, albedo), count)[batch]
        coverage = frags.coverage[..., None]  # [B,H,W,1]
        distance = (points - cams.c2w[batch, :3, 3]).norm(dim=-1, keepdim=True)  # [N,1] along the unit ray
        depth = frags.to_image(distance) * coverage
        return {
            "rgb": frags.composite(frags.to_image(colour), bg),
            "opacity": coverage,
            "depth": depth,
            "points": surface_points(origins, dirs, depth, coverage),
            "normal": frags.to_image(normal) * coverage,
            # On a frozen surface (the texture stage) they would cost a pass over the mesh for nothing.
            "normal_consistency_loss": normal_consistency_loss(verts, faces) if verts.requires_grad else zero,
            "laplacian_loss": laplacian_loss(verts, faces) if verts.requires_grad else zero,
            "orient_loss": zero,
            "sparsity_loss": zero,
            "opacity_loss": zero,
            "shading": mode,
        }
