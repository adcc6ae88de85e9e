"""WGAN: Arjovsky, Chintala & Bottou, "Wasserstein GAN", 2017, arXiv:1701.07875.

Objective (paper eq. 3 and Algorithm 1): a critic f_w with unbounded output, kept K-Lipschitz
by clipping every weight to [-c, c], estimates W(P_r, P_g) ~ max_w E f_w(x) - E f_w(G(z)).
    d_loss = -(f(x).mean() - f(G(z)).mean())     then  w <- clip(w, -c, c)
    g_loss = -f(G(z)).mean()
    wasserstein (logged) = f(x).mean() - f(G(z)).mean(), the critic's estimate of W up to K

Training (Algorithm 1): n_critic = 5 critic updates per generator update, each on its own real
batch and z; RMSprop lr 5e-5 for both players (momentum-based optimizers were unstable, sec. 4),
batch 64, c = 0.01. The authors' code (not Algorithm 1) also runs 100 critic updates for each of
the first 25 generator updates and for every 500th, so the critic is near its optimum early and
now and then; that is --critic-burst, on by default.

Architecture (the paper's DCGAN experiments, sec. 4): DCGAN generator (z 100-d, transposed 4x4
convolutions, BatchNorm + ReLU, tanh) and a DCGAN critic (stride-2 4x4 convolutions, BatchNorm
on all but the first, LeakyReLU 0.2) whose last 4x4 convolution gives one unbounded score: no
sigmoid. Weights ~ N(0, 0.02); the clip applies to all critic parameters, BatchNorm's included.
Differences from the paper: z ~ N(0, I) as in the authors' code; CelebA by default (the paper
shows LSUN bedrooms, which common/data.py does not read); the critic is clipped once at
initialisation and after every update (Algorithm 1 clips after each update, the authors' code
before each forward: together they keep every forward inside the box); batches are drawn with
replacement rather than in epochs; under DDP each GPU keeps its own BatchNorm statistics, and
every rank clips the same all-reduced weights, so the replicas stay identical.
"""
import copy
import dataclasses
import math
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from common import data as datasets
from common.cli import UserError, arg, init_distributed, merge_resumed, parse_args, resolve_amp, resolve_compile, user_errors
from common.fid import FID
from common.log import (Run, StopSignal, all_rng_states, check_finite, export_images, load_checkpoint,
                        restore_rng, stop_requested)


@dataclasses.dataclass
class Args:
    dataset: str = arg("celeba", "mnist, fashion_mnist, cifar10, celeba, or a folder of images (paper: LSUN bedrooms)")
    data_dir: str = arg("data", "where datasets and their decoded caches live")
    image_size: int = arg(64, "training resolution, a power of two >= 32 (paper: 64)")
    batch_size: int = arg(64, "batch size per GPU (paper: 64)")
    steps: int = arg(20000, "generator updates to train for")
    z_dim: int = arg(100, "dimension of z (paper's code: 100)")
    width: int = arg(64, "channels of the last G layer and first critic layer (paper's code: 64)")
    lr: float = arg(5e-5, "RMSprop learning rate for G and the critic (paper: 5e-5)")
    clip: float = arg(0.01, "critic weights are clipped to [-clip, clip] (paper: c = 0.01)")
    n_critic: int = arg(5, "critic updates per generator update (paper: 5)")
    critic_burst: bool = arg(True, "100 critic updates for the first 25 G updates and every 500th (authors' code)")
    flip: Optional[bool] = arg(None, "random horizontal flips (default: on, off for digits)")
    ema: bool = arg(False, "sample, export and score with an EMA of G's weights (not in the paper)")
    ema_decay: float = arg(0.999, "EMA decay per step")
    seed: int = arg(0, "random seed")
    device: str = arg("auto", "cuda, cuda:N, cpu, or auto")
    compile: Optional[bool] = arg(None, "torch.compile G and the critic (default: on for CUDA, off on the CPU)")
    amp: str = arg("auto", "autocast dtype: auto = bf16 on CUDA, off on the CPU", choices=["auto", "bf16", "fp16", "off"])
    run_dir: str = arg("runs/wgan", "where config, metrics, samples and checkpoint are written")
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


