"""Each pooling head against an independent NumPy implementation of its formula (DESIGN.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbir.errors import CbirError
from cbir.models import functional as F
from cbir.models.pooling import POOLINGS, create_pooling

EPS = 1e-6


def np_gap(x):
    return x.mean(axis=(1, 2))


def np_mac(x):
    return x.max(axis=(1, 2))


def np_gem(x, p=3.0):
    return np.mean(np.maximum(x, EPS) ** p, axis=(1, 2)) ** (1 / p)


def np_crow(x):
    x = np.maximum(x, 0)
    s = x.sum(axis=0)
    alpha = np.sqrt(s / (np.sqrt((s**2).sum()) + EPS))
    q = np.array([np.count_nonzero(x[k]) / x[k].size for k in range(x.shape[0])])
    beta = np.log(q.sum() / (EPS + q))
    return beta * np.array([(alpha * x[k]).sum() for k in range(x.shape[0])])


def np_windows(h, w, levels=3):
    """Square R-MAC windows written from the rule: side floor(2·min/(l+1)), evenly spread, ends touching the borders."""
    side = min(h, w)
    out = []
    for l in range(1, levels + 1):
        wl = int(np.floor(2 * side / (l + 1)))
        assert h == w  # the longer-side extra windows are checked separately
        pos = [0] if l == 1 else [int(np.floor(i * (side - wl) / (l - 1))) for i in range(l)]
        out += [(t, s, wl) for t in pos for s in pos]
    return out


def np_rcrow(x, whiten=None):
    x = np.maximum(x, 0)
    c, h, w = x.shape
    s = x.sum(axis=0)
    alpha = np.sqrt(s / (np.sqrt((s**2).sum()) + EPS))
    q = np.array([np.count_nonzero(x[k]) / x[k].size for k in range(c)])
    beta = np.log(q.sum() / (EPS + q))
    y = x * alpha * beta[:, None, None]
    regions = [(0, 0, h)] + np_windows(h, w)
    total = 0.0
    for t, l, side in regions:
        v = y[:, t : t + side, l : l + side].sum(axis=(1, 2))
        v = v / (np.linalg.norm(v) + EPS)
        if whiten is not None:
            m, p = whiten
            v = p @ (v - m)
            v = v / (np.linalg.norm(v) + EPS)
        total += v
    return total


REFERENCE = {"gap": np_gap, "spoc": np_gap, "mac": np_mac, "gem": np_gem, "crow": np_crow, "rcrow": np_rcrow}


@pytest.fixture(scope="module")
def real_maps(photos):
    """Lite0 Block 7 feature maps of real photos (pretrained trunk), 7×7."""
    from cbir.engine.preprocess import Preprocess
    from cbir.models.trunk import build_trunk

    trunk = build_trunk("tf_efficientnet_lite0", 7, pretrained=True)
    x = np.stack([Preprocess((224, 224))(p) for p in photos[:4]]).astype(np.float32)
    x = torch.from_numpy((x / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        return trunk.module(x).numpy().astype(np.float64)


def random_maps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 16, 7, 7))
    x[0, 3] = 0.0  # a channel with no activation: CroW's β must stay finite
    return x


@pytest.mark.parametrize("name", list(POOLINGS))
@pytest.mark.parametrize("source", ["random", "real"])
def test_pooling_matches_numpy(name, source, request):
    x = random_maps() if source == "random" else request.getfixturevalue("real_maps")
    mod = create_pooling(name, x.shape[2:]).double()
    with torch.no_grad():
        got = mod(torch.from_numpy(x)).numpy()
    want = np.stack([REFERENCE[name](m) for m in x])
    assert got.shape == (x.shape[0], x.shape[1])
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_rcrow_regional_whitening_matches_numpy():
    x = random_maps()
    rng = np.random.default_rng(1)
    m, p = rng.normal(size=16) * 0.1, rng.normal(size=(8, 16))
    mod = create_pooling("rcrow", (7, 7)).double()
    with torch.no_grad():
        got = F.rcrow(torch.from_numpy(x), mod.mask, torch.from_numpy(m), torch.from_numpy(p)).numpy()
    want = np.stack([np_rcrow(v, (m, p)) for v in x])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_rmac_grid_7x7():
    regions = F.rmac_regions(7, 7)
    assert len(regions) == 1 + 4 + 9
    assert sorted(regions) == sorted((t, l, s, s) for t, l, s in np_windows(7, 7))
    mask = F.region_mask(7, 7)
    assert mask.shape == (49, 15) and mask[:, 0].sum() == 49


def test_rmac_grid_non_square_covers_the_long_side():
    regions = F.rmac_regions(5, 9)
    assert all(t + s <= 5 and l + s2 <= 9 for t, l, s, s2 in regions)
    assert max(l + s for _, l, _, s in regions) == 9  # windows reach the far border


def test_gem_p_is_learnable_and_p1_is_mean_of_clamped():
    mod = create_pooling("gem", (7, 7))
    assert mod.p.requires_grad and float(mod.p) == 3.0
    x = torch.rand(2, 4, 7, 7) + 0.1
    with torch.no_grad():
        mod.p.fill_(1.0)
        np.testing.assert_allclose(mod(x).numpy(), x.mean(dim=(2, 3)).numpy(), rtol=1e-5)


def test_unknown_pooling():
    with pytest.raises(CbirError, match="--pooling 'avg'"):
        create_pooling("avg", (7, 7))
