"""The CPU recipes: benchmarks/cpu_recipes.txt and the README's "Train on a CPU" table agree, every flag is
accepted by its script, every recipe starts, and the runner scores what a recipe learned."""
import importlib
import re
import shlex
import sys

import pytest
import torch

from benchmarks.recipes import LEFT_TO_THE_RUNNER, SCRIPTS, main as run_recipes, read_recipes
from helpers import ROOT, run_here

sys.path.insert(0, str(ROOT))


def readme_commands() -> dict:
    """{script: command} from the README's "Train on a CPU" table (second column, in backticks)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Train on a CPU\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `") or line.startswith("| [")]
    commands = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        command = re.fullmatch(r"`(.*)`", cells[1]).group(1)
        commands[shlex.split(command)[1].removesuffix(".py")] = command
    return commands


def cell(out: str, row: str, column: str) -> str:
    """The cell of the runner's table in the row starting `| ROW |` and the column headed COLUMN."""
    lines = out.splitlines()
    header = [c.strip() for c in next(l for l in lines if l.startswith("| script |")).strip("|").split("|")]
    found = next(l for l in lines if l.startswith(f"| {row} |"))
    return [c.strip() for c in found.strip("|").split("|")][header.index(column)]


def test_ten_recipes_and_the_readme_agree():
    recipes = read_recipes()
    assert sorted(recipes) == sorted(SCRIPTS)
    readme = readme_commands()
    assert sorted(readme) == sorted(SCRIPTS)
    for name, flags in recipes.items():
        assert shlex.split(readme[name]) == ["python", f"{name}.py", "--dataset", "fashion_mnist", "--device", "cpu", *flags], name


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_is_accepted(name):
    from common.cli import parse_args
    module = importlib.import_module(name)
    args, given = parse_args(module.Args, "recipe", ["--dataset", "fashion_mnist", *read_recipes()[name]])
    assert given >= {"dataset", "steps"} or name == "progan"  # a recipe says how long it trains


def test_the_reader_refuses_what_the_runner_adds(tmp_path):
    for flag in LEFT_TO_THE_RUNNER:
        path = tmp_path / "r.txt"
        path.write_text(f"# a comment\ndcgan.py --steps 10 {flag} x\n")
        with pytest.raises(ValueError, match=flag):
            read_recipes(path)
    (tmp_path / "two.txt").write_text("dcgan.py --steps 1\ndcgan.py --steps 2\n")
    with pytest.raises(ValueError, match="second recipe"):
        read_recipes(tmp_path / "two.txt")
    (tmp_path / "bad.txt").write_text("dcgan2.py --steps 1\n")
    with pytest.raises(ValueError, match="not one of the ten"):
        read_recipes(tmp_path / "bad.txt")


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_every_recipe_starts(name, real_images, tmp_path):
    """Each recipe passes its script's own checks (sizes, channel counts) and trains: one step, two exports."""
    steps = ["--steps", "1"] if name != "progan" else ["--kimg-per-phase", "0.016"]  # progan: the whole schedule, tiny
    from benchmarks.digits import dataset_in
    run_here(f"{name}.py", "--dataset", dataset_in(real_images), "--data-dir", real_images, "--device", "cpu",  # in this process
             "--run-dir", tmp_path / "r", "--export", "2", *read_recipes()[name], *steps, "--sample-every", "0")
    assert len(list((tmp_path / "r" / "export").glob("*.png"))) == 2


@pytest.mark.slow
def test_the_runner_prints_the_table(real_images, tmp_path, capsys, monkeypatch):
    """The runner on a 20-step dcgan recipe: the table rows are there, the real test images cover (almost) every
    class and a 20-step G few.
    Its judge trains for 600 steps here, not 12,000 (tests/test_digit_judge.py checks the judge itself)."""
    from benchmarks.digits import DigitJudge, dataset_in
    load = DigitJudge.load.__func__
    monkeypatch.setattr(DigitJudge, "load", classmethod(lambda cls, folder, size, dataset, steps: load(
        cls, folder, size, steps=600, dataset=dataset)))
    (tmp_path / "r.txt").write_text("# tiny\ndcgan.py --image-size 32 --width 8 --batch-size 16 --steps 20\n")
    run_recipes(["--data-dir", str(real_images), "--dataset", dataset_in(real_images), "--scripts", "dcgan",
                 "--recipes", str(tmp_path / "r.txt"), "--runs-dir", str(tmp_path / "runs"), "--samples", "200"])
    out = capsys.readouterr().out
    print(out)
    assert int(cell(out, "real test images", "classes covered").split("/")[0]) >= 9  # few real shirts are confident
    assert int(cell(out, "dcgan.py", "classes covered").split("/")[0]) < 8  # to this 600-step judge
    assert (tmp_path / "runs" / "dcgan" / "export").is_dir()


