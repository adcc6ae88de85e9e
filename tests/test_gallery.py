"""The README's gallery (benchmarks/gallery.py): 8 x 8 uncurated samples per run, cgan's one row per class, and the
command and commit inside each PNG."""
import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.gallery import main as gallery


def fake_run(run_dir, script, n, colour_of, seed=0):
    """RUN_DIR/export as the scripts write it (cgan: <class>_<index>.png) and a config.json."""
    (run_dir / "export").mkdir(parents=True)
    for i in range(n):
        label, pixel = colour_of(i)
        name = f"{label}_{i:06d}.png" if label is not None else f"{i:06d}.png"
        Image.fromarray(np.full((4, 4, 3), pixel, np.uint8)).save(run_dir / "export" / name)
    (run_dir / "config.json").write_text(json.dumps({"script": script, "dataset": "/data/emoji/train",
                                                     "seed": seed}))


def test_grids_are_uncurated_labelled_by_row_and_carry_their_command(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs / "dcgan", "dcgan", 100, lambda i: (None, (i, i, i)))  # pixel value = file index
    fake_run(runs / "cgan", "cgan", 90, lambda i: (i % 9, (20 * (i % 9), 0, 0)), seed=3)  # red = 20 x class
    (tmp_path / "r.txt").write_text("dcgan.py --steps 7 --width 8\ncgan.py --steps 5\n")
    gallery([str(runs), str(tmp_path / "out"), "--name", "emoji", "--commit", "abc1234", "--date", "2026-12-07",
             "--recipes", str(tmp_path / "r.txt")])
    image = Image.open(tmp_path / "out" / "dcgan_emoji.png")
    assert image.size == (2 + 8 * 6, 2 + 8 * 6)
    assert image.text == {"Command": "python dcgan.py --dataset /data/emoji/train --device cpu --steps 7 --width 8",
                          "Commit": "abc1234", "Date": "2026-12-07"}
    cells = np.asarray(image)[2::6, 2::6, 0][:8, :8]  # one pixel per sample
    assert len(set(cells.ravel().tolist())) == 64 and cells.max() > 64  # 64 different files, not the first 64
    again = tmp_path / "again"
    gallery([str(runs), str(again), "--name", "emoji", "--commit", "abc1234", "--date", "2026-12-07",
             "--recipes", str(tmp_path / "r.txt")])
    assert np.array_equal(np.asarray(Image.open(again / "dcgan_emoji.png")), np.asarray(image))  # a fixed shuffle
    cgan = Image.open(tmp_path / "out" / "cgan_emoji.png")
    assert cgan.text["Command"].endswith("--steps 5 --seed 3")
    assert cgan.size == (2 + 8 * 6, 2 + 9 * 6)
    rows = np.asarray(cgan)[2::6, 2::6, 0][:9, :8]
    assert rows.tolist() == [[20 * k] * 8 for k in range(9)]  # row k: eight samples of class k


def test_no_runs_is_one_line(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit):
        gallery([str(tmp_path / "runs"), str(tmp_path / "out"), "--name", "x", "--commit", "c", "--date", "d"])
    assert "no RUNS_DIR/SCRIPT/export" in capsys.readouterr().err
