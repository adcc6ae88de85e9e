"""benchmarks/emoji.py on a tiny fake emoji-datasource tarball: what is kept, the compositing, the layout and split,
the safety of DIR, and that common.data reads the result."""
import hashlib
import io
import json
import tarfile
import types

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import emoji
from common import data
from helpers import assert_user_error

BACKGROUND = (20, 40, 60)
OBJECTS = [f"1f4{i:02x}.png" for i in range(20)]  # a category big enough that a split left to chance would differ


def _entry(image, category, has_img=True, skins=()):
    return {"image": image, "category": category, "short_name": image[:-4], "sort_order": 0, "has_img_google": has_img,
            "skin_variations": {s: {"image": f"{image[:-4]}-{s.lower()}.png", "has_img_google": True} for s in skins}}


ENTRIES = [_entry("1f600.png", "Smileys & Emotion"), _entry("1f642.png", "Smileys & Emotion"),
           _entry("1f609.png", "Smileys & Emotion"),
           _entry("1f44b.png", "People & Body", skins=["1F3FB", "1F3FF"]), _entry("1f44c.png", "People & Body"),
           _entry("1f3fb.png", "Component"),  # a skin-tone swatch
           _entry("1f1e6-1f1e8.png", "Flags"), _entry("1f1e6-1f1e9.png", "Flags"),
           _entry("1f1e6-1f1ea.png", "Flags", has_img=False),  # its PNG is there, but the package says no image
           _entry("1f1e6-1f1eb.png", "Flags")]  # no PNG in the tarball
ENTRIES += [_entry(name, "Objects") for name in OBJECTS]
KEPT = {"1f600.png", "1f642.png", "1f609.png", "1f44b.png", "1f44c.png", "1f1e6-1f1e8.png", "1f1e6-1f1e9.png", *OBJECTS}
FOLDERS = {"smileys_and_emotion", "people_and_body", "flags", "objects"}


def _png(rgba) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, format="PNG")
    return out.getvalue()


def write_tarball(path):
    """A tarball in emoji-datasource-google's layout: package.json, emoji.json, 64x64 RGBA PNGs (skin variants,
    the swatch and the has_img false entry's too), opaque but for 1f600.png's first row (a transparent, an opaque and
    a half-transparent pixel) and 1f642.png (random alpha)."""
    rng = np.random.default_rng(0)
    pngs = {}
    for name in sorted(KEPT | {"1f3fb.png", "1f1e6-1f1ea.png", "1f44b-1f3fb.png", "1f44b-1f3ff.png"}):
        pngs[name] = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
        pngs[name][..., 3] = 255
    pngs["1f600.png"][0, :3] = [[10, 200, 30, 0], [200, 10, 50, 255], [201, 100, 0, 128]]
    pngs["1f642.png"][..., 3] = rng.integers(0, 256, (64, 64))
    files = {"package/package.json": json.dumps({"name": "emoji-datasource-google", "version": "16.0.0"}).encode(),
             "package/emoji.json": json.dumps(ENTRIES).encode(),
             **{f"package/img/google/64/{name}": _png(rgba) for name, rgba in pngs.items()}}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


@pytest.fixture
def tgz(tmp_path):
    return write_tarball(tmp_path / "emoji-datasource-google-16.0.0.tgz")


def run(capsys, *args):
    """benchmarks.emoji's main() in this process: returncode, stdout, stderr."""
    code = 0
    try:
        emoji.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)


def written(folder):
    """{split/category/file} under FOLDER's train and test."""
    return {str(p.relative_to(folder)) for p in folder.glob("t*/*/*.png")}


def test_one_base_image_per_emoji_without_components_or_missing_images(tgz, tmp_path, capsys):
    assert run(capsys, tmp_path / "out", "--tgz", tgz).returncode == 0
    assert {p.split("/")[-1] for p in written(tmp_path / "out")} == KEPT


