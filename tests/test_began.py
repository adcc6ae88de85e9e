import importlib
import json

import pytest
import torch

from helpers import assert_learns_digits, metrics, run_here, run_script

began = importlib.import_module("began")
TINY = ["--dataset", "mnist", "--image-size", "16", "--width", "8", "--h-dim", "8", "--z-dim", "8",
        "--batch-size", "8", "--log-every", "2"]


def test_smoke_writes_every_file(mnist_dir, tmp_path):
    run = tmp_path / "run"
    run_script("began.py", *TINY, "--data-dir", mnist_dir, "--steps", "4", "--sample-every", "2",
               "--ckpt-every", "2", "--run-dir", run)
    rows = metrics(run)
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("d_loss", "g_loss", "M_global", "k"))
        assert 0 <= r["k"] <= 1
    assert (run / "samples" / "step_0000002.png").exists() and (run / "samples" / "step_0000004.png").exists()
    assert json.loads((run / "config.json").read_text())["script"] == "began"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4 and ckpt["k"].item() == pytest.approx(rows[-1]["k"])
    assert ckpt["k"].item() > 0  # L(x) > L(G(z)) early on, so k rises from k_0 = 0


def test_resume_matches_uninterrupted_run(mnist_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    window = ["--lr-window", "2", "--lr-patience", "0", "--lr-g", "2e-4"]  # lr schedule and window sum resume
    run_here("began.py", *TINY, *window, "--data-dir", mnist_dir, "--steps", "6", "--run-dir", a)
    run_here("began.py", *TINY, *window, "--data-dir", mnist_dir, "--steps", "3", "--run-dir", b)
    assert "from step 3 to 6" in run_script("began.py", "--resume", b, "--steps", "6").stdout
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (a, b))
    assert cb["step"] == 6 and torch.equal(ca["k"], cb["k"]) and torch.equal(ca["m_sum"], cb["m_sum"])
    lr_g, lr_d = cb["opt_g"]["param_groups"][0]["lr"], cb["opt_d"]["param_groups"][0]["lr"]
    assert ca["opt_g"]["param_groups"][0]["lr"] == lr_g == 2 * lr_d and lr_d < 1e-4  # both halved, G's from --lr-g
    for key in ("G", "D"):
        for name in ca[key]:
            assert torch.equal(ca[key][name], cb[key][name]), f"{key}.{name} differs after resume"


def test_losses_and_k_update_match_formulas():
    x, rec = torch.tensor([[0.5, -1.0], [0.0, 1.0]]), torch.tensor([[0.0, -0.5], [0.5, 1.0]])
    loss_real = began.reconstruction_loss(x.bfloat16(), rec.bfloat16())
    assert loss_real.dtype == torch.float32 and loss_real.item() == pytest.approx(1.5 / 4)
    loss_real, loss_fake = torch.tensor(0.4), torch.tensor(0.1)
    assert began.d_loss(loss_real, loss_fake, torch.tensor(0.3)).item() == pytest.approx(0.4 - 0.3 * 0.1)
    assert began.g_loss(loss_fake) is loss_fake
    assert began.convergence_measure(loss_real, loss_fake, 0.5).item() == pytest.approx(0.4 + abs(0.2 - 0.1))
    k = torch.tensor(0.3)
    began.update_k(k, loss_real, loss_fake, gamma=0.5, lambda_k=0.001)
    assert k.item() == pytest.approx(0.3 + 0.001 * (0.5 * 0.4 - 0.1))
    began.update_k(k, loss_real, loss_fake, gamma=0.5, lambda_k=100.0)
    assert k.item() == 1.0  # clipped to [0, 1]
    began.update_k(k, loss_real, torch.tensor(5.0), gamma=0.5, lambda_k=100.0)
    assert k.item() == 0.0


