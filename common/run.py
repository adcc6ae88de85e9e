"""The run: everything a training script does besides its method.

A script hands its state to a `Run` and keeps the loop:

    run = Run.start("dcgan", Args, "paper title")  # flags, --resume, device, precision, DDP, seed
    data = run.load_data(args.image_size)
    G, D, opt_g, opt_d, ema, z_fixed = ...         # the method, in the script
    # the checkpoint's state: loaded on --resume;
    # else a new run (RUN_DIR locked, config.json, wandb)
    run.restore_or_start(G=G, D=D, ema=ema, opt_g=opt_g, opt_d=opt_d, z_fixed=z_fixed)
    run.set_samplers(sample=lambda k: ..., grid=lambda: ...)
    G_train, D_train = run.wrap(G), run.wrap(D)    # DDP and torch.compile
    for step in run.steps():                       # step: G updates made before this one
        losses = train_step(...)
        run.after_step(losses)                     # logs, grids, FID, checkpoints, stop signals
    run.finish()                                   # --export

A training step needs only common/step.py: `autocast_to(device_type, amp_dtype)`, and
`with frozen(D_train):`, which runs D for G's loss without computing (or all-reducing) D's weight
gradients.

A run directory holds config.json (all arguments), metrics.jsonl (one object per log step),
samples/step_XXXXXXX.png and checkpoint.pt. Checkpoints are written to a temporary file and
renamed, so a run killed while writing keeps its previous checkpoint. A resumed run restores
every tracked object, the step and each rank's RNG state, and continues bit for bit.
"""
import atexit
import contextlib
import dataclasses
import datetime
import importlib.util
import inspect
import json
import math
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import data as datasets
from .cli import (RESUMABLE, UserError, init_distributed, merge_resumed, parse_args, resolve_amp,
                  resolve_compile, user_errors)
from .fid import FID, load_network, quantize

DDP = nn.parallel.DistributedDataParallel
DDP_HAS_FORWARD_SYNC = "forward_sync_buffers" in inspect.signature(DDP).parameters  # torch >= 2.13


# ---------------------------------------------------------------------------------------------
# RNG state, per rank

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states(world: int) -> list:
    """Every rank's RNG state (a list indexed by rank), so a resumed DDP run draws the same
    batches."""
    if world == 1:
        return [rng_state()]
    states = [None] * world
    torch.distributed.all_gather_object(states, rng_state())
    return states


def restore_rng(states: list, rank: int, world: int):
    """Each rank's saved RNG state; on a different number of processes, fresh streams (said
    once)."""
    if len(states) == world:
        set_rng_state(states[rank])
        return
    if rank == 0:
        print(f"note: the run was saved by {len(states)} process(es) and resumes on {world}: "
              "batches will differ from an uninterrupted run", file=sys.stderr)
    set_rng_state(states[0])
    torch.manual_seed(int(torch.randint(2**31, ())) + rank)


# ---------------------------------------------------------------------------------------------
# Divergence, checkpoints, stop signals

def check_finite(losses: dict, step: int, scaler=None, kept: bool = True):
    """Raise before a non-finite state reaches a checkpoint, so the last good one is kept.

    Under fp16 a GradScaler skips any step whose gradients overflowed and halves its scale: the
    weights stay finite, and a non-finite loss on such a step is expected (the first steps at the
    initial scale often overflow). There the run has diverged only once the scale fell below 1, i.e.
    when even unscaled gradients overflow.
    """
    for name, value in losses.items():
        if torch.is_tensor(value) and not torch.isfinite(value).all():
            if scaler is not None and scaler.is_enabled() and scaler.get_scale() >= 1.0:
                continue
            raise UserError(f"{name} is {value.item()} at step {step} (losses are checked every "
                            f"--log-every steps and before each checkpoint): the run diverged; "
                            f"{_kept(kept)}")


def _kept(kept: bool) -> str:
    return "the last good checkpoint is kept" if kept else "no checkpoint was written"


