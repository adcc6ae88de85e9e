"""StyleGAN2 (lite): Karras, Laine, Aittala, Hellsten, Lehtinen & Aila, "Analyzing and Improving
the Image Quality of StyleGAN", 2020, arXiv:1912.04958.

Objective (non-saturating logistic loss with lazy R1, paper sec. 3.1 and appendix B):
    d_loss = softplus(D(G(z))) + softplus(-D(x))
             + [every r1_every-th step] r1_every * gamma/2 * E_x ||grad_x D(x)||^2
    g_loss = softplus(-D(G(z)))

Architecture (fig. 2 and 7, config E/F): z -> pixel norm -> 8-layer mapping MLP (lr x 0.01) -> w.
Synthesis starts from a learned 4x4 constant; each 3x3 conv is modulated by a style s = A(w) and
demodulated, w' = s_i * w_ijk, w'' = w' / sqrt(sum_ik w'^2 + eps) (eq. 1-3), computed as the
official code trains (styles scale the input, one shared conv, demodulation scales the output),
then per-channel-scaled noise, bias, LeakyReLU(0.2) * sqrt(2). Skip G (a 1x1 toRGB per
resolution, upsampled and summed), residual D with minibatch stddev (group 4), equalized lr
everywhere, style mixing (prob. 0.9, one random crossover layer), truncation at sampling
w = w_avg + psi * (w - w_avg) with a running w_avg (beta 0.995, official code).
Hyperparameters: Adam lr 0.002, betas (0, 0.99), eps 1e-8, batch 32; R1 every 16 D steps (app. B);
G EMA half-life 10k images; z, w 512-d; channels min(32768/res, 512) in config F (the official
fmap_base 16 << 10), min(16384/res, 512) in configs A-E (8 << 10), our default. R1 gamma: the
paper's 10 is for 1024x1024 FFHQ; we default to StyleGAN2-ADA's 0.0002 * res^2 / batch (6.6 at 1024,
0.026 at 64): the gradient norm grows with the pixel count.

What "lite" leaves out: path-length regularization (sec. 3.2; a second double backward that helps
PPL more than FID at small sizes, so G keeps its plain lr and betas); upfirdn's [1,3,3,1] filter (G
upsamples bilinearly, D average-pools); fused and mixed-precision layer variants; ramp-ups. R1 joins
every 16th D loss (one backward) instead of a separate optimizer step, so D keeps its plain lr and
betas: the paper's c = 16/17 adjustment (app. B) makes up for that extra step, which we do not take.
Channels default to configs A-E's (--channel-base 32768 gives config F's). Noise strength is per
channel. G's loss reuses the fakes of D's step (one G forward a step); the official code draws fresh
latents for G's step: the same expectation, not yet measured against the official choice.
"""
import copy
import dataclasses
import math
from typing import Optional

import einops
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.cli import RunArgs, UserError, arg, user_errors
from common.run import Run, export_images
from common.step import autocast_to, frozen


