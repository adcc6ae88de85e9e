"""common/data.py: the decoded cache follows its source files, 16-bit PNGs, symlinked class folders."""
import os
import struct

import numpy as np
import torch
from PIL import Image

from common import data
from helpers import write_celeba, write_image_folder, write_mnist

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


def test_symlinked_class_folder_is_listed_and_loops_end(tmp_path):
    root = write_image_folder(tmp_path / "pets", classes=("cats",), per_class=4)
    write_image_folder(tmp_path / "elsewhere", classes=("dogs",), per_class=5)
    (root / "dogs").symlink_to(tmp_path / "elsewhere" / "dogs", target_is_directory=True)
    (root / "cats" / "loop").symlink_to(root, target_is_directory=True)  # a loop back to the top
    ds = data.load(str(root), str(tmp_path / "d"), 8, CPU)
    assert len(ds) == 9 and ds.classes == ["cats", "dogs"]
    assert ds.labels.tolist() == [0] * 4 + [1] * 5
