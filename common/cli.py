"""Command line, device and precision plumbing shared by the scripts.

Each script declares its hyperparameters as a dataclass that extends `RunArgs` (the flags every
script shares); `parse_args` turns the fields into
flags (`batch_size` -> `--batch-size`, help text from `field(metadata={"help": ...})`) and
checks the values every script shares. A user's mistake becomes a `UserError`: one message,
exit status 2, no traceback.
"""
import argparse
import atexit
import contextlib
import dataclasses
import os
import sys
import typing

import torch


class UserError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


@contextlib.contextmanager
def user_errors():
    """Turn UserError, and running out of memory, into one line and exit status 2."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    # absurd sizes end in the allocator
    except (torch.OutOfMemoryError, RuntimeError, ValueError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        memory = ("out of memory", "can't allocate memory", "negative dimension", "too large")
        if not isinstance(e, torch.OutOfMemoryError) and not any(m in text.lower() for m in memory):
            raise
        print(f"error: out of memory or an impossible size ({text[:200]}): lower --batch-size, "
              "--width or the script's channel flags, --z-dim or --image-size", file=sys.stderr)
        sys.exit(2)


def arg(default, help, within: str = None, power_of_two: bool = False, **kw):
    """A dataclass field with a help string, and the values the flag takes: `within` an interval
    such as "[1, inf)" or "(0, 1]" (NaN is in none), `power_of_two`, or argparse's `choices`.
    parse_args checks them and --help shows them; a script that re-declares a shared flag to change
    its default keeps RunArgs' limits."""
    return dataclasses.field(default=default, metadata={"help": help, "within": within,
                                                        "power_of_two": power_of_two, **kw})


