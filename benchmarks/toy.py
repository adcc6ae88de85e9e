"""Run the 2-D mode-collapse rows of benchmarks/toy_recipes.txt over several seeds and print them beside the published
rows (PacGAN, Lin et al. 2018, arXiv:1712.04086, table 1: the mean and standard error over 10 trials).

    python -m benchmarks.toy --seeds 0,1,2 --jobs 2                      # every row at the papers' length
    python -m benchmarks.toy --seeds 0,1,2 --jobs 2 --steps 20000        # every row cut to 20,000 steps
    python -m benchmarks.toy --rows grid25-pacgan4,grid25-gan --seeds 0  # some rows
    python -m benchmarks.toy --score-only                                # print the runs already in RUNS_DIR

Each run is `python minimal_gan.py FLAGS --seed S --run-dir RUNS/ROW/seed_S` with one torch thread, timed from start
to exit; its figures are the script's own at the last step (modes captured, high-quality samples and reverse KL over
its 2,500 fixed-z samples, as PacGAN's code counts them: a sample is high quality within 3 std of its nearest mode, a
mode is captured with one such sample). A row is named by its data and method: grid25-gan, ring8-pacgan4.
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = Path(__file__).with_name("toy_recipes.txt")
LEFT_TO_THE_RUNNER = ("--seed", "--run-dir", "--log-every")
# PacGAN table 1 (mean, standard error over 10 trials): modes, high-quality samples (%), reverse KL. Read from
# github.com/fjxmlzn/PacGAN, synthetic_data_experiments/results/Table1.png (benchmarks/RESULTS.md cites it).
PUBLISHED = {
    "ring8-gan": ((6.3, 0.5), (98.2, 0.2), (0.45, 0.09)),
    "ring8-pacgan2": ((7.9, 0.1), (95.6, 2.0), (0.07, 0.03)),
    "ring8-pacgan3": ((7.8, 0.1), (97.7, 0.3), (0.10, 0.02)),
    "ring8-pacgan4": ((7.8, 0.1), (95.9, 1.4), (0.07, 0.02)),
    "grid25-gan": ((17.3, 0.8), (94.8, 0.7), (0.70, 0.07)),
    "grid25-pacgan2": ((23.8, 0.7), (91.3, 0.8), (0.13, 0.04)),
    "grid25-pacgan3": ((24.6, 0.4), (94.2, 0.4), (0.06, 0.02)),
    "grid25-pacgan4": ((24.8, 0.2), (93.6, 0.6), (0.04, 0.01)),
}


def flag(flags, name, default=None):
    """The value of `name` in a flag list (the last one given)."""
    values = [flags[i + 1] for i, f in enumerate(flags[:-1]) if f == name]
    return values[-1] if values else default


def row_name(flags) -> str:
    data = flag(flags, "--dataset", "grid25")
    pack, unroll = int(flag(flags, "--pack", 1)), int(flag(flags, "--unroll", 0))
    return f"{data}-" + (f"unrolled{unroll}" if unroll else f"pacgan{pack}" if pack > 1 else "gan")


def read_rows(path: Path = RECIPES) -> dict:
    """{row name: [flags]} from lines `minimal_gan.py FLAGS` (lines starting with # are comments)."""
    rows = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        script, *flags = shlex.split(line)
        if script != "minimal_gan.py":
            raise ValueError(f"{path}:{number}: the 2-D rows run minimal_gan.py, not {script!r}")
        if given := [f for f in flags if f.split("=")[0] in LEFT_TO_THE_RUNNER]:
            raise ValueError(f"{path}:{number}: {', '.join(given)} is added by the runner")
        if any("=" in f for f in flags if f.startswith("--")):
            raise ValueError(f"{path}:{number}: write flags as `--flag value`, without =")
        if flag(flags, "--steps") is None:
            raise ValueError(f"{path}:{number}: say the row's --steps")
        name = row_name(flags)
        if name in rows:
            raise ValueError(f"{path}:{number}: a second row {name}")
        rows[name] = flags
    return rows


def with_steps(flags, steps):
    """The flags with --steps replaced by `steps` (None: as written)."""
    if steps is None:
        return list(flags)
    out = list(flags)
    out[out.index("--steps") + 1] = str(steps)
    return out


def run_one(flags, run_dir: Path) -> float:
    """One run of minimal_gan.py on one torch thread; returns its wall-clock minutes (also in RUN_DIR/minutes.txt)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    steps = flag(flags, "--steps")
    cmd = [sys.executable, "minimal_gan.py", *flags, "--run-dir", str(run_dir), "--log-every", steps, "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    start = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}); see {run_dir.with_suffix('.log')}:\n"
                           + run_dir.with_suffix(".log").read_text()[-2000:])
    (run_dir / "minutes.txt").write_text(f"{minutes:.2f}\n")
    return minutes


def final_figures(run_dir: Path) -> dict:
    """The last metrics line of a finished run, with its minutes; an error if the run did not reach its --steps."""
    config = json.loads((run_dir / "config.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1]) if lines else {}
    if last.get("step") != config["steps"] or not (run_dir / "minutes.txt").is_file():
        raise ValueError(f"{run_dir} did not finish its {config['steps']} steps")
    return {**last, "minutes": float((run_dir / "minutes.txt").read_text())}


def mean_se(values):
    """Mean and standard error (the paper's spread: its table gives the standard error over its trials)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def table(rows: dict, runs: Path, seeds) -> str:
    """Our rows beside PacGAN's table 1, as markdown."""
    out = ["| row | steps (paper: 400,000) | seeds | modes | paper | high-quality | paper | reverse KL | paper "
           "| per seed (modes / high-quality / reverse KL) | minutes per run |",
           "|---|---:|---:|---|---|---|---|---|---|---|---:|"]
    for name, flags in rows.items():
        found = [final_figures(runs / name / f"seed_{s}") for s in seeds]
        steps = json.loads((runs / name / f"seed_{seeds[0]}" / "config.json").read_text())["steps"]
        modes, hq, kl = (mean_se([f[k] * (100 if k == "high_quality" else 1) for f in found])
                         for k in ("modes", "high_quality", "reverse_kl"))
        paper = PUBLISHED.get(name)
        cite = ([f"{paper[0][0]:.1f} ± {paper[0][1]:.1f}", f"{paper[1][0]:.1f} ± {paper[1][1]:.1f}%",
                 f"{paper[2][0]:.2f} ± {paper[2][1]:.2f}"] if paper else ["-"] * 3)
        each = ", ".join(f"{f['modes']} / {100 * f['high_quality']:.1f}% / {f['reverse_kl']:.2f}" for f in found)
        minutes = sum(f["minutes"] for f in found) / len(found)
        out.append(f"| {name} | {steps:,} | {len(found)} | {modes[0]:.1f} ± {modes[1]:.1f} | {cite[0]} | "
                   f"{hq[0]:.1f} ± {hq[1]:.1f}% | {cite[1]} | {kl[0]:.2f} ± {kl[1]:.2f} | {cite[2]} | {each} | "
                   f"{minutes:.1f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default=str(RECIPES), help="the rows file")
    p.add_argument("--rows", default=None, help="comma-separated row names (default: every row of the file)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, each row runs once per seed")
    p.add_argument("--steps", type=int, default=None, help="train every row this many steps instead of its own")
    p.add_argument("--runs-dir", default="runs/toy", help="where each run's directory and log go")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, one torch thread each")
    p.add_argument("--score-only", action="store_true", help="print the runs in RUNS_DIR; train nothing")
    args = p.parse_args(argv)
    try:
        rows = read_rows(Path(args.recipes))
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except (OSError, ValueError) as e:
        p.error(str(e))
    if args.rows:
        names = [r.strip() for r in args.rows.split(",") if r.strip()]
        if unknown := [r for r in names if r not in rows]:
            p.error(f"no row {', '.join(unknown)} in {args.recipes} (rows: {', '.join(rows)})")
        rows = {r: rows[r] for r in names}
    if not seeds or (args.steps is not None and args.steps < 1) or args.jobs < 1:
        p.error("--seeds needs at least one seed; --steps and --jobs must be positive")
    runs = Path(args.runs_dir).resolve()
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, {os.cpu_count()} cores, {args.jobs} run(s) "
          f"at a time, one torch thread each", flush=True)

    def train(job):
        name, seed = job
        flags = [*with_steps(rows[name], args.steps), "--seed", str(seed)]
        minutes = run_one(flags, runs / name / f"seed_{seed}")
        f = final_figures(runs / name / f"seed_{seed}")
        print(f"  {name} seed {seed}: {f['modes']} modes, {100 * f['high_quality']:.1f}% high-quality, reverse KL "
              f"{f['reverse_kl']:.2f}, {minutes:.1f} min", flush=True)

    if not args.score_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(train, [(name, seed) for name in rows for seed in seeds]))
    try:
        print("\n" + table(rows, runs, seeds))
    except (OSError, ValueError) as e:
        p.error(f"cannot score: {e}")


if __name__ == "__main__":
    main()
