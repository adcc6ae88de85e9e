"""Run the CPU recipes of benchmarks/cpu_recipes.txt on MNIST and score what each one learned.

    python -m benchmarks.recipes --data-dir data                      # all ten, on the MNIST files in data/MNIST/raw
    python -m benchmarks.recipes --data-dir data --scripts dcgan,cgan
    python -m benchmarks.recipes --data-dir /tmp/digits --sklearn-digits   # no MNIST: scikit-learn's digits in its layout

Each recipe runs as a user would run it (`python SCRIPT.py --dataset mnist --data-dir DIR --device cpu
--run-dir RUNS/SCRIPT --export 1000 FLAGS`), timed from start to exit, one at a time. Its 1,000 exported
samples are scored by benchmarks.digits.DigitJudge at 32x32 (a classifier trained on DIR's training split,
held-out split for the reference): Frechet distance in the classifier's features, classes covered, the
share of confident samples, and for cgan.py the share classified as the label they were generated for.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = Path(__file__).with_name("cpu_recipes.txt")
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


def command(script: str, flags, data_dir, run_dir, samples: int):
    return [sys.executable, f"{script}.py", "--dataset", "mnist", "--data-dir", str(data_dir), "--device", "cpu",
            "--run-dir", str(run_dir), "--export", str(samples), "--overwrite", *flags]


def run_recipe(script: str, flags, data_dir: Path, run_dir: Path, samples: int):
    """Run one recipe; return its wall-clock minutes. Its output goes to RUN_DIR.log."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(command(script, flags, data_dir, run_dir, samples), cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "offline"})
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed ({proc.returncode}); see {log}:\n" + log.read_text()[-2000:])
    return minutes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="holds MNIST/raw with the four idx files")
    p.add_argument("--scripts", default=",".join(SCRIPTS), help="comma-separated script names (default: all ten)")
    p.add_argument("--recipes", default=str(RECIPES), help="the recipes file")
    p.add_argument("--runs-dir", default="runs/recipes", help="where each recipe's run directory and log go")
    p.add_argument("--samples", type=int, default=1000, help="exported samples scored per recipe")
    p.add_argument("--sklearn-digits", action="store_true",
                   help="first write scikit-learn's digits into DATA_DIR in MNIST's layout (needs scikit-learn)")
    args = p.parse_args(argv)
    from benchmarks.digits import DigitJudge, load_export, write_sklearn_digits
    data_dir, runs = Path(args.data_dir).resolve(), Path(args.runs_dir).resolve()
    try:
        recipes = read_recipes(Path(args.recipes))
    except (OSError, ValueError) as e:
        p.error(f"recipes file: {e}")
    names = [s.strip().removesuffix(".py") for s in args.scripts.split(",") if s.strip()]
    if missing := [s for s in names if s not in recipes]:
        p.error(f"no recipe for {', '.join(missing)} in {args.recipes}")
    if args.sklearn_digits:
        write_sklearn_digits(data_dir)
    if not (data_dir / "MNIST" / "raw").is_dir():
        p.error(f"{data_dir / 'MNIST' / 'raw'} does not exist: put MNIST's four idx files there, or use --sklearn-digits")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, {os.cpu_count()} cores, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)
    judge = DigitJudge.load(data_dir, size=32)
    from benchmarks.digits import read_mnist_split
    real, real_labels = read_mnist_split(data_dir, True, 32)
    rows = [("real training digits", 0.0, judge.score(real[:args.samples], real_labels[:args.samples]))]
    for name in names:
        print(f"{name}: {' '.join(recipes[name])}", flush=True)
        minutes = run_recipe(name, recipes[name], data_dir, runs / name, args.samples)
        images, labels = load_export(runs / name / "export")
        s = judge.score(images, labels)
        rows.append((name, minutes, s))
        print(f"  {minutes:.1f} min, FD {s['fd']:.1f}, {s['covered']} classes, {s['confident']:.0%} confident"
              + (f", {s['label_acc']:.0%} match their labels" if "label_acc" in s else ""), flush=True)
    print(f"\ndigit classifier: {judge.accuracy:.1%} on {data_dir}'s held-out split; a class is covered when "
          f"2% of the samples are confident calls of it; confident = probability > 0.9\n")
    print("| script | minutes | FD (classifier features) | classes covered | confident | smallest class | matches its label |")
    print("|---|---|---|---|---|---|---|")
    for name, minutes, s in rows:
        label = f"{s['label_acc']:.0%}" if "label_acc" in s else "-"
        print(f"| {name}{'.py' if name in SCRIPTS else ''} | {minutes:.1f} | {s['fd']:.1f} | {s['covered']}/10 | {s['confident']:.0%} | "
              f"{min(s['class_share']):.1%} | {label} |")


if __name__ == "__main__":
    main()
