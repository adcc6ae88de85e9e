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
batches are drawn with replacement from the dataset rather than in epochs. The authors' released
code (Newmu/dcgan_code, faces) uses 5x5 kernels, 128 filters (1024 at 4x4) and a dense first G
layer; the 4x4 kernels and width 64 (512 at 4x4) here are those of the widely used PyTorch port.
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
import torch.nn.functional as F

from common.cli import RunArgs, arg, user_errors
from common.run import Run
from common.step import autocast_to, frozen


@dataclasses.dataclass
class Args(RunArgs):
    image_size: int = arg(64, "training resolution (paper: 64)",
                          within="[32, inf)", power_of_two=True)
    batch_size: int = arg(128, "batch size per GPU (paper: 128)")
    z_dim: int = arg(100, "dimension of z (paper: 100)", within="[1, inf)")
    width: int = arg(64, "channels of the last G layer and first D layer "
                     "(PyTorch port: 64, 512 at 4x4; authors' code: 128)", within="[1, inf)")
    lr: float = arg(2e-4, "Adam learning rate for G and D (paper: 2e-4)", within="(0, inf)")
    beta1: float = arg(0.5, "Adam beta1 (paper: 0.5; 0.9 oscillated)", within="[0, 1)")
    beta2: float = arg(0.999, "Adam beta2 (paper: default 0.999)", within="[0, 1)")


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


class Discriminator(nn.Module):
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
    autocast = autocast_to(real.device.type, amp_dtype)  # bf16/fp16 under --amp, else float32
    z = torch.randn(len(real), z_dim, device=real.device)
    with autocast:
        fake = G(z)
        # Two D forwards (real, then fake): the paper keeps real and fake in separate batches
        # for BatchNorm.
        real_logits, fake_logits = D(real), D(fake.detach())
        loss_d = d_loss(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)
    with autocast, frozen(D):  # gradients through D for G, none for D's own weights
        loss_g = g_loss(D(fake))
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(),
            "d_real": real_logits.detach().float().mean(),
            "d_fake": fake_logits.detach().float().mean()}


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
    run = Run.start("dcgan", Args, "Unsupervised Representation Learning with Deep Convolutional "
                    "Generative Adversarial Networks")
    args, device = run.args, run.device
    with user_errors():
        # the dataset decoded once into a uint8 tensor on the device; batches are drawn from it
        data = run.load_data(args.image_size)
        G = Generator(args.z_dim, args.width, args.image_size, data.shape[0]).to(device)
        D = Discriminator(args.width, args.image_size, data.shape[0]).to(device)
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
        # Under DDP each GPU keeps its own BatchNorm statistics, as on the paper's one GPU (this
        # also avoids PyTorch #175024).
        G_train = run.wrap(G, forward_sync_buffers=False)
        D_train = run.wrap(D, forward_sync_buffers=False)

        # one iteration per G update; step counts the updates made before it (0, 1, ...)
        for step in run.steps():
            real, _ = data.batch(args.batch_size)
            losses = train_step(G_train, D_train, opt_g, opt_d, run.scaler, real, args.z_dim,
                                run.amp_dtype)
            if ema is not None:
                ema_update(ema, G, args.ema_decay)
            # count the step; then log, sample, score FID, checkpoint and stop on a signal, as due
            run.after_step(losses)
        # --export N samples
        run.finish()


if __name__ == "__main__":
    main()
