"""No lost work and no traceback: run directories, locks, non-finite state, disk errors, metrics on resume,
FID failures, silent no-ops and nonsense flags (the run helper in common/run.py, used by every script)."""
import json
import subprocess
import sys

import pytest
import torch

from common import run as run_module
from common.cli import RunArgs, UserError
from helpers import assert_user_error, metrics, run_here, run_in_process, run_script

SCRIPTS = ["minimal_gan", "dcgan", "cgan", "lsgan", "wgan", "wgan_gp", "began", "progan", "sagan", "stylegan_lite"]
ENV = {"OMP_NUM_THREADS": "1"}


def dcgan(mnist_dir, run_dir, *extra, check=True):
    args = ["--dataset", "mnist", "--data-dir", mnist_dir, "--image-size", "32", "--width", "8", "--batch-size", "8",
            "--sample-every", "0", "--run-dir", run_dir, *extra]
    return run_here("dcgan.py", *args, threads=1, check=check)


def test_a_run_directory_holding_a_run_is_refused_unless_overwrite(mnist_dir, tmp_path):
    out = tmp_path / "r"
    dcgan(mnist_dir, out, "--steps", "2", "--log-every", "1")
    before = (out / "checkpoint.pt").read_bytes()
    proc = run_in_process("dcgan.py", "--dataset", "mnist", "--data-dir", mnist_dir, "--image-size", "32",
                          "--run-dir", out)
    assert_user_error(proc, f"{out} holds a run", f"--resume {out}", "--overwrite")
    assert (out / "checkpoint.pt").read_bytes() == before  # untouched
    dcgan(mnist_dir, out, "--steps", "1", "--log-every", "1", "--overwrite")
    assert [r["step"] for r in metrics(out)] == [1]  # a new trajectory, not appended to the old one
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 1


def test_a_run_directory_in_use_is_refused_and_a_stale_lock_taken_over(mnist_dir, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "run.lock").write_text(str(holder.pid))
        proc = dcgan(mnist_dir, out, "--steps", "1", check=False)
        assert_user_error(proc, f"in use by PID {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    dcgan(mnist_dir, out, "--steps", "1")  # the holder is gone: its lock is stale
    assert not (out / "run.lock").exists()  # released at exit


def test_non_finite_weights_never_reach_a_checkpoint(mnist_dir, tmp_path):
    """lr 1e8: the losses of step 1 are finite, but its update makes weights non-finite."""
    out = tmp_path / "r"
    proc = run_script("lsgan.py", "--dataset", "mnist", "--data-dir", mnist_dir, "--image-size", "32", "--width", "8",
                      "--batch-size", "8", "--sample-every", "0", "--lr", "1e8", "--ckpt-every", "1", "--steps", "4",
                      "--run-dir", out, env=ENV, check=False)
    assert_user_error(proc, "diverged")
    if (out / "checkpoint.pt").exists():
        ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
        assert all(v.isfinite().all() for k in ("G", "D") for v in ckpt[k].values() if v.is_floating_point())
    else:
        assert "no checkpoint was written" in proc.stderr


@pytest.mark.parametrize("exists", [False, True])
def test_disk_full_from_torchs_writer_is_one_line(tmp_path, monkeypatch, exists):
    path = tmp_path / "checkpoint.pt"
    if exists:
        run_module.save_checkpoint(path, {"step": 1})

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="previous one is kept" if exists else "no checkpoint was written"):
        run_module.save_checkpoint(path, {"step": 2})
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_resume_drops_metrics_logged_after_the_checkpoint(mnist_dir, tmp_path):
    out = tmp_path / "r"
    dcgan(mnist_dir, out, "--steps", "4", "--log-every", "1", "--ckpt-every", "4")
    with open(out / "metrics.jsonl", "a") as f:  # what a run killed after step 6 would have logged past it
        f.writelines(json.dumps({"step": s, "d_loss": 0.0}) + "\n" for s in (5, 6))
    dcgan(mnist_dir, out, "--resume", out, "--steps", "6", "--log-every", "1")
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]


def test_nothing_to_train_says_so_and_leaves_the_config(mnist_dir, tmp_path):
    out = tmp_path / "r"
    dcgan(mnist_dir, out, "--steps", "3")
    config = (out / "config.json").read_text()
    for steps in ("3", "2"):
        proc = run_here("dcgan.py", "--resume", out, "--steps", steps, threads=1)
        assert "nothing to train: the run is at step 3" in proc.stdout
        assert (out / "config.json").read_text() == config
    assert "nothing to train: the run is at step 0 of 0" in dcgan(mnist_dir, tmp_path / "z", "--steps", "0").stdout


