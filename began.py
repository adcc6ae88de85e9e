"""BEGAN: Berthelot, Schumm & Metz, "BEGAN: Boundary Equilibrium Generative Adversarial
Networks", 2017, arXiv:1703.10717.

The discriminator D is an autoencoder; its L1 reconstruction error is the "energy" (sec. 3):
    L(v)     = mean |v - D(v)|                              (eta = 1, per pixel)
    d_loss   = L(x) - k_t * L(G(z_D))
    g_loss   = L(G(z_G))
    k_{t+1}  = clip(k_t + lambda_k * (gamma * L(x) - L(G(z_G))), 0, 1),   k_0 = 0
    M_global = L(x) + |gamma * L(x) - L(G(z_G))|           (convergence measure, logged)
L(x) and L(G(z)) in k_t, M_global and G's loss all read D before its update (one D, as in the
equations): both players step together after both backward passes, as the official code steps both
optimizers from one graph; z_D = z_G: one z per step.

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
on the device; when a window's mean has not improved on the best by 1% for more than
--lr-patience windows in a row, both learning rates are halved.
Differences from the paper: the encoder widens at each stride-2 convolution (n*i -> n*(i+1)), one
convolution earlier than fig. 1 and the carpedm20 port, whose subsampling convolution keeps n*i
filters and whose next block's first convolution widens (not yet changed: it would move every
BEGAN figure below); batches drawn with replacement; no skip connections (the paper's
optional "vanishing residuals"; h0 concatenated after each upsampling lost k_t in the learning
test's run). Initialisation (the paper gives none): PyTorch's defaults; the official code's
TF-slim defaults (Xavier-uniform weights, zero biases) lost k_t by step 500 and covered no class
in the 16x16 learning-test run (PyTorch's: five).
The short CPU runs behind --k-init, --beta1 and --lr-g (k_t drained to 0 on digits with the
paper's k_0 = 0; what else was tried and what each covered) are in benchmarks/RESULTS.md, "BEGAN".
The defaults stay the paper's.
"""
import copy
import dataclasses
import math
import typing

import torch
import torch.nn as nn

from common.cli import RunArgs, arg, user_errors
from common.run import Run
from common.step import autocast_to, frozen


@dataclasses.dataclass
class Args(RunArgs):
    image_size: int = arg(64, "training resolution (paper: 32 to 256, 64 and 128 shown)",
                          within="[8, inf)", power_of_two=True)
    batch_size: int = arg(16, "batch size per GPU (paper: not stated; 16 is the common choice)")
    z_dim: int = arg(64, "dimension of z ~ U(-1, 1) (paper: Nz = 64)", within="[1, inf)")
    h_dim: int = arg(64, "dimension of the autoencoder embedding h (paper: Nh = 64)",
                     within="[1, inf)")
    width: int = arg(64, "n, the filters of the first encoder block and of every decoder layer "
                     "(paper: 128 at 128x128)", within="[1, inf)")
    gamma: float = arg(0.5, "diversity ratio gamma = E[L(G(z))] / E[L(x)] that k_t steers to "
                       "(paper: 0.5)", within="(0, 1]")
    lambda_k: float = arg(0.001, "proportional gain lambda_k of the k_t update (paper: 0.001)",
                          within="[0, inf)")
    k_init: float = arg(0.0, "k_0, the starting k_t (paper: 0; short runs collapse unless it "
                        "starts near 0.5)", within="[0, 1]")
    lr: float = arg(1e-4, "Adam learning rate for D, and for G unless --lr-g "
                    "(paper: 1e-4, range [5e-5, 1e-4])", within="(0, inf)")
    lr_g: typing.Optional[float] = arg(None, "Adam learning rate for G (default: --lr, one rate as "
                                       "in the paper)", within="(0, inf)")
    beta1: float = arg(0.9, "Adam beta1 (paper: Adam defaults)", within="[0, 1)")
    beta2: float = arg(0.999, "Adam beta2 (paper: Adam defaults)", within="[0, 1)")
    lr_window: int = arg(1000, "halve the lr when mean M_global over windows of N steps stalls "
                         "(0: never; paper: 'when M stalls')", within="[0, inf)")
    lr_patience: int = arg(3, "windows without a 1%% improvement of M_global that are tolerated: "
                           "the lr halves at the next one", within="[0, inf)")


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
    """image -> conv n -> [conv n*i, ELU, conv n*i, ELU, stride-2 conv to n*(i+1)] ...
    -> FC -> h."""

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
    """D's and G's gradients from the same D (real and fake in one autoencoder pass for D, fake
    through the frozen D for G), then both updates and the k_t update."""
    autocast = autocast_to(real.device.type, amp_dtype)  # bf16/fp16 under --amp, else float32
    z = sample_z(len(real), args.z_dim, real.device)
    with autocast:
        fake = G(z)
        both = torch.cat([real, fake.detach()])
        loss_real, loss_fake_d = (reconstruction_loss(v, r)
                                  for v, r in zip(both.chunk(2), D(both).chunk(2)))
        loss_d = d_loss(loss_real, loss_fake_d, k)
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    with autocast, frozen(D):  # gradients through D for G, none for D's own weights
        loss_fake = reconstruction_loss(fake, D(fake))
        loss_g = g_loss(loss_fake)
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_d)
    scaler.step(opt_g)
    scaler.update()
    # k_t and M_global from one D (before its update), as the paper's equations:
    # L(x) and L(G(z)) of the same pass
    energies = torch.stack([loss_real.detach(), loss_fake_d.detach()])
    # DDP: energies averaged over GPUs, so k_t and the lr schedule agree on every rank
    # (no host sync)
    if world > 1:
        torch.distributed.all_reduce(energies, op=torch.distributed.ReduceOp.AVG)
    update_k(k, energies[0], energies[1], args.gamma, args.lambda_k)
    return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(), "loss_real": energies[0],
            "loss_fake": energies[1], "k": k.clone(),
            "M_global": convergence_measure(energies[0], energies[1], args.gamma)}


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float):
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return G(z).float()


