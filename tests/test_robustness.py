"""Many GPUs and a run that survives: DDP under torchrun (gloo on the CPU), SIGTERM and --resume,
divergence, an unwritable run directory, and bad input as a new user would type it.

Every subprocess runs with OMP_NUM_THREADS=1 (several torch processes share two cores here)."""
import collections
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from common import run as run_module
from helpers import ROOT, SCRIPTS, TINY, assert_same_weights, assert_user_error, run_here, run_in_process, run_script, write_image_folder

ENV = {"OMP_NUM_THREADS": "1"}
PROBE = "tests/ddp_probe.py"
# Buffers each rank keeps for itself under DDP (the headers: per-GPU BatchNorm statistics; StyleGAN's
# running mean of w, as in the official code). Every parameter and every other buffer must match.
PER_RANK = ("running_mean", "running_var", "w_avg")


def tiny(script, data_dir, *extra):
    return [*TINY[script], "--data-dir", data_dir, "--sample-every", "0", *extra]


def run(script, *args, check=True, timeout=300):
    return run_script(f"{script}.py", *args, env=ENV, check=check, timeout=timeout)


def refuse(script, *args):
    """Input that must stop before training: run in this process (no interpreter start-up)."""
    return run_in_process(f"{script}.py", *args)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


# ---------------------------------------------------------------------------------------------- 1. DDP