@dataclasses.dataclass
class Args(RunArgs):
    image_size: int = arg(64, "training resolution (paper: 256 to 1024)",
                          within="[8, inf)", power_of_two=True)
    batch_size: int = arg(32, "batch size per GPU (paper: 32 in total)")
    steps: int = arg(50000, "generator updates to train for "
                     "(paper: 25M images, i.e. 780k steps at batch 32)")
    z_dim: int = arg(512, "dimension of z (paper: 512)", within="[1, inf)")
    w_dim: int = arg(512, "dimension of w (paper: 512)", within="[1, inf)")
    mapping_layers: int = arg(8, "fully connected layers of the mapping network (paper: 8)",
                              within="[1, inf)")
    mapping_lr_mul: float = arg(0.01, "learning-rate multiplier of the mapping network "
                                "(paper: 0.01)", within="(0, inf)")
    channel_base: int = arg(16384, "channels at resolution r: min(channel_base / r, channel_max) "
                            "(paper: 32768 in config F, 16384 in A-E)", within="[1, inf)")
    channel_max: int = arg(512, "most channels in any layer (paper: 512)", within="[1, inf)")
    mbstd_group: int = arg(4, "minibatch stddev group size "
                           "(paper: 4; the gcd with the batch is used)", within="[1, inf)")
    lr: float = arg(0.002, "Adam learning rate for G and D (paper: 0.002)", within="(0, inf)")
    beta1: float = arg(0.0, "Adam beta1 (paper: 0)", within="[0, 1)")
    beta2: float = arg(0.99, "Adam beta2 (paper: 0.99)", within="[0, 1)")
    r1_gamma: Optional[float] = arg(None, "R1 weight gamma (default: 0.0002 * size^2 / batch, "
                                    "the StyleGAN2-ADA heuristic; paper: 10 for FFHQ 1024x1024)",
                                    within="[0, inf)")
    r1_every: int = arg(16, "lazy R1: penalize every N D steps, scaled by N (paper: 16)",
                        within="[1, inf)")
    mixing_prob: float = arg(0.9, "style mixing probability (paper: 0.9)", within="[0, 1]")
    truncation_psi: float = arg(1.0, "truncation psi for sample grids and --export "
                                "(1: none; FID always uses 1)", within="(-inf, inf)")
    ema: bool = arg(True, "sample, export and score with an EMA of G's weights (paper: yes)")
    ema_decay: Optional[float] = arg(None, "EMA decay per step (default: a half-life of 10k images "
                                     "as in the paper, 0.5 ** (batch * gpus / 10000))")


def lrelu(x):
    return F.leaky_relu(x, 0.2) * math.sqrt(2)  # the gain keeps unit variance (paper's bias_act)


class EqualLinear(nn.Module):
    """Equalized learning rate: weights stored as N(0, 1/lr_mul^2), scaled by lr_mul / sqrt(fan_in)
    at run time."""

    def __init__(self, d_in: int, d_out: int, bias_init: float = 0.0, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((d_out,), bias_init / lr_mul))
        self.scale, self.lr_mul = lr_mul / math.sqrt(d_in), lr_mul

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale = 1 / math.sqrt(c_in * kernel * kernel)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


