"""DCGAN: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", 2015, arXiv:1511.06434.

Objective (non-saturating form, Goodfellow et al. 2014, sec. 3):
    d_loss = -log D(x) - log(1 - D(G(z)))       = softplus(-D_logit(x)) + softplus(D_logit(G(z)))
    g_loss = -log D(G(z))                        = softplus(-D_logit(G(z)))

Architecture (paper sec. 3 and fig. 1): G maps z (100-d, uniform in the paper) through a
4x4 transposed convolution, then stride-2 4x4 transposed convolutions that double the size
and halve the width, BatchNorm + ReLU everywhere but the tanh output. D mirrors it with
stride-2 4x4 convolutions, LeakyReLU(0.2), BatchNorm on every layer but the first, and a
4x4 convolution to one logit. Any power-of-two size from 32 up; 64x64 by default.

Hyperparameters (paper sec. 4): Adam lr 2e-4, beta1 0.5, batch 128, weights ~ N(0, 0.02).
Differences from the paper: z ~ N(0, I) instead of U(-1, 1) (the common choice since; it does
not change results); BatchNorm scales start at N(1, 0.02) as in the widely used PyTorch port;
batches are drawn with replacement from the dataset rather than in epochs; under DDP each GPU
keeps its own BatchNorm statistics (the paper trained on one GPU).
"""
import copy
import dataclasses
import math
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import data as datasets
from common.cli import UserError, arg, init_distributed, merge_resumed, parse_args, resolve_amp, resolve_compile, user_errors
from common.fid import FID
from common.log import (Run, StopSignal, all_rng_states, check_finite, export_images, load_checkpoint,
                        restore_rng, stop_requested)


@dataclasses.dataclass
class Args:
    dataset: str = arg("celeba", "mnist, fashion_mnist, cifar10, celeba, or a folder of images")
    data_dir: str = arg("data", "where datasets and their decoded caches live")
    image_size: int = arg(64, "training resolution, a power of two >= 32 (paper: 64)")
    batch_size: int = arg(128, "batch size per GPU (paper: 128)")
    steps: int = arg(20000, "generator updates to train for")
    z_dim: int = arg(100, "dimension of z (paper: 100)")
    width: int = arg(64, "channels of the last G layer and first D layer (paper: 64 at 64x64, i.e. 1024 at 4x4)")
    lr: float = arg(2e-4, "Adam learning rate for G and D (paper: 2e-4)")
    beta1: float = arg(0.5, "Adam beta1 (paper: 0.5; 0.9 oscillated)")
    beta2: float = arg(0.999, "Adam beta2 (paper: default 0.999)")
    flip: Optional[bool] = arg(None, "random horizontal flips (default: on, off for digits)")
    ema: bool = arg(False, "sample, export and score with an EMA of G's weights (not in the paper)")
    ema_decay: float = arg(0.999, "EMA decay per step")
    seed: int = arg(0, "random seed")
    device: str = arg("auto", "cuda, cuda:N, cpu, or auto")
    compile: Optional[bool] = arg(None, "torch.compile G and D (default: on for CUDA, off on the CPU)")
    amp: str = arg("auto", "autocast dtype: auto = bf16 on CUDA, off on the CPU", choices=["auto", "bf16", "fp16", "off"])
    run_dir: str = arg("runs/dcgan", "where config, metrics, samples and checkpoint are written")
    log_every: int = arg(100, "console and metrics line every N steps")
    sample_every: int = arg(1000, "sample grid every N steps (0: only at the end)")
    ckpt_every: int = arg(1000, "checkpoint every N steps (0: only at the end)")
    fid: str = arg("auto", "FID during and after training: auto = on CUDA only", choices=["auto", "on", "off"])
    fid_every: int = arg(5000, "FID every N steps (0: only at the end)")
    fid_samples: int = arg(10000, "generated images per FID")
    fid_weights: Optional[str] = arg(None, "FID Inception weights file (default: download once)")
    resume: Optional[str] = arg(None, "run directory to continue from its checkpoint")
    track: bool = arg(False, "log to Weights & Biases")
    wandb_project: str = arg("gan-reference", "wandb project")
    wandb_entity: Optional[str] = arg(None, "wandb entity")
    export: int = arg(0, "after training, write N generated PNGs to RUN_DIR/export")