def check_state_finite(state: dict, step: int, kept: bool):
    """Raise before non-finite weights or optimizer state reach a checkpoint (finite losses do not
    prove finite weights: an update can overflow them). One host sync, at checkpoint steps only."""
    tensors = []

    def collect(x):
        if torch.is_tensor(x):
            if x.is_floating_point():
                tensors.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                collect(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                collect(v)
    collect(state)
    if tensors and not torch.stack([t.detach().isfinite().all().to(tensors[0].device)
                                    for t in tensors]).all():
        raise UserError(f"the weights or optimizer state are not finite after step {step}: "
                        f"the run diverged; {_kept(kept)}")


def save_checkpoint(path: Path, state: dict):
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    # disk full (torch's writer raises RuntimeError), permissions
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        why = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
        kept = "the previous one is kept" if path.exists() else "no checkpoint was written"
        raise UserError(f"could not write the checkpoint {path} ({why}); {kept}") from None


def load_checkpoint(run_dir: str, script: str) -> dict:
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        raise UserError(f"--resume {run_dir}: no checkpoint.pt there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"--resume {run_dir}: checkpoint.pt cannot be read ({e})") from None
    if not isinstance(state, dict) or "script" not in state or "step" not in state:
        what = (f"a {type(state).__name__}" if not isinstance(state, dict) else
                f"a dict of {len(state)} entries without a run's script and step "
                "(a bare state dict?)")
        raise UserError(f"--resume {run_dir}: checkpoint.pt holds {what}, "
                        "not a checkpoint written by a run of ours")
    if state.get("script") != script:
        raise UserError(f"--resume {run_dir}: that run was made by {state.get('script')}, "
                        f"not {script}")
    return state


def lock_run_dir(folder: Path):
    """Take RUN_DIR/run.lock for the life of the process, so that two runs cannot write one
    directory. The lock records our PID, host and process start time: a lock whose process is gone,
    or whose PID now belongs to a process started later, is stale and taken over; one from another
    host is refused, naming the file."""
    lock = folder / "run.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid, host, start = (lock.read_text().split() + ["", ""])[:3]
                    pid = int(pid)
                except (OSError, ValueError):
                    pid, host, start = 0, "", ""
                if host and host != socket.gethostname():
                    raise UserError(f"run directory {folder} is locked by PID {pid} on host "
                                    f"{host}; if that run has ended, delete {lock}") from None
                if (pid and pid != os.getpid() and _alive(pid)
                        and (not start or _started(pid) in (None, start))):
                    raise UserError(f"run directory {folder} in use by PID {pid}; "
                                    f"if that run has ended, delete {lock}") from None
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            os.write(fd, (f"{os.getpid()} {socket.gethostname()} "
                          f"{_started(os.getpid()) or ''}\n").encode())
            os.close(fd)
            atexit.register(lock.unlink, missing_ok=True)
            return
    except OSError as e:
        raise UserError(f"cannot write to the run directory {folder} ({e.strerror or e})") from None


def _started(pid: int):
    """When process PID started (clock ticks after boot, from Linux's /proc), to tell it from a
    later process that was given the same PID; None where /proc is absent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holds_a_run(run_dir) -> str:
    return (f"{run_dir} holds a run: continue it with --resume {run_dir}, "
            "or choose another --run-dir (--overwrite replaces it)")


def _stamp(path: Path):
    """What tells one version of a file from the next: (modification time in ns, size), None when
    absent."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopNow(Exception):
    """A signal after the last step (the run is saved): the export or final scoring stops at
    once."""


class StopSignal:
    """Remembers SIGTERM/SIGINT so the loop can checkpoint and exit at the end of its step; after
    the last step (`at_once`, set by Run.finish) a signal stops the export at once."""

    def __init__(self):
        self.received, self.checks, self.at_once = None, 0, False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.at_once:
            self.received = self.received or signal.Signals(signum).name
            raise StopNow
        if self.received is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(f"\n{self.received} received: saving a checkpoint at the end of this step",
              file=sys.stderr, flush=True)


def stop_requested(stop: StopSignal, world: int, device, every: int = 10) -> bool:
    """True once SIGTERM/SIGINT arrived. Under DDP, true on every rank once any rank got one, so all
    ranks stop after the same step: they agree by an all-reduce every `every` calls, since reading
    its result is a host sync that would stall the GPU queue if done every step."""
    if world == 1:
        return stop.received is not None
    stop.checks += 1
    if stop.checks % every:
        return False
    flag = torch.tensor([int(stop.received is not None)], device=device)
    torch.distributed.all_reduce(flag)
    return bool(flag.item())


# ---------------------------------------------------------------------------------------------
# The run directory: config, console and metrics lines, images, wandb

class Logger:
    """Writes the run directory and the logs. On ranks other than 0 every method does nothing."""

    def __init__(self, args, script: str, run_dir: str, main_process: bool = True,
                 write_config: bool = True, run_id: str = None):
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
            raise UserError(f"cannot write to the run directory {self.dir} "
                            f"({e.strerror or e})") from None
        config = dataclasses.asdict(args)
        if write_config:
            (self.dir / "config.json").write_text(json.dumps({"script": script, **config}, indent=2)
                                                  + "\n")
        if args.track:
            import wandb  # imported only when tracking is on
            # run_id: this run's own (kept in its checkpoint),
            # so two folders named seed0 never share one
            try:
                self.wandb = wandb.init(project=args.wandb_project, entity=args.wandb_entity,
                                        config=config, name=self.dir.name, dir=str(self.dir),
                                        resume="allow", id=run_id)
            # no API key, no network: wandb's own exception types vary between versions
            except Exception as e:
                why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise UserError(f"--track: wandb did not start ({why}); log in with `wandb login`, "
                                "or log offline with WANDB_MODE=offline") from None

    def log(self, step: int, total: int, metrics: dict, images_per_step: int):
        """Print a console line and append to metrics.jsonl. Tensors are read here, at log steps
        only."""
        if not self.main:
            return
        # waits for the device
        values = {k: (v.item() if torch.is_tensor(v) else v) for k, v in metrics.items()}
        now = time.time()  # after that wait, so img/s counts the work queued up to this step
        if self.last_time is not None and step > self.last_step:
            values["img_per_s"] = (step - self.last_step) * images_per_step / (now - self.last_time)
        self.last_time, self.last_step = now, step
        elapsed = now - self.start_time
        values["elapsed_s"] = elapsed
        self.write_metrics(step, values)
        rate = values.get("img_per_s")
        eta = (total - step) * images_per_step / rate if rate else float("nan")
        losses = " ".join(f"{k} {v:.4g}" for k, v in values.items()
                          if k not in ("img_per_s", "elapsed_s"))
        speed = f"{rate:,.0f} img/s" if rate else "- img/s"
        print(f"step {step}/{total} | {losses} | {speed} | elapsed {_clock(elapsed)} | "
              f"eta {_clock(eta)}", flush=True)

    def write_metrics(self, step: int, values: dict):
        if not self.main:
            return
        with _stop_on_write_error(self.dir / "metrics.jsonl", self.dir):
            with open(self.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def save_image(self, image: torch.Tensor, name: str):
        """Save a (C, H, W) image in [0, 1] under the run dir; also to wandb when tracking."""
        if not self.main:
            return
        path = self.dir / name
        with _stop_on_write_error(path, self.dir):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_png(image, path)
        if self.wandb is not None:
            import wandb
            self.wandb.log({name.split("/")[0]: wandb.Image(str(path))}, step=self.last_step)
        return path

    def close(self):
        if self.wandb is not None:
            self.wandb.finish()


# as BigGAN; 64 scored the same on our digits, 4 worse (benchmarks/RESULTS.md)
STANDING_BATCHES = 16


@torch.no_grad()
def standing_statistics(model: nn.Module, sample, batches: int, batch_size: int):
    """Set model's BatchNorm running statistics to the average of its own batch statistics over
    `batches` calls of sample(batch_size), which runs it in eval mode: each BatchNorm normalises
    with its input batch's mean and variance, as in training, and keeps their mean (BigGAN's
    "standing statistics", Brock et al. 2019, arXiv:1809.11096). For an EMA of G, whose copied
    running statistics belong to G's weights, not its own."""
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    sums = {m: [0.0, 0.0] for m in norms}

    # eval mode normalises with the running buffers: make them the batch's
    def use_batch_statistics(norm, inputs):
        x = inputs[0].float()
        dims = [d for d in range(x.ndim) if d != 1]
        mean, var = x.mean(dims), x.var(dims, correction=0)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        n = x.numel() // x.shape[1]
        sums[norm][0] += mean
        # running_var holds the unbiased variance, as training keeps it
        sums[norm][1] += var * n / (n - 1)

    hooks = [m.register_forward_pre_hook(use_batch_statistics) for m in norms]
    try:
        for _ in range(batches):
            sample(batch_size)
    finally:
        for hook in hooks:
            hook.remove()
    for m in norms:
        m.running_mean.copy_(sums[m][0] / batches)
        m.running_var.copy_(sums[m][1] / batches)


def image_grid(images: torch.Tensor, per_row: int) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> one RGB picture in [0, 1], `per_row` images a row with 2-pixel
    black borders: torchvision's make_grid(normalize=True, value_range=(-1, 1)), pixel for pixel,
    without importing torchvision (two seconds at every start)."""
    n, _, h, w = images.shape
    if n == 1:  # as make_grid: one image, no border
        return ((images[0].clamp(-1, 1) + 1) / 2).expand(3, -1, -1)
    cols = min(per_row, n)
    grid = images.new_zeros(3, math.ceil(n / cols) * (h + 2) + 2, cols * (w + 2) + 2)
    for i, image in enumerate((images.clamp(-1, 1) + 1) / 2):
        top, left = 2 + (i // cols) * (h + 2), 2 + (i % cols) * (w + 2)
        grid[:, top:top + h, left:left + w] = image  # one channel is copied to all three
    return grid


@contextlib.contextmanager
def _stop_on_write_error(path: Path, run_dir: Path):
    """A full disk (or a permission) while the run writes PATH: one line, and the run stops; its
    last checkpoint is intact (written to a temporary file and renamed) and --resume continues from
    it."""
    try:
        yield
    except OSError as e:
        then = (f"--resume {run_dir} continues from its last checkpoint"
                if (run_dir / "checkpoint.pt").exists() else
                "start it again with --overwrite (it saved no checkpoint yet)")
        raise UserError(f"could not write {path} ({e.strerror or e}); the run stops here: "
                        f"once that is fixed, {then}") from None


def write_png(image: torch.Tensor, path: Path):
    """A (C, H, W) picture in [0, 1] as an RGB PNG, rounded as torchvision's save_image rounds
    (x*255+0.5, truncated). Written to a temporary file and renamed: a PNG is either whole or
    absent."""
    from PIL import Image
    rgb = (image.detach().float().cpu().expand(3, -1, -1) if image.shape[0] == 1
           else image.detach().float().cpu())
    _save_atomically(Image.fromarray(rgb.mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0)
                                     .to(torch.uint8).numpy()), path)


def _save_atomically(picture, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    try:
        picture.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_images(images_fn, n: int, out_dir: Path, batch_size: int, name=None, classes=None):
    """Write n generated images as PNG files (uint8, as FID tools read them), a batch at a time
    (memory stays flat for any n). images_fn(k) -> the next (k, C, H, W) in [-1, 1]; name(i) ->
    image i's file name; classes: the class names that the names' indices stand for, written beside
    the folder (OUT_DIR_classes.json)."""
    from PIL import Image
    out_dir.mkdir(parents=True, exist_ok=True)
    if classes is not None:
        with _stop_on_write_error(out_dir.with_name(f"{out_dir.name}_classes.json"),
                                  out_dir.parent):
            out_dir.with_name(f"{out_dir.name}_classes.json").write_text(
                json.dumps(list(classes)) + "\n")
    done = 0
    while done < n:
        k = min(batch_size, n - done)
        for i, img in enumerate(quantize(images_fn(k)).cpu()):
            path = out_dir / (name(done + i) if name else f"{done + i:06d}.png")
            array = img.permute(1, 2, 0).numpy()
            with _stop_on_write_error(path, out_dir.parent):
                _save_atomically(Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array),
                                 path)
        done += k
    print(f"exported {n} images to {out_dir}")


def export_points(points_fn, n: int, path: Path, chunk: int = 65536):
    """Write n generated 2-D points as one (n, 2) float32 .npy, filled a chunk at a time (memory
    stays flat), to a temporary file renamed at the end."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with _stop_on_write_error(path, path.parent):
            points = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, 2))
            for start in range(0, n, chunk):
                points[start:start + chunk] = points_fn(min(chunk, n - start)).float().cpu().numpy()
            points.flush()
            del points
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"exported {n} points to {path}")


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    return str(datetime.timedelta(seconds=int(seconds)))