class Critic(nn.Module):
    def __init__(self, width: int, image_size: int, channels: int):
        super().__init__()
        n_down = int(math.log2(image_size)) - 2
        c = width
        layers = [nn.Conv2d(channels, c, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(c, c * 2, kernel_size=4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c * 2), nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        # No sigmoid: f is a score, not a probability. No bias: it cancels in E f(x) - E f(G(z)).
        layers += [nn.Conv2d(c, 1, kernel_size=4, stride=1, padding=0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()  # one score per image


def d_loss(critic_real, critic_fake):
    """The critic maximises E f(x) - E f(G(z)); in float32."""
    return critic_fake.float().mean() - critic_real.float().mean()


def g_loss(critic_fake):
    """The generator minimises -E f(G(z)) (E f(x) does not depend on G)."""
    return -critic_fake.float().mean()


@torch.no_grad()
def clip_weights(params: list, c: float):
    """Project every critic parameter onto [-c, c] (Algorithm 1, line 8)."""
    torch._foreach_clamp_min_(params, -c)
    torch._foreach_clamp_max_(params, c)


def critic_steps(step: int, n_critic: int, burst: bool) -> int:
    """Critic updates before generator update number `step` (0-based), as in the authors' code."""
    return 100 if burst and (step < 25 or step % 500 == 0) else n_critic


def train_step(G, D, opt_g, opt_d, scaler, data, batch_size, z_dim, amp_dtype, n_steps, clip, d_params):
    """n_steps critic updates, each on its own real batch, then one G update. Returns detached losses."""
    device = data.device
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    for _ in range(n_steps):
        real, _ = data.batch(batch_size)
        z = torch.randn(batch_size, z_dim, device=device)
        with autocast:
            with torch.no_grad():
                fake = G(z)
            # Separate real and fake forwards, as in the paper: the critic's BatchNorm sees one kind per batch.
            critic_real, critic_fake = D(real), D(fake)
            loss_d = d_loss(critic_real, critic_fake)
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        scaler.update()  # a GradScaler allows one step per optimizer between updates
        clip_weights(d_params, clip)
    z = torch.randn(batch_size, z_dim, device=device)
    with autocast:
        loss_g = g_loss(D(G(z)))  # the critic's gradients from this pass are discarded by the next zero_grad
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(),
            "wasserstein": critic_real.detach().float().mean() - critic_fake.detach().float().mean()}


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
            state = load_checkpoint(args.resume, "wgan")
            args = merge_resumed(args, given, state["args"])
        if args.image_size < 32 or args.image_size & (args.image_size - 1):
            raise UserError(f"--image-size must be a power of two >= 32, got {args.image_size}")
        if not args.clip > 0:
            raise UserError(f"--clip must be positive, got {args.clip}")
        if args.dataset in datasets.TOY_DATASETS:
            raise UserError("wgan.py trains on images; for ring8 / grid25 use minimal_gan.py")
        device, rank, world = init_distributed(args.device)
        flip = args.flip if args.flip is not None else args.dataset not in ("mnist", "fashion_mnist")
        data = datasets.load(args.dataset, args.data_dir, args.image_size, device, flip=flip, rank=rank, world=world)
        channels = data.shape[0]
        amp_dtype = resolve_amp(args.amp, device)

        torch.manual_seed(args.seed)  # identical initial weights on every rank
        G = Generator(args.z_dim, args.width, args.image_size, channels).to(device)
        D = Critic(args.width, args.image_size, channels).to(device)
        G.apply(init_weights), D.apply(init_weights)
        d_params = list(D.parameters())
        clip_weights(d_params, args.clip)  # every critic forward happens inside the box
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        opt_g = torch.optim.RMSprop(G.parameters(), lr=args.lr)
        opt_d = torch.optim.RMSprop(D.parameters(), lr=args.lr)
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

        run = Run(args, "wgan", args.run_dir, resumed=state is not None, main_process=rank == 0)
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
            print(f"wgan: {args.dataset} {tuple(data.shape)} on {device}, amp {amp_dtype}, "
                  f"compile {resolve_compile(args.compile, device)}, from step {step} to {args.steps}", flush=True)
        while step < args.steps:
            n_steps = critic_steps(step, args.n_critic, args.critic_burst)
            losses = train_step(G_train, D_train, opt_g, opt_d, scaler, data, args.batch_size, args.z_dim,
                                amp_dtype, n_steps, args.clip, d_params)
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
