"""Command line, device and precision plumbing shared by the scripts.

Each script declares its hyperparameters as a dataclass; `parse_args` turns the fields into
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
    """Turn UserError (and Ctrl-C before training starts) into one line and a non-zero exit."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def arg(default, help, **kw):
    """A dataclass field with a help string (and optional argparse `choices`)."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


# Flags whose values may differ when a run is resumed; any other flag given with --resume
# must match the saved run, since it changes the model, the data or the method.
RESUMABLE = {"steps", "device", "compile", "amp", "run_dir", "log_every", "sample_every",
             "ckpt_every", "fid_every", "fid_samples", "fid_weights", "fid", "resume",
             "track", "wandb_project", "wandb_entity", "export", "data_dir"}
# Integer flags that must be >= 1 (0 is allowed for the other *_every flags: it switches them off).
POSITIVE = {"image_size", "batch_size", "z_dim", "fid_samples", "n_critic", "log_every", "width"}
NON_NEGATIVE = {"steps", "sample_every", "ckpt_every", "fid_every", "export"}
LEARNING_RATES, BETAS = {"lr", "lr_g", "lr_d"}, {"beta1", "beta2"}  # else the optimisers raise mid-setup


def _build_parser(cls, description, suppress):
    p = argparse.ArgumentParser(description=description, argument_default=argparse.SUPPRESS if suppress else None,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kw = {"help": f.metadata.get("help", "")}
        if not suppress:
            kw["default"] = f.default
        typ = hints[f.name]
        base = [t for t in typing.get_args(typ) if t is not type(None)][0] if typing.get_origin(typ) is typing.Union else typ
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
        for name in POSITIVE:
            if getattr(args, name, None) is not None and getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
        for name in NON_NEGATIVE:
            if getattr(args, name, None) is not None and getattr(args, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
        for name in LEARNING_RATES:
            if getattr(args, name, None) is not None and not getattr(args, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        for name in BETAS:
            if getattr(args, name, None) is not None and not 0 <= getattr(args, name) < 1:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    return args, given


def merge_resumed(args, given, saved: dict):
    """The arguments of a resumed run: the saved ones, with the resumable flags the user gave."""
    changed = [k for k in given - RESUMABLE if k in saved and saved[k] != getattr(args, k)]
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)!r} (run has {saved[k]!r})" for k in sorted(changed))
        raise UserError(f"cannot resume with different settings: {diffs}. Start a new run instead.")
    unknown = set(saved) - {f.name for f in dataclasses.fields(args)}
    if unknown:
        raise UserError(f"the run to resume has settings this script does not know ({', '.join(sorted(unknown))}); "
                        "was it made by another script?")
    merged = dict(saved)
    merged.update({k: getattr(args, k) for k in given & RESUMABLE})
    if "run_dir" in given and args.run_dir != args.resume:
        raise UserError(f"--resume {args.resume} continues in its own directory; drop --run-dir {args.run_dir}")
    merged["run_dir"] = args.resume  # the run continues in its own directory
    return type(args)(**merged)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r} is not a device name ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
    return device


def resolve_amp(amp: str, device: torch.device):
    """The autocast dtype (None for float32). 'auto': bf16 on a GPU that has it, off on the CPU. fp16 (with
    a GradScaler in the scripts) also runs on the CPU: slow there, but it lets the tests cover that path."""
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def resolve_compile(flag, device: torch.device) -> bool:
    """torch.compile defaults on for CUDA, off for the CPU (the first compiled step takes a minute there)."""
    return device.type == "cuda" if flag is None else flag


def init_distributed(device_name: str):
    """(device, rank, world_size). Under torchrun: one process per GPU (NCCL), or gloo on the CPU."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # Shut the group down on every way out (end, SIGTERM stop, error): a rank that exits with a live
        # gloo group can abort in its destructor ("terminate called without an active exception").
        atexit.register(torch.distributed.destroy_process_group)
    return device, rank, world
