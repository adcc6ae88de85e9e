"""Datasets, decoded once into a uint8 tensor cache and sampled on the training device.

Names: mnist, fashion_mnist, cifar10, celeba, a folder of images (any depth; the first
sub-folder is the class), and the 2-D toy sets ring8 and grid25. Preprocessing: MNIST-style
digits and CIFAR-10 are resized to the training size; CelebA (aligned 178x218 images) is
centre-cropped to 178x178 and resized; folder images are centre-cropped to a square and resized.
The decoded tensor is cached as DATA_DIR/cache/<name>_<size>.pt, keyed by the source files' names,
sizes and mtimes (a changed source is decoded again). Fashion-MNIST is also read from Debian's
dataset-fashion-mnist package, unpacked once into DATA_DIR/FashionMNIST/raw. Batches are drawn by
random index on the device (with replacement), so no DataLoader and no per-image Python work runs in
the training loop.
"""
import collections
import concurrent.futures
import gzip
import hashlib
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cli import UserError

IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "celeba")
TOY_DATASETS = ("ring8", "grid25")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
OTHER_PICTURES = {".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ppm", ".pgm", ".tga", ".ico",
                  ".svg"}  # named
# share of free GPU memory the dataset may take before it stays in pinned host memory
GPU_BUDGET = 0.3
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
# apt-get install dataset-fashion-mnist; tests monkeypatch it
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def progress(done: int, total: int, what: str, start: float):
    """A one-line progress bar on stderr."""
    frac = done / max(total, 1)
    bar = "#" * int(30 * frac)
    rate = done / max(time.time() - start, 1e-9)
    end = "\n" if done >= total else ""
    print(f"\r{what}: [{bar:<30}] {done}/{total} ({rate:.0f}/s)", end=end, file=sys.stderr,
          flush=True)


class ToyData:
    """A mixture of 2-D Gaussians; `batch(n)` returns (points, component index)."""

    is_2d = True

    def __init__(self, name: str, device: torch.device, scale: float = 1.0, points: int = 0,
                 seed: int = 0):
        # ring8: 8 modes on a circle of radius 2, std 0.02. PacGAN's ring and the Unrolled GAN
        # notebook's are radius 1, std 0.01: the same shape at half the scale (scale 0.5)
        if name == "ring8":
            angles = torch.arange(8) * (2 * torch.pi / 8)
            self.centres, self.std = torch.stack([2 * angles.cos(), 2 * angles.sin()], 1), 0.02
        else:  # grid25: modes at {-4,-2,0,2,4}^2, std 0.05 (VEEGAN; PacGAN)
            axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
            self.centres, self.std = torch.cartesian_prod(axis, axis), 0.05
        self.centres, self.std = self.centres * scale, self.std * scale
        # points > 0: a fixed training set drawn once from `seed` (PacGAN's 100,000), which
        # batches draw from as from an image dataset; 0: fresh points for every batch
        self.fixed = None
        if points:
            g = torch.Generator().manual_seed(seed)
            k = torch.randint(len(self.centres), (points,), generator=g)
            x = self.centres[k] + self.std * torch.randn(points, 2, generator=g)
            self.fixed = (x.to(device), k.to(device))
        self.centres = self.centres.to(device)
        self.name, self.device, self.num_classes, self.labels = (
            name, device, len(self.centres), None)
        self.shape = (2,)

    def batch(self, n: int):
        if self.fixed is not None:
            i = torch.randint(len(self.fixed[0]), (n,), device=self.device)
            return self.fixed[0][i], self.fixed[1][i]
        k = torch.randint(len(self.centres), (n,), device=self.device)
        return self.centres[k] + self.std * torch.randn(n, 2, device=self.device), k


