"""KID, precision/recall and density/coverage on Inception features: the papers' formulas, brute force."""
import numpy as np
import pytest
import torch
from PIL import Image

import common.fid as fid


def brute_radii(x, k):
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k]  # column 0 is the sample itself


def brute_in_ball(points, centres, radii):
    """in_ball[j, i] = points[j] lies in the closed ball of centres[i]."""
    d = np.sqrt(((points[:, None] - centres[None]) ** 2).sum(-1))
    return d <= radii[None]


def brute_precision_recall(real, fake, k):
    precision = np.mean([brute_in_ball(fake, real, brute_radii(real, k))[j].any() for j in range(len(fake))])
    recall = np.mean([brute_in_ball(real, fake, brute_radii(fake, k))[i].any() for i in range(len(real))])
    return precision, recall


def brute_density_coverage(real, fake, k):
    inside = brute_in_ball(fake, real, brute_radii(real, k))  # (M fake, N real)
    return inside.sum() / (k * len(fake)), inside.any(0).mean()


def brute_kid(real, fake, subsets, subset_size, seed):
    rng, d, m, scores = np.random.default_rng(seed), real.shape[1], min(subset_size, len(real), len(fake)), []
    for _ in range(subsets):
        x, y = real[rng.choice(len(real), m, replace=False)], fake[rng.choice(len(fake), m, replace=False)]
        kern = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
        xx = sum(kern(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        yy = sum(kern(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        xy = sum(kern(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
        scores.append(xx + yy - 2 * xy)
    return np.mean(scores), np.std(scores)


@pytest.fixture
def sets():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 8)), rng.normal(0.3, 1.2, size=(150, 8))


def test_precision_recall_matches_brute_force(sets):
    real, fake = sets
    for k in (1, 3, 7):
        assert fid.precision_recall(real, fake, k) == pytest.approx(brute_precision_recall(real, fake, k))


def test_density_coverage_matches_brute_force(sets):
    real, fake = sets
    for k in (1, 5):
        assert fid.density_coverage(real, fake, k) == pytest.approx(brute_density_coverage(real, fake, k))


def test_kid_matches_brute_force(sets):
    real, fake = sets
    assert fid.kid(real, fake, subsets=3, subset_size=30, seed=1) == \
        pytest.approx(brute_kid(real, fake, 3, 30, 1), rel=1e-9)
    # subset_size is capped at the smaller set
    assert fid.kid(real, fake[:20], subsets=2, seed=2) == pytest.approx(brute_kid(real, fake[:20], 2, 1000, 2))


def test_identical_sets(sets):
    real = sets[0]
    assert fid.precision_recall(real, real) == (1.0, 1.0)
    assert fid.density_coverage(real, real)[1] == 1.0


def test_disjoint_sets(sets):
    real = sets[0]
    far = real + 100.0
    assert fid.precision_recall(real, far) == (0.0, 0.0)
    assert fid.density_coverage(real, far) == (0.0, 0.0)


def test_mode_dropping():
    """Real: 4 well separated modes; fake: only 2 of them. Precision stays ~1, recall and coverage ~0.5."""
    rng = np.random.default_rng(1)
    # 2-D: in 8-D, 100 samples a mode leave k-NN balls too small for precision ~1 (the paper's small-sample bias)
    centres = 20.0 * np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    real = np.concatenate([c + rng.normal(size=(100, 2)) for c in centres])
    fake = np.concatenate([c + rng.normal(size=(200, 2)) for c in centres[:2]])
    precision, recall = fid.precision_recall(real, fake)
    coverage = fid.density_coverage(real, fake)[1]
    assert precision > 0.9
    assert 0.45 < recall <= 0.5 and 0.45 < coverage <= 0.5  # the dropped half is never reached


def test_kid_same_vs_shifted():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, same_std = fid.kid(a, b, subsets=20, subset_size=100)
    shifted, _ = fid.kid(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 3 * same_std + 0.05
    assert shifted > 0.5 and shifted > 10 * abs(same)


def test_knn_radii_too_few_samples():
    with pytest.raises(ValueError, match="more than 3"):
        fid.knn_radii(np.zeros((3, 2)), 3)


def test_cli_prints_all_metrics(tmp_path, capsys):
    weights = tmp_path / "inception.pth"
    torch.save(fid.FIDInception().state_dict(), weights)  # random init: the output format is what is tested
    rng = np.random.default_rng(0)
    for name, shift in (("a", 0), ("b", 80)):
        (tmp_path / name).mkdir()
        for i in range(10):
            img = np.clip(rng.normal(100 + shift, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / name / f"{i}.png")
    fid.main([str(tmp_path / "a"), str(tmp_path / "b"), "--weights", str(weights), "--device", "cpu"])
    out = capsys.readouterr().out
    for name in ("FID:", "KID:", "precision:", "recall:", "density:", "coverage:"):
        assert name in out, out
    assert "±" in out
    float(out.strip().rsplit("FID:", 1)[1])  # the FID line is last, as tests/test_common.py parses it


def test_cli_npz_prints_fid_only(tmp_path, capsys):
    weights = tmp_path / "inception.pth"
    torch.save(fid.FIDInception().state_dict(), weights)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        x = rng.normal(size=(20, 2048))
        np.savez(tmp_path / f"{name}.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    fid.main([str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--weights", str(weights), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "need images" in out and "KID:" not in out and "precision:" not in out
    float(out.strip().rsplit("FID:", 1)[1])
