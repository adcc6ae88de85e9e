"""Run the CPU recipes of benchmarks/cpu_recipes.txt on Fashion-MNIST (or MNIST) and score what each one learned.

    python -m benchmarks.recipes --data-dir data --fid-weights W.pth                 # all ten, one after another
    python -m benchmarks.recipes --data-dir data --fid-weights W.pth --scripts dcgan,cgan --seed 1
    python -m benchmarks.recipes --data-dir data --jobs 2        # two at a time, one torch thread each
    python -m benchmarks.recipes --data-dir /tmp/digits --dataset mnist --sklearn-digits   # scikit-learn's toy digits

Each recipe runs as a user would run it (`python SCRIPT.py --dataset fashion_mnist --data-dir DIR --device cpu
--run-dir RUNS/SCRIPT --export 2000 FLAGS`), timed from start to exit. Its exported samples are scored two ways:
- by benchmarks.digits.DigitJudge at 32x32, a small classifier of ours trained on DIR's training split (the 60,000),
  against the test split (the 10,000): Frechet distance in its features (FD), classes covered (a class counts when
  2% of the samples are confidently called it), the share of confident samples, and for cgan.py the share
  classified as the label they were generated for;
- with the standard FID Inception network (`--fid-weights`; see the README's FID section for the offline route):
  FID and KID against as many test images as samples (the first 2,000 by default), precision and recall (k = 3) and
  coverage (Naeem et al. 2020, k = 5: the share of real images with a sample among their 5 nearest neighbours).
`--score-only` scores the runs already in RUNS_DIR without training.

`--dataset FOLDER` (a folder with train/ and test/, one sub-folder per class, as `python -m benchmarks.emoji FOLDER`
writes colour emoji) runs benchmarks/cpu_recipes_color.txt on FOLDER/train. The judge is the same small classifier,
trained on FOLDER/train (shifts and flips), its accuracy measured on FOLDER/test; its FD and class mix, and FID and
KID, are against all of FOLDER/train (what G learns from), since a test split of a couple of hundred images is too
small for a covariance; the real row is FOLDER/test.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPES = Path(__file__).with_name("cpu_recipes.txt")
COLOUR_RECIPES = Path(__file__).with_name("cpu_recipes_color.txt")  # for a folder of colour images
# The judge's training steps (batch 64: 13 passes over the 60,000). On the Fashion-MNIST test images: 89.3% after
# 3,000 steps (the learning tests' judges train 2,000 at 16x16), 90.7% after 6,000, 91.9% after 9,000 and 12,000.
JUDGE_STEPS = 12_000
SCRIPTS = ("minimal_gan", "dcgan", "cgan", "lsgan", "wgan", "wgan_gp", "began", "progan", "sagan", "stylegan_lite")
LEFT_TO_THE_RUNNER = ("--dataset", "--data-dir", "--device", "--run-dir", "--export")


def read_recipes(path: Path = RECIPES) -> dict:
    """{script name: [flags]} from lines `SCRIPT.py FLAGS` (lines starting with # are comments)."""
    recipes = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        script, *flags = shlex.split(line)
        if not script.endswith(".py") or script[:-3] not in SCRIPTS:
            raise ValueError(f"{path}:{number}: {script!r} is not one of the ten scripts")
        if script[:-3] in recipes:
            raise ValueError(f"{path}:{number}: a second recipe for {script}")
        if given := [f for f in flags if f.split("=")[0] in LEFT_TO_THE_RUNNER]:
            raise ValueError(f"{path}:{number}: {', '.join(given)} is added by whoever runs the recipe")
        recipes[script[:-3]] = flags
    return recipes


def command(script: str, flags, data_dir, run_dir, samples: int, dataset: str = "fashion_mnist", seed=None):
    seed_flags = [] if seed is None else ["--seed", str(seed)]
    return [sys.executable, f"{script}.py", "--dataset", dataset, "--data-dir", str(data_dir), "--device", "cpu",
            "--run-dir", str(run_dir), "--export", str(samples), "--overwrite", *flags, *seed_flags]


def run_recipe(script: str, flags, data_dir: Path, run_dir: Path, samples: int, dataset: str = "fashion_mnist",
               seed=None, threads=None):
    """Run one recipe; return its wall-clock minutes. Its output goes to RUN_DIR.log."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.with_suffix(".log")
    env = {**os.environ, "WANDB_MODE": "offline", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(command(script, flags, data_dir, run_dir, samples, dataset, seed), cwd=ROOT,
                              stdout=out, stderr=subprocess.STDOUT, env=env)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed ({proc.returncode}); see {log}:\n" + log.read_text()[-2000:])
    (run_dir / "minutes.txt").write_text(f"{minutes:.2f}\n")
    return minutes


class InceptionScores:
    """FID, KID, precision, recall and coverage of exported samples against real images (the first test images)."""

    def __init__(self, weights: str, real):
        from common import fid
        self.fid = fid
        self.net = fid.load_network(weights, "cpu")
        self.real = fid.features(self.net, fid.quantize(real))
        self.mu, self.sigma = fid.statistics(self.real)

    def score(self, images) -> dict:
        fid = self.fid
        fake = fid.features(self.net, fid.quantize(images))
        kid, _ = fid.kid(self.real, fake)
        precision, recall = fid.precision_recall(self.real[:len(fake)], fake)
        _, coverage = fid.density_coverage(self.real[:len(fake)], fake)
        return {"fid": fid.frechet_distance(*fid.statistics(fake), self.mu, self.sigma), "kid": kid,
                "precision": precision, "recall": recall, "coverage": coverage}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="holds FashionMNIST/raw (or MNIST/raw) with the four idx files; "
                                                     "with a folder --dataset, the scripts' and the judge's caches")
    p.add_argument("--dataset", default="fashion_mnist",
                   help="fashion_mnist, mnist, or a folder holding train/ and test/, each with one sub-folder per "
                        "class (python -m benchmarks.emoji DIR writes one); the recipes train on its train/")
    p.add_argument("--scripts", default=",".join(SCRIPTS), help="comma-separated script names (default: all ten)")
    p.add_argument("--recipes", default=None,
                   help=f"the recipes file (default: {RECIPES.name}, or {COLOUR_RECIPES.name} for a folder)")
    p.add_argument("--runs-dir", default="runs/recipes", help="where each recipe's run directory and log go")
    p.add_argument("--samples", type=int, default=2000, help="exported samples scored per recipe")
    p.add_argument("--seed", type=int, default=None, help="--seed for every recipe (default: the scripts' own, 0)")
    p.add_argument("--jobs", type=int, default=1,
                   help="recipes run at once; with more than one, each gets one torch thread (the minutes then "
                        "count a shared machine)")
    p.add_argument("--fid-weights", default=None, help="FID Inception weights; without them no FID, KID, P/R")
    p.add_argument("--score-only", action="store_true", help="score the runs in RUNS_DIR; train nothing")
    p.add_argument("--sklearn-digits", action="store_true",
                   help="first write scikit-learn's digits into DATA_DIR in MNIST's layout (needs scikit-learn)")
    args = p.parse_args(argv)
    from benchmarks.digits import (DATASETS, DigitJudge, load_export, read_folder_split, read_mnist_split,
                                   write_sklearn_digits)
    data_dir, runs = Path(args.data_dir).resolve(), Path(args.runs_dir).resolve()
    folder = None if args.dataset in DATASETS else Path(args.dataset).resolve()
    if folder is not None and not all((folder / split).is_dir() for split in ("train", "test")):
        p.error(f"--dataset {args.dataset}: not fashion_mnist or mnist, nor a folder with train/ and test/ in it")
    args.recipes = args.recipes or str(RECIPES if folder is None else COLOUR_RECIPES)
    try:
        recipes = read_recipes(Path(args.recipes))
    except (OSError, ValueError) as e:
        p.error(f"recipes file: {e}")
    names = [s.strip().removesuffix(".py") for s in args.scripts.split(",") if s.strip()]
    if missing := [s for s in names if s not in recipes]:
        p.error(f"no recipe for {', '.join(missing)} in {args.recipes}")
    if args.sklearn_digits:
        if args.dataset != "mnist":
            p.error("--sklearn-digits writes MNIST's layout: add --dataset mnist")
        write_sklearn_digits(data_dir)
    raw = data_dir / DATASETS.get(args.dataset, "") / "raw"
    if args.dataset == "fashion_mnist" and not raw.is_dir():  # Debian's package, unpacked into DATA_DIR once
        from common.data import fashion_mnist_dir
        fashion_mnist_dir(data_dir)
    if folder is None and not raw.is_dir():
        p.error(f"{raw} does not exist: put the four idx files there")
    if args.fid_weights and not Path(args.fid_weights).is_file():
        p.error(f"--fid-weights {args.fid_weights} does not exist")
    threads = 1 if args.jobs > 1 else None
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, {os.cpu_count()} cores, {args.jobs} "
          f"recipe(s) at a time, torch threads {threads or os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)

    def train(name):
        print(f"{name}: {' '.join(recipes[name])}", flush=True)
        minutes = run_recipe(name, recipes[name], data_dir, runs / name, args.samples,
                             args.dataset if folder is None else str(folder / "train"), args.seed, threads)
        print(f"  {name}: {minutes:.1f} min", flush=True)

    if not args.score_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(train, names))
    n = args.samples
    if folder is None:
        judge = DigitJudge.load(data_dir, size=32, dataset=args.dataset, steps=JUDGE_STEPS)
        real, real_labels = read_mnist_split(data_dir, False, 32, args.dataset)
        reference, held_out, held_labels = real[:n], real[n:2 * n], real_labels[n:2 * n]
    else:  # a few thousand images at most: FID against all of train/ (what G saw); the real row is test/
        judge = DigitJudge.load_folder(folder, data_dir, size=32)
        reference = read_folder_split(folder, "train", 32, data_dir)[0]
        held_out, held_labels, _ = read_folder_split(folder, "test", 32, data_dir)
    inception = InceptionScores(args.fid_weights, reference) if args.fid_weights else None
    rows = [("real test images", 0.0, held_out, held_labels)]  # outside the FID reference
    for name in names:
        images, labels = load_export(runs / name / "export")
        if len(images) < n:
            p.error(f"{runs / name / 'export'} holds {len(images)} images, fewer than --samples {n}")
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]  # cgan's files go by class
        labels = labels[keep] if labels is not None else None
        rows.append((name, float((runs / name / "minutes.txt").read_text()), images[keep], labels))
    against = (f"the first {n} test images (the real row: the next {n})" if folder is None else
               f"the {len(reference)} images of train/ (the real row: the {len(held_out)} of test/)")
    print(f"\n{folder.name if folder else args.dataset} classifier: {judge.accuracy:.1%} on the "
          f"{len(held_labels) if folder else len(real)} test images; a class is covered when 2% of the samples are "
          f"confident calls of it; confident = probability > {judge.confident}; class mix: the total variation "
          f"distance to the test images' (0: the same proportions). {n} samples per row"
          + (f"; FID, KID, precision/recall and coverage against {against}" if inception else "") + "\n")
    print("| script | minutes | FID | KID x1000 | precision | recall | coverage | classes covered | confident | smallest class's "
          "confident share | class mix | FD (classifier) | matches its label |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, minutes, images, labels in rows:
        s = judge.score(images, labels)
        i = inception.score(images) if inception else {}
        fid = (f"{i['fid']:.1f} | {1000 * i['kid']:.1f} | {i['precision']:.2f} | {i['recall']:.2f} | {i['coverage']:.2f}"
               if i else "- | - | - | - | -")
        label = f"{s['label_acc']:.0%}" if "label_acc" in s and name in SCRIPTS else "-"
        print(f"| {name}{'.py' if name in SCRIPTS else ''} | {minutes:.1f} | {fid} | {s['covered']}/{judge.classes} | "
              f"{s['confident']:.0%} | {min(s['class_share']) * s['confident']:.1%} | {s['tv']:.2f} | {s['fd']:.1f} | "
              f"{label} |", flush=True)


if __name__ == "__main__":
    main()
