"""WGAN-GP: Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, "Improved Training of Wasserstein
GANs", 2017, arXiv:1704.00028.

Objective (paper eq. 3 and Algorithm 1): the WGAN critic loss plus a gradient penalty that asks
for unit gradient norm on random points between real and generated samples (instead of
clipping the critic's weights):
    x_hat  = alpha * x + (1 - alpha) * G(z),   alpha ~ U[0, 1], ONE alpha per sample
    gp     = lambda * mean_i (||grad_x_hat D(x_hat_i)||_2 - 1)^2,  the norm over all of C, H, W
    d_loss = D(G(z)).mean() - D(x).mean() + gp
    g_loss = -D(G(z)).mean()
    wasserstein (logged) = D(x).mean() - D(G(z)).mean()

Hyperparameters (Algorithm 1): lambda = 10, n_critic = 5, Adam lr 1e-4, betas (0, 0.9), batch 64;
z is 128-d in the authors' code. Each critic update draws its own real batch, z and alpha.

Architecture: the DCGAN backbone (as dcgan.py; G keeps BatchNorm). The critic has no BatchNorm
(paper sec. 4: with it each score depends on the whole batch, so penalising the gradient per
input is no longer the right objective); it uses layer normalisation, the paper's recommended
drop-in, as the authors' code does it: statistics over (C, H, W) of each sample with a scale and
offset per channel, which is nn.GroupNorm with one group. Weights ~ N(0, 0.02).

Precision and compile: the penalty is computed in float32 from a float32 x_hat. Under fp16 the
inner gradient is taken of the scaled score and divided by the same scale (PyTorch's AMP
gradient-penalty recipe), so small gradients do not underflow and an overflow makes the
GradScaler skip that step. Double backward is not supported by torch.compile (PyTorch #91469,
#181581): the penalty runs through the plain, uncompiled critic, which shares its parameters
with the compiled one.
DDP: the penalty's forward uses the plain module, outside the DDP wrapper, and its inner
autograd.grad is taken w.r.t. x_hat only, so DDP's reducer never sees it; the penalty is added to
the Wasserstein loss of the DDP forward and one backward of the sum fills each parameter's .grad,
which DDP's hooks then average over ranks (the penalty gradient is local to each rank's batch,
like the rest of the loss).
Differences from the paper: the DCGAN backbone rather than the paper's ResNet (used for its
CIFAR-10 and LSUN numbers); CelebA by default (LSUN and 64x64 ImageNet are not read by
common/data.py); batches drawn with replacement; under DDP G keeps per-GPU BatchNorm statistics.
"""
import copy
import contextlib
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
    dataset: str = arg("celeba", "mnist, fashion_mnist, cifar10, celeba, or a folder of images (paper: LSUN, CIFAR-10)")
    data_dir: str = arg("data", "where datasets and their decoded caches live")
    image_size: int = arg(64, "training resolution, a power of two >= 32 (paper: 32 and 64)")
    batch_size: int = arg(64, "batch size per GPU (paper: 64)")
    steps: int = arg(20000, "generator updates to train for (authors' 64x64 code: 200000)")
    z_dim: int = arg(128, "dimension of z (authors' code: 128)")
    width: int = arg(64, "channels of the last G layer and first critic layer (authors' code: 64)")
    lr: float = arg(1e-4, "Adam learning rate for G and the critic (paper: 1e-4)")
    beta1: float = arg(0.0, "Adam beta1 (paper: 0)")
    beta2: float = arg(0.9, "Adam beta2 (paper: 0.9)")
    gp_lambda: float = arg(10.0, "gradient penalty weight lambda (paper: 10)")
    n_critic: int = arg(5, "critic updates per generator update (paper: 5)")
    flip: Optional[bool] = arg(None, "random horizontal flips (default: on, off for digits)")
    ema: bool = arg(False, "sample, export and score with an EMA of G's weights (not in the paper)")
    ema_decay: float = arg(0.999, "EMA decay per step")
    seed: int = arg(0, "random seed")
    device: str = arg("auto", "cuda, cuda:N, cpu, or auto")
    compile: Optional[bool] = arg(None, "torch.compile G and the critic (default: on for CUDA, off on the CPU)")
    amp: str = arg("auto", "autocast dtype: auto = bf16 on CUDA, off on the CPU", choices=["auto", "bf16", "fp16", "off"])
    run_dir: str = arg("runs/wgan_gp", "where config, metrics, samples and checkpoint are written")
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
            # Layer norm per sample over (C, H, W), per-channel affine: no coupling across the batch.
            layers += [nn.Conv2d(c, c * 2, kernel_size=4, stride=2, padding=1, bias=False),
                       nn.GroupNorm(num_groups=1, num_channels=c * 2), nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        layers += [nn.Conv2d(c, 1, kernel_size=4, stride=1, padding=0)]  # an unbounded score, no sigmoid
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()  # one score per image


def d_loss(critic_real, critic_fake):
    """Wasserstein part of the critic loss, E D(G(z)) - E D(x), in float32 (the penalty is added apart)."""
    return critic_fake.float().mean() - critic_real.float().mean()


def g_loss(critic_fake):
    """The generator minimises -E D(G(z))."""
    return -critic_fake.float().mean()


def interpolate(real, fake):
    """x_hat on the segment from fake to real, with one alpha ~ U[0, 1] per sample, shape (B, 1, 1, 1)."""
    alpha = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device)
    return alpha * real + (1 - alpha) * fake


