"""benchmarks/bn_stats.py samples one G both ways: eval mode (running BatchNorm statistics) and
train mode (batch statistics), from the same z, and scores what it drew."""
import torch

import benchmarks.bn_stats as bn_stats
import cgan
import dcgan
from common import fid


def _scorers(monkeypatch, seen):
    class Judge:
        def score(self, images, labels=None):
            seen.append((images, labels))
            return {"fd": 1.0, "covered": 10, "confident": 0.5, **({"label_acc": 0.5} if labels is not None else {})}

    class Inception:
        def __init__(self, weights, real):
            pass

        def score(self, images):
            return {"fid": 1.0, "kid": 0.0, "precision": 0.5, "recall": 0.5}

    monkeypatch.setattr(bn_stats.DigitJudge, "load", lambda *a, **k: Judge())
    monkeypatch.setattr(bn_stats, "InceptionScores", Inception)
    monkeypatch.setattr(bn_stats, "read_mnist_split", lambda *a: (torch.zeros(4000, 1, 32, 32), None))


def test_both_ways_from_the_same_z_running_first(monkeypatch, tmp_path, capsys):
    G = dcgan.Generator(8, 4, 32, 1)
    G.train()
    for _ in range(3):  # running statistics that differ from any one batch's
        G(torch.randn(16, 8) * 3)
    args = {"z_dim": 8, "width": 4, "image_size": 32, "batch_size": 50}
    torch.save({"args": args, "G": G.state_dict()}, tmp_path / "checkpoint.pt")
    seen = []
    _scorers(monkeypatch, seen)
    bn_stats.main(["dcgan", str(tmp_path), "--data-dir", str(tmp_path), "--fid-weights", "w", "--z-seed", "3"])
    (running, _), (batch, _) = seen
    z = torch.randn(2000, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = fid.quantize(dcgan.generate(G, z)).float() / 127.5 - 1
    assert torch.equal(running, expected)
    assert running.shape == batch.shape == (2000, 1, 32, 32) and not torch.equal(running, batch)
    out = capsys.readouterr().out
    assert "running statistics, z seed 3: FID 1.00" in out and "batch statistics" in out


def test_cgan_asks_for_each_class_equally(monkeypatch, tmp_path):
    G = cgan.Generator(8, 10, 4, 4, 32, 1)
    args = {"z_dim": 8, "embed_dim": 4, "width": 4, "image_size": 32, "batch_size": 100}
    torch.save({"args": args, "G": G.state_dict()}, tmp_path / "checkpoint.pt")
    seen = []
    _scorers(monkeypatch, seen)
    bn_stats.main(["cgan", str(tmp_path), "--data-dir", str(tmp_path), "--fid-weights", "w"])
    for _, labels in seen:
        assert torch.bincount(labels, minlength=10).tolist() == [200] * 10
        assert len(set(labels[:100].tolist())) > 5  # classes mixed within a batch, as in training