class ImageData:
    """uint8 images (N, C, H, W) and optional int64 labels; `batch(n)` returns floats in [-1, 1]."""

    is_2d = False

    def __init__(self, images, labels, classes, device, flip: bool, name: str, cache_key: str):
        self.name, self.device, self.flip, self.cache_key = name, device, flip, cache_key
        self.num_classes = len(classes) if classes else 0
        self.classes = classes
        on_gpu = (device.type == "cuda"
                  and images.numel() < GPU_BUDGET * torch.cuda.mem_get_info(device)[0])
        if on_gpu or device.type != "cuda":
            self.images = images.to(device)
            self.labels = labels.to(device) if labels is not None else None
        else:  # too big for the GPU: pinned host memory, copied per batch without blocking
            self.images = images.pin_memory()
            self.labels = labels.pin_memory() if labels is not None else None
        self.shape = tuple(images.shape[1:])

    def __len__(self):
        return len(self.images)

    def batch(self, n: int):
        idx = torch.randint(len(self.images), (n,), device=self.images.device)
        x = self.images[idx]
        y = self.labels[idx] if self.labels is not None else None
        if x.device != self.device:
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True) if y is not None else None
        x = x.float().div_(127.5).sub_(1.0)
        if self.flip:
            x = torch.where(torch.rand(n, 1, 1, 1, device=self.device) < 0.5, x.flip(3), x)
        return x, y


