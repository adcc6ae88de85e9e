"""common/: datasets in their real layouts, checkpoints, logging, FID (parity with pytorch-fid)."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common import data, fid
from common import run as log
from common.cli import UserError
from helpers import ROOT, digit_images, metrics, run_in_process, write_celeba, write_cifar10, write_image_folder, write_mnist

CPU = torch.device("cpu")


def test_mnist_idx_files_load_resized_with_labels(mnist_dir):
    ds = data.load("mnist", str(mnist_dir), 32, CPU)
    images, labels = digit_images(200, seed=len("train"))
    assert ds.images.shape == (200, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.labels, torch.from_numpy(labels).long()) and ds.num_classes == 10
    x, y = ds.batch(8)
    assert x.shape == (8, 1, 32, 32) and x.min() >= -1 and x.max() <= 1 and y.shape == (8,)
    assert (mnist_dir / "cache" / "mnist_32.pt").exists()


def test_fashion_mnist_layout(tmp_path):
    write_mnist(tmp_path, name="FashionMNIST", n=30)
    assert data.load("fashion_mnist", str(tmp_path), 28, CPU).images.shape == (30, 1, 28, 28)


def test_cifar10_pickles_are_read_without_md5(tmp_path):
    ds = data.load("cifar10", str(write_cifar10(tmp_path)), 32, CPU)
    assert ds.images.shape == (50, 3, 32, 32) and ds.num_classes == 10 and ds.labels is not None


def test_celeba_centre_crop_and_cache(tmp_path):
    ds = data.load("celeba", str(write_celeba(tmp_path, n=5)), 16, CPU)
    assert ds.images.shape == (5, 3, 16, 16) and ds.labels is None
    for f in (tmp_path / "celeba" / "img_align_celeba").glob("*.jpg"):
        f.unlink()  # a second load reads the cache alone
    assert data.load("celeba", str(tmp_path), 16, CPU).images.shape == (5, 3, 16, 16)


def test_folder_classes_are_first_subfolders(tmp_path):
    root = write_image_folder(tmp_path / "pets", classes=("cats", "dogs"), per_class=3)
    (root / "dogs" / "puppies").mkdir()
    write_image_folder(root / "dogs" / "puppies", classes=("x",), per_class=2)  # nested: still 'dogs'
    ds = data.load(str(root), str(tmp_path / "d"), 8, CPU, need_labels=True)
    assert ds.classes == ["cats", "dogs"] and ds.labels.tolist().count(1) == 5


def test_folder_without_classes_refuses_conditional(tmp_path):
    root = tmp_path / "flat"
    write_image_folder(tmp_path, classes=("flat",), per_class=3)
    assert data.load(str(root), str(tmp_path / "d"), 8, CPU).labels is None
    with pytest.raises(UserError, match="no labels"):
        data.load(str(root), str(tmp_path / "d"), 8, CPU, need_labels=True)


@pytest.mark.parametrize("case", ["unknown", "empty", "corrupt", "no_download"])
def test_bad_datasets_give_one_clear_error(tmp_path, case):
    if case == "unknown":
        name, match = "imagenet9", "unknown dataset"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        name, match = str(tmp_path / "empty"), "holds no images"
    elif case == "corrupt":
        root = write_image_folder(tmp_path / "f", per_class=2)
        (root / "cats" / "broken.png").write_bytes(b"not a png")
        name, match = str(root), "1 of 5 images could not be read.*broken.png"
    else:
        name, match = "cifar10", "could not be downloaded"
    with pytest.raises(UserError, match=match):
        data.load(name, str(tmp_path / "d"), 8, CPU)


def test_toy_sets_match_their_definitions():
    ring, grid = data.load("ring8", "unused", 0, CPU), data.load("grid25", "unused", 0, CPU)
    assert torch.allclose(ring.centres.norm(dim=1), torch.full((8,), 2.0)) and ring.std == 0.02
    assert sorted(set(grid.centres[:, 0].tolist())) == [-4, -2, 0, 2, 4] and grid.std == 0.05
    x, k = grid.batch(4000)
    assert (x - grid.centres[k]).std().item() == pytest.approx(0.05, rel=0.1)


def test_flip_is_per_image(tmp_path):
    ds = data.load("mnist", str(write_mnist(tmp_path, n=20)), 28, CPU, flip=True)
    ds.images, ds.labels = ds.images[:1].expand(256, -1, -1, -1), None
    x, _ = ds.batch(256)
    flipped = (x == x[:1].flip(3)).flatten(1).all(1).float().mean().item()
    assert 0.3 < flipped < 0.7


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    log.save_checkpoint(path, {"step": 1})
    original_save = torch.save

    def dies_halfway(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(UserError, match="No space left on device"):
        log.save_checkpoint(path, {"step": 2})
    monkeypatch.setattr(torch, "save", original_save)
    assert torch.load(path)["step"] == 1 and not (tmp_path / "checkpoint.pt.tmp").exists()


def test_unwritable_run_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write to the run directory"):
        log.Logger(type("A", (), {})(), "x", str(blocker / "run"))


def test_frechet_distance_matches_scipy():
    from scipy import linalg
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 64)), rng.normal(size=(400, 64)) * 1.3 + 0.2
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8)


def test_quantize_equals_png_round_trip(tmp_path):
    from PIL import Image
    from torchvision.utils import save_image
    x = torch.rand(3, 8, 8) * 2.2 - 1.1
    save_image((x.clamp(-1, 1) + 1) / 2, tmp_path / "a.png")
    png = torch.from_numpy(np.asarray(Image.open(tmp_path / "a.png"))).permute(2, 0, 1)
    assert torch.equal(fid.quantize(x), png)

    log.write_png((x.clamp(-1, 1) + 1) / 2, tmp_path / "b.png")  # what export and the sample grids write
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize("n,channels", [(1, 1), (10, 1), (64, 1), (5, 3)])
def test_sample_grids_are_torchvisions_pixel_for_pixel(tmp_path, n, channels):
    """Our grid and PNG writer (no torchvision import at start-up) against make_grid + save_image."""
    from torchvision.utils import make_grid, save_image
    x = torch.rand(n, channels, 6, 5, generator=torch.Generator().manual_seed(n)) * 2.4 - 1.2
    theirs = make_grid(x.clamp(-1, 1), nrow=8, normalize=True, value_range=(-1, 1))
    ours = log.image_grid(x, 8)
    assert torch.equal(ours, theirs.expand(3, -1, -1))
    save_image(theirs, tmp_path / "theirs.png")
    log.write_png(ours, tmp_path / "ours.png")
    assert (tmp_path / "theirs.png").read_bytes() == (tmp_path / "ours.png").read_bytes()


def random_fid_weights(path: Path):
    """Seeded random weights with He-initialised convolutions and BatchNorm statistics from a forward
    pass, so that features depend on the input (plain random weights give near-constant features)."""
    torch.manual_seed(0)
    net = fid.FIDInception()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the forward pass
    with torch.no_grad():
        net.train()(torch.rand(6, 3, 64, 64))
        for name, p in net.named_parameters():  # small features keep scipy's sqrtm (in pytorch-fid) well inside
            if name.startswith("Mixed_7c") and ".bn." in name:  # its 1e-3 tolerance on imaginary parts
                p.mul_(0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def test_state_dict_keys_match_the_fid_network():
    import torchvision
    reference = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    ours = fid.FIDInception().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_fid_reference_statistics_are_cached_per_weights_and_image_count(tmp_path):
    """Statistics made with one weights file are never reused with another, nor for another number of images."""
    a = random_fid_weights(tmp_path / "a.pth")
    state = torch.load(a)
    state["fc.bias"] += 1.0
    torch.save(state, tmp_path / "b.pth")
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    for weights, n in ((a, 4), (tmp_path / "b.pth", 4), (a, 3)):
        ds = data.ImageData(images[:n], None, None, torch.device("cpu"), False, "toy", "toy_8")
        fid.FID(ds, str(tmp_path), str(weights), torch.device("cpu"))
    assert len(list((tmp_path / "cache").glob("fid_stats_toy_8_*.npz"))) == 3


def as_generated(images):
    """generate(k) for FID.score: the next k of these uint8 images, as floats in [-1, 1] that quantise back to them."""
    done = [0]

    def generate(k):
        done[0] += k
        return images[done[0] - k:done[0]].float() / 127.5 - 1
    return generate


class TinyFeatures(torch.nn.Module):
    """A stand-in for the Inception network (same calls, milliseconds): 8 fixed projections of a 4x4 grey thumbnail."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(16, 8)

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x.float().mean(1, keepdim=True) / 255, 4).flatten(1))


