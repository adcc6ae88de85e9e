import importlib
import json
import math

import pytest
import torch

from helpers import (assert_learns_digits, metrics, run_compiled, run_here, run_in_process,
                    run_script)

sg = importlib.import_module("stylegan_lite")
# One intra-op thread: on a small shared CPU, spinning worker threads make these tiny models 10-50x slower.
ENV = {"OMP_NUM_THREADS": "1"}
TINY = ["--dataset", "mnist", "--image-size", "16", "--batch-size", "8", "--z-dim", "16", "--w-dim", "16",
        "--mapping-layers", "2", "--channel-base", "128", "--channel-max", "16", "--log-every", "2"]


def tiny_generator(**kw):
    torch.manual_seed(0)
    return sg.Generator(16, 16, 2, 0.01, 16, 1, 128, 16, **kw)


@pytest.fixture(scope="module")
def smoke_run(mnist_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("sg_smoke") / "run"
    run_script("stylegan_lite.py", *TINY, "--data-dir", mnist_dir, "--steps", "4", "--sample-every", "2",
               "--ckpt-every", "2", "--r1-every", "2", "--export", "5", "--truncation-psi", "0.7", "--run-dir", run,
               env=ENV)
    return run


def test_smoke_writes_every_file(smoke_run):
    rows = metrics(smoke_run)
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("d_loss", "g_loss", "r1", "d_real", "d_fake"))
        assert r["r1"] > 0  # R1 ran (steps 0 and 2 are R1 steps with --r1-every 2)
    assert (smoke_run / "samples" / "step_0000002.png").exists() and (smoke_run / "samples" / "step_0000004.png").exists()
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["script"] == "stylegan_lite" and config["image_size"] == 16 and config["ema"] is True
    ckpt = torch.load(smoke_run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4 and ckpt["script"] == "stylegan_lite" and ckpt["ema"] is not None
    assert not any(k.startswith("_orig_mod") for k in ckpt["G"])
    # R1 joins the D loss (no separate R1 step), so D keeps the plain lr and betas: no c = N/(N+1) adjustment
    group = ckpt["opt_d"]["param_groups"][0]
    assert group["lr"] == pytest.approx(0.002) and group["betas"] == pytest.approx((0.0, 0.99))
    assert ckpt["opt_g"]["param_groups"][0]["lr"] == pytest.approx(0.002)


def test_resume_matches_uninterrupted_run(mnist_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = [*TINY, "--data-dir", mnist_dir, "--r1-every", "2", "--mixing-prob", "0.5"]
    run_here("stylegan_lite.py", *args, "--steps", "5", "--run-dir", a, threads=1)
    run_here("stylegan_lite.py", *args, "--steps", "3", "--run-dir", b, threads=1)
    out = run_script("stylegan_lite.py", "--resume", b, "--steps", "5", env=ENV).stdout
    assert "from step 3 to 5" in out
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (a, b))
    assert cb["step"] == 5
    for key in ("G", "D", "ema"):
        for name in ca[key]:
            assert torch.equal(ca[key][name], cb[key][name]), f"{key}.{name} differs after resume"
    proc = run_in_process("stylegan_lite.py", "--resume", b, "--r1-gamma", "5")
    assert proc.returncode == 2 and "--r1-gamma" in proc.stderr and "Traceback" not in proc.stderr


def test_losses_match_formulas():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    d = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean())
    g = -torch.log(torch.sigmoid(fake)).mean()
    assert torch.allclose(sg.d_loss(real, fake), d) and torch.allclose(sg.g_loss(fake), g)
    assert sg.d_loss(real.bfloat16(), fake.bfloat16()).dtype == torch.float32


