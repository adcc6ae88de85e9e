"""Judging generated digits, clothes or colour artwork: a small classifier of our own, trained on the training split
of an MNIST or Fashion-MNIST folder (or of a folder of class sub-folders) and cached, scores a set of samples against
the held-out split.

    judge = DigitJudge.load("data", size=32)        # trains once (a minute on a CPU), then loads the cache
    judge = DigitJudge.load("data", size=32, dataset="fashion_mnist")
    judge = DigitJudge.load_folder("emoji", cache="data")   # emoji/train and emoji/test (benchmarks.emoji writes them)
    scores = judge.score(images)                   # images: (N, C, H, W) in [-1, 1]
    scores = judge.score(images, labels=asked)     # cgan: also the share whose class is the asked label

Scores: `fd`, the Frechet distance between the classifier's penultimate features of the samples and of the
held-out images (0 for a perfect generator, up to the sampling noise of the two sets); `confident`, the share of
samples the classifier calls with probability > 0.9 (0.7 for Fashion-MNIST and folders: CONFIDENT); `covered`, the
classes that hold at least 2% of the samples among the confident calls (a collapsed generator covers one or two, an
untrained one none or a few); `class_share`, each class's share of the confident calls; `tv`, the total variation
distance between the samples' class mix and the held-out images' (each image counted as its most likely class: 0 when
the proportions match); `label_acc`, with `labels`, the share of samples classified as the label they were generated
for.

`write_sklearn_digits(folder)` writes scikit-learn's 1,797 real 8x8 digits (a test-only dependency) in
MNIST's on-disk layout (28x28, centred in 20x20 like MNIST's), for machines where MNIST cannot be
downloaded; `write_fashion_mnist_subset(folder)` a fixed subset of the real Fashion-MNIST from Debian's package. The
tests and `python -m benchmarks.recipes` use them.
"""
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# A sample counts as a clear image of its class when the classifier gives the class more than this. Fashion-MNIST's
# shirts look like its T-shirts, pullovers and coats: at 0.9 only 1% of its real test images are confident shirts (the
# real images would cover nine classes), at 0.7 4.7% at 32x32 and at 16x16.
CONFIDENT = {"mnist": 0.9, "fashion_mnist": 0.7, "folder": 0.7}
COVERED = 0.02    # a class is covered when at least this share of all samples are confident calls of it
# A folder's judge (colour artwork: benchmarks.emoji's 1,715 training emoji) trains this many steps of 64.
FOLDER_STEPS = 2000


def write_sklearn_digits(folder: Path, test: int = 297, seed: int = 0) -> Path:
    """scikit-learn's digits as FOLDER/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte: each 8x8 image
    (values 0-16) upsampled to 20x20 and centred in 28x28, as MNIST's digits are; `test` of them, chosen at
    random, form the held-out t10k split. Returns FOLDER."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.from_numpy(digits.images).float().mul(255 / 16).unsqueeze(1)
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4)).round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    y = digits.target.astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(x))
    raw = Path(folder) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, idx in (("train", order[test:]), ("t10k", order[:test])):
        n = len(idx)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + x[idx].tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + y[idx].tobytes())
    return Path(folder)


DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}  # --dataset name: torchvision class and folder


def write_fashion_mnist_subset(folder: Path, train: int = 5000, test: int = 1000, source: Path = None,
                               seed: int = 0) -> Path:
    """A fixed random subset of the real Fashion-MNIST (`train` of the 60,000 training images, `test` of the 10,000
    test images) from the four gzip idx files in SOURCE, written as FOLDER/FashionMNIST/raw/ in torchvision's
    layout. Returns FOLDER."""
    import gzip
    from common import data
    source = source or data.DEBIAN_FASHION_MNIST
    raw = Path(folder) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("t10k", test)):
        images = np.frombuffer(gzip.open(source / f"{split}-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
        labels = np.frombuffer(gzip.open(source / f"{split}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
        idx = np.sort(rng.choice(len(labels), n, replace=False))
        x, y = images.reshape(-1, 28, 28)[idx], labels[idx]
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + x.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + y.tobytes())
    return Path(folder)


def dataset_in(folder: Path) -> str:
    """The --dataset name of the MNIST-layout set in FOLDER: fashion_mnist if it holds FashionMNIST/raw, else mnist."""
    return "fashion_mnist" if (Path(folder) / "FashionMNIST" / "raw").is_dir() else "mnist"


def read_mnist_split(folder: Path, train: bool, size: int, dataset: str = "mnist"):
    """A split of FOLDER's MNIST or Fashion-MNIST (torchvision's layout, no download) at `size`, in [-1, 1], and its
    labels."""
    import torchvision
    ds = getattr(torchvision.datasets, DATASETS[dataset])(str(folder), train=train, download=False)
    x = ds.data.unsqueeze(1).float()
    if size != x.shape[-1]:  # as common.data resizes the training images
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).round().clamp(0, 255)
    return x / 127.5 - 1, ds.targets.long()


def read_folder_split(folder: Path, split: str, size: int, cache: Path):
    """FOLDER/SPLIT (one sub-folder per class, as `python -m benchmarks.emoji` writes) at `size`, decoded as the
    scripts decode it (common.data, cached in CACHE), in [-1, 1]; its labels and class names."""
    from common.data import load
    data = load(str(Path(folder) / split), str(cache), size, torch.device("cpu"), need_labels=True)
    return data.images.float() / 127.5 - 1, data.labels, data.classes


class Classifier(nn.Module):
    """Two conv blocks and a 64-unit feature layer: ~99% on MNIST, ~98% on the scikit-learn digits."""

    def __init__(self, size: int, channels: int = 1, classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * (size // 4) ** 2, 64), nn.ReLU())
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        f = self.conv(x)
        return self.head(f), f


def _shift(x, pixels: int):
    """Random translations by up to `pixels` in each direction (zero fill), one per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n)).tolist()
    return torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(zip(dy, dx))])


