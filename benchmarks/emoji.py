"""Real colour artwork with category labels: the emoji of the npm package emoji-datasource-google (Noto Emoji, images
Apache-2.0) or emoji-datasource-twitter (Twemoji, CC-BY-4.0), version 16.0.0, as an image folder for --dataset.

    python -m benchmarks.emoji DIR [--set google|twitter] [--tgz PATH] [--background 255,255,255] [--test-share 0.1]
    python dcgan.py --dataset DIR/train ...

Writes DIR/train/<category>/<image>.png, DIR/test/<category>/<image>.png (64x64 RGB; "Smileys & Emotion" becomes
smileys_and_emotion, <image> is the package's name, its code points such as 1f600) and DIR/SOURCE.txt (package,
version, the tarball's sha256, licence). Without --tgz the tarball comes from `npm pack`. The package's emoji.json
lists 1,911 emoji in 10 categories, each with a 64x64 PNG in img/<set>/64/ (16.0.0, the same counts in both sets):
- One image per emoji, its base image: the 1,875 skin-tone variants (of 323 emoji, all in People & Body, listed in
  their entry's skin_variations) are left out, else People & Body would hold more than half the images.
- The Component category is left out: its 5 entries are skin-tone swatches (16.0.0 lists no hair components).
- Entries whose has_img_<set> is false, or whose PNG is missing, are skipped (none in 16.0.0).
That leaves 1,906 emoji in 9 categories, in their natural proportions: People & Body 386, Flags 270, Objects 264,
Symbols 224, Travel & Places 218, Smileys & Emotion 169, Animals & Nature 159, Food & Drink 131, Activities 85.
- Each PNG (RGBA; a few are LA, or P with transparency) is composited onto one background colour (default white):
  out = round(a * rgb + (1 - a) * bg) with a = alpha / 255, in exact integer arithmetic. Kept at 64x64: the
  scripts resize when they load, so a 64x64 recipe reads the same folder.
- Test split: --test-share of each category (rounded; at least one image in each split), drawn with
  random.Random(seed) from the category's images sorted by name, so it is the same on every machine.
"""
import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common.cli import UserError, user_errors

VERSION = "16.0.0"
LICENCE = {"google": "Noto Emoji images by Google, Apache-2.0 "
                     "(https://github.com/googlefonts/noto-emoji/blob/main/LICENSE)",
           "twitter": "Twemoji by Twitter, Inc and other contributors, CC-BY-4.0 "
                      "(https://github.com/jdecked/twemoji/blob/v15.0.2/LICENSE-GRAPHICS)"}
LEFT_OUT = {"Component"}  # skin-tone swatches: parts of other emoji, not pictures of their own
PARTIAL = ".tmp-emoji"  # written here first, then moved into place; a killed run's leftover is removed next time
OURS = ("train", "test", "SOURCE.txt")


def folder_name(category: str) -> str:
    """A filesystem-safe, readable folder name: "Smileys & Emotion" -> "smileys_and_emotion"."""
    return re.sub(r"[^a-z0-9]+", "_", category.lower().replace("&", "and")).strip("_")


