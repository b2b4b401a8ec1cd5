"""Hash encoding: exact trilinear/hash indexing against a scalar reference, gradients, backend choice."""

import math

import pytest
import torch

from dreamgen.geometry.hashgrid import (HASH_PRIMES, HashGridConfig, HashGridEncoding, level_resolutions,
                                        make_hash_grid)

SMALL = HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4,
                       per_level_scale=2.0)  # vertices per axis 5, 9, 17, 33: levels 0-1 dense, 2-3 hashed


def reference_encoding(enc: HashGridEncoding, x: torch.Tensor) -> torch.Tensor:
    """One point at a time in Python integers: the definition the vectorised code must match."""
    cfg, T = enc.cfg, 2**enc.cfg.log2_hashmap_size
    out = []
    for lvl, s in enumerate(level_resolutions(cfg)):
        v = math.ceil(s) + 1
        pos = [float(c) * s for c in x]
        corner = [min(max(int(math.floor(p)), 0), v - 2) for p in pos]
        frac = [p - c for p, c in zip(pos, corner)]
        feat = torch.zeros(cfg.n_features_per_level, dtype=torch.float64)
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    i, j, k = corner[0] + dx, corner[1] + dy, corner[2] + dz
                    if v**3 <= T:
                        row = i + j * v + k * v * v
                    else:
                        row = (i * HASH_PRIMES[0] ^ j * HASH_PRIMES[1] ^ k * HASH_PRIMES[2]) % T
                    w = ((frac[0] if dx else 1 - frac[0]) * (frac[1] if dy else 1 - frac[1])
                         * (frac[2] if dz else 1 - frac[2]))
                    feat += w * enc.table[int(enc.offsets[lvl]) + row].double()
        out.append(feat)
    return torch.cat(out)


def make_small(seed: int = 0) -> HashGridEncoding:
    torch.manual_seed(seed)
    enc = HashGridEncoding(SMALL).double()
    with torch.no_grad():
        enc.table.normal_()  # large random features so mistakes in indexing show
    return enc


def test_output_shape_and_levels():
    enc = make_small()
    assert enc.n_dense == 2
    assert enc.table.shape == (5**3 + 9**3 + 2 * 2**10, 2)
    assert enc(torch.rand(7, 3, dtype=torch.float64)).shape == (7, SMALL.output_dim) == (7, 8)


def test_matches_scalar_reference_on_dense_and_hashed_levels():
    enc = make_small()
    x = torch.rand(20, 3, dtype=torch.float64)
    x[0] = torch.tensor([0.0, 0.0, 0.0])
    x[1] = torch.tensor([1.0, 1.0, 1.0])  # the upper boundary uses the last cell
    got = enc(x)
    for n in range(x.shape[0]):
        torch.testing.assert_close(got[n], reference_encoding(enc, x[n]), rtol=1e-12, atol=1e-12)


def test_vertex_returns_its_feature_and_field_is_continuous():
    enc = make_small()
    # A vertex of level 0 (cell size 1/4): the level-0 feature is that vertex's row exactly.
    vtx = torch.tensor([[0.25, 0.5, 0.75]], dtype=torch.float64)
    row = 1 + 2 * 5 + 3 * 25
    torch.testing.assert_close(enc(vtx)[0, :2], enc.table[row])
    # Crossing a cell face of every level changes the output continuously.
    a, b = vtx - 1e-9, vtx + 1e-9
    assert (enc(a) - enc(b)).abs().max() < 1e-6


def test_gradient_flows_to_table_rows_of_the_cell_only():
    enc = make_small()
    x = torch.tensor([[0.3, 0.6, 0.1]], dtype=torch.float64)
    enc(x)[:, :2].sum().backward()  # level 0 only
    touched = enc.table.grad.abs().sum(-1).nonzero().squeeze(-1)
    assert len(touched) == 8 and touched.max() < 125  # the 8 vertices, all in level 0's dense block
    # The encoding is linear in the table: each touched row gets its trilinear weight, weights sum to 1.
    torch.testing.assert_close(enc.table.grad[touched, 0].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_input_gradient_matches_finite_differences():
    enc = make_small()
    x = torch.tensor([[0.31, 0.47, 0.62]], dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, SMALL.output_dim, dtype=torch.float64)
    (grad,) = torch.autograd.grad((enc(x) * g).sum(), x)
    eps = 1e-6
    for axis in range(3):
        e = torch.zeros_like(x)
        e[0, axis] = eps
        with torch.no_grad():
            fd = ((enc(x + e) - enc(x - e)) * g).sum() / (2 * eps)
        assert abs(float(fd) - float(grad[0, axis])) < 1e-6


def test_table_gradient_matches_autograd_of_index_select():
    enc = make_small()
    x = torch.rand(50, 3, dtype=torch.float64)
    g = torch.randn(50, SMALL.output_dim, dtype=torch.float64)
    (enc(x) * g).sum().backward()
    idx, frac = enc.vertex_indices(x)
    table = enc.table.detach().clone().requires_grad_(True)
    f = table[idx.reshape(-1)].reshape(50, SMALL.n_levels, 2, 2, 2, -1)
    for a in range(3):
        f = torch.lerp(f[:, :, 0], f[:, :, 1], frac[:, :, a].reshape(50, SMALL.n_levels, *[1] * (3 - a)))
    (f.reshape(50, -1) * g).sum().backward()
    torch.testing.assert_close(enc.table.grad, table.grad)


def test_make_hash_grid_picks_torch_on_cpu_and_rejects_tcnn_there():
    assert isinstance(make_hash_grid(SMALL, "cpu"), HashGridEncoding)
    with pytest.raises(RuntimeError, match="tinycudann"):
        make_hash_grid(HashGridConfig(backend="tcnn"), "cpu")
    with pytest.raises(ValueError, match="backend"):
        make_hash_grid(HashGridConfig(backend="cuda"), "cpu")


def test_no_points_give_no_features_and_a_gradient():
    """A render chunk whose samples all fall in empty space evaluates the grid on zero points (seen on a GPU)."""
    enc = HashGridEncoding(HashGridConfig(n_levels=3, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0))
    out = enc(torch.zeros(0, 3))
    assert out.shape == (0, 6)
    out.sum().backward()
    assert enc.table.grad is not None and not enc.table.grad.any()
