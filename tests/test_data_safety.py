"""common/data.py: the decoded cache follows its source files, 16-bit PNGs, symlinked class folders, Fashion-MNIST
from Debian's package."""
import gzip
import os
import shutil
import struct

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from common import data
from helpers import assert_user_error, digit_images, run_in_process, write_celeba, write_image_folder, write_mnist

CPU = torch.device("cpu")


def _touch_later(path):
    """Move the mtime on, so the test does not depend on the file system's mtime resolution."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))


def test_replaced_mnist_files_are_decoded_again(tmp_path):
    write_mnist(tmp_path, n=20)
    first = data.load("mnist", str(tmp_path), 28, CPU)
    raw = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    new = np.full((20, 28, 28), 77, np.uint8)  # same size on disk, other images
    raw.write_bytes(struct.pack(">IIII", 2051, 20, 28, 28) + new.tobytes())
    _touch_later(raw)
    second = data.load("mnist", str(tmp_path), 28, CPU)
    assert torch.equal(second.images, torch.from_numpy(new).unsqueeze(1))
    assert second.cache_key != first.cache_key  # the FID statistics follow the source too
    assert (tmp_path / "cache" / "mnist_28.pt").exists()


@pytest.mark.parametrize("damage", ["empty", "cut short"])
def test_a_broken_data_cache_is_built_again_with_a_warning(damage, tmp_path, capsys):
    """A cache file emptied or cut short (a kill or a full disk as it was written) used to stop every later run."""
    write_mnist(tmp_path, n=20)
    first = data.load("mnist", str(tmp_path), 28, CPU)
    cache = tmp_path / "cache" / "mnist_28.pt"
    cache.write_bytes(b"" if damage == "empty" else cache.read_bytes()[:len(cache.read_bytes()) // 2])
    again = data.load("mnist", str(tmp_path), 28, CPU)
    assert torch.equal(again.images, first.images) and "cannot be read" in capsys.readouterr().err
    assert torch.equal(data.load("mnist", str(tmp_path), 28, CPU).images, first.images)  # written whole again
    assert "cannot be read" not in capsys.readouterr().err


def test_a_full_disk_while_writing_the_cache_is_a_warning_and_leaves_no_temporary_file(tmp_path, capsys,
                                                                                         monkeypatch):
    write_mnist(tmp_path, n=20)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(data.torch, "save", disk_full)
    assert len(data.load("mnist", str(tmp_path), 28, CPU)) == 20
    assert "could not write the data cache" in capsys.readouterr().err
    assert list((tmp_path / "cache").iterdir()) == []


def test_celeba_cache_grows_with_the_unzipped_files(tmp_path):
    write_celeba(tmp_path, n=3)  # half unzipped
    assert len(data.load("celeba", str(tmp_path), 8, CPU)) == 3
    write_celeba(tmp_path, n=5)
    assert len(data.load("celeba", str(tmp_path), 8, CPU)) == 5


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    folder = tmp_path / "grey16"
    folder.mkdir()
    Image.fromarray(np.full((12, 12), 65535 * 0.5, np.uint16)).save(folder / "a.png")
    assert Image.open(folder / "a.png").mode.startswith("I")
    ds = data.load(str(folder), str(tmp_path / "d"), 8, CPU)
    assert ds.images.min() >= 127 and ds.images.max() <= 128, ds.images.unique()


def test_an_image_whose_name_is_not_utf8_is_read(tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("a",), per_class=2)
    png = next((tmp_path / "imgs" / "a").glob("*.png"))
    os.rename(png, os.path.join(os.fsencode(png.parent), b"caf\xe9.png"))  # Latin-1 bytes, not UTF-8
    assert len(data.load(str(tmp_path / "imgs"), str(tmp_path / "d"), 8, CPU)) == 2


def test_float_images_are_refused_by_name_and_unread_formats_are_named(tmp_path, capsys):
    """A 32-bit float TIFF trained as all black; GIFs were skipped without a word."""
    write_image_folder(tmp_path / "imgs", classes=("a",), per_class=2)
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a" / "moving.gif")
    assert len(data.load(str(tmp_path / "imgs"), str(tmp_path / "d"), 8, CPU)) == 2
    assert "1 .gif file(s) not read (read: .bmp, .jpeg" in capsys.readouterr().err
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(tmp_path / "imgs" / "a" / "depth.tif")
    with pytest.raises(data.UserError, match="depth.tif: a 32-bit float image; save it as 8- or 16-bit"):
        data.load(str(tmp_path / "imgs"), str(tmp_path / "d"), 8, CPU)


def test_fewer_images_than_processes_is_one_line_on_every_rank(tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("a",), per_class=2)
    for rank in range(3):
        with pytest.raises(data.UserError, match="2 image.s., fewer than the 3 processes"):
            data.load(str(tmp_path / "imgs"), str(tmp_path / "d"), 8, CPU, rank=rank, world=3)


def test_symlinked_class_folder_is_listed_and_loops_end(tmp_path):
    root = write_image_folder(tmp_path / "pets", classes=("cats",), per_class=4)
    write_image_folder(tmp_path / "elsewhere", classes=("dogs",), per_class=5)
    (root / "dogs").symlink_to(tmp_path / "elsewhere" / "dogs", target_is_directory=True)
    (root / "cats" / "loop").symlink_to(root, target_is_directory=True)  # a loop back to the top
    ds = data.load(str(root), str(tmp_path / "d"), 8, CPU)
    assert len(ds) == 9 and ds.classes == ["cats", "dogs"]
    assert ds.labels.tolist() == [0] * 4 + [1] * 5


@pytest.fixture
def no_download(monkeypatch):
    """torchvision finds no mirror: a test passes only by the files on disk, with or without a network."""
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [])


def _debian_fashion_mnist(folder, n=30):
    """What `apt-get install dataset-fashion-mnist` leaves: the four idx files gzipped, side by side."""
    write_mnist(folder, name="src", n=n)
    for f in data.IDX_FILES:
        (folder / f"{f}.gz").write_bytes(gzip.compress((folder / "src" / "raw" / f).read_bytes()))
    shutil.rmtree(folder / "src")
    return folder


def test_fashion_mnist_is_unpacked_once_from_debians_package(tmp_path, monkeypatch, capsys, no_download):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", _debian_fashion_mnist(tmp_path / "debian"))
    ds = data.load("fashion_mnist", str(tmp_path / "d"), 28, CPU)
    assert capsys.readouterr().err.count("unpacked 4 files") == 1
    _, labels = digit_images(30, seed=len("train"))
    assert ds.images.shape == (30, 1, 28, 28) and torch.equal(ds.labels, torch.from_numpy(labels).long())
    assert ds.classes[0] == "T-shirt/top"
    raw = tmp_path / "d" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.IDX_FILES)  # and no temporary file left
    mtimes = [(raw / f).stat().st_mtime_ns for f in data.IDX_FILES]
    assert len(data.load("fashion_mnist", str(tmp_path / "d"), 16, CPU)) == 30  # another size: read from raw again
    assert data.fashion_mnist_dir(tmp_path / "d") == tmp_path / "d"
    assert "unpacked" not in capsys.readouterr().err
    assert [(raw / f).stat().st_mtime_ns for f in data.IDX_FILES] == mtimes


def test_an_interrupted_unpack_leaves_no_half_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", _debian_fashion_mnist(tmp_path / "debian"))

    def killed(src, dst, length):
        dst.write(src.read(100))
        raise KeyboardInterrupt

    monkeypatch.setattr(data.shutil, "copyfileobj", killed)
    with pytest.raises(KeyboardInterrupt):
        data.fashion_mnist_dir(tmp_path / "d")
    assert not any((tmp_path / "d" / "FashionMNIST" / "raw" / f).exists() for f in data.IDX_FILES)
    monkeypatch.undo()
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    assert data.fashion_mnist_dir(tmp_path / "d") == tmp_path / "d"
    assert (tmp_path / "d" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").stat().st_size == 16 + 30 * 28 * 28


def test_fashion_mnist_without_debians_package_is_a_one_line_error(tmp_path, monkeypatch, no_download):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    assert data.fashion_mnist_dir(tmp_path / "d") is None
    proc = run_in_process("dcgan.py", "--dataset", "fashion_mnist", "--data-dir", tmp_path / "d", "--device", "cpu",
                          "--steps", 1, "--run-dir", tmp_path / "run")
    assert_user_error(proc, "could not be downloaded", "apt-get install dataset-fashion-mnist")
