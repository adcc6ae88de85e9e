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

Differences from the paper: the DCGAN backbone rather than the paper's ResNet (used for its
CIFAR-10 and LSUN numbers); CelebA by default (LSUN and 64x64 ImageNet are not read by
common/data.py); batches drawn with replacement.
Sampling (grids, FID, --export) uses BatchNorm's running statistics (eval mode); the authors' code
samples in train mode (batch statistics), which scored a little better on the CPU recipes
(benchmarks/RESULTS.md: classifier FD 0.5 to 4.4 lower in 11 of 12 runs, dcgan's FID 80.9
against 81.4). We keep running statistics at that small cost: a sample then does not depend on the
rest of its batch, so grids, exports and FID agree at any batch size.
"""
import copy
import contextlib
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
                       "(paper: LSUN, CIFAR-10)")
    image_size: int = arg(64, "training resolution (paper: 32 and 64)",
                          within="[32, inf)", power_of_two=True)
    batch_size: int = arg(64, "batch size per GPU (paper: 64)")
    steps: int = arg(20000, "generator updates to train for (authors' 64x64 code: 200000)")
    z_dim: int = arg(128, "dimension of z (authors' code: 128)", within="[1, inf)")
    width: int = arg(64, "channels of the last G layer and first critic layer (authors' code: 64)",
                     within="[1, inf)")
    lr: float = arg(1e-4, "Adam learning rate for G and the critic (paper: 1e-4)",
                    within="(0, inf)")
    beta1: float = arg(0.0, "Adam beta1 (paper: 0)", within="[0, 1)")
    beta2: float = arg(0.9, "Adam beta2 (paper: 0.9)", within="[0, 1)")
    gp_lambda: float = arg(10.0, "gradient penalty weight lambda (paper: 10)", within="[0, inf)")
    n_critic: int = arg(5, "critic updates per generator update (paper: 5)", within="[1, inf)")


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
            # Layer norm per sample over (C, H, W), per-channel affine:
            # no coupling across the batch.
            layers += [nn.Conv2d(c, c * 2, kernel_size=4, stride=2, padding=1, bias=False),
                       nn.GroupNorm(num_groups=1, num_channels=c * 2),
                       nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        # an unbounded score, no sigmoid
        layers += [nn.Conv2d(c, 1, kernel_size=4, stride=1, padding=0)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten()  # one score per image


def d_loss(critic_real, critic_fake):
    """Wasserstein part of the critic loss, E D(G(z)) - E D(x), in float32 (the penalty is added
    apart)."""
    return critic_fake.float().mean() - critic_real.float().mean()


def g_loss(critic_fake):
    """The generator minimises -E D(G(z))."""
    return -critic_fake.float().mean()


def interpolate(real, fake):
    """x_hat on the segment from fake to real, with one alpha ~ U[0, 1] per sample, shape
    (B, 1, 1, 1)."""
    alpha = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device)
    return alpha * real + (1 - alpha) * fake


def gradient_penalty(critic, real, fake, gp_lambda, autocast=contextlib.nullcontext(), scaler=None):
    """lambda * mean_i (||grad_x D(x_hat_i)||_2 - 1)^2 in float32, differentiable w.r.t. the
    critic's parameters.
    `critic` is the plain nn.Module, which shares its parameters with the compiled and DDP ones."""
    x_hat = interpolate(real.detach().float(), fake.detach().float()).requires_grad_(True)
    with autocast:
        # plain module: torch.compile has no double backward (PyTorch #91469, #181581)
        score = critic(x_hat)
    # a tensor: no host sync
    scale = scaler.scale(torch.ones((), device=x_hat.device)) if scaler is not None else 1.0
    # Of the scaled score, then unscaled (PyTorch's AMP penalty recipe):
    # no fp16 underflow, an overflow skips the step.
    (grad,) = torch.autograd.grad(score.float().sum() * scale, x_hat, create_graph=True)
    norm = (grad.float() / scale).flatten(1).norm(dim=1)  # over C, H, W of each sample
    return gp_lambda * ((norm - 1) ** 2).mean()


def critic_step(G, D, D_plain, opt_d, scaler, data, batch_size, z_dim, autocast, gp_lambda):
    """One critic update on its own real batch, z and alpha (Algorithm 1, lines 3-9). Returns
    detached tensors: d_loss, gp, mean critic(real), mean critic(fake). Without a GradScaler
    (float32, bf16) it never waits for the GPU, so it can be captured whole in a CUDA graph
    (benchmarks/cuda_graphs.md)."""
    real, _ = data.batch(batch_size)
    z = torch.randn(batch_size, z_dim, device=real.device)
    with autocast:
        with torch.no_grad():
            fake = G(z)
        # one forward: the critic has no batch coupling
        scores = D(torch.cat([real, fake.to(real.dtype)]))
        critic_real, critic_fake = scores[:batch_size], scores[batch_size:]
        loss_w = d_loss(critic_real, critic_fake)
    # The plain critic, outside DDP: its reducer never sees the penalty's inner autograd.grad.
    gp = gradient_penalty(D_plain, real, fake, gp_lambda, autocast, scaler)
    loss_d = loss_w + gp
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()  # one backward of both parts: DDP averages the sum
    scaler.step(opt_d)
    scaler.update()  # a GradScaler allows one step per optimizer between updates
    return (loss_d.detach(), gp.detach(), critic_real.detach().float().mean(),
            critic_fake.detach().float().mean())


def train_step(G, D, D_plain, opt_g, opt_d, scaler, data, batch_size, z_dim, amp_dtype, n_critic,
               gp_lambda):
    """n_critic critic updates, then one G update. Returns detached losses."""
    device = data.device
    autocast = autocast_to(device.type, amp_dtype)  # bf16/fp16 under --amp, else float32
    for _ in range(n_critic):
        loss_d, gp, d_real, d_fake = critic_step(G, D, D_plain, opt_d, scaler, data, batch_size,
                                                 z_dim, autocast, gp_lambda)
    z = torch.randn(batch_size, z_dim, device=device)
    with autocast, frozen(D):  # gradients through the critic for G, none for its own weights
        loss_g = g_loss(D(G(z)))
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return {"d_loss": loss_d, "g_loss": loss_g.detach(), "gp": gp, "wasserstein": d_real - d_fake,
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
    run = Run.start("wgan_gp", Args, "Improved Training of Wasserstein GANs")
    args, device = run.args, run.device
    with user_errors():
        # the dataset decoded once into a uint8 tensor on the device; batches are drawn from it
        data = run.load_data(args.image_size)
        G = Generator(args.z_dim, args.width, args.image_size, data.shape[0]).to(device)
        D = Critic(args.width, args.image_size, data.shape[0]).to(device)
        G.apply(init_weights), D.apply(init_weights)
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        fused = device.type == "cuda"
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr,
                                 betas=(args.beta1, args.beta2), fused=fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr,
                                 betas=(args.beta1, args.beta2), fused=fused)
        z_fixed = torch.randn(64, args.z_dim, device=device)
        # the state a checkpoint holds: restored on --resume, else a new run in RUN_DIR
        run.restore_or_start(G=G, D=D, ema=ema, opt_g=opt_g, opt_d=opt_d, z_fixed=z_fixed)
        G_sample = ema if ema is not None else G
        # how sample grids, FID and --export draw images
        run.set_samplers(sample=lambda k: generate(G_sample,
                                                   torch.randn(k, args.z_dim, device=device)),
                         grid=lambda: generate(G_sample, z_fixed), own_bn=ema)
        # DDP across processes and torch.compile, when on
        # DDP: G keeps per-GPU BatchNorm statistics (also avoids PyTorch #175024).
        G_train = run.wrap(G, forward_sync_buffers=False)
        D_train = run.wrap(D, forward_sync_buffers=False)

        # one iteration per G update; step counts the updates made before it (0, 1, ...)
        for step in run.steps():
            losses = train_step(G_train, D_train, D, opt_g, opt_d, run.scaler, data,
                                args.batch_size, args.z_dim, run.amp_dtype, args.n_critic,
                                args.gp_lambda)
            if ema is not None:
                ema_update(ema, G, args.ema_decay)
            # count the step; then log, sample, score FID, checkpoint and stop on a signal, as due
            run.after_step(losses)
        # --export N samples
        run.finish()


if __name__ == "__main__":
    main()