def in_interval(value, interval: str) -> bool:
    """value in "[a, b)" and the like (inf allowed as a bound; NaN is in no interval)."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    return ((value >= low if interval[0] == "[" else value > low)
            and (value <= high if interval[-1] == "]" else value < high))


@dataclasses.dataclass
class RunArgs:
    """The flags every script shares. A script's `Args` extends this with its paper's
    hyperparameters and re-declares a shared flag only to change its default (batch size, steps,
    EMA)."""
    dataset: str = arg("celeba", "mnist, fashion_mnist, cifar10, celeba, or a folder of images")
    data_dir: str = arg("data", "where datasets and their decoded caches live")
    batch_size: int = arg(64, "batch size per GPU", within="[1, inf)")
    steps: int = arg(20000, "generator updates to train for", within="[0, inf)")
    flip: typing.Optional[bool] = arg(None, "random horizontal flips (default: on, off for digits; "
                                      "most of the papers did not flip: --no-flip)")
    ema: bool = arg(False, "sample, export and score with an EMA of G's weights (not in the paper)")
    ema_decay: float = arg(0.999, "EMA decay per step", within="[0, 1]")
    seed: int = arg(0, "random seed", within="[0, 1e18]")
    device: str = arg("auto", "cuda, cuda:N, cpu, or auto")
    compile: typing.Optional[bool] = arg(None, "torch.compile G and D "
                                         "(default: on for CUDA, off on the CPU)")
    amp: str = arg("auto", "autocast dtype: auto = bf16 on CUDA (fp16 where bf16 is missing), "
                   "off on the CPU", choices=["auto", "bf16", "fp16", "off"])
    run_dir: typing.Optional[str] = arg(None, "where config, metrics, samples and checkpoint are "
                                        "written (default: runs/SCRIPT)")
    overwrite: bool = arg(False, "start a new run in a --run-dir that holds one "
                          "(its checkpoint, metrics and samples go)")
    log_every: int = arg(100, "console and metrics line every N steps", within="[1, inf)")
    sample_every: int = arg(1000, "sample grid every N steps (0: only at the end)",
                            within="[0, inf)")
    ckpt_every: int = arg(1000, "checkpoint every N steps (0: only at the end)", within="[0, inf)")
    fid: str = arg("auto", "FID during and after training: auto = on CUDA only",
                   choices=["auto", "on", "off"])
    fid_every: int = arg(5000, "FID every N steps (0: only at the end)", within="[0, inf)")
    fid_samples: int = arg(10000, "generated images per FID", within="[2, inf)")
    fid_weights: typing.Optional[str] = arg(None, "FID Inception weights file "
                                            "(default: download once)")
    resume: typing.Optional[str] = arg(None, "run directory to continue from its checkpoint")
    track: bool = arg(False, "log to Weights & Biases")
    wandb_project: str = arg("gan-reference", "wandb project")
    wandb_entity: typing.Optional[str] = arg(None, "wandb entity")
    export: int = arg(0, "after training, write N generated PNGs to RUN_DIR/export",
                      within="[0, inf)")


# Flags whose values may differ when a run is resumed; any other flag given with --resume
# must match the saved run, since it changes the model, the data or the method.
RESUMABLE = {"steps", "device", "compile", "amp", "run_dir", "log_every", "sample_every",
             "ckpt_every", "fid_every", "fid_samples", "fid_weights", "fid", "resume",
             "track", "wandb_project", "wandb_entity", "export", "data_dir", "overwrite"}
def _limits(f: dataclasses.Field):
    """(within, power_of_two) of a field; a shared flag re-declared by a script keeps RunArgs'
    limits."""
    shared = {g.name: g for g in dataclasses.fields(RunArgs)}.get(f.name)
    own = (f.metadata.get("within"), f.metadata.get("power_of_two", False))
    return (own if own != (None, False) or shared is None
            else (shared.metadata["within"], shared.metadata["power_of_two"]))


def _build_parser(cls, description, suppress):
    p = argparse.ArgumentParser(description=description,
                                argument_default=argparse.SUPPRESS if suppress else None,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        within, power_of_two = _limits(f)
        kw = {"help": f.metadata.get("help", "") + (f"; a power of two in {within}" if power_of_two
                                                    else f"; in {within}" if within else "")}
        if not suppress:
            kw["default"] = f.default
        typ = hints[f.name]
        base = ([t for t in typing.get_args(typ) if t is not type(None)][0]
                if typing.get_origin(typ) is typing.Union else typ)
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            p.add_argument(flag, type=base, **kw)
    return p


def parse_args(cls, description, argv=None):
    """Parse argv into an instance of the dataclass `cls`; also return the set of flags given."""
    argv = sys.argv[1:] if argv is None else argv
    args = cls(**vars(_build_parser(cls, description, False).parse_args(argv)))
    given = set(vars(_build_parser(cls, description, True).parse_args(argv)))
    with user_errors():
        for f in dataclasses.fields(cls):
            value, flag, (within, power_of_two) = (getattr(args, f.name),
                                                   "--" + f.name.replace("_", "-"), _limits(f))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if within and not in_interval(value, within):
                    raise UserError(f"{flag} must be in {within}, got {value}")
                if power_of_two and value & (value - 1):
                    raise UserError(f"{flag} must be a power of two, got {value}")
    return args, given


def merge_resumed(args, given, saved: dict):
    """The arguments of a resumed run: the saved ones, with the resumable flags the user gave."""
    changed = [k for k in given - RESUMABLE if k in saved and saved[k] != getattr(args, k)]
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)!r} (run has {saved[k]!r})"
                          for k in sorted(changed))
        raise UserError(f"cannot resume with different settings: {diffs}. Start a new run instead.")
    unknown = set(saved) - {f.name for f in dataclasses.fields(args)}
    if unknown:
        raise UserError(f"the run to resume has settings this script does not know "
                        f"({', '.join(sorted(unknown))}); was it made by another script?")
    merged = dict(saved)
    merged.update({k: getattr(args, k) for k in given & RESUMABLE})
    if "run_dir" in given and args.run_dir != args.resume:
        raise UserError(f"--resume {args.resume} continues in its own directory; "
                        f"drop --run-dir {args.run_dir}")
    merged["run_dir"] = args.resume  # the run continues in its own directory
    return type(args)(**merged)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r} is not a device name ({e})") from None
    # mps, xpu, meta: not what the scripts are built and tested for
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--device {name}: these scripts run on cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but this PyTorch sees no CUDA GPU; "
                        "use --device cpu")
    return device


def resolve_amp(amp: str, device: torch.device):
    """The autocast dtype (None for float32). 'auto': bf16 on a GPU that has it, off on the CPU.
    fp16 (with a GradScaler in the scripts) also runs on the CPU: slow there, but it lets the tests
    cover that path."""
    if amp == "auto":
        # emulated bf16 is slow
        if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def resolve_compile(flag, device: torch.device) -> bool:
    """torch.compile defaults on for CUDA, off for the CPU (the first compiled step takes a minute
    there)."""
    return device.type == "cuda" if flag is None else flag


def init_distributed(device_name: str):
    """(device, rank, world_size). Under torchrun: one process per GPU (NCCL), or gloo on the
    CPU."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # Shut the group down on every way out (Run.finish does it after a barrier on a normal end;
        # this catches errors): a rank that exits with a live gloo group can abort in its destructor
        # ("terminate called without an active exception").
        atexit.register(lambda: (torch.distributed.is_initialized()
                                 and torch.distributed.destroy_process_group()))
    return device, rank, world