def load(name: str, data_dir: str, image_size: int, device: torch.device, flip: bool = False,
         need_labels: bool = False, rank: int = 0, world: int = 1, **toy):
    """The dataset `name` at `image_size`, ready to sample on `device`.

    rank/world: under DDP each rank keeps every world-th image, its own shard. toy: ToyData's
    scale, points and seed.
    """
    if name in TOY_DATASETS:
        if need_labels:
            raise UserError(f"{name} is a 2-D toy set; this script needs a labelled image dataset")
        return ToyData(name, device, **toy)
    if image_size < 4:
        raise UserError(f"--image-size must be at least 4, got {image_size}")
    images, labels, classes, key = _cached(name, Path(data_dir), image_size)
    if (need_labels and labels is None and name not in IMAGE_DATASETS
            and any(p.is_dir() for p in Path(name).iterdir())):
        stray = sorted(p.name for p in Path(name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        raise UserError(f"{name} has class sub-folders but also images at its top level "
                        f"({', '.join(stray[:5])}{', ...' if len(stray) > 5 else ''}): "
                        "move them into a class folder, so that every image is labelled")
    if need_labels and labels is None:
        raise UserError(f"dataset {name!r} has no labels; a conditional model needs mnist, "
                        "fashion_mnist, cifar10 or a folder whose first-level sub-folders "
                        "are the classes")
    if world > 1:
        if len(images) < world:
            raise UserError(f"the dataset has {len(images)} image(s), fewer than the {world} "
                            "processes: each needs at least one (use fewer GPUs or more images)")
        images = images[rank::world]
        labels = labels[rank::world] if labels is not None else None
    return ImageData(images, labels, classes, device, flip, name, f"{key}_{image_size}")


def _cached(name: str, data_dir: Path, size: int):
    """Decode the dataset once into DATA_DIR/cache/<key>_<size>.pt; later runs load that file."""
    folder = None
    if name not in IMAGE_DATASETS:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise UserError(f"unknown dataset {name!r}: use one of "
                            f"{', '.join(IMAGE_DATASETS + TOY_DATASETS)}, "
                            "or the path of a folder of images")
        files = _list_images(folder)
        if not files:
            raise UserError(f"folder {folder} holds no images "
                            f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        others = collections.Counter(p.suffix.lower() for p in _list_images(folder, OTHER_PICTURES))
        if others:  # say it rather than train on a smaller set without a word
            print(f"note: {folder}: "
                  f"{', '.join(f'{n} {ext}' for ext, n in sorted(others.items()))} file(s) "
                  f"not read (read: {', '.join(sorted(IMAGE_EXTENSIONS))})", file=sys.stderr)
        source = _source_key(folder, files, str(folder.resolve()))
        key = f"folder-{folder.resolve().name}-{source}"
        path = data_dir / "cache" / f"{key}_{size}.pt"
    else:
        src, files = _source_files(name, data_dir)
        source = _source_key(src, files)
        key = f"{name}-{source}"  # also names the FID statistics, so they follow the source too
        path = data_dir / "cache" / f"{name}_{size}.pt"
    d = None
    if path.exists():
        try:
            d = torch.load(path, weights_only=True)
        # empty or cut short (a kill or a full disk as it was written): build it again
        except Exception as e:
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            print(f"warning: the data cache {path} cannot be read ({why}); building it again",
                  file=sys.stderr)
    if isinstance(d, dict) and "images" in d:
        # a stale cache is rebuilt; with no source left it serves alone
        if d.get("source") == source or not files:
            key = key if folder is not None or "source" not in d else f"{name}-{d['source']}"
            return d["images"], d.get("labels"), d.get("classes"), key
    if folder is not None:
        images, labels, classes = _read_folder(folder, files, size)
    elif name in ("mnist", "fashion_mnist"):
        images, labels, classes = _read_mnist(name, data_dir, size)
    elif name == "cifar10":
        images, labels, classes = _read_cifar10(data_dir, size)
    else:
        images, labels, classes = _read_celeba(data_dir, size)
    if folder is None:  # the reader may just have downloaded the files
        source = _source_key(*_source_files(name, data_dir))
        key = f"{name}-{source}"
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # DDP ranks may build it at once
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # on disk (fsync) before the rename, so a crash leaves the old file or the new
        with open(tmp, "wb") as f:
            torch.save({"images": images, "labels": labels, "classes": classes,
                        "source": source}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk: torch's writer raises RuntimeError
        tmp.unlink(missing_ok=True)
        why = getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:200]
        print(f"warning: could not write the data cache {path} ({why}); "
              "it will be rebuilt next time", file=sys.stderr)
    return images, labels, classes, key


def _list_images(folder: Path, extensions=IMAGE_EXTENSIONS):
    """Image files under folder, following directory symlinks (each real directory once, so loops
    end)."""
    files, seen = [], set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a symlink loop, or a second link to a folder already listed
            dirs[:] = []
            continue
        seen.add(real)
        files += [Path(top, n) for n in names if Path(n).suffix.lower() in extensions]
    return sorted(p for p in files if p.is_file())


def _source_files(name: str, data_dir: Path):
    """The folder a named dataset is read from, and the files in it (none before a download)."""
    folder = data_dir / {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw",
                         "cifar10": "cifar-10-batches-py",
                         "celeba": "celeba/img_align_celeba"}[name]
    return folder, sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def fashion_mnist_dir(data_dir) -> Path | None:
    """DATA_DIR with FashionMNIST/raw holding the four idx files, unpacked from Debian's gzip files
    if missing; None if neither is there. Debian recompressed them, so torchvision's md5 check would
    reject the .gz and download."""
    raw = Path(data_dir) / "FashionMNIST" / "raw"
    missing = [f for f in IDX_FILES if not (raw / f).is_file()]
    if missing and not all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in IDX_FILES):
        return None
    # written aside, then renamed: a killed run leaves no half file under the real name
    for f in missing:
        tmp = raw / f".{f}.{os.getpid()}.tmp"
        try:
            raw.mkdir(parents=True, exist_ok=True)
            with gzip.open(DEBIAN_FASHION_MNIST / f"{f}.gz") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, raw / f)
        except (OSError, EOFError) as e:  # an unwritable DATA_DIR, a full disk, a damaged package
            tmp.unlink(missing_ok=True)
            raise UserError(f"could not unpack {DEBIAN_FASHION_MNIST / f}.gz "
                            f"into {raw} ({e})") from None
    if missing:
        print(f"fashion_mnist: unpacked {len(missing)} files from {DEBIAN_FASHION_MNIST} "
              f"into {raw}", file=sys.stderr)
    return Path(data_dir)


def _source_key(root: Path, files, prefix: str = "") -> str:
    """A short digest of the files' names, sizes and mtimes: any replaced, added or missing file
    changes it."""
    listing = "\n".join(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}"
                        for p in files for st in [p.stat()])
    # surrogateescape: a name that is not valid UTF-8 (os gives its bytes as surrogates) hashes as
    # its own bytes
    return hashlib.sha1((prefix + listing).encode(errors="surrogateescape")).hexdigest()[:10]


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 batch (N, C, h, w) to size x size with antialiasing, in chunks."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _read_mnist(name: str, data_dir: Path, size: int):
    import torchvision
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    if name == "fashion_mnist":
        fashion_mnist_dir(data_dir)
    try:
        ds = cls(str(data_dir), train=True, download=True)
    except Exception as e:  # no network, a broken mirror, a half-written file
        # torchvision's message spans lines: keep the error to one
        why = " ".join(str(e).split())[:300]
        raise UserError(f"{name} is not in {data_dir / cls.__name__ / 'raw'} and could not be "
                        f"downloaded ({why}). "
                        f"Put the four idx files ({', '.join(IDX_FILES)}) there, "
                        + ("run `apt-get install dataset-fashion-mnist` (Debian, Ubuntu), "
                           if name == "fashion_mnist" else "")
                        + "or run once with network access.") from None
    return _resize(ds.data.unsqueeze(1), size), ds.targets.long(), list(ds.classes)