def test_each_pixel_is_blended_onto_the_background_exactly(tgz, tmp_path, capsys):
    run(capsys, tmp_path / "out", "--tgz", tgz, "--background", ",".join(map(str, BACKGROUND)))
    path, = (tmp_path / "out").glob("*/smileys_and_emotion/1f600.png")
    image = Image.open(path)
    assert image.mode == "RGB" and image.size == (64, 64)
    first_row = np.asarray(image)[0, :3].tolist()
    assert first_row[0] == list(BACKGROUND)  # transparent: the background, not the colour under it
    assert first_row[1] == [200, 10, 50]  # opaque: its own colour
    # round(a * rgb + (1 - a) * bg), a = 128 / 255: 110.86, 70.12, 29.88 (truncating would give 110, 70, 29)
    assert first_row[2] == [111, 70, 30]
    with tarfile.open(tgz) as tar:
        rgba = np.asarray(Image.open(tar.extractfile("package/img/google/64/1f642.png")), dtype=np.float64)
    alpha = rgba[..., 3:] / 255
    path, = (tmp_path / "out").glob("*/smileys_and_emotion/1f642.png")
    assert np.array_equal(np.asarray(Image.open(path)), np.rint(alpha * rgba[..., :3] + (1 - alpha) * BACKGROUND))


def test_layout_folder_names_counts_and_source(tgz, tmp_path, capsys):
    out = run(capsys, tmp_path / "out", "--tgz", tgz, "--test-share", "0.1").stdout
    files = written(tmp_path / "out")
    for split in ("train", "test"):
        assert {p.split("/")[1] for p in files if p.startswith(split + "/")} == FOLDERS  # each category in both
    assert len([p for p in files if p.startswith("test/objects/")]) == 2  # 10% of 20
    assert "objects" in out and "Apache-2.0" in out
    source = (tmp_path / "out" / "SOURCE.txt").read_text()
    assert "emoji-datasource-google 16.0.0" in source and hashlib.sha256(tgz.read_bytes()).hexdigest() in source
    assert "Apache-2.0" in source
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []  # the partial folder moved


def test_the_split_follows_the_seed_only(tgz, tmp_path, capsys):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run(capsys, tmp_path / name, "--tgz", tgz, "--seed", seed)
    assert written(tmp_path / "a") == written(tmp_path / "b")
    assert written(tmp_path / "a") != written(tmp_path / "c")


def test_a_folder_in_use_is_refused_and_overwrite_keeps_the_users_files(tgz, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "train" / "old").mkdir(parents=True)
    (out / "train" / "old" / "stale.png").write_bytes(b"")
    (out / "notes.txt").write_text("mine")
    assert_user_error(run(capsys, out, "--tgz", tgz), str(out), "--overwrite")
    assert (out / "train" / "old" / "stale.png").exists() and not (out / "SOURCE.txt").exists()
    assert run(capsys, out, "--tgz", tgz, "--overwrite").returncode == 0
    assert (out / "notes.txt").read_text() == "mine" and not (out / "train" / "old").exists()
    assert {p.split("/")[-1] for p in written(out)} == KEPT


def test_without_npm_or_when_it_fails_the_error_says_to_pass_tgz(tmp_path, capsys, monkeypatch):
    bin = tmp_path / "bin"
    bin.mkdir()
    monkeypatch.setenv("PATH", str(bin))  # no npm on it
    assert_user_error(run(capsys, tmp_path / "out", "--set", "twitter"), "npm", "--tgz", "emoji-datasource-twitter")
    (bin / "npm").write_text("#!/bin/sh\necho 'npm error code E404\nnpm error 404 Not Found - GET https://x\n"
                             "npm error A complete log of this run can be found in: /x.log' >&2\nexit 1\n")
    (bin / "npm").chmod(0o755)
    assert_user_error(run(capsys, tmp_path / "out"), "404 Not Found", "--tgz", "emoji-datasource-google@16.0.0")
    assert not (tmp_path / "out").exists()


def test_common_data_reads_the_training_folder_with_its_classes(tgz, tmp_path, capsys):
    run(capsys, tmp_path / "out", "--tgz", tgz)
    train = tmp_path / "out" / "train"
    d = data.load(str(train), str(tmp_path / "data"), 16, torch.device("cpu"), need_labels=True)
    assert sorted(d.classes) == sorted(FOLDERS) and len(d) == len(list(train.glob("*/*.png")))
    assert d.images.shape[1:] == (3, 16, 16)
    counts = torch.bincount(d.labels, minlength=len(d.classes)).tolist()
    assert counts == [len(list((train / c).glob("*.png"))) for c in d.classes]
