"""No lost work and no traceback: run directories, locks, non-finite state, disk errors, metrics on resume,
FID failures, silent no-ops and nonsense flags (the run helper in common/run.py, used by every script)."""
import importlib.machinery
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from common import run as run_module
from common.cli import RunArgs, UserError
from helpers import assert_user_error, metrics, run_here, run_in_process, run_script

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


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_that_ends_here_while_another_starts_is_kept(resume, mnist_dir, tmp_path, monkeypatch):
    """Run B checks RUN_DIR at its start, then loads its data; run A, started later in the same RUN_DIR, finishes
    (or saves a newer checkpoint of the resumed run) before B takes the folder's lock. B must refuse, not delete or
    overwrite A's run. Here A's finish is its files appearing (or its checkpoint changing) just before B's lock."""
    out = tmp_path / "r"
    if resume:
        dcgan(mnist_dir, out, "--steps", "1", "--log-every", "1")
    real_lock = run_module.lock_run_dir

    def a_finishes_first(folder):
        out.mkdir(exist_ok=True)
        (out / "checkpoint.pt").write_bytes(b"run A's checkpoint")
        (out / "metrics.jsonl").write_text('{"step": 2}\n')
        real_lock(folder)

    monkeypatch.setattr(run_module, "lock_run_dir", a_finishes_first)
    proc = dcgan(mnist_dir, out, "--steps", "3", *(["--resume", out] if resume else []), check=False)
    assert_user_error(proc, *(["changed after this run read it", "--resume"] if resume else
                              [f"{out} holds a run", "--overwrite"]))
    assert (out / "checkpoint.pt").read_bytes() == b"run A's checkpoint"
    assert (out / "metrics.jsonl").read_text() == '{"step": 2}\n'


def test_an_earlier_runs_files_without_a_checkpoint_need_overwrite_and_a_users_own_files_stay(mnist_dir, tmp_path):
    """A folder with a run's files but no checkpoint (a run killed before its first one, or a user's folder): a new
    run refuses it; --overwrite removes the run's files (metrics, sample grids, exported PNGs) and nothing else."""
    out = tmp_path / "r"
    (out / "export").mkdir(parents=True)
    (out / "samples").mkdir()
    theirs = [out / "export" / "000000.png", out / "samples" / "step_0000007.png", out / "metrics.jsonl"]
    mine = [out / "export" / "notes.txt", out / "notes.md", out / "samples" / "picked.png"]
    for path in theirs + mine:
        path.write_text('{"step": 7}\n')
    proc = dcgan(mnist_dir, out, "--steps", "1", check=False)
    assert_user_error(proc, "without a checkpoint", "metrics.jsonl", "1 sample grids", "1 exported images",
                      "--overwrite")
    assert all(path.exists() for path in theirs + mine)
    dcgan(mnist_dir, out, "--steps", "1", "--overwrite")
    assert not any(path.exists() for path in theirs[:2]) and all(path.exists() for path in mine)
    assert [r["step"] for r in metrics(out)] == [1]


def test_a_run_directory_in_use_is_refused_and_a_stale_lock_taken_over(mnist_dir, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "run.lock").write_text(str(holder.pid))
        proc = dcgan(mnist_dir, out, "--steps", "1", check=False)
        assert_user_error(proc, f"in use by PID {holder.pid}", f"delete {out / 'run.lock'}")
        (out / "run.lock").write_text(f"{holder.pid} far-away-host 12")  # we cannot see that host's processes
        assert_user_error(dcgan(mnist_dir, out, "--steps", "1", check=False), "on host far-away-host",
                          f"delete {out / 'run.lock'}")
        if run_module._started(holder.pid) is not None:  # Linux: the PID was reused by a process started later
            (out / "run.lock").write_text(f"{holder.pid} {run_module.socket.gethostname()} 12")
            dcgan(mnist_dir, tmp_path / "r", "--steps", "1")
    finally:
        holder.kill()
        holder.wait()
    (out / "run.lock").write_text(str(holder.pid))
    dcgan(mnist_dir, out, "--steps", "1", "--overwrite")  # the holder is gone: its lock is stale
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