def main():
    # flags (the saved ones under --resume), device, precision, DDP under torchrun, seed
    run = Run.start("began", Args, "BEGAN: Boundary Equilibrium Generative Adversarial Networks")
    args, device = run.args, run.device
    with user_errors():
        # the dataset decoded once into a uint8 tensor on the device; batches are drawn from it
        data = run.load_data(args.image_size)
        G = Decoder(args.z_dim, args.width, args.image_size, data.shape[0]).to(device)
        D = Discriminator(args.h_dim, args.width, args.image_size, data.shape[0]).to(device)
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        fused = device.type == "cuda"
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g or args.lr,
                                 betas=(args.beta1, args.beta2), fused=fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr,
                                 betas=(args.beta1, args.beta2), fused=fused)
        # threshold 0.01 (relative): "stalls" = less than 1% better than the best window so far
        plateau_g, plateau_d = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=args.lr_patience,
                                                       threshold=0.01) for opt in (opt_g, opt_d))
        k = torch.full((), args.k_init, device=device)  # k_0; stays on the device
        m_sum = torch.zeros((), device=device)  # M_global summed over the current lr window
        z_fixed = sample_z(64, args.z_dim, device)
        # the state a checkpoint holds: restored on --resume, else a new run in RUN_DIR
        run.restore_or_start(G=G, D=D, ema=ema, opt_g=opt_g, opt_d=opt_d, plateau_g=plateau_g,
                             plateau_d=plateau_d, k=k, m_sum=m_sum, z_fixed=z_fixed)
        G_sample = ema if ema is not None else G
        # how sample grids, FID and --export draw images
        run.set_samplers(sample=lambda n: generate(G_sample, sample_z(n, args.z_dim, device)),
                         grid=lambda: generate(G_sample, z_fixed))
        # DDP across processes and torch.compile, when on
        G_train, D_train = run.wrap(G), run.wrap(D)

        # one iteration per G update; step counts the updates made before it (0, 1, ...)
        for step in run.steps():
            real, _ = data.batch(args.batch_size)
            losses = train_step(G_train, D_train, opt_g, opt_d, run.scaler, real, k, args,
                                run.amp_dtype, run.world)
            if ema is not None:
                ema_update(ema, G, args.ema_decay)
            m_sum += losses["M_global"]
            # M is read from the device once per window
            if args.lr_window and (step + 1) % args.lr_window == 0:
                m_mean = (m_sum / args.lr_window).item()
                plateau_g.step(m_mean), plateau_d.step(m_mean)
                m_sum.zero_()
            # count the step; then log, sample, score FID, checkpoint and stop on a signal, as due
            run.after_step({**losses, "lr": opt_g.param_groups[0]["lr"]})
        # --export N samples
        run.finish()


if __name__ == "__main__":
    main()