def test_r1_against_hand_computed_gradient():
    # D(x) = sum_j a_j x_j^2 per image, so grad_x D = 2 a x and ||grad||^2 = sum_j 4 a_j^2 x_j^2.
    torch.manual_seed(0)
    a = torch.randn(1, 2, 3, 3)
    x = torch.randn(4, 2, 3, 3, requires_grad=True)
    logits = (a * x ** 2).flatten(1).sum(1)
    expected = (4 * a ** 2 * x.detach() ** 2).flatten(1).sum(1).mean()
    assert torch.allclose(sg.r1_penalty(logits, x), expected)
    assert torch.allclose(sg.r1_penalty(logits, x, loss_scale=1024.0), expected)  # fp16 path: scaled, then unscaled
    # It is differentiable (double backward): d/da of mean_n sum_j 4 a_j^2 x_j^2 = mean_n 8 a_j x_j^2.
    a.requires_grad_(True)
    (grad_a,) = torch.autograd.grad(sg.r1_penalty((a * x ** 2).flatten(1).sum(1), x), a)
    assert torch.allclose(grad_a, (8 * a * x.detach() ** 2).mean(0, keepdim=True))


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_equals_per_sample_weights(demodulate):
    """Modulating the input and demodulating the output equals convolving each sample with its own w'' (eq. 1-3)."""
    torch.manual_seed(0)
    conv = sg.ModulatedConv2d(6, 5, 3, w_dim=4, demodulate=demodulate)
    x, w = torch.randn(3, 6, 8, 8), torch.randn(3, 4)
    with torch.no_grad():
        s = conv.affine(w)
        for i in range(3):
            weight = conv.weight * conv.scale * s[i][None, :, None, None]  # w'_ijk = s_i * w_ijk
            if demodulate:
                weight = weight / (weight.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
            expected = torch.nn.functional.conv2d(x[i:i + 1], weight, padding=1)
            assert torch.allclose(conv(x, w)[i:i + 1], expected, atol=1e-5)


def test_demodulation_gives_unit_variance():
    torch.manual_seed(0)
    conv = sg.ModulatedConv2d(64, 64, 3, w_dim=8)
    w = 3 * torch.randn(16, 8)  # large, uneven styles
    x = torch.randn(16, 64, 16, 16)
    with torch.no_grad():
        y = conv(x, w)[:, :, 1:-1, 1:-1]  # borders see zero padding
        std_per_channel = y.std(dim=(0, 2, 3))
        conv.demodulate = False
        y_plain = conv(x, w)[:, :, 1:-1, 1:-1]
    assert 0.9 < y.std() < 1.1 and 0.75 < std_per_channel.min() and std_per_channel.max() < 1.25
    assert y_plain.std() > 2  # the styles alone would blow the scale up: demodulation undoes it


def test_style_mixing_uses_two_ws_at_different_layers():
    G = tiny_generator().eval()  # eval: w_avg stays put; noise strengths start at 0, so G is deterministic
    num_ws = G.num_ws
    w1, w2 = torch.zeros(3, 16), torch.ones(3, 16)
    cutoffs = set()
    for _ in range(50):
        ws = sg.mix_styles(w1, w2, num_ws, mixing_prob=1.0)
        from_w2 = ws[0, :, 0] == 1
        cut = int(from_w2.float().argmax())
        assert 1 <= cut < num_ws and not from_w2[:cut].any() and from_w2[cut:].all()
        cutoffs.add(cut)
    assert len(cutoffs) > 1  # the crossover layer is random
    assert (sg.mix_styles(w1, w2, num_ws, mixing_prob=0.0) == 0).all()
    # Every layer reads its own w: changing only w[:, i] changes the image, for each i.
    z1, z2 = torch.randn(2, 3, 16)
    with torch.no_grad():
        ws = G.map(z1)[:, None].repeat(1, num_ws, 1)
        base = G.synthesis(ws)
        for i in range(num_ws):
            other = ws.clone()
            other[:, i] = G.map(z2)
            assert not torch.allclose(G.synthesis(other), base, atol=1e-5), f"layer {i} ignores its w"
        # The forward pass with mixing builds exactly that: w(z1) before the crossover, w(z2) after.
        torch.manual_seed(1)
        mixed = G(z1, z2, mixing_prob=1.0)
        torch.manual_seed(1)
        expected = G.synthesis(sg.mix_styles(G.map(z1), G.map(z2), num_ws, 1.0))
        assert torch.allclose(mixed, expected)
        assert not torch.allclose(mixed, G(z1)) and not torch.allclose(mixed, G(z2))


def test_truncation_and_w_avg_tracking():
    G = tiny_generator()
    z = torch.randn(8, 16)
    with torch.no_grad():
        G(z)  # training mode: w_avg <- lerp(mean w, w_avg, 0.995)
        assert torch.allclose(G.w_avg, 0.005 * G.map(z).mean(0), atol=1e-6)
        G.eval()
        same = G(z, psi=0.0)  # psi = 0: every sample is the image of w_avg
    assert torch.allclose(same, same[:1].expand_as(same), atol=1e-5)
    assert not torch.allclose(G(z, psi=1.0).detach(), same, atol=1e-3)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_architecture_sizes(size):
    G = sg.Generator(16, 16, 2, 0.01, size, 3, 256, 16)
    D = sg.Discriminator(size, 3, 256, 16, mbstd_group=4)
    x = G(torch.randn(6, 16))  # 6: the stddev group shrinks to gcd(4, 6) = 2
    assert x.shape == (6, 3, size, size) and D(x).shape == (6,)
    assert G.num_ws == 2 * int(math.log2(size)) - 2


def test_bf16_autocast_and_bad_input(mnist_dir, tmp_path):
    run_here("stylegan_lite.py", *TINY, "--data-dir", mnist_dir, "--steps", "2", "--r1-every", "2", "--amp", "bf16",
             "--run-dir", tmp_path / "r", threads=1)
    assert all(math.isfinite(r["d_loss"]) and math.isfinite(r["r1"]) for r in metrics(tmp_path / "r"))
    for bad in (["--image-size", "12"], ["--channel-base", "8"], ["--mixing-prob", "1.5"], ["--r1-every", "0"],
                ["--mbstd-group", "0"]):
        proc = run_in_process("stylegan_lite.py", "--data-dir", mnist_dir, "--dataset", "mnist", *bad)
        assert proc.returncode == 2 and proc.stderr.startswith("error:"), proc.stderr


@pytest.mark.slow
def test_compile(mnist_dir, tmp_path):
    run_compiled("stylegan_lite.py", *TINY, "--data-dir", mnist_dir, "--r1-every", "2", "--run-dir", tmp_path / "r", env=ENV)
    assert all(math.isfinite(r["d_loss"]) and math.isfinite(r["r1"]) for r in metrics(tmp_path / "r"))
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert not any(k.startswith("_orig_mod") for k in ckpt["G"])  # loads with or without --compile


@pytest.mark.slow
def test_learns_the_digits(real_images, judge, tmp_path):
    """After 3000 steps on real images the samples cover at least 8 of the 10 classes with confident samples; the
    untrained G does not (its smooth blobs are called 2 or 3 classes, confidently). Style mixing is off, as in
    StyleGAN2-ADA's 32x32 CIFAR-10 configuration. Measured (one thread, 300 samples, seed 1) on the real
    Fashion-MNIST's 5,000 images: 9 classes, 52% confident, FD 47 (2000 steps: 6 classes, FD 78; untrained: 2). On
    scikit-learn's digits at 2000 steps, seeds 1-6 gave 9, 9, 9, 9, 10, 10 classes; with the paper's mixing
    probability 0.9, seeds 1-4 gave 10, 9, 8, 8."""
    assert_learns_digits("stylegan_lite.py", real_images, judge, tmp_path, 3000, size=16,
                         extra=["--batch-size", "16", "--z-dim", "16", "--w-dim", "16", "--mapping-layers", "2",
                                "--channel-base", "256", "--channel-max", "32", "--ema-decay", "0.95",
                                "--mixing-prob", "0"])