class ModulatedConv2d(nn.Module):
    """Conv whose weights are scaled by a per-sample style and (optionally) demodulated, eq. 1-3."""

    def __init__(self, c_in: int, c_out: int, kernel: int, w_dim: int, demodulate: bool = True):
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)  # A: styles start at 1
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.scale, self.demodulate = 1 / math.sqrt(c_in * kernel * kernel), demodulate

    def forward(self, x, w):
        s = self.affine(w)  # (n, c_in)
        weight = self.weight * self.scale
        # Scaling the input by s_i equals scaling w_ijk by s_i (w'), and demodulating scales
        # output j, so one conv with the shared weights serves the whole batch (the official
        # code's training path, its "non-fused" one).
        out = F.conv2d(x * s[:, :, None, None].to(x.dtype), weight, padding=weight.shape[-1] // 2)
        # w''_ijk = w'_ijk / sqrt(sum_ik w'_ijk^2 + eps), sum_ik w'^2 = sum_i s_i^2 sum_k w_ijk^2
        if self.demodulate:
            # (n, c_out), fp32
            d = torch.rsqrt((s.float().pow(2)[:, None, :]
                             * weight.float().pow(2).sum(dim=(2, 3))).sum(2) + 1e-8)
            out = out * d[:, :, None, None].to(out.dtype)
        return out


class StyleLayer(nn.Module):
    """Modulated 3x3 conv (optionally after a 2x upsampling), noise, bias, activation."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, up: bool):
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(c_out))  # learned per channel, starts at 0
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.up = up

    def forward(self, x, w):
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv(x, w)
        noise = torch.randn(len(x), 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        return lrelu(x + noise * self.noise_strength[:, None, None] + self.bias[:, None, None])


class ToRGB(nn.Module):
    def __init__(self, c_in: int, channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(c_in, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x, w):
        return self.conv(x, w) + self.bias[:, None, None]


def channels_at(res: int, base: int, cap: int) -> int:
    return min(base // res, cap)


class Generator(nn.Module):
    def __init__(self, z_dim, w_dim, mapping_layers, lr_mul, image_size, channels, base, cap,
                 w_avg_beta=0.995):
        super().__init__()
        self.mapping = nn.ModuleList([EqualLinear(z_dim if i == 0 else w_dim, w_dim, lr_mul=lr_mul)
                                      for i in range(mapping_layers)])
        c = channels_at(4, base, cap)
        self.const = nn.Parameter(torch.randn(c, 4, 4))
        self.layers = nn.ModuleList([StyleLayer(c, c, w_dim, up=False)])
        self.to_rgb = nn.ModuleList([ToRGB(c, channels, w_dim)])
        for k in range(3, int(math.log2(image_size)) + 1):
            c_out = channels_at(2 ** k, base, cap)
            self.layers.extend([StyleLayer(c, c_out, w_dim, up=True),
                                StyleLayer(c_out, c_out, w_dim, up=False)])
            self.to_rgb.append(ToRGB(c_out, channels, w_dim))
            c = c_out
        # each toRGB shares its w with the next block's first conv
        self.num_ws = len(self.layers) + 1
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.w_avg_beta = w_avg_beta

    def map(self, z):
        x = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)  # pixel norm of z
        for fc in self.mapping:
            x = lrelu(fc(x))
        return x

    def synthesis(self, ws):
        """ws: (n, num_ws, w_dim), one w per layer."""
        x = self.const.expand(len(ws), -1, -1, -1)
        x = self.layers[0](x, ws[:, 0])
        image = self.to_rgb[0](x, ws[:, 1])
        for i in range(1, len(self.to_rgb)):
            x = self.layers[2 * i - 1](x, ws[:, 2 * i - 1])
            x = self.layers[2 * i](x, ws[:, 2 * i])
            image = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
            image = image + self.to_rgb[i](x, ws[:, 2 * i + 1])
        return image

    def forward(self, z, z_mix=None, mixing_prob: float = 0.0, psi: float = 1.0):
        w = self.map(z)
        if self.training:  # running mean of w for the truncation trick
            self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if psi != 1.0:
            w = self.w_avg.to(w.dtype).lerp(w, psi)
        ws = mix_styles(w, self.map(z_mix) if z_mix is not None else w, self.num_ws, mixing_prob)
        return self.synthesis(ws)


def mix_styles(w1, w2, num_ws: int, mixing_prob: float):
    """(n, num_ws, w_dim): w1 up to a random crossover layer, w2 after it, with probability
    mixing_prob."""
    cutoff = torch.randint(1, num_ws, (), device=w1.device)
    mix = torch.rand((), device=w1.device) < mixing_prob
    # tensors only: no host sync, compiles
    use_w2 = mix & (torch.arange(num_ws, device=w1.device) >= cutoff)
    return torch.where(use_w2[None, :, None], w2[:, None], w1[:, None])


class DBlock(nn.Module):
    """Residual block: a 3x3 conv, a 2x downsampling, a 3x3 conv, plus a 1x1 skip, summed with
    1/sqrt(2). The second conv runs after the downsampling, then its bias and activation, in the
    official order (blur and a stride-2 conv, then bias_act), with a 2x2 average pool in place of
    the blur."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv0, self.conv1 = EqualConv2d(c_in, c_in, 3), EqualConv2d(c_in, c_out, 3)
        self.skip = EqualConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x):
        skip = self.skip(F.avg_pool2d(x, 2))
        x = lrelu(self.conv1(F.avg_pool2d(lrelu(self.conv0(x)), 2)))
        return (x + skip) / math.sqrt(2)


