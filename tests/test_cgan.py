import importlib
import json
from collections import Counter

import pytest
import torch
from PIL import Image

from helpers import (assert_user_error, digits_pass, learned_digits, load_pngs, metrics, run_here,
                    run_in_process, run_script)

cgan = importlib.import_module("cgan")
TINY = ["--dataset", "mnist", "--image-size", "32", "--width", "8", "--batch-size", "16", "--log-every", "2"]
LEARN_STEPS, MIN_ACCURACY = 1200, 0.8  # measured at 1200 steps: 86-93% of samples match their label


def test_smoke_writes_every_file_and_a_grid_row_per_class(mnist_dir, tmp_path):
    run = tmp_path / "run"
    run_script("cgan.py", *TINY, "--data-dir", mnist_dir, "--steps", "4", "--sample-every", "2",
               "--ckpt-every", "2", "--run-dir", run)
    rows = metrics(run)
    assert [r["step"] for r in rows] == [2, 4]
    assert all(torch.isfinite(torch.tensor([r["d_loss"], r["g_loss"]])).all() for r in rows)
    assert (run / "samples" / "step_0000002.png").exists()
    grid = Image.open(run / "samples" / "step_0000004.png")
    assert grid.size == (8 * 34 + 2, 10 * 34 + 2)  # 8 columns x 10 class rows of 32x32 images, 2 px padding
    config = json.loads((run / "config.json").read_text())
    assert config["script"] == "cgan" and config["image_size"] == 32
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4 and ckpt["script"] == "cgan" and ckpt["z_fixed"].shape == (8, 100)
    assert not any(k.startswith("_orig_mod") for k in ckpt["G"])


def test_export_is_class_balanced_with_class_prefixed_names(mnist_dir, tmp_path):
    run = tmp_path / "run"
    run_script("cgan.py", *TINY, "--data-dir", mnist_dir, "--steps", "1", "--batch-size", "8", "--run-dir", run,
               "--export", "25")
    names = sorted(p.name for p in (run / "export").glob("*.png"))
    assert len(names) == 25 and load_pngs(run / "export").shape == (25, 1, 32, 32)
    assert all(n.split("_")[0].isdigit() and len(n.split("_")[1]) == len("000042.png") for n in names), names
    counts = Counter(int(n.split("_")[0]) for n in names)
    assert sorted(counts) == list(range(10)) and max(counts.values()) - min(counts.values()) <= 1, counts
    classes = json.loads((run / "export_classes.json").read_text())  # what each name's index stands for
    assert classes == torch.load(run / "checkpoint.pt", weights_only=False)["classes"] and len(classes) == 10


def test_the_export_streams_whatever_its_size(monkeypatch, tmp_path):
    """--export 100000000 built 10^8 names and labels before writing a file (8 GB); now a batch at a time."""
    import tracemalloc

    class FirstBatch(Exception):
        pass

    def generate(G, z, labels):
        raise FirstBatch(labels.tolist())
    monkeypatch.setattr(cgan, "generate", generate)
    args = type("Args", (), {"z_dim": 4, "batch_size": 3})
    tracemalloc.start()
    with pytest.raises(FirstBatch) as first:
        cgan.export_by_class(None, 10**7, tmp_path / "export", ["a", "b"], args, torch.device("cpu"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert first.value.args[0] == [0, 1, 0] and peak < 10**7, peak  # under 10 MB before the first batch


def test_resume_after_a_class_folder_was_added_says_so(tmp_path):
    from helpers import write_image_folder
    folder = write_image_folder(tmp_path / "pets", classes=("cats", "dogs"), per_class=4)
    args = ["--data-dir", tmp_path / "d", "--image-size", "32", "--width", "8", "--batch-size", "4"]
    run_here("cgan.py", "--dataset", folder, *args, "--steps", "1", "--run-dir", tmp_path / "r")
    write_image_folder(folder, classes=("birds", "cats", "dogs"), per_class=4)
    proc = run_in_process("cgan.py", "--dataset", folder, *args, "--resume", tmp_path / "r", "--steps", "2")
    assert_user_error(proc, "classes changed", "2 then, 3 now", "new: birds")


def test_unlabelled_datasets_are_refused(folder_dataset, tmp_path):
    from helpers import write_celeba, write_image_folder
    flat = tmp_path / "flat"
    write_image_folder(tmp_path / "tmp", classes=("only",), per_class=3)
    (tmp_path / "tmp" / "only").rename(flat)  # images directly in the folder: no classes
    cases = [["--dataset", "celeba", "--data-dir", write_celeba(tmp_path / "c", n=2)],
             ["--dataset", flat, "--data-dir", tmp_path / "d"], ["--dataset", "ring8"]]
    for case in cases:
        proc = run_in_process("cgan.py", *case, "--image-size", "32", "--run-dir", tmp_path / "r")
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(lines) == 1 and ("no labels" in lines[0] or "labelled" in lines[0]), proc.stderr
        assert not (tmp_path / "r" / "checkpoint.pt").exists()
    run_script("cgan.py", "--dataset", folder_dataset, "--data-dir", tmp_path / "d", "--image-size", "32",
               "--width", "8", "--batch-size", "4", "--steps", "1", "--run-dir", tmp_path / "pets")
    assert Image.open(tmp_path / "pets" / "samples" / "step_0000001.png").size[1] == 2 * 34 + 2  # 2 classes


def test_losses_match_formulas():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    d = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean())
    g = -torch.log(torch.sigmoid(fake)).mean()
    assert torch.allclose(cgan.d_loss(real, fake), d) and torch.allclose(cgan.g_loss(fake), g)
    assert cgan.d_loss(real.bfloat16(), fake.bfloat16()).dtype == torch.float32


def test_both_players_see_the_label():
    torch.manual_seed(0)
    G, D = cgan.Generator(16, 10, 8, 8, 32, 1).eval(), cgan.Discriminator(10, 8, 32, 1).eval()
    z = torch.randn(1, 16).repeat(2, 1)
    y = torch.tensor([3, 7])
    x = G(z, y)
    assert x.shape == (2, 1, 32, 32) and not torch.allclose(x[0], x[1])
    same = x[:1].repeat(2, 1, 1, 1)
    assert D(same, y).shape == (2,) and not torch.allclose(*D(same, y))


@pytest.mark.slow
def test_generates_the_requested_digit(real_images, judge, tmp_path):
    """Trained on real handwritten digits, samples drawn for class k are classified as k by the judge (80%), and at
    least 8 classes are covered; the untrained G's samples match their labels only by chance.
    Measured (seed 1, one thread): 10 classes, 88% confident, 93% match their label when calibrated; 9, 80%
    and 86% in a later clean-clone run; untrained: 10% match.
    On the real Fashion-MNIST's 5,000 images (seed 1): 9 classes, 74% confident, 91% match their label (the judge's
    accuracy on real test images: 84%); untrained: 10%."""
    scores = learned_digits("cgan.py", real_images, judge, tmp_path, LEARN_STEPS,
                            extra=["--width", "16", "--batch-size", "32", "--lr", "5e-4"])
    assert scores["untrained"]["label_acc"] < 0.3, scores["untrained"]
    assert scores["trained"]["label_acc"] >= MIN_ACCURACY, scores["trained"]
    assert digits_pass(scores["trained"]), scores["trained"]