def composite(png: bytes, background) -> np.ndarray:
    """The PNG over a solid background, (64, 64, 3) uint8: round(a * rgb + (1 - a) * bg) with a = alpha / 255."""
    rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=np.int32)
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    # (num + 127) // 255 is num / 255 rounded: num is an integer, so num / 255 is never exactly half-way
    return ((alpha * rgb + (255 - alpha) * np.array(background) + 127) // 255).astype(np.uint8)


def split(names, share: float, rng: random.Random):
    """(train, test) of the sorted names: round(share * n) for test, at least one in each when n >= 2."""
    names = sorted(names)
    keys = [rng.random() for _ in names]  # random() is the one stream Python promises to keep across versions
    shuffled = [n for _, n in sorted(zip(keys, names))]
    k = min(max(1, int(share * len(names) + 0.5)), len(names) - 1)
    return sorted(shuffled[k:]), sorted(shuffled[:k])


def npm_pack(spec: str, folder: Path) -> Path:
    """Download SPEC's tarball into FOLDER with npm; returns its path."""
    try:
        out = subprocess.run(["npm", "pack", spec], cwd=folder, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"npm not found: install Node.js, or pass --tgz PATH (a tarball of {spec})") from None
    tgz = sorted(folder.glob("*.tgz"))
    if out.returncode or not tgz:
        # npm's error opens with its code, syscall and errno lines and ends with its log's path: the line between
        errors = [line for line in out.stderr.splitlines() if "err" in line.lower()
                  and not re.search(r"\b(code|syscall|errno) \S+$", line) and "complete log" not in line]
        why = errors[0] if errors else "no tarball"
        raise UserError(f"`npm pack {spec}` failed ({why}): pass --tgz PATH (a tarball of {spec})")
    return tgz[0]


def background_colour(text: str):
    """--background's R,G,B."""
    try:
        rgb = tuple(int(v) for v in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise argparse.ArgumentTypeError(f"{text!r} is not R,G,B with each value 0-255")
    return rgb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="the output folder: DIR/train, DIR/test, DIR/SOURCE.txt")
    p.add_argument("--set", default="google", choices=("google", "twitter"), help="Noto Emoji or Twemoji")
    p.add_argument("--tgz", type=Path, help=f"the package's tarball (default: npm pack ...@{VERSION})")
    p.add_argument("--background", type=background_colour, default=(255, 255, 255), help="R,G,B behind the emoji")
    p.add_argument("--test-share", type=float, default=0.1, help="share of each category held out in DIR/test")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    p.add_argument("--overwrite", action="store_true", help="replace DIR/train, DIR/test and DIR/SOURCE.txt")
    args = p.parse_args(argv)
    if not 0 < args.test_share < 1:
        p.error(f"--test-share must be between 0 and 1, got {args.test_share}")
    with user_errors():
        write(args)


def write(args):
    start, out, package = time.time(), args.dir, f"emoji-datasource-{args.set}"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder")
    # before any work: a typo must not cost a download, and only --overwrite replaces a user's folder
    if out.is_dir() and any(p.name != PARTIAL for p in out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} exists and is not empty: choose another folder, or pass --overwrite to replace "
                        f"its {', '.join(OURS)}")
    if args.tgz and not args.tgz.is_file():
        raise UserError(f"--tgz {args.tgz} does not exist")
    with tempfile.TemporaryDirectory() as scratch:
        tgz = args.tgz or npm_pack(f"{package}@{VERSION}", Path(scratch))
        try:
            tar = tarfile.open(tgz)
            meta = json.load(tar.extractfile("package/package.json"))
            entries = json.load(tar.extractfile("package/emoji.json"))
        except (tarfile.TarError, KeyError, OSError, ValueError, EOFError) as e:
            why = " ".join(str(e).split())[:200]  # tarfile's message can span lines; the error is one
            raise UserError(f"{tgz} is not a tarball of {package} ({why})") from None
        if meta.get("name") != package:
            raise UserError(f"{tgz} holds {meta.get('name')}, not {package}: pass --set to match it")
        folder = f"package/img/{args.set}/64/"
        present = {m.name: m for m in tar.getmembers() if m.name.startswith(folder) and m.isfile()}
        by_category = {}
        for e in entries:  # base images only: skin_variations' images are never listed
            if e["category"] not in LEFT_OUT and e.get(f"has_img_{args.set}") and folder + e["image"] in present:
                by_category.setdefault(folder_name(e["category"]), []).append(e["image"])
        if not by_category:
            raise UserError(f"{tgz} holds no {args.set} images in {folder}")
        rng, where, counts = random.Random(args.seed), {}, {}
        for category in sorted(by_category):
            train, test = split(by_category[category], args.test_share, rng)
            counts[category] = (len(train), len(test))
            where.update({folder + n: Path("train", category, n) for n in train})
            where.update({folder + n: Path("test", category, n) for n in test})
        partial = out / PARTIAL
        shutil.rmtree(partial, ignore_errors=True)
        for name in sorted(where, key=lambda n: present[n].offset_data):  # archive order: gzip only reads forward
            path = partial / where[name]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(composite(tar.extractfile(present[name]).read(), args.background)).save(path)
        tar.close()
        with open(tgz, "rb") as f:
            sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    (partial / "SOURCE.txt").write_text(
        f"{package} {meta.get('version')} (npm), tarball sha256 {sha256}\n{LICENCE[args.set]}\n"
        f"{len(where)} emoji: base images only (no skin-tone variants), no {', '.join(sorted(LEFT_OUT))} category, "
        f"composited onto RGB {args.background}; test share {args.test_share}, seed {args.seed}\n")
    for name in OURS:  # only ours: the user's other files in DIR stay
        old = out / name
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink(missing_ok=True)
    for name in OURS:
        os.replace(partial / name, out / name)
    partial.rmdir()
    print(f"{'category':<22}{'train':>6}{'test':>6}")
    for category, (train, test) in counts.items():
        print(f"{category:<22}{train:>6}{test:>6}")
    print(f"{'total':<22}{sum(c[0] for c in counts.values()):>6}{sum(c[1] for c in counts.values()):>6}")
    print(f"licence: {LICENCE[args.set]} (written to {out / 'SOURCE.txt'}); {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