@pytest.mark.parametrize("tail", ["", "\n", '{"step": 7, "d_lo'])
def test_resume_drops_metrics_logged_after_the_checkpoint(tail, mnist_dir, tmp_path):
    """Rows past the checkpoint go; so does a blank or half-written last line (a kill during a write), with a word."""
    out = tmp_path / "r"
    dcgan(mnist_dir, out, "--steps", "4", "--log-every", "1", "--ckpt-every", "4")
    with open(out / "metrics.jsonl", "a") as f:  # what a run killed after step 6 would have logged past it
        f.writelines(json.dumps({"step": s, "d_loss": 0.0}) + "\n" for s in (5, 6))
        f.write(tail)
    proc = dcgan(mnist_dir, out, "--resume", out, "--steps", "6", "--log-every", "1")
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert ("dropped 1 broken line" in proc.stderr) == bool(tail)


def test_a_hand_edit_of_config_json_is_named_on_resume(mnist_dir, tmp_path):
    """config.json records the run; editing it changes nothing, and a resume says so instead of overwriting it."""
    out = tmp_path / "r"
    dcgan(mnist_dir, out, "--steps", "1")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "lr": 0.1, "steps": 5}))  # steps: a resumable flag
    proc = dcgan(mnist_dir, out, "--resume", out, "--steps", "2")
    warning = next(line for line in proc.stderr.splitlines() if "config.json" in line)
    assert "differs from the checkpoint in lr:" in warning and "steps" not in warning.split(":")[1]
    assert json.loads((out / "config.json").read_text())["lr"] == config["lr"]


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


def test_fid_from_a_single_image_is_refused_before_the_run(mnist_dir, tmp_path):
    """One sample (or a one-image dataset) ended in NumPy warnings and 'eigh failed to converge' mid-run."""
    from helpers import write_image_folder
    assert_user_error(run_in_process("dcgan.py", "--fid-samples", "1"), "--fid-samples must be in [2, inf)")
    one = write_image_folder(tmp_path / "one", classes=("a",), per_class=1)
    proc = run_here("dcgan.py", "--dataset", one, "--data-dir", tmp_path / "d", "--image-size", "32", "--width", "8",
                    "--steps", "1", "--fid", "on", "--run-dir", tmp_path / "r", check=False)
    assert_user_error(proc, "FID needs at least two images", "a dataset of about 1", "--fid off")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


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


@pytest.mark.parametrize("script, flag, value", [
    ("dcgan", "--ema-decay", "nan"), ("dcgan", "--ema-decay", "2"), ("dcgan", "--ema-decay", "-1"),
    ("dcgan", "--lr", "inf"), ("dcgan", "--lr", "nan"), ("dcgan", "--seed", str(10**23)),
    ("minimal_gan", "--dropout", "1.5"), ("progan", "--adam-eps", "-1"), ("progan", "--kimg-per-phase", "nan"),
    ("progan", "--kimg-per-phase", "inf"), ("stylegan_lite", "--mapping-lr-mul", "0"),
    ("stylegan_lite", "--r1-gamma", "-5"), ("began", "--lambda-k", "-1"), ("wgan_gp", "--gp-lambda", "nan")])
def test_nonsense_values_are_refused_by_the_flags_declared_limits(script, flag, value, tmp_path):
    """Each flag declares the values it takes (arg(..., within="[0, 1)")): checked before any data is read (there
    is none here), named in one line."""
    proc = run_in_process(f"{script}.py", flag, value, "--run-dir", tmp_path / "r", "--data-dir", tmp_path / "none")
    assert_user_error(proc, f"{flag} must be in ", value)


@pytest.mark.parametrize("device", ["mps", "xpu", "meta"])
def test_devices_the_scripts_do_not_run_on_are_named(device, tmp_path):
    proc = run_in_process("dcgan.py", "--device", device, "--run-dir", tmp_path / "r", "--data-dir", tmp_path / "none")
    assert_user_error(proc, f"--device {device}", "cuda, cuda:N or cpu")