def test_fid_scores_kid_precision_recall_density_coverage_from_cached_reference_features(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"stand-in")  # only hashed: its digest names the cache
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8))
    images[20:] //= 4  # a dark half: a generator that drops it drops a mode
    ds = data.ImageData(images, None, None, CPU, False, "toy", "toy_8")
    net = TinyFeatures()
    path = tmp_path / "cache" / f"fid_stats_toy_8_c1_n40_w{fid.hashlib.sha256(b'stand-in').hexdigest()[:8]}.npz"
    path.parent.mkdir()
    np.savez(path, mu=np.zeros(8), sigma=np.eye(8))  # a cache from before the features were kept
    scorer = fid.FID(ds, str(tmp_path), str(weights), CPU, net=net)
    real = fid.features(net, images)
    cached = np.load(path)
    assert cached["features"].dtype == np.float32 and len(cached["features"]) == 40
    assert np.array_equal(np.sort(cached["features"], 0), np.sort(real.astype(np.float32), 0))  # all 40, in random order
    assert np.allclose(cached["mu"], real.mean(0))

    same = scorer.score(as_generated(images), 40)
    assert same["fid"] == pytest.approx(0, abs=1e-6)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    fake = images[:20].repeat(2, 1, 1, 1)  # the bright half only
    dropped = fid.FID(ds, str(tmp_path), str(weights), CPU, net=net).score(as_generated(fake), 40)  # from the cache
    fake_feats = fid.features(net, fake)
    assert (dropped["kid"], dropped["kid_std"]) == fid.kid(cached["features"], fake_feats)
    assert (dropped["precision"], dropped["recall"]) == fid.precision_recall(cached["features"], fake_feats)
    assert (dropped["density"], dropped["coverage"]) == fid.density_coverage(cached["features"], fake_feats)
    assert dropped["recall"] <= 0.6 and dropped["coverage"] <= 0.6 and dropped["kid"] > 10 * abs(same["kid"])
    assert set(scorer.score(as_generated(images[:5]), 5)) == {"fid"}  # 5 images: too few for 5-NN balls


