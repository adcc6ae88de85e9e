"""Run directory, console and metrics logging, sample grids, wandb, atomic checkpoints.

A run directory holds config.json (all arguments), metrics.jsonl (one object per log step),
samples/step_XXXXXXX.png and checkpoint.pt. Checkpoints are written to a temporary file and
renamed, so a run killed while writing keeps its previous checkpoint.
"""
import dataclasses
import datetime
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from .cli import UserError


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile (`_orig_mod`) and DDP (`module`) wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(states: list, rank: int, world: int):
    """Each rank's saved RNG state; on a different number of processes, fresh streams (said once)."""
    if len(states) == world:
        set_rng_state(states[rank])
        return
    if rank == 0:
        print(f"note: the run was saved by {len(states)} process(es) and resumes on {world}: batches will differ "
              "from an uninterrupted run", file=sys.stderr)
    set_rng_state(states[0])
    torch.manual_seed(int(torch.randint(2**31, ())) + rank)


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states(world: int) -> list:
    """Every rank's RNG state (a list indexed by rank), so a resumed DDP run draws the same batches."""
    if world == 1:
        return [rng_state()]
    states = [None] * world
    torch.distributed.all_gather_object(states, rng_state())
    return states


def check_finite(losses: dict, step: int, scaler=None):
    """Raise before a non-finite state reaches a checkpoint, so the last good one is kept.

    Under fp16 a GradScaler skips any step whose gradients overflowed and halves its scale: the weights
    stay finite, and a non-finite loss on such a step is expected (the first steps at the initial scale
    often overflow). There the run has diverged only once the scale fell below 1, i.e. when even
    unscaled gradients overflow.
    """
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            if scaler is not None and scaler.is_enabled() and scaler.get_scale() >= 1.0:
                continue
            raise UserError(f"{name} is {value.item()} at step {step} (losses are checked every --log-every steps "
                            "and before each checkpoint): the run diverged; the last good checkpoint is kept")


def save_checkpoint(path: Path, state: dict):
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, permissions: keep the previous checkpoint, say why
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write the checkpoint {path} ({e.strerror or e}); the previous one is kept") from None


def load_checkpoint(run_dir: str, script: str) -> dict:
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        raise UserError(f"--resume {run_dir}: no checkpoint.pt there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"--resume {run_dir}: checkpoint.pt cannot be read ({e})") from None
    if state.get("script") != script:
        raise UserError(f"--resume {run_dir}: that run was made by {state.get('script')}, not {script}")
    return state


class StopSignal:
    """Remembers SIGTERM/SIGINT so the loop can checkpoint and exit at the end of its step."""

    def __init__(self):
        self.received, self.checks = None, 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(f"\n{self.received} received: saving a checkpoint at the end of this step", file=sys.stderr, flush=True)


def stop_requested(stop: StopSignal, world: int, device, every: int = 10) -> bool:
    """True once SIGTERM/SIGINT arrived. Under DDP, true on every rank once any rank got one, so all ranks
    stop after the same step: they agree by an all-reduce every `every` calls, since reading its result is
    a host sync that would stall the GPU queue if done every step."""
    if world == 1:
        return stop.received is not None
    stop.checks += 1
    if stop.checks % every:
        return False
    flag = torch.tensor([int(stop.received is not None)], device=device)
    torch.distributed.all_reduce(flag)
    return bool(flag.item())


class Run:
    """Writes the run directory and the logs. On ranks other than 0 every method does nothing."""

    def __init__(self, args, script: str, run_dir: str, resumed: bool, main_process: bool = True):
        self.args, self.script, self.main = args, script, main_process
        self.dir = Path(run_dir)
        self.start_time, self.wandb = time.time(), None
        self.last_time, self.last_step = None, None
        if not self.main:
            return
        try:
            (self.dir / "samples").mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to the run directory {self.dir} ({e.strerror or e})") from None
        config = dataclasses.asdict(args)
        (self.dir / "config.json").write_text(json.dumps({"script": script, **config}, indent=2) + "\n")
        if args.track:
            import wandb  # imported only when tracking is on
            self.wandb = wandb.init(project=args.wandb_project, entity=args.wandb_entity, config=config,
                                    name=self.dir.name, dir=str(self.dir), resume="allow",
                                    id=f"{script}-{self.dir.resolve().name}")

    def log(self, step: int, total: int, metrics: dict, images_per_step: int):
        """Print a console line and append to metrics.jsonl. Tensors are read here, at log steps only."""
        if not self.main:
            return
        now = time.time()
        values = {k: (v.item() if torch.is_tensor(v) else v) for k, v in metrics.items()}
        if self.last_time is not None and step > self.last_step:
            values["img_per_s"] = (step - self.last_step) * images_per_step / (now - self.last_time)
        self.last_time, self.last_step = now, step
        elapsed = now - self.start_time
        values["elapsed_s"] = elapsed
        self.write_metrics(step, values)
        rate = values.get("img_per_s")
        eta = (total - step) * images_per_step / rate if rate else float("nan")
        losses = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k not in ("img_per_s", "elapsed_s"))
        speed = f"{rate:,.0f} img/s" if rate else "- img/s"
        print(f"step {step}/{total} | {losses} | {speed} | elapsed {_clock(elapsed)} | eta {_clock(eta)}", flush=True)

    def write_metrics(self, step: int, values: dict):
        if not self.main:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def save_image(self, image: torch.Tensor, name: str):
        """Save a (C, H, W) image in [0, 1] under the run dir; also to wandb when tracking."""
        if not self.main:
            return
        from torchvision.utils import save_image
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(image, path)
        if self.wandb is not None:
            import wandb
            self.wandb.log({name.split("/")[0]: wandb.Image(str(path))}, step=self.last_step)
        return path

    def save_grid(self, step: int, images: torch.Tensor, nrow: int = 8):
        """A grid of generated images in [-1, 1] as samples/step_XXXXXXX.png."""
        from torchvision.utils import make_grid
        grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1))
        return self.save_image(grid, f"samples/step_{step:07d}.png")

    def save_checkpoint(self, state: dict):
        if self.main:
            save_checkpoint(self.dir / "checkpoint.pt", {"script": self.script, **state})

    def close(self):
        if self.wandb is not None:
            self.wandb.finish()


def export_images(images_fn, n: int, out_dir: Path, batch_size: int, names=None):
    """Write n generated images as PNG files (uint8, as FID tools read them). images_fn(k) -> (k, C, H, W) in [-1, 1]."""
    from PIL import Image
    out_dir.mkdir(parents=True, exist_ok=True)
    done = 0
    while done < n:
        k = min(batch_size, n - done)
        for i, img in enumerate(quantize(images_fn(k)).cpu()):
            name = names[done + i] if names else f"{done + i:06d}.png"
            array = img.permute(1, 2, 0).numpy()
            Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(out_dir / name)
        done += k
    print(f"exported {n} images to {out_dir}")


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 exactly as saving to PNG does (save_image: x*255+0.5, clamp, truncate)."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    return x.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    return str(datetime.timedelta(seconds=int(seconds)))