def test_the_runner_says_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_recipes(["--data-dir", str(tmp_path), "--recipes", str(tmp_path / "none.txt")])
    assert e.value.code == 2 and "none.txt" in capsys.readouterr().err
    (tmp_path / "r.txt").write_text("dcgan.py --steps 1\n")
    with pytest.raises(SystemExit):
        run_recipes(["--data-dir", str(tmp_path), "--recipes", str(tmp_path / "r.txt"), "--scripts", "dcgan",
                     "--dataset", "mnist"])
    assert "MNIST" in capsys.readouterr().err


def _colour_folder(root, per_class=(24, 6)):
    """root/train and root/test with three classes of solid colour squares on white (red, green, blue), in the layout
    python -m benchmarks.emoji writes."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c, name in enumerate(("blue", "green", "red")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                x = np.full((24, 24, 3), 255, np.uint8)
                a, b = rng.integers(0, 10, 2)
                x[a:a + 12, b:b + 12] = 0
                x[a:a + 12, b:b + 12, 2 - c] = 255
                Image.fromarray(x).save(root / split / name / f"{i}.png")
    return root


def test_a_folder_judge_scores_colour_images_and_their_class_mix(tmp_path):
    from benchmarks.digits import DigitJudge, read_folder_split
    folder = _colour_folder(tmp_path / "squares")
    judge = DigitJudge.load_folder(folder, tmp_path / "data", size=16, steps=150, verbose=False)
    assert judge.classes == 3 and judge.class_names == ["blue", "green", "red"] and judge.accuracy == 1.0
    test, labels, _ = read_folder_split(folder, "test", 16, tmp_path / "data")
    assert test.shape == (18, 3, 16, 16)
    same = judge.score(test)
    assert same["covered"] == 3 and same["tv"] < 1e-9
    reds = judge.score(test[labels == 2])  # one class of three: two thirds of the mix is missing
    assert reds["covered"] == 1 and abs(reds["tv"] - 2 / 3) < 1e-6
    again = DigitJudge.load_folder(folder, tmp_path / "data", size=16, steps=150, verbose=False)  # from the cache
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), judge.net.state_dict().values()))


def test_load_export_keeps_colour(tmp_path):
    import numpy as np
    from PIL import Image
    from benchmarks.digits import load_export
    (tmp_path / "rgb").mkdir()
    (tmp_path / "grey").mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), (255, 0, 0), np.uint8)).save(tmp_path / "rgb" / f"{i}_{i}.png")
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "grey" / f"{i}.png")
    x, labels = load_export(tmp_path / "rgb")
    assert x.shape == (2, 3, 8, 8) and x[:, 0].eq(1).all() and x[:, 1:].eq(-1).all() and labels.tolist() == [0, 1]
    x, labels = load_export(tmp_path / "grey")
    assert x.shape == (2, 1, 8, 8) and labels is None


@pytest.mark.slow
def test_the_runner_trains_and_scores_a_colour_folder(tmp_path, capsys, monkeypatch):
    import benchmarks.digits as digits
    monkeypatch.setattr(digits, "FOLDER_STEPS", 150)
    load = digits.DigitJudge.load_folder.__func__
    monkeypatch.setattr(digits.DigitJudge, "load_folder", classmethod(
        lambda cls, folder, cache, size: load(cls, folder, cache, size, steps=150)))
    folder = _colour_folder(tmp_path / "squares")
    (tmp_path / "r.txt").write_text("dcgan.py --image-size 32 --width 8 --batch-size 8 --steps 2\n")
    run_recipes(["--data-dir", str(tmp_path / "data"), "--dataset", str(folder), "--scripts", "dcgan",
                 "--recipes", str(tmp_path / "r.txt"), "--runs-dir", str(tmp_path / "runs"), "--samples", "20"])
    out = capsys.readouterr().out
    print(out)
    assert cell(out, "real test images", "classes covered") == "3/3"
    assert float(cell(out, "real test images", "class mix")) < 1e-9
    assert cell(out, "dcgan.py", "classes covered").endswith("/3")
    from benchmarks.digits import load_export
    assert load_export(tmp_path / "runs" / "dcgan" / "export")[0].shape[1] == 3
    with pytest.raises(SystemExit):
        run_recipes(["--data-dir", str(tmp_path / "data"), "--dataset", str(tmp_path / "nowhere")])
    assert "train/ and test/" in capsys.readouterr().err