def gradient_penalty(critic, real, fake, gp_lambda, autocast=contextlib.nullcontext(), scaler=None):
    """lambda * mean_i (||grad_x D(x_hat_i)||_2 - 1)^2 in float32, differentiable w.r.t. the critic's parameters.

    `critic` must be the plain nn.Module: torch.compile does not support the double backward.
    With an fp16 GradScaler the inner gradient is taken of the scaled score and unscaled.
    """
    x_hat = interpolate(real.detach().float(), fake.detach().float()).requires_grad_(True)
    with autocast:
        score = critic(x_hat)
    # scaler.scale of a one is the current scale as a tensor (1 when the scaler is off): no host sync.
    scale = scaler.scale(torch.ones((), device=x_hat.device)) if scaler is not None else 1.0
    (grad,) = torch.autograd.grad(score.float().sum() * scale, x_hat, create_graph=True)
    norm = (grad.float() / scale).flatten(1).norm(dim=1)  # over C, H, W of each sample
    return gp_lambda * ((norm - 1) ** 2).mean()


def train_step(G, D, D_plain, opt_g, opt_d, scaler, data, batch_size, z_dim, amp_dtype, n_critic, gp_lambda):
    """n_critic critic updates, each on its own real batch, z and alpha, then one G update. Returns detached losses."""
    device = data.device
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    for _ in range(n_critic):
        real, _ = data.batch(batch_size)
        z = torch.randn(batch_size, z_dim, device=device)
        with autocast:
            with torch.no_grad():
                fake = G(z)
            scores = D(torch.cat([real, fake.to(real.dtype)]))  # one forward: the critic has no batch coupling
            critic_real, critic_fake = scores[:batch_size], scores[batch_size:]
            loss_w = d_loss(critic_real, critic_fake)
        gp = gradient_penalty(D_plain, real, fake, gp_lambda, autocast, scaler)
        loss_d = loss_w + gp
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()  # one backward of both parts: DDP averages the sum
        scaler.step(opt_d)
        scaler.update()  # a GradScaler allows one step per optimizer between updates
    z = torch.randn(batch_size, z_dim, device=device)
    with autocast:
        loss_g = g_loss(D(G(z)))  # the critic's gradients from this pass are discarded by the next zero_grad
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(), "gp": gp.detach(),
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
            state = load_checkpoint(args.resume, "wgan_gp")
            args = merge_resumed(args, given, state["args"])
        if args.image_size < 32 or args.image_size & (args.image_size - 1):
            raise UserError(f"--image-size must be a power of two >= 32, got {args.image_size}")
        if args.gp_lambda < 0:
            raise UserError(f"--gp-lambda must be 0 or more, got {args.gp_lambda}")
        if args.dataset in datasets.TOY_DATASETS:
            raise UserError("wgan_gp.py trains on images; for ring8 / grid25 use minimal_gan.py")
        device, rank, world = init_distributed(args.device)
        flip = args.flip if args.flip is not None else args.dataset not in ("mnist", "fashion_mnist")
        data = datasets.load(args.dataset, args.data_dir, args.image_size, device, flip=flip, rank=rank, world=world)
        channels = data.shape[0]
        amp_dtype = resolve_amp(args.amp, device)

        torch.manual_seed(args.seed)  # identical initial weights on every rank
        G = Generator(args.z_dim, args.width, args.image_size, channels).to(device)
        D = Critic(args.width, args.image_size, channels).to(device)
        G.apply(init_weights), D.apply(init_weights)
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        fused = device.type == "cuda"
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), fused=fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), fused=fused)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        z_fixed = torch.randn(64, args.z_dim, device=device)
        torch.manual_seed(args.seed + 1 + rank)  # each rank draws its own batches, z and alpha
        step = 0
        if state is not None:
            G.load_state_dict(state["G"]), D.load_state_dict(state["D"])
            opt_g.load_state_dict(state["opt_g"]), opt_d.load_state_dict(state["opt_d"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            z_fixed, step = state["z_fixed"].to(device), state["step"]
            restore_rng(state["rng"], rank, world)

        G_train, D_train = G, D  # D itself stays the plain module the penalty runs through
        if world > 1:  # per-GPU BatchNorm statistics in G: broadcast_buffers=False also avoids PyTorch #175024
            G_train = nn.parallel.DistributedDataParallel(G, broadcast_buffers=False)
            D_train = nn.parallel.DistributedDataParallel(D, broadcast_buffers=False)
        if resolve_compile(args.compile, device):
            G_train, D_train = torch.compile(G_train), torch.compile(D_train)

        run = Run(args, "wgan_gp", args.run_dir, resumed=state is not None, main_process=rank == 0)
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
            print(f"wgan_gp: {args.dataset} {tuple(data.shape)} on {device}, amp {amp_dtype}, "
                  f"compile {resolve_compile(args.compile, device)}, from step {step} to {args.steps}", flush=True)
        while step < args.steps:
            losses = train_step(G_train, D_train, D, opt_g, opt_d, scaler, data, args.batch_size, args.z_dim,
                                amp_dtype, args.n_critic, args.gp_lambda)
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