def init_weights(m: nn.Module):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, mean=0.0, std=0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, mean=1.0, std=0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, z_dim: int, width: int, image_size: int, channels: int):
        super().__init__()
        n_up = int(math.log2(image_size)) - 2  # stride-2 layers after the 4x4 start
        c = width * 2 ** (n_up - 1)
        layers = [nn.ConvTranspose2d(z_dim, c, kernel_size=4, stride=1, padding=0, bias=False),
                  nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, kernel_size=4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c // 2), nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, kernel_size=4, stride=2, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z):
        return self.net(z.view(len(z), self.z_dim, 1, 1))


class Discriminator(nn.Module):
    def __init__(self, width: int, image_size: int, channels: int):
        super().__init__()
        n_down = int(math.log2(image_size)) - 2
        c = width
        layers = [nn.Conv2d(channels, c, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(c, c * 2, kernel_size=4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c * 2), nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        layers += [nn.Conv2d(c, 1, kernel_size=4, stride=1, padding=0)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()  # one logit per image


def d_loss(real_logits, fake_logits):
    """-log D(x) - log(1 - D(G(z))), from logits, in float32."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def g_loss(fake_logits):
    """Non-saturating generator loss -log D(G(z))."""
    return F.softplus(-fake_logits.float()).mean()


def train_step(G, D, opt_g, opt_d, scaler, real, z_dim, amp_dtype):
    """One D update on a real and a fake batch, then one G update. Returns detached losses."""
    autocast = torch.autocast(real.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    z = torch.randn(len(real), z_dim, device=real.device)
    with autocast:
        fake = G(z)
        # Two D forwards (real, then fake): the paper keeps real and fake in separate batches for BatchNorm.
        real_logits, fake_logits = D(real), D(fake.detach())
        loss_d = d_loss(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)
    with autocast:
        loss_g = g_loss(D(fake))  # D's gradients from this pass are discarded by the next zero_grad
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(),
            "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
            "d_fake": torch.sigmoid(fake_logits.detach().float()).mean()}


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float):
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Images from the plain (uncompiled) G in eval mode: BatchNorm uses its running statistics."""
    G.eval()
    images = G(z).float()
    G.train()
    return images


def main():
    args, given = parse_args(Args, __doc__.split("\n")[0])
    with user_errors():
        state = None
        if args.resume:
            state = load_checkpoint(args.resume, "dcgan")
            args = merge_resumed(args, given, state["args"])
        if args.image_size < 32 or args.image_size & (args.image_size - 1):
            raise UserError(f"--image-size must be a power of two >= 32, got {args.image_size}")
        if args.dataset in datasets.TOY_DATASETS:
            raise UserError("dcgan.py trains on images; for ring8 / grid25 use minimal_gan.py")
        device, rank, world = init_distributed(args.device)
        flip = args.flip if args.flip is not None else args.dataset not in ("mnist", "fashion_mnist")
        data = datasets.load(args.dataset, args.data_dir, args.image_size, device, flip=flip, rank=rank, world=world)
        channels = data.shape[0]
        amp_dtype = resolve_amp(args.amp, device)

        torch.manual_seed(args.seed)  # identical initial weights on every rank
        G = Generator(args.z_dim, args.width, args.image_size, channels).to(device)
        D = Discriminator(args.width, args.image_size, channels).to(device)
        G.apply(init_weights), D.apply(init_weights)
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        fused = device.type == "cuda"
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), fused=fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), fused=fused)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        z_fixed = torch.randn(64, args.z_dim, device=device)
        torch.manual_seed(args.seed + 1 + rank)  # each rank draws its own batches and z
        step = 0
        if state is not None:
            G.load_state_dict(state["G"]), D.load_state_dict(state["D"])
            opt_g.load_state_dict(state["opt_g"]), opt_d.load_state_dict(state["opt_d"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            z_fixed, step = state["z_fixed"].to(device), state["step"]
            restore_rng(state["rng"], rank, world)

        G_train, D_train = G, D
        if world > 1:  # per-GPU BatchNorm statistics: broadcast_buffers=False also avoids PyTorch #175024
            G_train = nn.parallel.DistributedDataParallel(G, broadcast_buffers=False)
            D_train = nn.parallel.DistributedDataParallel(D, broadcast_buffers=False)
        if resolve_compile(args.compile, device):
            G_train, D_train = torch.compile(G_train), torch.compile(D_train)

        run = Run(args, "dcgan", args.run_dir, resumed=state is not None, main_process=rank == 0)
        G_sample = ema if ema is not None else G
        fid = None
        use_fid = args.fid == "on" or (args.fid == "auto" and device.type == "cuda")

        def score_fid():
            nonlocal fid
            fid = fid or FID.try_create(data, args.data_dir, args.fid_weights, device)
            if fid is None:
                return None
            return fid.score(lambda k: generate(G_sample, torch.randn(k, args.z_dim, device=device)), args.fid_samples)

        def checkpoint():
            run.save_checkpoint({"step": step, "args": dataclasses.asdict(args), "G": G.state_dict(),
                                 "D": D.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                                 "scaler": scaler.state_dict(), "z_fixed": z_fixed, "rng": all_rng_states(world)})

        stop = StopSignal()
        if step < args.steps:
            print(f"dcgan: {args.dataset} {tuple(data.shape)} on {device}, amp {amp_dtype}, "
                  f"compile {resolve_compile(args.compile, device)}, from step {step} to {args.steps}", flush=True)
        while step < args.steps:
            real, _ = data.batch(args.batch_size)
            losses = train_step(G_train, D_train, opt_g, opt_d, scaler, real, args.z_dim, amp_dtype)
            if ema is not None:
                ema_update(ema, G, args.ema_decay)
            step += 1
            last = step == args.steps
            stopping = stop_requested(stop, world, device)
            if step % args.log_every == 0 or last or stopping:
                check_finite(losses, step, scaler)
                run.log(step, args.steps, losses, args.batch_size * world)
            if (args.sample_every and step % args.sample_every == 0) or last:
                run.save_grid(step, generate(G_sample, z_fixed))
            if use_fid and rank == 0 and ((args.fid_every and step % args.fid_every == 0) or last):
                value = score_fid()
                if value is not None:
                    run.write_metrics(step, {"fid": value})
                    print(f"step {step}: FID {value:.2f} ({args.fid_samples} samples)", flush=True)
            if (args.ckpt_every and step % args.ckpt_every == 0) or last or stopping:
                check_finite(losses, step, scaler)
                checkpoint()
            if stopping:
                print(f"stopped by {stop.received or 'another rank'} at step {step}; continue with --resume {args.run_dir}")
                sys.exit(0)
        if args.export and rank == 0:
            export_images(lambda k: generate(G_sample, torch.randn(k, args.z_dim, device=device)), args.export,
                          Path(args.run_dir) / "export", args.batch_size)
        run.close()


if __name__ == "__main__":
    main()