def test_help_shows_each_flags_limits():
    out = run_in_process("progan.py", "--help").stdout
    assert "a power of two in [8, 1024]" in out and "in [0, 1)" in out and "in [1, 16]" in out


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


@pytest.mark.parametrize("full", ["metrics.jsonl", "a sample grid"])
def test_a_full_disk_mid_run_is_one_line_and_leaves_no_half_png(full, mnist_dir, tmp_path, monkeypatch):
    out = tmp_path / "r"
    if full == "a sample grid":  # written after the last step's checkpoint
        from PIL import Image

        def save(picture, fp, *args, **kwargs):
            Path(fp).write_bytes(b"\x89PNG, cut short")
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(Image.Image, "save", save)
    else:  # the first log line, before any checkpoint
        real_open = open
        monkeypatch.setattr("builtins.open", lambda path, *args, **kwargs: (
            (_ for _ in ()).throw(OSError(28, "No space left on device")) if str(path).endswith("metrics.jsonl")
            else real_open(path, *args, **kwargs)))
    proc = dcgan(mnist_dir, out, "--steps", "2", "--log-every", "1", check=False)
    assert_user_error(proc, "No space left on device", f"--resume {out}" if full != "metrics.jsonl" else "--overwrite")
    assert not list(out.rglob("*.png")) and not list(out.rglob("*.tmp"))


def test_a_signal_during_the_last_steps_sampling_or_fid_stops_before_the_export(mnist_dir, tmp_path, monkeypatch):
    """It used to say 'saving a checkpoint at the end of this step' and export anyway."""
    real_grid = run_module.Run._save_grid

    def grid_then_signal(run):
        real_grid(run)
        run.stop.received = "SIGTERM"  # what StopSignal records when the signal comes during the sampling (or FID)
    monkeypatch.setattr(run_module.Run, "_save_grid", grid_then_signal)
    out = tmp_path / "r"
    proc = dcgan(mnist_dir, out, "--steps", "2", "--export", "5", check=False)
    assert_user_error(proc, "stopped by SIGTERM after the last step", "0 of the 5 images", f"--resume {out} --export 5")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2 and not list(out.glob("export/*"))


class FakeWandb:
    """Stands in for the wandb module: records each init's id, or fails as wandb does without an API key."""

    def __init__(self, fail=None):
        self.ids, self.fail = [], fail
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # find_spec("wandb") reads it
        self.Image = lambda path: path

    def init(self, id=None, **kwargs):
        if self.fail:
            raise self.fail
        self.ids.append(id)
        return types.SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None)


def test_each_tracked_run_has_its_own_wandb_id_kept_on_resume(mnist_dir, tmp_path, monkeypatch):
    """Two folders with the same name (a/seed0, b/seed0) and an --overwrite used to log into one wandb run."""
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for run_dir in (tmp_path / "a" / "seed0", tmp_path / "b" / "seed0"):
        dcgan(mnist_dir, run_dir, "--steps", "1", "--track")
    dcgan(mnist_dir, tmp_path / "a" / "seed0", "--resume", tmp_path / "a" / "seed0", "--steps", "2", "--track")
    dcgan(mnist_dir, tmp_path / "b" / "seed0", "--steps", "1", "--track", "--overwrite")
    a, b, a_resumed, b_new = fake.ids
    assert len({a, b, b_new}) == 3 and a_resumed == a and a.startswith("dcgan-")


def test_track_without_a_wandb_login_is_one_line(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(fail=Exception("api_key not configured (no-tty). call "
                                                                        "wandb.login(key=[your_api_key])")))
    proc = dcgan(mnist_dir, tmp_path / "r", "--steps", "1", "--track", check=False)
    assert_user_error(proc, "api_key not configured", "wandb login", "WANDB_MODE=offline")


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