class Discriminator(nn.Module):
    def __init__(self, image_size, channels, base, cap, mbstd_group):
        super().__init__()
        c = channels_at(image_size, base, cap)
        self.from_rgb = EqualConv2d(channels, c, 1)
        blocks = []
        for k in range(int(math.log2(image_size)), 2, -1):
            c_out = channels_at(2 ** (k - 1), base, cap)
            blocks.append(DBlock(c, c_out))
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.conv = EqualConv2d(c + 1, c, 3)
        self.fc, self.out = EqualLinear(c * 16, c), EqualLinear(c, 1)
        self.mbstd_group = mbstd_group

    def minibatch_stddev(self, x):
        """Append the mean over features of the stddev across groups of samples (ProGAN sec. 3)."""
        g = math.gcd(self.mbstd_group, len(x))  # a group size that divides the batch
        y = einops.rearrange(x.float(), "(g m) c h w -> g m c h w", g=g)
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (m,)
        std = einops.repeat(std, "m -> (g m) 1 h w", g=g, h=x.shape[2], w=x.shape[3])
        return torch.cat([x, std.to(x.dtype)], dim=1)

    def forward(self, x):
        x = self.blocks(lrelu(self.from_rgb(x)))
        x = lrelu(self.conv(self.minibatch_stddev(x)))
        return self.out(lrelu(self.fc(x.flatten(1)))).flatten()  # one logit per image


def d_loss(real_logits, fake_logits):
    """softplus(D(G(z))) + softplus(-D(x)), in float32."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def g_loss(fake_logits):
    """Non-saturating generator loss softplus(-D(G(z)))."""
    return F.softplus(-fake_logits.float()).mean()


def r1_penalty(real_logits, real, loss_scale=1.0):
    """E_x ||grad_x D(x)||^2. Under fp16, grad of the scaled logits, unscaled (PyTorch AMP
    gradient-penalty recipe)."""
    (grad,) = torch.autograd.grad(real_logits.float().sum() * loss_scale, real, create_graph=True)
    return (grad.float() / loss_scale).pow(2).flatten(1).sum(1).mean()


def train_step(G, D, D_plain, opt_g, opt_d, scaler, real, args, r1_gamma, do_r1, amp_dtype):
    """One D update (with lazy R1 when do_r1), then one G update. Returns detached losses."""
    autocast = autocast_to(real.device.type, amp_dtype)  # bf16/fp16 under --amp, else float32
    z, z_mix = torch.randn(2, len(real), args.z_dim, device=real.device)
    with autocast:
        fake = G(z, z_mix, args.mixing_prob)
        real_logits, fake_logits = D(real), D(fake.detach())
        loss_d = d_loss(real_logits, fake_logits)
    r1 = None
    if do_r1:
        # Double backward does not compile (PyTorch #91469): R1 runs through the plain D. Under DDP
        # its gradients reach the same parameters in this one backward, where DDP's hooks all-reduce
        # the sum.
        real_r1 = real.detach().requires_grad_(True)
        with autocast:
            logits_r1 = D_plain(real_r1)
        # a tensor: no host sync
        r1 = r1_penalty(logits_r1, real_r1, scaler.scale(torch.ones((), device=real.device)))
        loss_d = loss_d + r1_gamma / 2 * r1 * args.r1_every  # lazy: scaled by the interval
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)
    with autocast, frozen(D):  # gradients through D for G, none for D's own weights
        loss_g = g_loss(D(fake))
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    losses = {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(),
              "d_real": real_logits.detach().float().mean(),
              "d_fake": fake_logits.detach().float().mean()}
    if r1 is not None:
        losses["r1"] = r1.detach()
    return losses


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float):
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    # w_avg is copied, not averaged
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
    """Images from the plain (uncompiled) G in eval mode (w_avg frozen), no style mixing."""
    G.eval()
    images = G(z, psi=psi).float()
    G.train()
    return images


def r1_gamma_of(args, world: int) -> float:
    """--r1-gamma, or StyleGAN2-ADA's heuristic 0.0002 * resolution^2 / total batch."""
    return (args.r1_gamma if args.r1_gamma is not None
            else 0.0002 * args.image_size ** 2 / (args.batch_size * world))


