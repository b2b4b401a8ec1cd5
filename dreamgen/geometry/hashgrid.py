"""Multi-resolution hash encoding (Instant-NGP, Müller et al. 2022).

Level ``l`` is a grid of ``V_l = ceil(s_l) + 1`` vertices per axis with ``s_l = base_resolution · per_level_scale^l``
cells. Its feature table holds ``V_l³`` rows (dense indexing) while that fits in ``2^log2_hashmap_size``; finer
levels hash the integer vertex with the Instant-NGP primes into a table of that size. A point's feature at a level
is the trilinear blend of its cell's 8 vertex features; the encoding concatenates the levels.

Two backends share :class:`HashGridConfig` and the output shape ``[N, n_levels * n_features_per_level]``:
:class:`HashGridEncoding` (pure PyTorch, runs anywhere, CI-tested) and :class:`TcnnHashGrid` (tiny-cuda-nn fused
kernels). :func:`make_hash_grid` picks tcnn only when it imports and the device is CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamgen.schema import bounded

BACKENDS = ("auto", "torch", "tcnn")

# Instant-NGP's spatial hash primes (the first is 1 so that x stays coherent in memory).
HASH_PRIMES = (1, 2654435761, 805459861)


def _as_int32(v: int) -> int:
    """Two's-complement wrap to int32: the hash only keeps low bits, which int32 multiply preserves (as in tcnn)."""
    return (v + 2**31) % 2**32 - 2**31