@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_ddp_two_ranks_hold_identical_weights(script, mnist_dir, tmp_path):
    steps = 5 if script == "progan" else 3  # progan: 2 steps per phase here, so it also grows 4x4 -> 8x8 under DDP
    out, built = tmp_path / "run", tmp_path / "ddp.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", PROBE, f"{script}.py",
           *tiny(script, mnist_dir, "--steps", steps, "--log-every", "1", "--run-dir", out)]
    proc = subprocess.run(list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **ENV, "PROBE_RANK_STATES": "1", "PROBE_DDP_LOG": str(built),
                               "PROBE_EXIT_DIR": str(tmp_path), "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Both ranks returned from main() with the group shut down after a barrier (Run._leave_group): a rank that left a
    # live gloo group once aborted in its teardown in CI ("terminate called without an active exception").
    assert [(tmp_path / f"group_{r}").read_text() for r in (0, 1)] == ["False", "False"]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]  # such as DDP's broadcast_buffers deprecation
    # Every parameter DDP holds gets its gradient in every backward (D's G-step pass runs frozen, outside the reducer).
    built = [json.loads(line) for line in built.read_text().splitlines()]
    assert len(built) >= 2 and not any(b["find_unused_parameters"] for b in built), built
    if script == "progan":  # re-wrapped per phase over the layers in use: 4x4, fading in 8x8, then 8x8
        layers = {net: [sorted({name.rsplit(".", 1)[0] for name in b["params"]}) for b in built if b["module"] == net]
                  for net in ("Generator", "Discriminator")}
        g, d, grown = ["conv4", "dense"], ["conv3", "conv4", "linear"], ["blocks.0.0", "blocks.0.1"]
        phases = lambda fixed, rgb: [sorted(fixed + [f"{rgb}.0"]), sorted(fixed + grown + [f"{rgb}.0", f"{rgb}.1"]),
                                     sorted(fixed + grown + [f"{rgb}.1"])]
        assert layers == {"Generator": phases(g, "to_rgb"), "Discriminator": phases(d, "from_rgb")}, layers
    ranks = [load(out / f"rank_{r}.pt") for r in (0, 1)]
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["step"] == ranks[0]["step"] == ranks[1]["step"] == steps
    assert_same_weights(ranks[0], ckpt, keys=("G", "D"))  # the probe saw what rank 0 saved
    assert_same_weights(ranks[0], ranks[1], keys=("G", "D"), skip=PER_RANK)
    assert all(v.isfinite().all() for k in ("G", "D") for v in ckpt[k].values() if v.is_floating_point())
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # rank 0 logs, once per step
    assert len(ckpt["rng"]) == 2  # every rank's RNG state, for a DDP resume


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_g_step_computes_no_gradient_for_d(script, mnist_dir, tmp_path, monkeypatch):
    """D's weights get a gradient once per D update, none in G's step (run frozen: those gradients cost FLOPs and,
    under DDP, an all-reduce, to be discarded), and their requires_grad is back on for the next step's D updates."""
    monkeypatch.setattr(run_module.signal, "signal", lambda *args: None)  # keep pytest's own signal handling
    track, after_step, counts, steps = run_module.Run.restore_or_start, run_module.Run.after_step, collections.Counter(), []

    def track_and_count(self, **state):
        track(self, **state)
        for p in state["D"].parameters():
            p.register_post_accumulate_grad_hook(lambda p: counts.update([id(p)]))
        state["opt_d"].register_step_post_hook(lambda *args: counts.update(["D updates"]))

    def record_and_step(self, *args, **kwargs):
        params = list(self.tracked["D"].parameters())
        steps.append((counts["D updates"], {counts[id(p)] for p in params}, all(p.requires_grad for p in params)))
        counts.clear()
        return after_step(self, *args, **kwargs)

    monkeypatch.setattr(run_module.Run, "restore_or_start", track_and_count)
    monkeypatch.setattr(run_module.Run, "after_step", record_and_step)
    proc = run_in_process(f"{script}.py", *tiny(script, mnist_dir, "--steps", "2", "--run-dir", tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(steps) == 2, steps
    for updates, per_parameter, trainable in steps:  # per parameter: one gradient per D update (ProGAN's idle layers: 0)
        assert updates >= 1 and per_parameter <= {0, updates} and updates in per_parameter and trainable, steps


# --------------------------------------------------------------------------------------- 2. Preemption

def run_until_sigterm(script, args, run_dir, tmp_path, timeout=300, launcher=(sys.executable,), children=False):
    """Start a long run, SIGTERM it (or, with children, the processes it started) once metrics.jsonl has a step,
    wait for it to exit."""
    out, err = open(tmp_path / "stdout.txt", "w+"), open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen([*launcher, f"{script}.py", *map(str, args)], cwd=ROOT, stdout=out, stderr=err,
                            env={**os.environ, **ENV, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"})
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + timeout
    try:
        while not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None, f"{script} ended before it was signalled"
            assert time.time() < deadline, "no step logged in time"
            time.sleep(0.02)
        if children:  # Linux: each thread's children
            for pid in {int(p) for task in Path(f"/proc/{proc.pid}/task").iterdir() for p in (task / "children").read_text().split()}:
                os.kill(pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    out.seek(0), err.seek(0)
    return proc.returncode, out.read(), err.read()


@pytest.mark.parametrize("script", ["dcgan", "wgan_gp", "progan"])
def test_sigterm_checkpoints_and_resume_is_bit_exact(script, mnist_dir, tmp_path):
    args = tiny(script, mnist_dir, "--log-every", "1", "--ckpt-every", "0")
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    rc, out, err = run_until_sigterm(script, [*args, "--steps", "100000", "--run-dir", stopped], stopped, tmp_path)
    step = load(stopped / "checkpoint.pt")["step"]
    assert rc == 0 and "SIGTERM received" in err and f"stopped by SIGTERM at step {step}" in out, out + err
    assert 1 <= step < 100000
    end = step + 3  # progan: 2 steps per phase, so the resumed part crosses a phase boundary
    resumed = run(script, "--resume", stopped, "--steps", end).stdout
    assert f"from step {step} to {end}" in resumed
    run_here(f"{script}.py", *args, "--steps", end, "--run-dir", whole, threads=1)
    a, b = load(whole / "checkpoint.pt"), load(stopped / "checkpoint.pt")
    assert a["step"] == b["step"] == end
    assert_same_weights(a, b)  # bit-exact on the CPU: same seed, same RNG stream, same order of operations


def test_sigterm_during_the_export_stops_at_once_and_resume_finishes_it(mnist_dir, tmp_path):
    """The run is saved before the export: a signal there stops it at once, leaves whole PNGs only, says how to
    finish, and the resumed run's export replaces the partial one."""
    from PIL import Image
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "dcgan.py", *tiny("dcgan", mnist_dir, "--steps", "1", "--export",
                             "100000", "--run-dir", out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    try:
        deadline = time.time() + 300
        while len(list(out.glob("export/*.png"))) < 3:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_user_error(types.SimpleNamespace(returncode=proc.returncode, stderr=err),
                      "stopped by SIGTERM after the last step", "of the 100000 images", f"--resume {out} --export")
    pngs = sorted(out.glob("export/*.png"))
    assert 3 <= len(pngs) < 100000 and not list(out.glob("export/*.tmp"))
    for png in pngs:
        Image.open(png).load()  # whole files only
    resumed = run("dcgan", "--resume", out, "--export", "4").stdout
    assert f"replacing the {len(pngs)} images exported earlier" in resumed
    assert len(list(out.glob("export/*.png"))) == 4


@pytest.mark.slow
@pytest.mark.parametrize("signalled", ["torchrun", "ranks"])
def test_sigterm_under_torchrun_stops_every_rank_after_the_same_step(signalled, mnist_dir, tmp_path):
    """SIGTERM to torchrun (which passes it on to each rank) or to the ranks: they agree (every 10 steps) on the
    step to stop after, each saves there (the probe records every rank's step; rank 0 writes checkpoint.pt) and
    ends with status 0. Signalled ranks leave torchrun a clean exit; a signalled torchrun re-raises the signal in
    its agent once the ranks ended (SignalException, status 1): torchrun's own traceback, the only one."""
    run_dir = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", PROBE]
    args = tiny("dcgan", mnist_dir, "--log-every", "1", "--ckpt-every", "0", "--steps", "100000", "--run-dir", run_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_RANK_STATES", "1")
        mp.setenv("PROBE_EXIT_DIR", str(tmp_path))
        rc, out, err = run_until_sigterm("dcgan", args, run_dir, tmp_path, launcher=launcher, children=signalled == "ranks")
    step = load(run_dir / "checkpoint.pt")["step"]
    assert 1 <= step < 100000 and f"stopped by SIGTERM at step {step}" in out, out[-2000:] + err[-2000:]
    assert [load(run_dir / f"rank_{r}.pt")["step"] for r in (0, 1)] == [step, step]
    assert [(tmp_path / f"exit_{r}").read_text() for r in (0, 1)] == ["0", "0"]
    assert [(tmp_path / f"group_{r}").read_text() for r in (0, 1)] == ["False", "False"]  # left together (Run._leave_group)
    assert "Warning" not in err, err[-3000:]  # such as DDP's broadcast_buffers deprecation
    if signalled == "ranks":
        assert rc == 0 and "Traceback" not in err, err[-3000:]
    else:
        assert rc == 1 and err.count("Traceback") == 1 and "SignalException: Process" in err, err[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_fp16_with_a_grad_scaler(script, mnist_dir, tmp_path):
    """--amp fp16 end to end (CPU autocast): finite losses and weights, the GradScaler's state saved. The
    penalties' scale-then-unscale recipe is checked exactly in test_wgan_gp.py and test_stylegan_lite.py."""
    out = tmp_path / "run"
    run_here(f"{script}.py", *tiny(script, mnist_dir, "--steps", "3", "--log-every", "1", "--amp", "fp16", "--run-dir", out),
             threads=1)  # in this process: no interpreter start-up
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0, ckpt["scaler"]  # an enabled scaler's state
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Step 1 may overflow at the initial scale (2**16): NaN there, step skipped; the run then trains on.
    assert len(rows) == 3 and math.isfinite(rows[-1]["d_loss"]) and math.isfinite(rows[-1]["g_loss"]), rows
    assert all(v.isfinite().all() for k in ("G", "D") for v in ckpt[k].values() if v.is_floating_point())


# --------------------------------------------------------------------------------------- 3. Divergence

def nan_from_call(monkeypatch, script: str, n: int):
    """SCRIPT's g_loss returns NaN from its n-th call on (a simulated divergence), for a run in this process."""
    module = importlib.import_module(script)
    g_loss, calls = module.g_loss, [0]

    def nan_g_loss(*args, **kwargs):
        calls[0] += 1
        loss = g_loss(*args, **kwargs)
        return loss * float("nan") if calls[0] >= n else loss

    monkeypatch.setattr(module, "g_loss", nan_g_loss)


@pytest.mark.parametrize("script", SCRIPTS)
def test_nan_loss_stops_with_status_2_and_keeps_last_good_checkpoint(script, mnist_dir, tmp_path, monkeypatch):
    """g_loss turns NaN at step 5; checks every step find it there; the step-4 checkpoint stays."""
    out = tmp_path / "run"
    nan_from_call(monkeypatch, script, 5)
    proc = run_here(f"{script}.py", *tiny(script, mnist_dir, "--steps", "8", "--log-every", "1", "--ckpt-every", "2",
                                          "--run-dir", out), threads=1, check=False)
    assert_user_error(proc, "g_loss is nan", "at step 5", "diverged")
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["script"] == script
    for key in ("G", "D"):
        assert all(v.isfinite().all() for v in ckpt[key].values() if v.is_floating_point()), key
    assert not list(out.glob("*.tmp"))


def test_nan_found_at_a_checkpoint_step_keeps_the_one_before_and_it_resumes(mnist_dir, tmp_path, monkeypatch):
    """Losses are not read between log steps; the check before each checkpoint still keeps NaN out of it."""
    out = tmp_path / "run"
    nan_from_call(monkeypatch, "dcgan", 4)
    proc = run_here("dcgan.py", *tiny("dcgan", mnist_dir, "--steps", "9", "--log-every", "100", "--ckpt-every", "3",
                                      "--run-dir", out), threads=1, check=False)
    assert_user_error(proc, "at step 6")
    assert load(out / "checkpoint.pt")["step"] == 3
    assert "from step 3 to 5" in run("dcgan", "--resume", out, "--steps", "5").stdout  # without the NaN it trains on
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["step"] == 5 and all(v.isfinite().all() for v in ckpt["G"].values() if v.is_floating_point())


@pytest.mark.slow
def test_fp16_overflow_is_skipped_but_a_lasting_nan_stops_the_run(mnist_dir, tmp_path, monkeypatch):
    """Under fp16 the GradScaler skips steps whose gradients overflow (and halves its scale), so a non-finite
    loss is tolerated while the scale is >= 1; a loss that stays NaN collapses the scale and stops the run."""
    out = tmp_path / "run"
    nan_from_call(monkeypatch, "dcgan", 5)
    proc = run_here("dcgan.py", *tiny("dcgan", mnist_dir, "--steps", "60", "--log-every", "1", "--amp", "fp16",
                                      "--ckpt-every", "2", "--run-dir", out), threads=1, check=False)
    line = assert_user_error(proc, "g_loss is nan", "diverged")
    step = int(line.split("at step ")[1].split()[0])
    # The scale (2**16) halves at most once a step, so it cannot fall below 1 before step 17; every NaN step from step 5
    # halves it, so it has by step 21 (sooner when some of steps 1-4 overflow at 2**16 too, as on some CPUs: step 19)
    assert 17 <= step <= 21, line
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["step"] < step and ckpt["scaler"]["scale"] >= 1.0
    assert all(v.isfinite().all() for k in ("G", "D") for v in ckpt[k].values() if v.is_floating_point())


# ------------------------------------------------------------------------------ 4. Unwritable run dir

@pytest.mark.parametrize("script", ["minimal_gan", "dcgan", "progan"])  # one Run class: three suffice
def test_run_dir_under_a_file_is_a_clear_error(script, mnist_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = refuse(script, *tiny(script, mnist_dir, "--steps", "1", "--run-dir", blocker / "run"))
    assert_user_error(proc, "cannot write to the run directory", str(blocker / "run"))


# ------------------------------------------------------------------------------------- 5. Bad input

@pytest.mark.parametrize("script", ["minimal_gan", "wgan", "stylegan_lite"])
def test_wrong_type_is_a_usage_error(script, tmp_path):
    proc = refuse(script, "--steps", "abc", "--run-dir", tmp_path / "r")
    assert_user_error(proc, "--steps", "invalid int value: 'abc'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("script", ["dcgan", "began", "progan", "sagan", "stylegan_lite"])  # each has its own rule
def test_image_size_not_a_power_of_two(script, mnist_dir, tmp_path):
    proc = refuse(script, *tiny(script, mnist_dir, "--image-size", "48", "--run-dir", tmp_path / "r"))
    assert_user_error(proc, "--image-size", "power of two", "48")


@pytest.mark.parametrize("script, batch", [("progan", "0"), ("stylegan_lite", "-4")])
def test_batch_size_below_one(script, batch, mnist_dir, tmp_path):
    proc = refuse(script, *tiny(script, mnist_dir, "--batch-size", batch, "--run-dir", tmp_path / "r"))
    assert_user_error(proc, "--batch-size must be in [1, ", batch)


@pytest.mark.parametrize("script", ["minimal_gan", "progan"])
def test_log_every_zero(script, mnist_dir, tmp_path):
    """--log-every 0 passes the argument check (0 is allowed for the *_every flags), then `step % 0`."""
    proc = run(script, *tiny(script, mnist_dir, "--steps", "2", "--log-every", "0", "--run-dir", tmp_path / "r"),
               check=False)
    assert_user_error(proc, "--log-every")


@pytest.mark.parametrize("script, flag, value", [("dcgan", "--lr", "-1"), ("sagan", "--lr-d", "0"),
                                                  ("wgan_gp", "--beta2", "1.5"), ("dcgan", "--width", "0")])
def test_impossible_optimiser_or_width_values(script, flag, value, mnist_dir, tmp_path):
    """Adam / RMSprop reject these with a ValueError, a zero-width convolution with a oneDNN error: say it first."""
    proc = refuse(script, *tiny(script, mnist_dir, "--steps", "1", flag, value, "--run-dir", tmp_path / "r"))
    assert_user_error(proc, flag)


def test_corrupt_image_in_a_folder_is_named(tmp_path):
    folder = write_image_folder(tmp_path / "pets", per_class=4)
    (folder / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    good = (folder / "dogs" / "000.png").read_bytes()
    (folder / "dogs" / "cut.png").write_bytes(good[:len(good) // 2])  # a half-copied file
    proc = refuse("dcgan", "--dataset", folder, "--data-dir", tmp_path / "d", "--image-size", "32", "--width", "8",
               "--batch-size", "4", "--steps", "1", "--run-dir", tmp_path / "r")
    line = assert_user_error(proc, "2 of 10 images could not be read", str(folder / "cats" / "broken.png"),
                             str(folder / "dogs" / "cut.png"))
    assert "remove or fix them" in line
    assert not list((tmp_path / "d").glob("cache/*.pt"))  # nothing half-read is cached


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory, mnist_dir):
    """One-step runs, made on first use: script -> run directory."""
    made = {}

    def get(script):
        if script not in made:
            made[script] = tmp_path_factory.mktemp(script)
            run(script, *tiny(script, mnist_dir, "--steps", "1", "--run-dir", made[script]))
        return made[script]
    return get


@pytest.mark.parametrize("script", ["minimal_gan", "dcgan", "wgan", "stylegan_lite"])
def test_resume_a_run_of_another_script(script, short_runs):
    other = "dcgan" if script != "dcgan" else "minimal_gan"
    proc = refuse(script, "--resume", short_runs(other))
    assert_user_error(proc, f"made by {other}, not {script}")


@pytest.mark.parametrize("script, flag, value", [
    ("minimal_gan", "--loss", "minimax"), ("wgan_gp", "--gp-lambda", "5"), ("progan", "--max-channels", "32"),
    ("dcgan", "--dataset", "cifar10")])
def test_resume_with_incompatible_settings(script, flag, value, short_runs):
    run_dir = short_runs(script)
    proc = refuse(script, "--resume", run_dir, "--steps", "2", flag, value)
    assert_user_error(proc, "cannot resume with different settings", f"{flag} ")
    assert load(run_dir / "checkpoint.pt")["step"] == 1  # the run is untouched


def test_resume_without_or_with_an_unreadable_checkpoint(tmp_path):
    proc = refuse("dcgan", "--resume", tmp_path / "nothing_here")
    assert_user_error(proc, "no checkpoint.pt")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"half a checkpoint")
    proc = refuse("dcgan", "--resume", tmp_path / "bad")
    assert_user_error(proc, "checkpoint.pt cannot be read")
    for saved, what in [(torch.zeros(3), "holds a Tensor"), ({"weight": torch.zeros(3)}, "a bare state dict")]:
        torch.save(saved, tmp_path / "bad" / "checkpoint.pt")  # a model's weights saved by hand, say
        assert_user_error(refuse("dcgan", "--resume", tmp_path / "bad"), what, "not a checkpoint written by a run")


@pytest.mark.slow
def test_resume_on_more_processes_than_saved_it(short_runs, tmp_path):
    """A preempted job often comes back on another number of GPUs: a 1-process run resumed by torchrun with 2."""
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(short_runs("dcgan"), run_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "dcgan.py",
           "--resume", run_dir, "--steps", "2"]
    proc = subprocess.run(list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **ENV, "WANDB_MODE": "offline"})
    assert proc.returncode == 0 and "IndexError" not in proc.stderr, proc.stderr[-3000:]
    assert load(run_dir / "checkpoint.pt")["step"] == 2


def test_no_script_imports_torchvision_at_start():
    """torchvision takes about two seconds to import: the scripts and common import it only to read MNIST before
    its decoded cache exists, to download a dataset or to compute FID, so --help and a run on cached data start
    without it."""
    code = f"import sys, {', '.join(SCRIPTS)}; print('torchvision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout == "False\n"
