"""BEGAN: Berthelot, Schumm & Metz, "BEGAN: Boundary Equilibrium Generative Adversarial
Networks", 2017, arXiv:1703.10717.

The discriminator D is an autoencoder; its L1 reconstruction error is the "energy" (sec. 3):
    L(v)     = mean |v - D(v)|                              (eta = 1, per pixel)
    d_loss   = L(x) - k_t * L(G(z_D))
    g_loss   = L(G(z_G))
    k_{t+1}  = clip(k_t + lambda_k * (gamma * L(x) - L(G(z_G))), 0, 1),   k_0 = 0
    M_global = L(x) + |gamma * L(x) - L(G(z_G))|           (convergence measure, logged)

Architecture (fig. 1, sec. 3.5): 3x3 convolutions with ELU. The encoder has one block per
scale from the image size down to 8x8; a block is two convolutions of n*i filters (i = 1, 2,
...: filters grow linearly), and a stride-2 convolution to n*(i+1) filters subsamples. A
fully connected layer without non-linearity maps the 8x8 map to the embedding h (64-d). The
decoder maps h back to 8x8xn, then blocks of two n-filter convolutions with nearest-neighbour
upsampling, and a 3x3 convolution to the image channels (linear output). G has the form of
the decoder, with its own weights, and takes z ~ U(-1, 1)^64.

Hyperparameters: gamma 0.5, lambda_k 0.001, Nz = Nh = 64, Adam lr 1e-4 (paper sec. 3.4, 4.1;
the paper's range is [5e-5, 1e-4] with the default Adam betas), n = 64 at 64x64 (the paper's
128x128 model used n = 128). Batch 16 (not stated in the paper; the usual choice since).
Learning-rate decay: the paper halves the rate "when the measure of convergence stalls". Here
that rule is ReduceLROnPlateau on M_global: M is averaged over windows of --lr-window steps
on the device; when a window's mean has not improved on the best by 1% for --lr-patience
windows, both learning rates are halved. This reads M from the GPU once per window only.
Differences from the paper: batches drawn with replacement; under DDP the two energies are
averaged over GPUs each step, so k_t and the learning-rate schedule stay identical on all
ranks; no skip connections (the paper's optional "vanishing residuals").
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
    dataset: str = arg("celeba", "mnist, fashion_mnist, cifar10, celeba, or a folder of images")
    data_dir: str = arg("data", "where datasets and their decoded caches live")
    image_size: int = arg(64, "training resolution, a power of two >= 8 (paper: 32 to 256, 64 and 128 shown)")
    batch_size: int = arg(16, "batch size per GPU (paper: not stated; 16 is the common choice)")
    steps: int = arg(20000, "generator updates to train for")
    z_dim: int = arg(64, "dimension of z ~ U(-1, 1) (paper: Nz = 64)")
    h_dim: int = arg(64, "dimension of the autoencoder embedding h (paper: Nh = 64)")
    width: int = arg(64, "n, the filters of the first encoder block and of every decoder layer (paper: 128 at 128x128)")
    gamma: float = arg(0.5, "diversity ratio gamma = E[L(G(z))] / E[L(x)] that k_t steers to (paper: 0.5)")
    lambda_k: float = arg(0.001, "proportional gain lambda_k of the k_t update (paper: 0.001)")
    lr: float = arg(1e-4, "Adam learning rate for G and D (paper: 1e-4, range [5e-5, 1e-4])")
    beta1: float = arg(0.9, "Adam beta1 (paper: Adam defaults)")
    beta2: float = arg(0.999, "Adam beta2 (paper: Adam defaults)")
    lr_window: int = arg(1000, "halve the lr when mean M_global over windows of N steps stalls (0: never; paper: 'when M stalls')")
    lr_patience: int = arg(3, "windows without a 1% improvement of M_global before the lr is halved")
    flip: Optional[bool] = arg(None, "random horizontal flips (default: on, off for digits)")
    ema: bool = arg(False, "sample, export and score with an EMA of G's weights (not in the paper)")
    ema_decay: float = arg(0.999, "EMA decay per step")
    seed: int = arg(0, "random seed")
    device: str = arg("auto", "cuda, cuda:N, cpu, or auto")
    compile: Optional[bool] = arg(None, "torch.compile G and D (default: on for CUDA, off on the CPU)")
    amp: str = arg("auto", "autocast dtype: auto = bf16 on CUDA, off on the CPU", choices=["auto", "bf16", "fp16", "off"])
    run_dir: str = arg("runs/began", "where config, metrics, samples and checkpoint are written")
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


def conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)


class Decoder(nn.Module):
    """h (or z) -> FC -> 8x8xn -> [conv, ELU, conv, ELU, upsample x2] ... -> conv to the image."""

    def __init__(self, in_dim: int, width: int, image_size: int, channels: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, width * 8 * 8)
        layers = []
        for i in range(int(math.log2(image_size // 8)) + 1):
            if i > 0:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers += [conv(width, width), nn.ELU(), conv(width, width), nn.ELU()]
        layers.append(conv(width, channels))
        self.net = nn.Sequential(*layers)
        self.width = width

    def forward(self, h):
        return self.net(self.fc(h).view(len(h), self.width, 8, 8))


class Encoder(nn.Module):
    """image -> conv n -> [conv n*i, ELU, conv n*i, ELU, stride-2 conv to n*(i+1)] ... -> FC -> h."""

    def __init__(self, h_dim: int, width: int, image_size: int, channels: int):
        super().__init__()
        n_blocks = int(math.log2(image_size // 8)) + 1
        layers = [conv(channels, width), nn.ELU()]
        for i in range(1, n_blocks + 1):
            c = width * i
            layers += [conv(c, c), nn.ELU(), conv(c, c), nn.ELU()]
            if i < n_blocks:
                layers += [conv(c, c + width, stride=2), nn.ELU()]
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(width * n_blocks * 8 * 8, h_dim)

    def forward(self, x):
        return self.fc(self.net(x).flatten(1))


class Discriminator(nn.Module):
    """The autoencoder D(v) = decoder(encoder(v)); it returns the reconstruction."""

    def __init__(self, h_dim: int, width: int, image_size: int, channels: int):
        super().__init__()
        self.encoder = Encoder(h_dim, width, image_size, channels)
        self.decoder = Decoder(h_dim, width, image_size, channels)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def sample_z(n: int, z_dim: int, device) -> torch.Tensor:
    return torch.rand(n, z_dim, device=device) * 2 - 1  # U(-1, 1), as in the paper


def reconstruction_loss(images, reconstructions):
    """L(v) = mean |v - D(v)| over pixels and the batch, in float32."""
    return (images.float() - reconstructions.float()).abs().mean()


def d_loss(loss_real, loss_fake, k):
    """L_D = L(x) - k_t * L(G(z))."""
    return loss_real - k * loss_fake


def g_loss(loss_fake):
    """L_G = L(G(z))."""
    return loss_fake


def update_k(k, loss_real, loss_fake, gamma: float, lambda_k: float):
    """k_{t+1} = clip(k_t + lambda_k * (gamma * L(x) - L(G(z))), 0, 1), in place on the device."""
    k.copy_((k + lambda_k * (gamma * loss_real - loss_fake)).clamp(0.0, 1.0))


def convergence_measure(loss_real, loss_fake, gamma: float):
    """M_global = L(x) + |gamma * L(x) - L(G(z))|."""
    return loss_real + (gamma * loss_real - loss_fake).abs()


def train_step(G, D, opt_g, opt_d, scaler, real, k, args, amp_dtype, world):
    """One D update (real and fake in one autoencoder pass), one G update, then the k_t update."""
    autocast = torch.autocast(real.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    z = sample_z(len(real), args.z_dim, real.device)
    with autocast:
        fake = G(z)
        both = torch.cat([real, fake.detach()])
        loss_real, loss_fake_d = (reconstruction_loss(v, r) for v, r in zip(both.chunk(2), D(both).chunk(2)))
        loss_d = d_loss(loss_real, loss_fake_d, k)
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)
    with autocast:
        loss_fake = reconstruction_loss(fake, D(fake))  # D's gradients from this pass are discarded by the next zero_grad
        loss_g = g_loss(loss_fake)
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    energies = torch.stack([loss_real.detach(), loss_fake.detach()])
    if world > 1:  # the same k_t and M_global on every rank; an async collective, no host sync
        torch.distributed.all_reduce(energies, op=torch.distributed.ReduceOp.AVG)
    update_k(k, energies[0], energies[1], args.gamma, args.lambda_k)
    return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(), "loss_real": energies[0], "loss_fake": energies[1],
            "k": k.clone(), "M_global": convergence_measure(energies[0], energies[1], args.gamma)}


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float):
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return G(z).float()


def main():
    args, given = parse_args(Args, __doc__.split("\n")[0])
    with user_errors():
        state = None
        if args.resume:
            state = load_checkpoint(args.resume, "began")
            args = merge_resumed(args, given, state["args"])
        if args.image_size < 8 or args.image_size & (args.image_size - 1):
            raise UserError(f"--image-size must be a power of two >= 8, got {args.image_size}")
        if args.dataset in datasets.TOY_DATASETS:
            raise UserError("began.py trains on images; for ring8 / grid25 use minimal_gan.py")
        if not 0 < args.gamma <= 1:
            raise UserError(f"--gamma must be in (0, 1], got {args.gamma}")
        if args.width < 1 or args.h_dim < 1 or args.lr_window < 0 or args.lr_patience < 0:
            raise UserError("--width and --h-dim must be at least 1, --lr-window and --lr-patience 0 or more")
        device, rank, world = init_distributed(args.device)
        flip = args.flip if args.flip is not None else args.dataset not in ("mnist", "fashion_mnist")
        data = datasets.load(args.dataset, args.data_dir, args.image_size, device, flip=flip, rank=rank, world=world)
        channels = data.shape[0]
        amp_dtype = resolve_amp(args.amp, device)

        torch.manual_seed(args.seed)  # identical initial weights on every rank
        G = Decoder(args.z_dim, args.width, args.image_size, channels).to(device)
        D = Discriminator(args.h_dim, args.width, args.image_size, channels).to(device)
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        fused = device.type == "cuda"
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), fused=fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), fused=fused)
        # threshold 0.01 (relative): "stalls" = less than 1% better than the best window so far
        plateaus = [torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=args.lr_patience, threshold=0.01)
                    for opt in (opt_g, opt_d)]
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        k = torch.zeros((), device=device)  # k_0 = 0; stays on the device
        m_sum = torch.zeros((), device=device)  # M_global summed over the current lr window
        z_fixed = sample_z(64, args.z_dim, device)
        torch.manual_seed(args.seed + 1 + rank)  # each rank draws its own batches and z
        step = 0
        if state is not None:
            G.load_state_dict(state["G"]), D.load_state_dict(state["D"])
            opt_g.load_state_dict(state["opt_g"]), opt_d.load_state_dict(state["opt_d"])
            for plateau, saved in zip(plateaus, state["plateaus"]):
                plateau.load_state_dict(saved)
            scaler.load_state_dict(state["scaler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            k.copy_(state["k"]), m_sum.copy_(state["m_sum"])
            z_fixed, step = state["z_fixed"].to(device), state["step"]
            restore_rng(state["rng"], rank, world)

        G_train, D_train = G, D
        if world > 1:
            G_train = nn.parallel.DistributedDataParallel(G)
            D_train = nn.parallel.DistributedDataParallel(D)
        if resolve_compile(args.compile, device):
            G_train, D_train = torch.compile(G_train), torch.compile(D_train)

        run = Run(args, "began", args.run_dir, resumed=state is not None, main_process=rank == 0)
        G_sample = ema if ema is not None else G
        fid = None
        use_fid = args.fid == "on" or (args.fid == "auto" and device.type == "cuda")

        def score_fid():
            nonlocal fid
            fid = fid or FID.try_create(data, args.data_dir, args.fid_weights, device)
            if fid is None:
                return None
            return fid.score(lambda n: generate(G_sample, sample_z(n, args.z_dim, device)), args.fid_samples)

        def checkpoint():
            run.save_checkpoint({"step": step, "args": dataclasses.asdict(args), "G": G.state_dict(),
                                 "D": D.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                                 "plateaus": [p.state_dict() for p in plateaus], "k": k, "m_sum": m_sum,
                                 "scaler": scaler.state_dict(), "z_fixed": z_fixed, "rng": all_rng_states(world)})

        stop = StopSignal()
        if step < args.steps:
            print(f"began: {args.dataset} {tuple(data.shape)} on {device}, amp {amp_dtype}, "
                  f"compile {resolve_compile(args.compile, device)}, from step {step} to {args.steps}", flush=True)
        while step < args.steps:
            real, _ = data.batch(args.batch_size)
            losses = train_step(G_train, D_train, opt_g, opt_d, scaler, real, k, args, amp_dtype, world)
            if ema is not None:
                ema_update(ema, G, args.ema_decay)
            m_sum += losses["M_global"]
            step += 1
            if args.lr_window and step % args.lr_window == 0:  # one host read per window
                m_mean = (m_sum / args.lr_window).item()
                for plateau in plateaus:
                    plateau.step(m_mean)
                m_sum.zero_()
            losses["lr"] = opt_g.param_groups[0]["lr"]
            last = step == args.steps
            stopping = stop_requested(stop, world, device)
            if step % args.log_every == 0 or last or stopping:
                check_finite({n: v for n, v in losses.items() if torch.is_tensor(v)}, step, scaler)
                run.log(step, args.steps, losses, args.batch_size * world)
            if (args.sample_every and step % args.sample_every == 0) or last:
                run.save_grid(step, generate(G_sample, z_fixed))
            if use_fid and rank == 0 and ((args.fid_every and step % args.fid_every == 0) or last):
                value = score_fid()
                if value is not None:
                    run.write_metrics(step, {"fid": value})
                    print(f"step {step}: FID {value:.2f} ({args.fid_samples} samples)", flush=True)
            if (args.ckpt_every and step % args.ckpt_every == 0) or last or stopping:
                check_finite({n: v for n, v in losses.items() if torch.is_tensor(v)}, step, scaler)
                checkpoint()
            if stopping:
                print(f"stopped by {stop.received or 'another rank'} at step {step}; continue with --resume {args.run_dir}")
                sys.exit(0)
        if args.export and rank == 0:
            export_images(lambda n: generate(G_sample, sample_z(n, args.z_dim, device)), args.export,
                          Path(args.run_dir) / "export", args.batch_size)
        run.close()


if __name__ == "__main__":
    main()