def _train_classifier(x, y, size: int, steps: int, seed: int, classes: int, flip: bool = False) -> Classifier:
    """A Classifier trained on (x, y) with random shifts (and horizontal flips), from `seed` alone."""
    with torch.random.fork_rng():
        # The initial weights from the seed too: torch seeds each new process at random, so a judge initialised
        # before this point differed from run to run (and from a test worker to a plain process).
        torch.manual_seed(seed)
        net = Classifier(size, x.shape[1], classes)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        net.train()
        for step in range(steps):
            idx = torch.randint(len(x), (64,))
            batch = _shift(x[idx], max(1, size // 16))
            if flip:
                batch = torch.where(torch.rand(64, 1, 1, 1) < 0.5, batch.flip(3), batch)
            loss = F.cross_entropy(net(batch)[0], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net


def _save(path: Path, net: Classifier, key: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"net": net.state_dict(), **key}, tmp)
    tmp.replace(path)


class DigitJudge:
    def __init__(self, net: Classifier, size: int, held_out: torch.Tensor, held_out_labels: torch.Tensor,
                 dataset: str = "mnist", class_names=None, reference: torch.Tensor = None):
        """Accuracy on the held-out images; FD and the class mix against `reference` (default: the held-out)."""
        self.net, self.size, self.confident = net.eval(), size, CONFIDENT[dataset]
        self.classes = net.head.out_features
        self.class_names = class_names or [str(c) for c in range(self.classes)]
        self.accuracy = (self.classify(held_out)[0] == held_out_labels).double().mean().item()
        reference = held_out if reference is None else reference
        self.real_share = torch.bincount(self.classify(reference)[0], minlength=self.classes).double() / len(reference)
        self.mu, self.sigma = _stats(self.features(reference))

    @classmethod
    def load(cls, folder, size: int, steps: int = 3000, seed: int = 0, verbose: bool = True, dataset: str = "mnist"):
        """The judge for FOLDER's MNIST (or Fashion-MNIST) at `size`: trained on the training split once and cached
        as FOLDER/cache/digit_classifier_<size>_<steps>.pt (fashion_mnist_classifier_...), keyed by the split's files
        (new files, new classifier)."""
        folder = Path(folder)
        raw = folder / DATASETS[dataset] / "raw"
        source = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in raw.iterdir() if p.is_file())
        path = folder / "cache" / f"{'digit' if dataset == 'mnist' else dataset}_classifier_{size}_{steps}.pt"
        held_out, held_labels = read_mnist_split(folder, False, size, dataset)
        net = Classifier(size)
        key = {"source": source, "steps": steps, "seed": seed}
        saved = torch.load(path, weights_only=False) if path.exists() else {}
        if all(saved.get(k) == v for k, v in key.items()):
            net.load_state_dict(saved["net"])
            return cls(net, size, held_out, held_labels, dataset)
        x, y = read_mnist_split(folder, True, size, dataset)
        net = _train_classifier(x, y, size, steps, seed, 10)
        _save(path, net, key)
        judge = cls(net, size, held_out, held_labels, dataset)
        if verbose:
            print(f"{dataset} classifier trained on {len(x)} images at {size}x{size}: {judge.accuracy:.1%} on the "
                  f"{len(held_out)} held-out images")
        return judge

    @classmethod
    def load_folder(cls, folder, cache, size: int = 32, steps: int = FOLDER_STEPS, seed: int = 0,
                    verbose: bool = True):
        """The judge for a folder of colour images with FOLDER/train and FOLDER/test (one sub-folder per class): trained
        on FOLDER/train with shifts and flips, its accuracy measured on FOLDER/test; FD and the class mix against
        FOLDER/train (what G learns from; a test split of a couple of hundred images gives a poor covariance), so the
        real test images score as a held-out sample would. Cached in CACHE (the runner's data dir) as
        folder_classifier_<name>_<size>_<steps>.pt, keyed by the files of both splits."""
        x, y, names = read_folder_split(folder, "train", size, cache)
        held_out, held_labels, test_names = read_folder_split(folder, "test", size, cache)
        if test_names != names:
            raise ValueError(f"{folder}/test's classes ({', '.join(test_names)}) differ from train's "
                             f"({', '.join(names)})")
        files = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in Path(folder).rglob("*.png"))
        key = {"source": files, "steps": steps, "seed": seed}
        path = Path(cache) / "cache" / f"folder_classifier_{Path(folder).resolve().name}_{size}_{steps}.pt"
        saved = torch.load(path, weights_only=False) if path.exists() else {}
        if all(saved.get(k) == v for k, v in key.items()):
            net = Classifier(size, x.shape[1], len(names))
            net.load_state_dict(saved["net"])
            return cls(net, size, held_out, held_labels, "folder", names, reference=x)
        net = _train_classifier(x, y, size, steps, seed, len(names), flip=True)
        _save(path, net, key)
        judge = cls(net, size, held_out, held_labels, "folder", names, reference=x)
        if verbose:
            print(f"{Path(folder).name} classifier trained on {len(x)} images at {size}x{size}: "
                  f"{judge.accuracy:.1%} on the {len(held_out)} held-out images")
        return judge

    @torch.no_grad()
    def _outputs(self, images):
        images = images.float()
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        outs = [self.net(chunk) for chunk in images.split(500)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def classify(self, images):
        """(predicted class, its probability) per image."""
        prob, pred = self._outputs(images)[0].softmax(1).max(1)
        return pred, prob

    def features(self, images):
        return self._outputs(images)[1]

    def score(self, images, labels=None) -> dict:
        logits, feats = self._outputs(images)
        prob, pred = logits.softmax(1).max(1)
        confident = prob > self.confident
        counts = torch.bincount(pred[confident], minlength=self.classes)
        share = torch.bincount(pred, minlength=self.classes).double() / len(pred)
        out = {"fd": _frechet(*_stats(feats), self.mu, self.sigma),
               # how far the samples' class mix is from the held-out images' (both as this classifier calls them)
               "tv": 0.5 * (share - self.real_share).abs().sum().item(),
               "confident": confident.double().mean().item(),
               "covered": int((counts >= COVERED * len(images)).sum()),
               "class_share": (counts / max(int(confident.sum()), 1)).tolist()}
        if labels is not None:
            out["label_acc"] = (pred == torch.as_tensor(labels)).double().mean().item()
        return out


def _stats(feats: torch.Tensor):
    f = feats.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def _frechet(mu1, s1, mu2, s2) -> float:
    from common.fid import frechet_distance
    return frechet_distance(mu1, s1, mu2, s2)


def load_export(folder: Path):
    """The PNGs of RUN_DIR/export as (N, C, H, W) in [-1, 1] (C: 1 for greyscale PNGs, else 3), and the labels of
    cgan's `<class>_<index>.png` names (None for plain names)."""
    from PIL import Image
    files = sorted(Path(folder).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no PNGs in {folder}")
    mode = "L" if Image.open(files[0]).mode in ("L", "LA", "1", "I", "I;16") else "RGB"
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert(mode), dtype=np.float32) for p in files]))
    labels = None
    if all("_" in p.stem for p in files):
        labels = torch.tensor([int(p.stem.split("_")[0]) for p in files])
    x = x.unsqueeze(1) if mode == "L" else x.permute(0, 3, 1, 2)
    return x / 127.5 - 1, labels
