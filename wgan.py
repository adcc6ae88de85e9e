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
replacement rather than in epochs.
Sampling (grids, FID, --export) uses BatchNorm's running statistics (eval mode); the authors' code
samples in train mode (batch statistics), which scored a little better on the CPU recipes
(benchmarks/RESULTS.md: classifier FD 0.5 to 4.4 lower in 11 of 12 runs, dcgan's FID 80.9
against 81.4). We keep running statistics at that small cost: a sample then does not depend on the
rest of its batch, so grids, exports and FID agree at any batch size.
"""
import copy
import dataclasses
import math

import torch
import torch.nn as nn

from common.cli import RunArgs, arg, user_errors
from common.run import Run
from common.step import autocast_to, frozen


@dataclasses.dataclass
class Args(RunArgs):
    dataset: str = arg("celeba", "mnist, fashion_mnist, cifar10, celeba, or a folder of images "
                       "(paper: LSUN bedrooms)")
    image_size: int = arg(64, "training resolution (paper: 64)",
                          within="[32, inf)", power_of_two=True)
    batch_size: int = arg(64, "batch size per GPU (paper: 64)")
    z_dim: int = arg(100, "dimension of z (paper's code: 100)", within="[1, inf)")
    width: int = arg(64, "channels of the last G layer and first critic layer (paper's code: 64)",
                     within="[1, inf)")
    lr: float = arg(5e-5, "RMSprop learning rate for G and the critic (paper: 5e-5)",
                    within="(0, inf)")
    clip: float = arg(0.01, "critic weights are clipped to [-clip, clip] (paper: c = 0.01)",
                      within="(0, inf)")
    n_critic: int = arg(5, "critic updates per generator update (paper: 5)", within="[1, inf)")
    critic_burst: bool = arg(True, "100 critic updates for the first 25 G updates and every 500th "
                             "(authors' code)")


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
            layers += [nn.ConvTranspose2d(c, c // 2, kernel_size=4, stride=2, padding=1,
                                          bias=False),
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
        layers = [nn.Conv2d(channels, c, kernel_size=4, stride=2, padding=1),
                  nn.LeakyReLU(0.2, inplace=True)]
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


def train_step(G, D, opt_g, opt_d, scaler, data, batch_size, z_dim, amp_dtype, n_steps, clip,
               d_params):
    """n_steps critic updates, each on its own real batch, then one G update. Returns detached
    losses."""
    device = data.device
    autocast = autocast_to(device.type, amp_dtype)  # bf16/fp16 under --amp, else float32
    for _ in range(n_steps):
        real, _ = data.batch(batch_size)
        z = torch.randn(batch_size, z_dim, device=device)
        with autocast:
            with torch.no_grad():
                fake = G(z)
            # Separate real and fake forwards, as in the paper:
            # the critic's BatchNorm sees one kind per batch.
            critic_real, critic_fake = D(real), D(fake)
            loss_d = d_loss(critic_real, critic_fake)
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        scaler.update()  # a GradScaler allows one step per optimizer between updates
        clip_weights(d_params, clip)
    z = torch.randn(batch_size, z_dim, device=device)
    with autocast, frozen(D):  # gradients through the critic for G, none for its own weights
        loss_g = g_loss(D(G(z)))
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    d_real, d_fake = critic_real.detach().float().mean(), critic_fake.detach().float().mean()
    return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(), "wasserstein": d_real - d_fake,
            "d_real": d_real, "d_fake": d_fake}


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float):
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    # BatchNorm statistics copied; before sampling, the run (own_bn) recomputes them
    # for the EMA weights.
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Images from the plain (uncompiled) G in eval mode: BatchNorm uses its running statistics."""
    G.eval()
    images = G(z).float()
    G.train()
    return images


def main():
    # flags (the saved ones under --resume), device, precision, DDP under torchrun, seed
    run = Run.start("wgan", Args, "Wasserstein GAN")
    args, device = run.args, run.device
    with user_errors():
        # the dataset decoded once into a uint8 tensor on the device; batches are drawn from it
        data = run.load_data(args.image_size)
        G = Generator(args.z_dim, args.width, args.image_size, data.shape[0]).to(device)
        D = Critic(args.width, args.image_size, data.shape[0]).to(device)
        G.apply(init_weights), D.apply(init_weights)
        d_params = list(D.parameters())
        clip_weights(d_params, args.clip)  # every critic forward happens inside the box
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        # Under fp16 a GradScaler step of this (unfused) RMSprop reads found-inf on the host: a sync
        # per critic step, 6 per G step. bf16 needs no scaler: prefer --amp bf16 on GPUs that have
        # it (the default there).
        opt_g = torch.optim.RMSprop(G.parameters(), lr=args.lr)
        opt_d = torch.optim.RMSprop(D.parameters(), lr=args.lr)
        z_fixed = torch.randn(64, args.z_dim, device=device)
        # the state a checkpoint holds: restored on --resume, else a new run in RUN_DIR
        run.restore_or_start(G=G, D=D, ema=ema, opt_g=opt_g, opt_d=opt_d, z_fixed=z_fixed)
        G_sample = ema if ema is not None else G
        # how sample grids, FID and --export draw images
        run.set_samplers(sample=lambda k: generate(G_sample,
                                                   torch.randn(k, args.z_dim, device=device)),
                         grid=lambda: generate(G_sample, z_fixed), own_bn=ema)
        # DDP across processes and torch.compile, when on
        # DDP: per-GPU BatchNorm statistics (also avoids PyTorch #175024); ranks clip identical
        # all-reduced weights.
        G_train = run.wrap(G, forward_sync_buffers=False)
        D_train = run.wrap(D, forward_sync_buffers=False)

        # one iteration per G update; step counts the updates made before it (0, 1, ...)
        for step in run.steps():
            n_steps = critic_steps(step, args.n_critic, args.critic_burst)
            losses = train_step(G_train, D_train, opt_g, opt_d, run.scaler, data, args.batch_size,
                                args.z_dim, run.amp_dtype, n_steps, args.clip, d_params)
            if ema is not None:
                ema_update(ema, G, args.ema_decay)
            # count the step; then log, sample, score FID, checkpoint and stop on a signal, as due
            run.after_step(losses)
        # --export N samples
        run.finish()


if __name__ == "__main__":
    main()
