"""LSGAN: Mao, Li, Xie, Lau, Wang & Smolley, "Least Squares Generative Adversarial Networks",
ICCV 2017, arXiv:1611.04076.

Objective (the paper's a-b-c form): D has a linear output (no sigmoid) and regresses to a for
fake and b for real images, G pushes D's output on fakes towards c:
    d_loss = 0.5 * E[(D(x) - b)^2] + 0.5 * E[(D(G(z)) - a)^2]
    g_loss = 0.5 * E[(D(G(z)) - c)^2]
Codings ("Parameters selection" in the paper), --coding: 0-1-1 = (a, b, c) = (0, 1, 1), the 0-1
binary coding in which G wants its samples called real, used in the paper's experiments and our
default; m1-1-0 = (-1, 1, 0), for which b - c = 1 and b - a = 2, so that with the optimal D, G
minimises the Pearson chi^2 divergence between p_data + p_g and 2 p_g. The paper reports both
perform alike. ("m1" because argparse would read "-1-1-0" as a flag.)

Architecture: dcgan.py's networks (stride-2 4x4 (transposed) convolutions, BatchNorm, ReLU /
LeakyReLU(0.2), tanh output), 64x64 by default, with D's last 4x4 convolution read as the
linear output. The paper's LSUN model is larger and works at 112x112 (a fully connected layer to
7x7x256, then stacked 3x3 transposed convolutions with stride 2 and 1; a 5x5-convolution D ending
in a fully connected layer). We keep the DCGAN backbone because 112 is not a power of two our data
and FID pipeline use, and because then only the loss differs from dcgan.py, which is the paper's
own comparison (LSGANs vs regular GANs on the same networks).

Hyperparameters: Adam lr 2e-4, beta1 0.5, batch 128, weights ~ N(0, 0.02): DCGAN's, which the paper
follows for beta1 (the authors' LSUN code used lr 1e-3 with their larger model).
Differences from the paper: the architecture above; z ~ N(0, I) instead of U(-1, 1); batches are
drawn with replacement.
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
    image_size: int = arg(64, "training resolution (paper: 112x112 LSUN with a larger net)",
                          within="[32, inf)", power_of_two=True)
    batch_size: int = arg(128, "batch size per GPU (DCGAN: 128)")
    z_dim: int = arg(100, "dimension of z (DCGAN: 100)", within="[1, inf)")
    width: int = arg(64, "channels of the last G layer and first D layer "
                     "(dcgan.py's: 64, 512 at 4x4)", within="[1, inf)")
    coding: str = arg("0-1-1", "targets a-b-c: 0-1-1 (paper's experiments) or m1-1-0, i.e. "
                      "(-1, 1, 0), the Pearson chi^2 coding", choices=["0-1-1", "m1-1-0"])
    lr: float = arg(2e-4, "Adam learning rate for G and D (DCGAN's 2e-4; the authors' LSUN code "
                    "used 1e-3 with their larger net)", within="(0, inf)")
    beta1: float = arg(0.5, "Adam beta1 (paper: 0.5)", within="[0, 1)")
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
        return self.net(x).flatten()  # one linear output per image: no sigmoid


# (a, b, c): the target of D for fake images, of D for real images, and of G for its fakes.
CODINGS = {"0-1-1": (0.0, 1.0, 1.0), "m1-1-0": (-1.0, 1.0, 0.0)}


def d_loss(real_out, fake_out, a: float, b: float):
    """0.5 * E[(D(x) - b)^2] + 0.5 * E[(D(G(z)) - a)^2], in float32."""
    return (0.5 * (real_out.float() - b).square().mean()
            + 0.5 * (fake_out.float() - a).square().mean())


def g_loss(fake_out, c: float):
    """0.5 * E[(D(G(z)) - c)^2], in float32."""
    return 0.5 * (fake_out.float() - c).square().mean()


def train_step(G, D, opt_g, opt_d, scaler, real, z_dim, amp_dtype, coding):
    """One D update on a real and a fake batch, then one G update. Returns detached losses."""
    a, b, c = coding
    autocast = autocast_to(real.device.type, amp_dtype)  # bf16/fp16 under --amp, else float32
    z = torch.randn(len(real), z_dim, device=real.device)
    with autocast:
        fake = G(z)
        # Two D forwards (real, then fake): separate BatchNorm batches for real and fake,
        # as in DCGAN.
        real_out, fake_out = D(real), D(fake.detach())
        loss_d = d_loss(real_out, fake_out, a, b)
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)
    with autocast, frozen(D):  # gradients through D for G, none for D's own weights
        loss_g = g_loss(D(fake), c)
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(),
            "d_real": real_out.detach().float().mean(), "d_fake": fake_out.detach().float().mean()}


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
    run = Run.start("lsgan", Args, "Least Squares Generative Adversarial Networks")
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
                                run.amp_dtype, CODINGS[args.coding])
            if ema is not None:
                ema_update(ema, G, args.ema_decay)
            # count the step; then log, sample, score FID, checkpoint and stop on a signal, as due
            run.after_step(losses)
        # --export N samples
        run.finish()


if __name__ == "__main__":
    main()