def _read_cifar10(data_dir: Path, size: int):
    folder = data_dir / "cifar-10-batches-py"
    if not folder.is_dir():
        import torchvision
        try:
            torchvision.datasets.CIFAR10(str(data_dir), train=True, download=True)
        except Exception as e:
            raise UserError(f"CIFAR-10 is not in {folder} and could not be downloaded ({e}). "
                            "Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
                            f"and unpack it in {data_dir} "
                            f"so that {folder / 'data_batch_1'} exists.") from None
    images, labels = [], []
    for i in range(1, 6):  # read the pickles ourselves: torchvision would check their md5 sums
        f = folder / f"data_batch_{i}"
        if not f.exists():
            raise UserError(f"CIFAR-10 is incomplete: {f} is missing")
        with open(f, "rb") as fh:
            d = pickle.load(fh, encoding="latin1")
        images.append(torch.from_numpy(
            np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)))
        labels.append(torch.tensor(d["labels"], dtype=torch.long))
    meta = folder / "batches.meta"
    classes = (pickle.load(open(meta, "rb"), encoding="latin1")["label_names"] if meta.exists()
               else [str(i) for i in range(10)])
    return _resize(torch.cat(images), size), torch.cat(labels), classes


def _read_celeba(data_dir: Path, size: int):
    folder = data_dir / "celeba" / "img_align_celeba"
    if not folder.is_dir() or not any(folder.glob("*.jpg")):
        import torchvision
        try:
            torchvision.datasets.CelebA(str(data_dir), split="all", download=True)
        except Exception as e:  # Google Drive quota pages, access limits, no network
            raise UserError(f"CelebA is not in {folder} "
                            f"and torchvision could not download it ({e}). Download "
                            "img_align_celeba.zip (the aligned and cropped images) from "
                            "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and unzip it into "
                            f"{folder.parent} so that {folder / '000001.jpg'} exists.") from None
    files = sorted(folder.glob("*.jpg"))
    return _decode(files, size, crop=178), None, None


def _read_folder(folder: Path, files, size: int):
    top = {p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else None
           for p in files}
    images = _decode(files, size, crop=0)
    if None in top:  # images directly in the folder: no classes
        return images, None, None
    classes = sorted(top)
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[p.relative_to(folder).parts[0]] for p in files], dtype=torch.long)
    return images, labels, classes


def _decode(files, size: int, crop: int):
    """Decode image files to uint8 (N, 3, size, size): centre crop (`crop` px, or the short side),
    resize."""
    from PIL import Image

    def one(path):
        try:
            with Image.open(path) as im:
                # 32-bit float: no range to scale from (0-1? 0-255?), and convert() clips it
                if im.mode == "F":
                    return None, f"{path}: a 32-bit float image; save it as 8- or 16-bit"
                # 16-bit greyscale: convert("RGB") would clip it to white
                if im.mode.startswith("I"):
                    im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257).round()
                                         .clip(0, 255).astype(np.uint8))
                im = im.convert("RGB")
                w, h = im.size
                c = min(crop or min(w, h), w, h)
                left, top = (w - c) // 2, (h - c) // 2
                im = im.crop((left, top, left + c, top + c)).resize((size, size), Image.BICUBIC)
                return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy(), None
        except Exception as e:
            return None, f"{path}: {e}"

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    bad, start = [], time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for i, (img, err) in enumerate(pool.map(one, files, chunksize=64)):
            if err:
                bad.append(err)
            else:
                out[i] = img
            if i % 500 == 0 or i + 1 == len(files):
                progress(i + 1, len(files), f"decoding {len(files)} images to {size}x{size}", start)
    # stop rather than skip: a silently smaller dataset changes the FID reference and the run
    if bad:
        raise UserError(f"{len(bad)} of {len(files)} images could not be read; remove or fix them "
                        f"and run again. First: {'; '.join(bad[:3])}")
    return torch.from_numpy(out)