# ---------------------------------------------------------------------------------------------
# The run

class Run:
    """A training run's state and chores. See the module docstring for the calls a script makes."""

    @classmethod
    def start(cls, script: str, args_cls, title: str, argv=None, total_steps=None, note=None):
        """Parse the flags (merged with the saved ones under --resume), pick the device and
        precision, join the process group under torchrun, and seed: every rank builds identical
        initial weights. total_steps(args, world) -> the steps to train (default: --steps);
        note(args, world) -> words added to the line that starts training (a script's derived
        hyperparameters)."""
        args, given = parse_args(args_cls, title, argv)
        with user_errors():
            state = None
            if args.resume:
                stamp = _stamp(Path(args.resume) / "checkpoint.pt")
                state = load_checkpoint(args.resume, script)
                state["stamp"] = stamp  # checked again under the run's lock (Run._prepare_dir)
                args = merge_resumed(args, given, state["args"])
            args.run_dir = args.run_dir or f"runs/{script}"
            if args.track and importlib.util.find_spec("wandb") is None:
                raise UserError("--track needs wandb: pip install wandb (or drop --track)")
            if (not args.resume and (Path(args.run_dir) / "checkpoint.pt").exists()
                    and not args.overwrite):
                raise UserError(_holds_a_run(args.run_dir))
            device, rank, world = init_distributed(args.device)
        run = cls(script, args, state, device, rank, world)
        with user_errors():
            run.total_steps = total_steps(args, world) if total_steps else args.steps
            run.note = note(args, world) if note else ""
        return run

    def __init__(self, script, args, state, device, rank, world):
        self.script, self.args, self.saved = script, args, state
        self.device, self.rank, self.world, self.main = device, rank, world, rank == 0
        self.amp_dtype = resolve_amp(args.amp, device)
        self.compile = resolve_compile(args.compile, device)
        # fp16 needs loss scaling; bf16 and float32 do not (the scaler is then a no-op).
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.step, self.total_steps = 0, args.steps
        self.data, self.classes, self.tracked, self.log = None, None, {}, None
        self.sample, self.grid, self.grid_rows, self.fid, self.stop = None, None, 8, None, None
        self.own_bn, self.own_bn_step = None, None
        self.note = ""  # added to the line that starts training
        self.fid_net, self.fid_off, self.saved_once = None, False, state is not None
        if device.type == "cuda":
            # fixed shapes: let cuDNN pick the fastest convolutions once
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(args.seed)

    def load_data(self, image_size: int, need_labels: bool = False, toy: bool = False,
                  **toy_data):
        """The dataset on the device (this rank's share under DDP). Flips default on, off for
        digits. toy_data: ToyData's scale and points (its seed is --seed)."""
        args = self.args
        # need_labels: data.load says why
        if args.dataset in datasets.TOY_DATASETS and not (toy or need_labels):
            raise UserError(f"{self.script}.py trains on images; "
                            "for ring8 / grid25 use minimal_gan.py")
        flip = (args.flip if args.flip is not None
                else args.dataset not in ("mnist", "fashion_mnist"))
        self.data = datasets.load(args.dataset, args.data_dir, image_size, self.device, flip=flip,
                                  need_labels=need_labels, rank=self.rank, world=self.world,
                                  **({**toy_data, "seed": args.seed} if toy_data else {}))
        # a conditional model is built for these
        self.classes = list(self.data.classes) if need_labels else None
        return self.data

    def restore_or_start(self, **state):
        """Name the state a checkpoint holds: modules, optimizers, schedulers (anything with a
        state_dict) and tensors (restored in place); None for an absent part (EMA off). Then, in
        this order: under --resume restore them, the step and each rank's RNG (else seed each rank's
        own stream of batches and z); lock RUN_DIR and check it again (an earlier run's files are
        removed only with --overwrite); write config.json; start wandb with --track; load the FID
        weights when FID is on, so that a missing file stops the run now."""
        self.tracked = {"scaler": self.scaler, **state}
        torch.manual_seed(self.args.seed + 1 + self.rank)
        self.resumed_stamp = self.saved.get("stamp") if self.saved is not None else None
        self.saved_args = self.saved["args"] if self.saved is not None else None
        # The run's own id (wandb's too): new for a new run, the saved one for a resumed run
        self.run_id = (self.saved or {}).get("run_id") or f"{self.script}-{uuid.uuid4().hex[:12]}"
        if self.saved is not None:
            before = self.saved.get("classes")
            if self.classes is not None and before is not None and before != self.classes:
                new, gone = (sorted(set(self.classes) - set(before)),
                             sorted(set(before) - set(self.classes)))
                raise UserError(f"--resume {self.args.resume}: the dataset's classes changed "
                                f"since the checkpoint ({len(before)} then, {len(self.classes)} now"
                                + (f"; new: {', '.join(new)}" if new else "")
                                + (f"; gone: {', '.join(gone)}" if gone else "")
                                + "); the model is built for its classes: "
                                "restore them, or start a new run")
            missing = [name for name in self.tracked if name not in self.saved]
            if missing:
                raise UserError(f"--resume {self.args.resume}: the checkpoint has no "
                                f"{', '.join(missing)} "
                                "(written by an older version of this script?); start a new run")
            for name, obj in self.tracked.items():
                if obj is None:
                    continue
                if torch.is_tensor(obj):
                    obj.copy_(self.saved[name])
                else:
                    obj.load_state_dict(self.saved[name])
            self.step = self.saved["step"]
            restore_rng(self.saved["rng"], self.rank, self.world)
            self.saved = None  # free the host copy of the weights
        folder, nothing_to_do = Path(self.args.run_dir), self.step >= self.total_steps
        if self.main:
            lock_run_dir(folder)
            self._prepare_dir(folder)
        self.log = Logger(self.args, self.script, self.args.run_dir, main_process=self.main,
                          write_config=not (self.args.resume and nothing_to_do), run_id=self.run_id)
        if self._use_fid():  # check the FID weights now, not after hours of training
            # the reference is the whole dataset (about: shards may differ by one)
            images = len(self.data) * self.world
            if min(self.args.fid_samples, images) < 2:  # a covariance needs two
                why = (f"FID needs at least two images a side: "
                       f"--fid-samples {self.args.fid_samples}, a dataset of about {images}; "
                       f"raise them, or --fid off")
                if self.args.fid == "on":
                    raise UserError(why)
                print(f"FID is off: {why}", file=sys.stderr)  # --fid auto: go on without it
                self.fid_off = True
                return
            try:
                self.fid_net = load_network(self.args.fid_weights, self.device)
            except UserError as e:
                if self.args.fid_weights:
                    raise
                print(f"FID is off: {e}", file=sys.stderr)
                self.fid_off = True

    def _prepare_dir(self, folder: Path):
        """Under the run's lock, before anything is removed, check again what Run.start checked:
        another run may have finished in this folder (or resumed it) while this one loaded its data.
        A resumed run drops the metrics logged after its checkpoint (a killed run logged past it). A
        new run refuses a folder with an earlier run's files unless --overwrite, which removes those
        files only (checkpoint, metrics, sample grids, exported images), never anything else a user
        keeps there."""
        metrics, checkpoint = folder / "metrics.jsonl", folder / "checkpoint.pt"
        if self.args.resume:
            if _stamp(checkpoint) != self.resumed_stamp:
                raise UserError(f"--resume {folder}: its checkpoint.pt changed after this run "
                                "read it (another run wrote it meanwhile); "
                                "--resume again to continue from the new one")
            try:
                written = json.loads((folder / "config.json").read_text())
            except (OSError, ValueError):
                written = None
            edited = sorted(k for k, v in self.saved_args.items()
                            if isinstance(written, dict) and k in written and written[k] != v
                            and k not in RESUMABLE)
            # config.json is a record of the run, not an input: say so rather than ignore an edit
            if edited:
                print(f"warning: {folder / 'config.json'} differs from the checkpoint in "
                      f"{', '.join(edited)}: a resumed run keeps its checkpoint's settings "
                      "(config.json is written again from them); "
                      "change those by starting a new run", file=sys.stderr)
            if metrics.exists():
                kept, broken = [], 0
                for line in metrics.read_text(errors="replace").splitlines(keepends=True):
                    try:
                        step = json.loads(line)["step"]
                    # cut short by a kill during its write
                    except (json.JSONDecodeError, TypeError, KeyError):
                        broken += 1
                        continue
                    if step <= self.step:
                        kept.append(line if line.endswith("\n") else line + "\n")
                if broken:
                    print(f"{metrics}: dropped {broken} broken line(s) (a write cut short); "
                          "resuming", file=sys.stderr)
                metrics.write_text("".join(kept))
            return
        if checkpoint.exists() and not self.args.overwrite:
            raise UserError(_holds_a_run(folder))
        samples, exported = (sorted(folder.glob("samples/step_*.png")),
                             sorted(folder.glob("export/*.png")))
        ours = [p for p in (checkpoint, metrics, folder / "export.npy", *samples, *exported)
                if p.is_file()]
        if ours and not self.args.overwrite:
            found = [name for name, n in (("metrics.jsonl", metrics.is_file()),
                                          (f"{len(samples)} sample grids", len(samples)),
                                          (f"{len(exported)} exported images", len(exported)),
                                          ("export.npy", (folder / "export.npy").is_file()))
                     if n]
            raise UserError(f"{folder} holds an earlier run's files without a checkpoint "
                            f"({', '.join(found)}; a run stopped before its first checkpoint?): "
                            "--overwrite removes them, or choose another --run-dir")
        for old in ours:
            old.unlink()

    def set_samplers(self, sample, grid, grid_rows: int = 8, own_bn=None):
        """sample(k) -> k random images in [-1, 1], for FID and --export; grid() -> the fixed-z
        images of the sample grids (4-D, shown `grid_rows` per row) or one ready picture (3-D, in
        [0, 1]). own_bn: the module they sample with (an EMA of G) when its BatchNorm statistics
        must be its own: recomputed before each grid, FID and export with standing_statistics."""
        self.sample, self.grid, self.grid_rows, self.own_bn = sample, grid, grid_rows, own_bn

    def wrap(self, module: nn.Module, in_use=None, **ddp_options) -> nn.Module:
        """The module to train with: DDP under torchrun, then torch.compile when on. Checkpoints and
        sampling use the plain module, so a checkpoint loads with or without either. in_use: the
        submodules DDP synchronises (default: all), so that layers a phase does not run need no
        search for unused ones."""
        module = self.ddp(module, in_use, **ddp_options)
        # fixed shapes: no symbolic batch
        return torch.compile(module, dynamic=False) if self.compile else module

    def ddp(self, module: nn.Module, in_use=None, **ddp_options) -> nn.Module:
        """DDP under torchrun (gradients all-reduced in backward), else the module itself."""
        if self.world == 1:
            return module
        kept = {id(p) for m in (in_use if in_use is not None else [module]) for p in m.parameters()}
        DDP._set_params_and_buffers_to_ignore_for_model(
            module, [n for n, p in module.named_parameters() if id(p) not in kept])
        # its name before torch 2.13
        if "forward_sync_buffers" in ddp_options and not DDP_HAS_FORWARD_SYNC:
            ddp_options["broadcast_buffers"] = ddp_options.pop("forward_sync_buffers")
        return DDP(module, **ddp_options)

    def steps(self):
        """The training loop: `for step in run.steps():` yields, for each step to train, the number
        of G updates made before it (0 for a new run's first, the checkpoint's step after --resume),
        as the official codes count iterations; run.after_step(...) ends each one."""
        while self.next_step():
            yield self.step

    def next_step(self) -> bool:
        """True while there are steps to train; the first call prints what the run will do."""
        if self.stop is None:
            self.stop = StopSignal()
            if self.step < self.total_steps and self.main:
                shape = tuple(self.data.shape) if self.data is not None else ""
                print(f"{self.script}: {self.args.dataset} {shape} on {self.device}, "
                      f"amp {self.amp_dtype}, compile {self.compile}, "
                      f"from step {self.step} to {self.total_steps}{self.note}", flush=True)
            elif self.main:
                print(f"nothing to train: the run is at step {self.step} of {self.total_steps}",
                      flush=True)
        return self.step < self.total_steps

    def after_step(self, metrics: dict, images_per_step: int = None, log_extra=None):
        """Count the step, then do what falls due: log (metrics, and log_extra() if given), sample
        grid, FID, checkpoint, and stop on SIGTERM/SIGINT after saving."""
        args = self.args
        self.step += 1
        step, last = self.step, self.step == self.total_steps
        stopping = stop_requested(self.stop, self.world, self.device)
        due = lambda every: (every and step % every == 0) or last
        if step % args.log_every == 0 or last or stopping:
            check_finite(metrics, step, self.scaler, kept=self.saved_once)
            extra = log_extra() if log_extra is not None else {}
            self.log.log(step, self.total_steps, {**metrics, **extra},
                         images_per_step or args.batch_size * self.world)
        # before sampling and FID: whatever they do, the step is saved
        if due(args.ckpt_every) or stopping:
            check_finite(metrics, step, self.scaler, kept=self.saved_once)
            self.checkpoint()
        grid, fid = due(args.sample_every), self._use_fid() and due(args.fid_every)
        # sampling draws z and noise from a forked RNG:
        # the training stream (and a resume) ignores it
        if grid or fid:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                if grid:
                    self._save_grid()
                if fid:
                    self._score_fid()
        if stopping:
            if self.main:
                print(f"stopped by {self.stop.received or 'another rank'} at step {step}; "
                      f"continue with --resume {args.run_dir}")
            self._leave_group()
            # every rank ends with status 0,
            # so torchrun sees a clean exit when the ranks were signalled
            sys.exit(0)

    def checkpoint(self):
        """Every rank takes part (the RNG states are gathered); rank 0 writes."""
        state = {name: (obj if torch.is_tensor(obj) or obj is None else obj.state_dict())
                 for name, obj in self.tracked.items()}
        # Models and optimizers; a method's logged values (a skipped fp16 step's R1, say)
        # may be inf there.
        learned = {k: v for k, v in state.items()
                   if k != "scaler" and not torch.is_tensor(self.tracked[k])}
        check_state_finite(learned, self.step, kept=self.saved_once)
        rngs = all_rng_states(self.world)
        if self.main:
            save_checkpoint(self.log.dir / "checkpoint.pt",
                            {"script": self.script, "step": self.step, "run_id": self.run_id,
                             "classes": self.classes, "args": dataclasses.asdict(self.args),
                             "rng": rngs, **state})
        self.saved_once = True

    def finish(self, export=None):
        """After the last step: write --export N samples as PNGs (2-D data: export.npy);
        export(n, folder), if given, writes them instead."""
        args, out = self.args, Path(self.args.run_dir) / "export"
        if self.stop is not None:
            # the run is saved: a signal from here on stops the export at once
            self.stop.at_once = True
        try:
            # it came during the last step's sampling or FID
            if self.stop is not None and self.stop.received:
                raise StopNow
            if args.export and self.main:
                self._own_bn_statistics()
                earlier = sorted(out.glob("*.png"))
                if earlier:  # a resumed run's export replaces the one its earlier part wrote
                    print(f"replacing the {len(earlier)} images exported earlier in {out}")
                    for path in earlier:
                        path.unlink()
                if export is not None:
                    export(args.export, out)
                elif self.data is not None and self.data.is_2d:  # 2-D points: one (N, 2) array
                    export_points(self.sample, args.export, out.with_suffix(".npy"))
                else:
                    export_images(self.sample, args.export, out, args.batch_size)
        except StopNow:
            done = len(list(out.glob("*.png"))) if args.export else 0
            raise UserError(f"stopped by {self.stop.received} after the last step" + (
                f", with {done} of the {args.export} images exported to {out}"
                if args.export else "") + "; the run is saved: "
                f"--resume {args.run_dir}{f' --export {args.export}' if args.export else ''} "
                "finishes it") from None
        self.log.close()
        self._leave_group()

    def _leave_group(self):
        """Under DDP, at a normal end or a stop: wait for every rank, then shut the process group
        down, so that no rank tears its connections down while rank 0 still saves or exports (CI saw
        a rank abort in gloo's teardown)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier(device_ids=[self.device.index] if self.device.type == "cuda"
                                      else None)
            torch.distributed.destroy_process_group()

    def _own_bn_statistics(self):
        """The sampled module's BatchNorm statistics from its own samples, once per step, from a
        seeded forked RNG: the same weights give the same statistics, and the training stream (and a
        resume) never sees them."""
        if self.own_bn is None or self.own_bn_step == self.step:
            return
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.args.seed)
            standing_statistics(self.own_bn, self.sample, STANDING_BATCHES, self.args.batch_size)
        self.own_bn_step = self.step

    def _save_grid(self):
        if not self.main:
            return
        self._own_bn_statistics()
        images = self.grid().detach().float().cpu()
        if images.ndim == 4:
            images = image_grid(images, self.grid_rows)
        self.log.save_image(images, f"samples/step_{self.step:07d}.png")

    def _use_fid(self):
        args = self.args
        on = args.fid == "on" or (args.fid == "auto" and self.device.type == "cuda")
        return (on and self.main and not self.fid_off and self.data is not None
                and not self.data.is_2d)

    def _score_fid(self):
        # a failing FID (a tiny dataset, no memory) must not end the run:
        # say why and go on without it
        try:
            # the reference statistics cover the whole dataset, not this rank's share
            if self.fid is None:
                reference = self.data if self.world == 1 else datasets.load(
                    self.args.dataset, self.args.data_dir, self.data.shape[-1], torch.device("cpu"))
                self.fid = FID(reference, self.args.data_dir, self.args.fid_weights, self.device,
                               net=self.fid_net)
            self._own_bn_statistics()
            scores = self.fid.score(self.sample, self.args.fid_samples)
        except Exception as e:
            print(f"FID is off: "
                  f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
                  file=sys.stderr)
            self.fid_off = True
            return
        self.log.write_metrics(self.step, scores)
        line = f"FID {scores['fid']:.2f}"
        if "kid" in scores:  # fewer than 6 images on a side give FID only
            line += (f", KID {scores['kid']:.4f} ± {scores['kid_std']:.4f}, "
                     f"precision {scores['precision']:.3f}, recall {scores['recall']:.3f}, "
                     f"density {scores['density']:.3f}, coverage {scores['coverage']:.3f}")
        print(f"step {self.step}: {line} ({self.args.fid_samples} samples)", flush=True)
