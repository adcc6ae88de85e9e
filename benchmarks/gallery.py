"""Sample grids for the README's gallery, from the runs of `python -m benchmarks.recipes`.

    python -m benchmarks.gallery RUNS_DIR docs/gallery --name fashion_mnist --commit a6ae9d9 --date 2026-12-07

For each script with a run in RUNS_DIR (RUNS_DIR/SCRIPT/export, as the runner leaves it) this writes
OUT/SCRIPT_NAME.png: 64 of its exported samples, uncurated (the first 64 of a fixed shuffle, the same for every script),
8 x 8 with a 2-pixel white border; cgan.py's as one row per class (8 samples each, up to 10 classes). The
command that trained the run (its recipe, from RUNS_DIR/SCRIPT/config.json and the recipes file) and the commit are
written into the PNG as text chunks (Command, Commit, Date), so an image says what made it.
"""
import argparse
import json
import shlex
from pathlib import Path

import torch

SHOWN = 64


def pick(images: torch.Tensor, labels) -> torch.Tensor:
    """64 samples in grid order: a fixed shuffle's first 64, or for labelled samples 8 per class, one row each."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    if labels is None:
        return images[order[:SHOWN]]
    rows = [order[labels[order] == c][:8] for c in sorted(set(labels.tolist()))[:10]]
    return images[torch.cat([r for r in rows if len(r) == 8])]


def grid(images: torch.Tensor, columns: int = 8, pad: int = 2):
    """(N, C, H, W) in [-1, 1] -> a PIL image of the samples in rows of `columns`, on white."""
    from PIL import Image
    n, c, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.ones(c, pad + rows * (h + pad), pad + columns * (w + pad))
    for i, x in enumerate(images):
        top, left = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        canvas[:, top:top + h, left:left + w] = (x + 1) / 2
    pixels = (canvas.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if c == 1 else pixels, "L" if c == 1 else "RGB")


def command(run_dir: Path, flags) -> str:
    """The command a user types for the run: the recipe's flags with the run's data and seed."""
    config = json.loads((run_dir / "config.json").read_text())
    dataset = config["dataset"]
    return shlex.join(["python", f"{config['script']}.py", "--dataset", dataset, "--device", "cpu", *flags,
                       *(["--seed", str(config["seed"])] if config["seed"] != 0 else [])])


def main(argv=None):
    from benchmarks.digits import load_export
    from benchmarks.recipes import RECIPES, SCRIPTS, read_recipes
    from PIL.PngImagePlugin import PngInfo
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs_dir", help="the runner's --runs-dir")
    p.add_argument("out", help="where the PNGs go")
    p.add_argument("--name", required=True, help="the data, for the file names: SCRIPT_NAME.png")
    p.add_argument("--commit", required=True, help="the commit the runs were trained at")
    p.add_argument("--date", required=True, help="the day they were trained (YYYY-MM-DD)")
    p.add_argument("--recipes", default=str(RECIPES), help="the recipes file the runs followed")
    args = p.parse_args(argv)
    runs, out = Path(args.runs_dir), Path(args.out)
    recipes = read_recipes(Path(args.recipes))
    found = [s for s in SCRIPTS if (runs / s / "export").is_dir()]
    if not found:
        p.error(f"no RUNS_DIR/SCRIPT/export in {runs}")
    out.mkdir(parents=True, exist_ok=True)
    for script in found:
        images, labels = load_export(runs / script / "export")
        info = PngInfo()
        for key, value in (("Command", command(runs / script, recipes[script])), ("Commit", args.commit),
                           ("Date", args.date)):
            info.add_text(key, value)
        path = out / f"{script}_{args.name}.png"
        grid(pick(images, labels)).save(path, pnginfo=info, optimize=True)
        print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