def test_a_run_with_fid_logs_kid_precision_recall_density_coverage(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(log, "load_network", lambda weights, device: TinyFeatures())
    monkeypatch.setattr(log.signal, "signal", lambda *args: None)  # keep pytest's own signal handling
    weights, out = tmp_path / "w.pth", tmp_path / "r"
    weights.write_bytes(b"stand-in")
    proc = run_in_process("dcgan.py", "--dataset", "mnist", "--data-dir", mnist_dir, "--image-size", "32", "--width", "8",
                          "--batch-size", "8", "--sample-every", "0", "--steps", "2", "--fid", "on", "--fid-every", "1",
                          "--fid-samples", "20", "--fid-weights", weights, "--run-dir", out)
    assert proc.returncode == 0, proc.stderr
    names = {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage"}
    rows = [r for r in metrics(out) if "fid" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(names <= set(r) and np.isfinite([r[k] for k in names]).all() for r in rows), rows
    assert all(0 <= r[k] <= 1 for r in rows for k in ("precision", "recall", "coverage"))
    line = [x for x in proc.stdout.splitlines() if x.startswith("step 2: FID")][0]
    for name in ("KID", "±", "precision", "recall", "density", "coverage"):
        assert name in line, line


@pytest.mark.slow
def test_fid_parity_with_pytorch_fid(tmp_path):
    """Same weights file, same two folders: common.fid and pytorch-fid agree within 1e-3 relative."""
    from PIL import Image
    torch_home = tmp_path / "torch_home"
    weights = random_fid_weights(torch_home / "hub" / "checkpoints" / fid.WEIGHTS_URL.rsplit("/", 1)[1])
    rng = np.random.default_rng(0)
    for name, shift in (("a", 0), ("b", 60)):
        (tmp_path / name).mkdir()
        for i in range(12):
            img = np.clip(rng.normal(120 + shift, 50, (32, 32, 3)), 0, 255).astype(np.uint8)
            img[: 8 + i] //= 2  # structure that varies across images
            Image.fromarray(img).save(tmp_path / name / f"{i:03d}.png")
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    theirs = subprocess.run([sys.executable, "-m", "pytorch_fid", str(tmp_path / "a"), str(tmp_path / "b"),
                             "--device", "cpu", "--batch-size", "6", "--num-workers", "0"],
                            env=env, capture_output=True, text=True)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    ours = subprocess.run([sys.executable, "-m", "common.fid", str(tmp_path / "a"), str(tmp_path / "b"),
                           "--weights", str(weights), "--device", "cpu", "--batch-size", "6"],
                          cwd=ROOT, capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr[-2000:]
    fid_theirs, fid_ours = (float(p.stdout.strip().rsplit("FID:", 1)[1]) for p in (theirs, ours))
    print(f"pytorch-fid {fid_theirs}, common.fid {fid_ours}")
    assert fid_ours > 0 and fid_ours == pytest.approx(fid_theirs, rel=1e-3)


def test_standing_statistics_are_the_batch_statistics_of_the_models_own_layer_inputs():
    """An EMA G's BatchNorm statistics, recomputed: the mean over the batches of its own layer inputs' batch mean and
    (unbiased) variance, as train mode with a cumulative average keeps them; G, the weights and the RNG untouched."""
    torch.manual_seed(0)
    G = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 8, 4), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.ConvTranspose2d(8, 1, 4, 2, 1), torch.nn.BatchNorm2d(1), torch.nn.Tanh())
    with torch.no_grad():
        G(torch.randn(16, 4, 1, 1))  # G's own running statistics
        ema = copy.deepcopy(G)
        for p in ema.parameters():
            p.mul_(1.5).add_(0.1)  # other weights, G's statistics copied
    g_before, weights_before = copy.deepcopy(G.state_dict()), copy.deepcopy(dict(ema.named_parameters()))
    z = torch.randn(3, 10, 4, 1, 1)
    batches = iter(z)

    def sample(k):  # as the scripts' samplers: eval mode
        ema.eval()
        images = ema(next(batches)[:k])
        ema.train()
        return images
    rng = torch.get_rng_state()
    log.standing_statistics(ema, sample, batches=3, batch_size=10)
    assert torch.equal(torch.get_rng_state(), rng) and not ema[1]._forward_pre_hooks

    expected = copy.deepcopy(ema)
    for m in (expected[1], expected[4]):
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    with torch.no_grad():
        for zb in z:
            expected(zb)
    first_inputs = torch.stack([ema[0](zb) for zb in z]).detach()  # the first BatchNorm's inputs, batch by batch
    assert torch.allclose(ema[1].running_mean, first_inputs.mean((1, 3, 4)).mean(0), atol=1e-6)
    assert torch.allclose(ema[1].running_var, first_inputs.transpose(1, 2).flatten(2).var(2).mean(0), atol=1e-6)
    for m, e, g in ((ema[1], expected[1], G[1]), (ema[4], expected[4], G[4])):
        assert torch.allclose(m.running_mean, e.running_mean, atol=1e-6)
        assert torch.allclose(m.running_var, e.running_var, rtol=1e-5)
        assert not torch.allclose(m.running_var, g.running_var, rtol=0.05)  # not G's statistics any more
    assert all(torch.equal(G.state_dict()[k], v) for k, v in g_before.items())
    assert all(torch.equal(p, weights_before[k]) for k, p in ema.named_parameters())


def test_ema_grids_fid_and_export_use_the_emas_own_batchnorm_statistics(mnist_dir, tmp_path, monkeypatch):
    """dcgan --ema: before each grid, FID and export the EMA G (not G) gets its own statistics, once per step."""
    calls, recompute = [], log.standing_statistics

    def recording(model, sample, batches, batch_size):  # keeps the state each recompute leaves
        recompute(model, sample, batches, batch_size)
        calls.append({k: v.clone() for k, v in model.state_dict().items()})
    monkeypatch.setattr(log, "standing_statistics", recording)
    monkeypatch.setattr(log, "load_network", lambda weights, device: TinyFeatures())
    monkeypatch.setattr(log.signal, "signal", lambda *args: None)  # keep pytest's own signal handling
    weights, out = tmp_path / "w.pth", tmp_path / "r"
    weights.write_bytes(b"stand-in")
    common = ["--dataset", "mnist", "--data-dir", mnist_dir, "--image-size", "32", "--width", "8", "--batch-size", "8",
              "--steps", "2", "--sample-every", "1", "--fid", "on", "--fid-samples", "8", "--fid-weights", weights]
    proc = run_in_process("dcgan.py", *common, "--ema", "--export", "3", "--run-dir", out)
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 2  # steps 1 and 2: the grid, FID and export of step 2 share one recompute
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)  # written before step 2's grid, FID and export
    state = calls[-1]
    assert all(torch.equal(state[k], v) for k, v in ckpt["ema"].items() if "running" not in k)  # the EMA G
    bn = [k for k in state if k.endswith("running_var")]
    assert bn and all(not torch.allclose(state[k], ckpt["G"][k]) for k in bn)  # its own statistics, not G's
    calls.clear()
    assert run_in_process("dcgan.py", *common, "--run-dir", tmp_path / "no_ema").returncode == 0
    assert calls == []  # without EMA, G samples with its own running statistics


def test_ranks_agree_on_a_stop_every_tenth_step_only(monkeypatch):
    """Under DDP, reading the stop flag's all-reduce is a host sync: once per 10 steps, never per step."""
    calls = []

    def fake_all_reduce(flag):
        calls.append(flag.clone())
        flag.fill_(1)  # as if another rank had received SIGTERM

    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    monkeypatch.setattr(log.signal, "signal", lambda *args: None)  # keep pytest's own SIGINT handling
    stop = log.StopSignal()
    answers = [log.stop_requested(stop, world=2, device=torch.device("cpu")) for _ in range(20)]
    assert len(calls) == 2 and answers.index(True) == 9  # steps 10 and 20
    assert log.stop_requested(stop, world=1, device=torch.device("cpu")) is False  # one process: no collective


def test_2d_export_is_written_a_chunk_at_a_time(tmp_path):
    """minimal_gan --export 100000000 on 2-D data asked for one 51 GB sample; now chunks fill a file on disk."""
    asked = []

    def points(k):
        asked.append(k)
        return torch.arange(2 * k, dtype=torch.float32).view(k, 2) + sum(asked[:-1]) * 2
    log.export_points(points, 150_000, tmp_path / "export.npy")
    saved = np.load(tmp_path / "export.npy")
    assert max(asked) == 65536 and sum(asked) == 150_000 and list(tmp_path.iterdir()) == [tmp_path / "export.npy"]
    assert np.array_equal(saved, np.arange(300_000, dtype=np.float32).reshape(150_000, 2))


def test_a_train_step_needs_only_common_step():
    """common/step.py stands alone (torch and the standard library), so a copied train_step takes one small file."""
    import ast
    from common import step
    tree = ast.parse(Path(step.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"contextlib", "torch"} and not any(isinstance(node, ast.ImportFrom) and node.level
                                                           for node in ast.walk(tree)), imported
    x = torch.ones(4, 4)
    with step.autocast_to("cpu", torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
    with step.autocast_to("cpu", None):
        assert (x @ x).dtype == torch.float32