def test_fid_weights_that_are_not_the_network_stop_the_run_at_once(mnist_dir, tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(bytes(range(256)) * 8)
    proc = dcgan(mnist_dir, tmp_path / "r", "--steps", "1", "--fid", "on", "--fid-weights", bad, check=False)
    assert_user_error(proc, "does not hold the FID Inception weights")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()  # stopped before training


def test_a_failing_fid_turns_itself_off_and_the_run_ends_with_its_checkpoint(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "load_network", lambda weights, device: "a network")
    monkeypatch.setattr(run_module.signal, "signal", lambda *args: None)  # keep pytest's own signal handling

    class Failing:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(run_module, "FID", Failing)
    out = tmp_path / "r"
    proc = run_in_process("dcgan.py", "--dataset", "mnist", "--data-dir", mnist_dir, "--image-size", "32", "--width", "8",
                          "--batch-size", "8", "--sample-every", "0", "--steps", "2", "--fid", "on", "--run-dir", out)
    assert proc.returncode == 0, proc.stderr
    assert "FID is off: linalg.eigh" in proc.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2


@pytest.mark.parametrize("flag, value", [("--ema-decay", "nan"), ("--ema-decay", "2"), ("--ema-decay", "-1"),
                                         ("--lr", "inf"), ("--lr", "nan")])
def test_nonsense_rates_are_refused(flag, value, tmp_path):
    proc = run_in_process("dcgan.py", flag, value, "--run-dir", tmp_path / "r")
    assert_user_error(proc, flag)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_every_flag(script):
    proc = run_in_process(f"{script}.py", "--help")
    assert proc.returncode == 0 and "--ema-decay" in proc.stdout and "--overwrite" in proc.stdout, proc.stderr


def test_compile_asks_for_static_shapes(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(kw) or module)
    argv = ["--device", "cpu", "--compile", "--run-dir", str(tmp_path / "r")]
    r = run_module.Run.start("dcgan", __import__("dcgan").Args, "t", argv)
    r.wrap(torch.nn.Linear(2, 2))
    assert calls == [{"dynamic": False}]


@pytest.mark.parametrize("flag, value", [("--width", "100000000"), ("--batch-size", "1000000000000"),
                                         ("--z-dim", "100000000000")])
def test_absurd_sizes_end_in_one_line_naming_the_flags(flag, value, mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module.signal, "signal", lambda *args: None)  # keep pytest's own signal handling
    proc = run_in_process("dcgan.py", "--dataset", "mnist", "--data-dir", mnist_dir, "--image-size", "32",
                          "--steps", "1", "--sample-every", "0", "--run-dir", tmp_path / "r", flag, value)
    assert_user_error(proc, "out of memory", "--batch-size", "--width")


def test_track_without_wandb_is_refused_at_once(monkeypatch, tmp_path):
    real_find_spec = run_module.importlib.util.find_spec
    monkeypatch.setattr(run_module.importlib.util, "find_spec", lambda name: None if name == "wandb" else real_find_spec(name))
    assert_user_error(run_in_process("dcgan.py", "--track", "--run-dir", tmp_path / "r"), "--track needs wandb")


def test_minimal_gan_reports_no_reverse_kl_without_a_sample_near_a_mode(tmp_path):
    proc = run_script("minimal_gan.py", "--dataset", "ring8", "--steps", "0", "--run-dir", tmp_path / "r", env=ENV)
    assert "reverse KL n/a" in proc.stdout and "0.0% high-quality" in proc.stdout


def test_the_log_clock_is_read_after_the_losses(tmp_path, monkeypatch):
    """On a GPU, .item() waits for the queued steps: reading the clock first would time the queueing only."""
    order = []

    class Loss(torch.Tensor):
        def item(self):
            order.append("item")
            return 0.0

    monkeypatch.setattr(run_module.time, "time", lambda: order.append("clock") or 1.0)
    logger = run_module.Logger(RunArgs(), "x", str(tmp_path / "r"))
    order.clear()
    logger.log(1, 2, {"d_loss": torch.zeros(()).as_subclass(Loss)}, 8)
    assert order.index("item") < order.index("clock")


def test_an_offline_mnist_is_one_line(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n<urlopen error>\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    proc = run_in_process("dcgan.py", "--dataset", "mnist", "--data-dir", tmp_path / "d", "--run-dir", tmp_path / "r")
    assert_user_error(proc, "mnist is not in", "could not be downloaded", "Tried https://a/")


def test_cgan_names_images_outside_the_class_folders(tmp_path):
    from helpers import write_image_folder
    folder = write_image_folder(tmp_path / "pets", per_class=2)
    (folder / "stray.png").write_bytes((folder / "cats" / "000.png").read_bytes())
    proc = run_in_process("cgan.py", "--dataset", folder, "--data-dir", tmp_path / "d", "--image-size", "32",
                          "--run-dir", tmp_path / "r")
    assert_user_error(proc, "images at its top level (stray.png)", "move them into a class folder")


def test_the_rng_is_forked_only_on_steps_that_sample(mnist_dir, tmp_path, monkeypatch):
    """Forking the RNG copies every device's generator state: do it where sampling happens, not every step."""
    import contextlib
    forks = []
    monkeypatch.setattr(run_module.signal, "signal", lambda *args: None)  # keep pytest's own signal handling
    monkeypatch.setattr(torch.random, "fork_rng", lambda *a, **k: forks.append(1) or contextlib.nullcontext())
    proc = run_in_process("dcgan.py", "--dataset", "mnist", "--data-dir", mnist_dir, "--image-size", "32", "--width", "8",
                          "--batch-size", "8", "--steps", "6", "--sample-every", "3", "--run-dir", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    assert len(forks) == 2  # the grids of steps 3 and 6
