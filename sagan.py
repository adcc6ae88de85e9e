"""SAGAN: Zhang, Goodfellow, Metaxas & Odena, "Self-Attention Generative Adversarial
Networks", 2019 (ICML), arXiv:1805.08318.

Objective (hinge loss, paper eq. 3):
    d_loss = mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))
    g_loss = -mean(D(G(z)))

Self-attention (sec. 3), on a feature map x with C channels and N = H*W positions:
    f(x) = W_f x, g(x) = W_g x, h(x) = W_h x      (1x1 convolutions to C/8 channels)
    beta[j, i] = softmax_i(f(x_i)^T g(x_j))        (no 1/sqrt(d) scaling in the paper)
    o_j = v(sum_i beta[j, i] h(x_i)),  v(x) = W_v x  (1x1 convolution back to C channels)
    y_i = gamma * o_i + x_i,  gamma a learned scalar initialised to 0
Both G and D have one such block, at the 32x32 feature map by default (--attn-res; the paper's
table 1 found feat32 and feat64 best).

Architecture: the ResNet G and D of Miyato et al. (SN-GAN, arXiv:1802.05957) that the paper
builds on. G: z -> linear -> 4x4 -> up-blocks (BN, ReLU, nearest x2, 3x3 conv, BN, ReLU,
3x3 conv; 1x1 conv shortcut) -> BN, ReLU, 3x3 conv, tanh. D: down-blocks (ReLU, 3x3 conv,
ReLU, 3x3 conv, 2x2 average pool; 1x1 conv shortcut) to 4x4, one block without pooling,
ReLU, sum over positions, linear. Spectral normalization (torch.nn.utils.parametrizations.
spectral_norm, one power iteration per forward) on every conv and linear layer of G and D.

Hyperparameters (sec. 5): Adam betas (0, 0.9), two timescales: lr 1e-4 for G, 4e-4 for D, one
D step per G step; z 128-d N(0, I); batch 256 (paper), 64 here by default.
Differences from the paper: the paper's ImageNet model is class-conditional (conditional
BatchNorm in G, projection in D); this file is unconditional (plain BatchNorm, no projection),
which the rest of this collection also is. Default size 64x64 instead of 128x128. PyTorch's
default initialisation. EMA of G (--ema) is not in the paper and is off by default. Attention
follows the paper's text; the authors' released code differs from it: the value path h has C/2
channels, and keys and values are 2x2 max-pooled (attention over a quarter of the positions, a 4x
cheaper map).
"""
import copy
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.nn.utils.parametrizations import spectral_norm

from common.cli import RunArgs, UserError, arg, user_errors
from common.run import Run
from common.step import autocast_to, frozen


@dataclasses.dataclass
class Args(RunArgs):
    image_size: int = arg(64, "training resolution (paper: 128)",
                          within="[16, inf)", power_of_two=True)
    batch_size: int = arg(64, "batch size per GPU (paper: 256)")
    z_dim: int = arg(128, "dimension of z (paper: 128)", within="[1, inf)")
    width: int = arg(64, "channels at full resolution; halving the size doubles them, up to 16x "
                     "(paper: 64; attention takes width / 8)", within="[8, inf)")
    attn_res: int = arg(32, "feature-map size of the self-attention block in G and D "
                        "(paper: best at 32 and 64; 0: none)")
    lr_g: float = arg(1e-4, "Adam learning rate of G (paper: 1e-4, two-timescale rule)",
                      within="(0, inf)")
    lr_d: float = arg(4e-4, "Adam learning rate of D (paper: 4e-4)", within="(0, inf)")
    beta1: float = arg(0.0, "Adam beta1 (paper: 0)", within="[0, 1)")
    beta2: float = arg(0.9, "Adam beta2 (paper: 0.9)", within="[0, 1)")


def sn_conv(c_in: int, c_out: int, kernel_size: int, bias: bool = True) -> nn.Module:
    # Under bf16/fp16 autocast the power iteration follows autocast's precision: sigma to about 1%
    # (tested on the CPU).
    return spectral_norm(nn.Conv2d(c_in, c_out, kernel_size=kernel_size, padding=kernel_size // 2,
                                   bias=bias))


class SelfAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.f, self.g, self.h = (sn_conv(channels, channels // 8, 1, bias=False) for _ in range(3))
        self.v = sn_conv(channels // 8, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))  # starts as the identity: local features first

    def forward(self, x):
        f, g, h = (rearrange(m(x), "b c y x -> b 1 (y x) c") for m in (self.f, self.g, self.h))
        # position j attends with g(x_j) over keys f(x_i); scale 1: the paper's
        # s_ij = f(x_i)^T g(x_j)
        o = F.scaled_dot_product_attention(g, f, h, scale=1.0)
        o = rearrange(o, "b 1 (y x) c -> b c y x", y=x.shape[2])
        return x + self.gamma * self.v(o)


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1, self.conv2 = sn_conv(c_in, c_out, 3), sn_conv(c_out, c_out, 3)
        self.shortcut = sn_conv(c_in, c_out, 1)

    def forward(self, x):
        y = self.conv1(F.interpolate(F.relu(self.bn1(x)), scale_factor=2, mode="nearest"))
        return (self.conv2(F.relu(self.bn2(y)))
                + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest")))


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, down: bool, first: bool = False):
        super().__init__()
        self.conv1, self.conv2 = sn_conv(c_in, c_out, 3), sn_conv(c_out, c_out, 3)
        self.shortcut = sn_conv(c_in, c_out, 1) if c_in != c_out or down else nn.Identity()
        self.down, self.first = down, first

    def forward(self, x):
        # no ReLU on the raw image
        y = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        s = self.shortcut(x)
        if self.down:
            y, s = F.avg_pool2d(y, 2), F.avg_pool2d(s, 2)
        return y + s


def channels_at(width: int, image_size: int, res: int) -> int:
    return width * min(16, image_size // res)


class Generator(nn.Module):
    def __init__(self, z_dim: int, width: int, image_size: int, channels: int, attn_res: int):
        super().__init__()
        c4 = channels_at(width, image_size, 4)
        self.fc = spectral_norm(nn.Linear(z_dim, c4 * 4 * 4))
        blocks, res = [], 4
        while res < image_size:
            blocks.append(UpBlock(channels_at(width, image_size, res),
                                  channels_at(width, image_size, res * 2)))
            res *= 2
            if res == attn_res:
                blocks.append(SelfAttention(channels_at(width, image_size, res)))
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), sn_conv(width, channels, 3),
                                 nn.Tanh())
        self.c4 = c4

    def forward(self, z):
        return self.out(self.blocks(self.fc(z).view(len(z), self.c4, 4, 4)))


class Discriminator(nn.Module):
    def __init__(self, width: int, image_size: int, channels: int, attn_res: int):
        super().__init__()
        blocks, res, c = [], image_size, channels
        while res > 4:
            c_out = channels_at(width, image_size, res)  # width at the first block, x2 per halving
            blocks.append(DownBlock(c, c_out, down=True, first=res == image_size))
            res, c = res // 2, c_out
            if res == attn_res:
                blocks.append(SelfAttention(c))
        blocks.append(DownBlock(c, c, down=False))
        self.blocks = nn.Sequential(*blocks)
        self.fc = spectral_norm(nn.Linear(c, 1))

    def forward(self, x):
        return self.fc(F.relu(self.blocks(x)).sum(dim=(2, 3))).flatten()  # global sum pooling


def d_loss(real_logits, fake_logits):
    """Hinge loss of D: mean(relu(1 - D(x))) + mean(relu(1 + D(G(z)))), in float32."""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


def g_loss(fake_logits):
    """Hinge loss of G: -mean(D(G(z)))."""
    return -fake_logits.float().mean()


def train_step(G, D, opt_g, opt_d, scaler, real, z_dim, amp_dtype):
    """One D update on real and fake in one batch (D has no BatchNorm), then one G update."""
    autocast = autocast_to(real.device.type, amp_dtype)  # bf16/fp16 under --amp, else float32
    z = torch.randn(len(real), z_dim, device=real.device)
    with autocast:
        fake = G(z)
        real_logits, fake_logits = D(torch.cat([real, fake.detach()])).chunk(2)
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
    # Power-iteration vectors and BatchNorm statistics copied;
    # the run (own_bn) recomputes the latter to sample.
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Images from the plain G in eval mode: BatchNorm running statistics, no power iteration."""
    G.eval()
    images = G(z).float()
    G.train()
    return images


def main():
    # flags (the saved ones under --resume), device, precision, DDP under torchrun, seed
    run = Run.start("sagan", Args, "Self-Attention Generative Adversarial Networks")
    args, device = run.args, run.device
    with user_errors():
        if args.attn_res and (args.attn_res not in [2 ** i for i in range(3, 16)]
                              or args.attn_res >= args.image_size):
            raise UserError(f"--attn-res must be 0 or a power of two from 8 to half the image size "
                            f"({args.image_size // 2}), got {args.attn_res}")
        # the dataset decoded once into a uint8 tensor on the device; batches are drawn from it
        data = run.load_data(args.image_size)
        G = Generator(args.z_dim, args.width, args.image_size, data.shape[0],
                      args.attn_res).to(device)
        D = Discriminator(args.width, args.image_size, data.shape[0], args.attn_res).to(device)
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        fused = device.type == "cuda"
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g,
                                 betas=(args.beta1, args.beta2), fused=fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d,
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
        # Under DDP: per-GPU BatchNorm statistics in G; the power-iteration vectors follow identical
        # weights on every rank.
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