class _GatherRows(torch.autograd.Function):
    """``table[idx]`` whose backward is one ``index_add`` (3-4x faster on CPU than embedding/index backward)."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.n_rows = table.shape[0]
        return table.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (idx,) = ctx.saved_tensors
        # Out-of-place ops only, so a double backward (analytic normals in a loss) still works.
        return grad.new_zeros(ctx.n_rows, grad.shape[1]).index_add(0, idx, grad), None


@dataclass
class HashGridConfig:
    n_levels: int = bounded(10, ge=1)
    n_features_per_level: int = bounded(2, ge=1)
    log2_hashmap_size: int = bounded(15, ge=4, le=30)
    base_resolution: int = bounded(16, ge=1)
    per_level_scale: float = bounded(1.3819, ge=1.0)  # 16 · 1.3819⁹ ≈ 295 cells at the finest level
    backend: str = bounded("auto", choices=BACKENDS)  # auto: tcnn when it imports and the device is CUDA

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features_per_level


def level_resolutions(cfg: HashGridConfig) -> list[float]:
    """Cells per axis of each level (may be fractional; the vertex count is ceil(s) + 1)."""
    return [cfg.base_resolution * cfg.per_level_scale**lvl for lvl in range(cfg.n_levels)]


class HashGridEncoding(nn.Module):
    """Pure-PyTorch hash grid. ``forward(x [N,3] in [0,1]^3) -> features [N, n_levels * F]``.

    All levels are computed in one vectorised pass and the features come from a single gather into one
    concatenated table (``offsets`` marks where each level starts), so the CPU cost is a handful of large ops.
    """

    def __init__(self, cfg: HashGridConfig):
        super().__init__()
        self.cfg = cfg
        table_size = 2**cfg.log2_hashmap_size
        scales = level_resolutions(cfg)
        verts = [math.ceil(s) + 1 for s in scales]
        dense = [v**3 <= table_size for v in verts]
        if any(d and not prev for prev, d in zip(dense, dense[1:])):
            raise ValueError("hash grid levels must get finer: a dense level follows a hashed one")
        self.n_dense = sum(dense)
        sizes = [v**3 if d else table_size for v, d in zip(verts, dense)]
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)

        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32), persistent=False)  # [L]
        if sum(sizes) >= 2**31:
            raise ValueError("hash grid table too large for int32 indices; lower log2_hashmap_size or n_levels")
        # int32 index arithmetic: half the memory traffic of int64.
        self.register_buffer("verts", torch.tensor(verts, dtype=torch.int32), persistent=False)  # [L]
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int32), persistent=False)  # [L]
        # Per-axis index multipliers: row-major strides for dense levels, hash primes for hashed ones.
        mult = [[1, v, v * v] if d else [_as_int32(p) for p in HASH_PRIMES] for v, d in zip(verts, dense)]
        self.register_buffer("axis_mult", torch.tensor(mult, dtype=torch.int32), persistent=False)  # [L,3]
        self.table_size = table_size
        # Instant-NGP initialises the features uniformly in ±1e-4: near-zero but not symmetric.
        self.table = nn.Parameter(torch.empty(sum(sizes), cfg.n_features_per_level).uniform_(-1e-4, 1e-4))

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim

    def vertex_indices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows of each level's 8 cell vertices, and the point's position inside that cell.

        x: [N,3] in [0,1]. Returns idx [N,L,2,2,2] (long; axes x,y,z, 0 = lower vertex) and
        frac [N,L,3] in [0,1] (differentiable in x, so analytic normals flow through the trilinear weights).
        """
        pos = x[:, None, :] * self.scales.to(x.dtype)[None, :, None]  # [N,L,3] in cell units
        hi = (self.verts - 2)[None, :, None]
        corner = torch.minimum(pos.detach().floor().to(torch.int32).clamp_min(0), hi)  # [N,L,3]
        frac = pos - corner.to(pos.dtype)  # [N,L,3]

        coords = torch.stack([corner, corner + 1], dim=-1)  # [N,L,3,2]
        a = coords * self.axis_mult[None, :, :, None]  # per-axis index terms [N,L,3,2]
        ax, ay, az = a[:, :, 0, :, None, None], a[:, :, 1, None, :, None], a[:, :, 2, None, None, :]
        nd = self.n_dense
        dense_idx = ax[:, :nd] + ay[:, :nd] + az[:, :nd]  # [N,Ld,2,2,2]
        hash_idx = (ax[:, nd:] ^ ay[:, nd:] ^ az[:, nd:]) & (self.table_size - 1)  # [N,Lh,2,2,2]
        # int64 for the gather: CPU index_add is several times slower with int32 indices.
        idx = (torch.cat([dense_idx, hash_idx], dim=1) + self.offsets[None, :, None, None, None]).long()
        return idx, frac

    def forward(self, x: Tensor) -> Tensor:
        """x: [N,3] in [0,1]^3 -> [N, n_levels * n_features_per_level]."""
        n, L, F_ = x.shape[0], self.cfg.n_levels, self.cfg.n_features_per_level
        idx, frac = self.vertex_indices(x.to(self.table.dtype))
        # Explicit F: a chunk with no samples (empty space everywhere) must give [0, L·F], not fail to reshape.
        f = _GatherRows.apply(self.table, idx.reshape(-1)).reshape(n, L, 2, 2, 2, F_)  # [N,L,2,2,2,F]
        # Trilinear blend as three lerps (x, then y, then z): cheaper backward than an 8-weight product.
        f = torch.lerp(f[:, :, 0], f[:, :, 1], frac[:, :, 0, None, None, None])  # [N,L,2,2,F]
        f = torch.lerp(f[:, :, 0], f[:, :, 1], frac[:, :, 1, None, None])  # [N,L,2,F]
        f = torch.lerp(f[:, :, 0], f[:, :, 1], frac[:, :, 2, None])  # [N,L,F]
        return f.reshape(n, L * self.cfg.n_features_per_level)


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn ``HashGrid`` with the same config and output shape (CUDA only)."""

    def __init__(self, cfg: HashGridConfig):
        super().__init__()
        import tinycudann as tcnn

        self.cfg = cfg
        self.encoding = tcnn.Encoding(
            n_input_dims=3,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": cfg.n_levels,
                "n_features_per_level": cfg.n_features_per_level,
                "log2_hashmap_size": cfg.log2_hashmap_size,
                "base_resolution": cfg.base_resolution,
                "per_level_scale": cfg.per_level_scale,
            },
            dtype=torch.float32,  # the MLPs downstream are plain torch fp32
        )

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.encoding(x.float())


def tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or a tcnn build whose CUDA libs fail to load
        return False
    return True


def make_hash_grid(cfg: HashGridConfig, device: str | torch.device = "cpu") -> nn.Module:
    """The tcnn backend when ``backend`` allows it, tinycudann imports and ``device`` is CUDA; else the torch one."""
    if cfg.backend not in BACKENDS:
        raise ValueError(f"hash grid backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    on_cuda = torch.device(device).type == "cuda"
    if cfg.backend == "tcnn" and not (on_cuda and tcnn_available()):
        raise RuntimeError("hash grid backend 'tcnn' needs tinycudann installed and a CUDA device")
    if cfg.backend != "torch" and on_cuda and tcnn_available():
        return TcnnHashGrid(cfg)
    return HashGridEncoding(cfg)


def field_mlp(in_dim: int, width: int, hidden_layers: int, out_dim: int) -> nn.Sequential:
    """The small ReLU MLP that decodes hash features (``hidden_layers`` hidden layers of ``width``)."""
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)