def test_k_and_m_global_use_one_d():
    """k_t, M_global and G's loss take L(x) and L(G(z)) from the same D, the one before its update (the paper's
    equations; the official code steps D and G together from one pass)."""
    import copy
    import types
    torch.manual_seed(0)
    G, D = began.Decoder(4, 4, 8, 1), began.Discriminator(4, 4, 8, 1)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (G, D))
    args = types.SimpleNamespace(z_dim=4, gamma=0.5, lambda_k=0.1)
    real, k = torch.rand(8, 1, 8, 8) * 2 - 1, torch.tensor(0.5)
    with torch.no_grad():
        torch.manual_seed(1)
        fake = copy.deepcopy(G)(began.sample_z(8, 4, "cpu"))
        D0 = copy.deepcopy(D)
        loss_real, loss_fake = began.reconstruction_loss(real, D0(real)), began.reconstruction_loss(fake, D0(fake))
    torch.manual_seed(1)
    G0 = copy.deepcopy(G)
    fake_g = G0(began.sample_z(8, 4, "cpu"))
    g0_grads = torch.autograd.grad(began.reconstruction_loss(fake_g, D0(fake_g)), list(G0.parameters()))
    torch.manual_seed(1)
    losses = began.train_step(G, D, opt_g, opt_d, torch.amp.GradScaler("cpu", enabled=False), real, k, args, None, 1)
    assert losses["loss_fake"].item() == pytest.approx(loss_fake.item(), rel=1e-5)
    assert losses["g_loss"].item() == pytest.approx(loss_fake.item(), rel=1e-5)  # G read D before D's update
    for p, p0, g in zip(G.parameters(), G0.parameters(), g0_grads):  # Adam's first step: lr * g / (|g| + eps)
        assert torch.allclose(p, p0 - 1e-2 * g / (g.abs() + 1e-8), atol=1e-6)
    assert k.item() == pytest.approx(0.5 + 0.1 * (0.5 * loss_real.item() - loss_fake.item()), rel=1e-5)
    assert losses["M_global"].item() == pytest.approx(began.convergence_measure(loss_real, loss_fake, 0.5).item(), rel=1e-5)


@pytest.mark.parametrize("size", [8, 32, 64])
def test_architecture_follows_figure_1(size):
    G, D = began.Decoder(64, 16, size, 3), began.Discriminator(64, 16, size, 3)
    x = G(began.sample_z(2, 64, "cpu"))
    assert x.shape == (2, 3, size, size) and D(x).shape == x.shape
    convs = [m for m in D.encoder.net if isinstance(m, torch.nn.Conv2d)]
    assert sum(m.stride == (2, 2) for m in convs) == int(size // 8).bit_length() - 1  # subsampling to 8x8
    assert convs[-1].out_channels == 16 * (int(size // 8).bit_length())  # filters grow linearly: n, 2n, 3n, ...
    assert D.encoder.fc.out_features == 64
    z = began.sample_z(1000, 8, "cpu")
    assert z.min() >= -1 and z.max() <= 1 and z.mean().abs() < 0.05


@pytest.mark.slow
def test_learns_the_digits(real_images, judge, tmp_path):
    """After 4000 steps on real handwritten digits the samples cover at least 6 of the 10 classes with confident
    samples; the untrained G does not, nor does a collapsed one (with k_0 = 0, one or two classes: see the header).
    BEGAN does not reach the other scripts' 8 classes (no setting measured for issue #8 did: benchmarks/RESULTS.md).
    With these settings (k_0 = 0.5, gamma 0.7, Adam beta1 0.5: the CPU recipe's; paper: 0, 0.5, 0.9; not the
    recipe's G lr of 2e-4, which gave seed 1 four classes at 16x16), one thread, 300 samples and the judge as it is
    trained now (from its seed alone, the same in every process), seeds 1-4 gave 7, 6, 6, 7 classes (confident 0s
    only in seed 4's: 10 of 300). At 2000 steps seeds 1 and 2 gave 3 and 1 (seed 2 collapsed onto 8s; scored by a
    judge of its own, as each process trained one before). The bar was 5 while the judge differed from process to
    process. On the real Fashion-MNIST's 5,000 images (the tier's data where Debian's package is installed) seed 1
    covered three classes (T-shirts, dresses and coats: blurred tops; 24% confident, FD 290; untrained: none): the
    bar there is 3 classes and 20% confident samples (the others' 30% would fail it), which a generator collapsed
    onto one or two kinds of image fails. BEGAN's recipe on the full set also draws three (README); issue 29 keeps the
    remedy open."""
    from benchmarks.digits import dataset_in
    fashion = dataset_in(real_images) == "fashion_mnist"
    assert_learns_digits("began.py", real_images, judge, tmp_path, 4000, size=16,
                         extra=["--width", "16", "--batch-size", "16", "--k-init", "0.5", "--gamma", "0.7", "--beta1", "0.5"],
                         min_classes=3 if fashion else 6, min_confident=0.2 if fashion else 0.3)