def ema_decay_of(args, world: int) -> float:
    """--ema-decay, or the decay whose half-life is 10k images at the total batch (the paper's
    EMA)."""
    return (args.ema_decay if args.ema_decay is not None
            else 0.5 ** (args.batch_size * world / 10000))


def main():
    # flags (the saved ones under --resume), device, precision, DDP under torchrun, seed
    run = Run.start("stylegan_lite", Args, "Analyzing and Improving the Image Quality of StyleGAN",
                    note=lambda args, world: f", R1 gamma {r1_gamma_of(args, world):.4g}, "
                                             f"EMA decay {ema_decay_of(args, world):.5f}")
    args, device = run.args, run.device
    with user_errors():
        if args.channel_base < args.image_size or args.channel_max < 1:
            raise UserError(f"--channel-base ({args.channel_base}) must be >= --image-size "
                            f"({args.image_size}) and --channel-max >= 1, "
                            f"so every resolution has at least one channel")
        # the dataset decoded once into a uint8 tensor on the device; batches are drawn from it
        data = run.load_data(args.image_size)
        r1_gamma, ema_decay = r1_gamma_of(args, run.world), ema_decay_of(args, run.world)
        G = Generator(args.z_dim, args.w_dim, args.mapping_layers, args.mapping_lr_mul,
                      args.image_size, data.shape[0],
                      args.channel_base, args.channel_max).to(device)
        D = Discriminator(args.image_size, data.shape[0], args.channel_base, args.channel_max,
                          args.mbstd_group).to(device)
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        fused = device.type == "cuda"
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr,
                                 betas=(args.beta1, args.beta2), eps=1e-8, fused=fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr,
                                 betas=(args.beta1, args.beta2), eps=1e-8, fused=fused)
        z_fixed = torch.randn(64, args.z_dim, device=device)
        r1_last = torch.zeros((), device=device)  # the latest R1 value, logged between R1 steps
        # the state a checkpoint holds: restored on --resume, else a new run in RUN_DIR
        run.restore_or_start(G=G, D=D, ema=ema, opt_g=opt_g, opt_d=opt_d, z_fixed=z_fixed,
                             r1_last=r1_last)
        G_sample = ema if ema is not None else G
        sample = lambda k, psi=1.0: generate(G_sample, torch.randn(k, args.z_dim, device=device),
                                             psi)  # FID: psi 1
        # how sample grids, FID and --export draw images
        run.set_samplers(sample=sample,
                         grid=lambda: generate(G_sample, z_fixed, args.truncation_psi))
        # DDP across processes and torch.compile, when on
        # Under DDP each rank tracks its own w_avg (rank 0's is saved); this also avoids
        # PyTorch #175024.
        G_train, D_train = (run.wrap(G, forward_sync_buffers=False),
                            run.wrap(D, forward_sync_buffers=False))

        # one iteration per G update; step counts the updates made before it (0, 1, ...)
        for step in run.steps():
            real, _ = data.batch(args.batch_size)
            losses = train_step(G_train, D_train, D, opt_g, opt_d, run.scaler, real, args, r1_gamma,
                                step % args.r1_every == 0, run.amp_dtype)
            r1_last.copy_(losses.pop("r1", r1_last))
            if ema is not None:
                ema_update(ema, G, ema_decay)
            # count the step; then log, sample, score FID, checkpoint and stop on a signal, as due
            run.after_step({**losses, "r1": r1_last})
        # --export N samples
        run.finish(export=lambda n, out: export_images(lambda k: sample(k, args.truncation_psi),
                                                       n, out, args.batch_size))


if __name__ == "__main__":
    main()
