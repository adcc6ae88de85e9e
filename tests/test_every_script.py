"""What every script does alike, checked the same way for all ten; what only one script does stays in
tests/test_SCRIPT.py. A tiny run writes its files and exports PNGs, a resumed run matches an uninterrupted one bit
for bit, --amp bf16 really computes in bf16, bad values end in one line before any data is read, --help lists every
flag; in the slow tier, a compiled run compiles once and saves plain state dicts."""
import dataclasses
import importlib
import json
import math
import re

import pytest
import torch

from helpers import (SCRIPTS, TINY, assert_same_weights, assert_user_error, load_pngs, metrics, resumed_and_straight,
                     run_compiled, run_here, run_in_process, run_script)

# On images: minimal_gan's own tiny setting is the 2-D ring (its file checks that)
IMAGES = {**TINY, "minimal_gan": ["--dataset", "mnist", "--image-size", "16", "--batch-size", "16", "--hidden", "16",
                                  "--layers", "1"]}
SIZE = {script: int(flags[flags.index("--image-size") + 1]) for script, flags in IMAGES.items()}
BAD = {  # a value of each script's own flags that must be refused
    "minimal_gan": ["--dropout", "1"], "dcgan": ["--image-size", "48"], "cgan": ["--embed-dim", "0"],
    "lsgan": ["--coding", "1-0-1"], "wgan": ["--clip", "0"], "wgan_gp": ["--gp-lambda", "-1"],
    "began": ["--gamma", "0"], "progan": ["--batch-size", "32"], "sagan": ["--attn-res", "12", "--image-size", "32"],
    "stylegan_lite": ["--mixing-prob", "1.5"]}


@pytest.fixture(scope="module", params=SCRIPTS)
def tiny_run(request, mnist_dir, tmp_path_factory):
    """SCRIPT's tiny run in a process of its own, as a user runs it: 4 steps, grids and checkpoints every 2, an EMA
    of G, 5 exported PNGs."""
    script = request.param
    run = tmp_path_factory.mktemp(script) / "run"
    run_script(f"{script}.py", *IMAGES[script], "--data-dir", mnist_dir, "--steps", "4", "--log-every", "2",
               "--sample-every", "2", "--ckpt-every", "2", "--ema", "--export", "5", "--run-dir", run,
               env={"OMP_NUM_THREADS": "1"})
    return script, run


def test_a_tiny_run_writes_every_file(tiny_run):
    script, run = tiny_run
    rows = [r for r in metrics(run) if "d_loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(math.isfinite(r["d_loss"]) and math.isfinite(r["g_loss"]) for r in rows)
    assert (run / "samples" / "step_0000002.png").exists() and (run / "samples" / "step_0000004.png").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["script"] == script and config["image_size"] == SIZE[script] and config["ema"] is True
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4 and ckpt["script"] == script and ckpt["ema"] is not None
    assert not any(k.startswith("_orig_mod") for part in ("G", "D") for k in ckpt[part])
    assert load_pngs(run / "export").shape == (5, 1, SIZE[script], SIZE[script])


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in ("began", "progan", "stylegan_lite")])
def test_a_resumed_run_matches_an_uninterrupted_one(script, mnist_dir, tmp_path):
    """Three steps, --resume to six, against six straight. began (its lr schedule), progan (mid fade-in) and
    stylegan_lite (R1 steps) check more in their own files."""
    ca, cb = resumed_and_straight(f"{script}.py", [*IMAGES[script], "--data-dir", mnist_dir, "--ema"], tmp_path)
    assert_same_weights(ca, cb, ("G", "D", "ema"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_amp_bf16_computes_in_bf16(script, mnist_dir, tmp_path):
    """Every layer output is recorded: a run that only said bf16 (or autocast off) would show float32 alone."""
    dtypes = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: dtypes.add(output.dtype) if torch.is_tensor(output) else None)
    try:
        run_here(f"{script}.py", *IMAGES[script], "--data-dir", mnist_dir, "--steps", "2", "--log-every", "1",
                 "--amp", "bf16", "--sample-every", "0", "--run-dir", tmp_path / "r", threads=1)
    finally:
        hook.remove()
    assert torch.bfloat16 in dtypes, dtypes
    rows = [r for r in metrics(tmp_path / "r") if "d_loss" in r]
    assert rows and all(math.isfinite(r["d_loss"]) and math.isfinite(r["g_loss"]) for r in rows)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("bad", ["own", ["--steps", "-1"], ["--batch-size", "0"], ["--lr", "nan"]],
                         ids=["own", "steps", "batch", "lr"])
def test_bad_values_are_one_line_before_any_data_is_read(script, bad, tmp_path):
    bad = BAD[script] if bad == "own" else bad
    if bad[0] == "--lr" and script == "sagan":
        bad = ["--lr-d", "nan"]  # sagan has two rates, no --lr
    proc = run_in_process(f"{script}.py", *IMAGES[script], "--data-dir", tmp_path / "no_data", *bad,
                          "--run-dir", tmp_path / "r")
    assert_user_error(proc, bad[0])
    assert not (tmp_path / "no_data").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_every_flag(script):
    proc = run_in_process(f"{script}.py", "--help")
    assert proc.returncode == 0, proc.stderr
    for field in dataclasses.fields(importlib.import_module(script).Args):
        assert re.search(rf"--{field.name.replace('_', '-')}\b(?!-)", proc.stdout), field.name


@pytest.mark.slow
@pytest.mark.parametrize("script", ["dcgan", "cgan", "lsgan", "wgan", "began"])
def test_compiled_run_compiles_once_and_saves_plain_weights(script, mnist_dir, tmp_path):
    """No recompiles after the first steps, and a checkpoint that loads with or without --compile. minimal_gan,
    wgan_gp, progan and sagan check theirs in their own files (bf16 with it, the penalty, a phase change, spectral
    norm)."""
    run_compiled(f"{script}.py", *IMAGES[script], "--data-dir", mnist_dir, "--run-dir", tmp_path / "r")
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert not any(k.startswith("_orig_mod") for part in ("G", "D") for k in ckpt[part])
