"""Sample a finished run's G with BatchNorm's running statistics (eval mode, what the scripts do)
and with batch statistics (train mode, what the DCGAN authors' code does), same z, and score both.

    python -m benchmarks.bn_stats dcgan RUN_DIR --data-dir DIR --fid-weights W.pth [--z-seed 1]

For dcgan, cgan, wgan and wgan_gp runs on Fashion-MNIST (one channel): 2,000 samples each way in
batches of the run's batch size (cgan: 200 per class, mixed in every batch), scored as the recipe
runner scores an export (benchmarks/recipes.py): its classifier, and FID, KID and precision/recall
against the first 2,000 test images.
"""
import argparse
import importlib
import time
from pathlib import Path

import torch

from benchmarks.digits import DigitJudge, read_mnist_split
from benchmarks.recipes import JUDGE_STEPS, InceptionScores
from common import fid


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("script", choices=("dcgan", "cgan", "wgan", "wgan_gp"))
    p.add_argument("run_dir")
    p.add_argument("--data-dir", required=True, help="holds FashionMNIST/raw")
    p.add_argument("--fid-weights", required=True)
    p.add_argument("--z-seed", type=int, default=1)
    args = p.parse_args(argv)
    module = importlib.import_module(args.script)
    saved = torch.load(Path(args.run_dir) / "checkpoint.pt", map_location="cpu", weights_only=False)
    a = saved["args"]
    if args.script == "cgan":
        G = module.Generator(a["z_dim"], 10, a["embed_dim"], a["width"], a["image_size"], 1)
    else:
        G = module.Generator(a["z_dim"], a["width"], a["image_size"], 1)
    G.load_state_dict(saved["G"])
    n, g = 2000, torch.Generator().manual_seed(args.z_seed)
    z = torch.randn(n, a["z_dim"], generator=g)
    y = torch.arange(10).repeat_interleave(n // 10)[torch.randperm(n, generator=g)]
    judge = DigitJudge.load(args.data_dir, size=32, dataset="fashion_mnist", steps=JUDGE_STEPS)
    real, _ = read_mnist_split(Path(args.data_dir), False, 32, "fashion_mnist")
    inception = InceptionScores(args.fid_weights, real[:n])
    for mode, train_mode in (("running", False), ("batch", True)):
        start = time.perf_counter()
        G.train(train_mode)
        with torch.no_grad():
            images = torch.cat([G(*((z[i:i + a["batch_size"]], y[i:i + a["batch_size"]])
                                    if args.script == "cgan" else (z[i:i + a["batch_size"]],)))
                                for i in range(0, n, a["batch_size"])]).float()
        images = fid.quantize(images).float() / 127.5 - 1  # as the exported PNGs read back
        s = judge.score(images, y if args.script == "cgan" else None)
        i = inception.score(images)
        label = f", {s['label_acc']:.0%} its label" if "label_acc" in s else ""
        print(f"{args.script} {mode} statistics, z seed {args.z_seed}: FID {i['fid']:.2f}, "
              f"KID x1000 {1000 * i['kid']:.1f}, precision {i['precision']:.2f}, recall {i['recall']:.2f}, "
              f"classifier FD {s['fd']:.1f}, {s['covered']}/10 classes, {s['confident']:.0%} confident{label} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
