"""ProGAN: Karras, Aila, Laine & Lehtinen, "Progressive Growing of GANs for Improved Quality,
Stability, and Variation", 2018 (ICLR), arXiv:1710.10196.

Objective (WGAN-GP, Gulrajani et al. 2017, plus the paper's drift term, appendix A.1):
    x_hat  = e * x + (1 - e) * G(z),  e ~ U(0, 1) per sample
    d_loss = D(G(z)) - D(x) + lambda * (||grad_x_hat D(x_hat)||_2 - 1)^2 + eps_drift * D(x)^2
             (batch means)
    g_loss = -D(G(z))

Growing (sec. 2, appendix A.1): G and D start at 4x4. After 800k real images shown to D, each
new resolution is faded in over 800k images, then stabilised for 800k images. While fading in
resolution r, G outputs (1 - alpha) * upsample(toRGB_{r/2}(h)) + alpha * toRGB_r(block_r(h)), D
mirrors it with fromRGB_{r/2}(avgpool(x)) and the real images are blended the same way; alpha
rises linearly from 0 to 1 over the fade-in. Past the end of the schedule, training continues at
the final resolution.

Architecture (sec. 4, table 2): channels 512 up to 32x32, then halving (256 at 64, ..., 16 at 1024).
G: pixel-normalised z -> 4x4 "conv 4x4" (a dense layer) -> conv 3x3, then per resolution: nearest
2x upsample, two conv 3x3; pixelwise feature normalisation after every conv; toRGB is a 1x1 conv.
D: fromRGB 1x1, per resolution two conv 3x3 and 2x2 average pooling, then at 4x4 the minibatch
standard deviation feature map, conv 3x3, conv 4x4 and a linear layer. LeakyReLU 0.2 everywhere but
the outputs. Equalized learning rate: weights ~ N(0, 1), biases 0, and every layer multiplies its
weight by He's constant sqrt(2 / fan_in) at run time.

Hyperparameters (appendix A.1): Adam lr 1e-3, betas (0, 0.99), eps 1e-8; n_critic 1 (one D and one G
update per step); lambda 10; eps_drift 0.001; batch 16 up to 128x128, then 14, 6, 3 (BATCH_SIZES);
EMA of G's weights with decay 0.999 for samples; 800k images per phase; latent size 512.

Steps and images: the schedule is in images shown to D (--kimg-per-phase); --steps counts generator
updates, each showing one batch (batch_size(resolution) x GPUs) of real images. --steps 0 (the
default) trains to the end of the schedule; steps_to_end() gives that number for the settings.

Differences from the paper, and why:
- --kimg-per-phase and --max-channels shrink the schedule and the widths for small runs.
- --batch-size caps the per-resolution batch of the paper's table, per GPU: the paper's batch is the
  total over its GPUs, so with N GPUs the effective batch is N times the paper's unless --batch-size
  is lowered to 16/N (the images of all GPUs count towards the schedule).
- The minibatch standard deviation is taken over groups of 4 (the authors' released code; the paper
  uses the whole minibatch); the group shrinks to the largest divisor of the batch
  (14 -> 2, 6 -> 3).
- toRGB, the first dense layer and D's last layer use gain 1, sqrt(2)/4 and 1 in He's constant
  (linear outputs; the dense layer matches the paper's 4x4 conv on a 1x1 input padded by 3).
- Adam's moments are reset at each phase change, as the authors' code does (reset_opt_for_new_lod,
  on by default there; the paper does not say).
- The 4x4 dense layer has one bias per channel and pixel (the authors' code: one per channel).
- Batches are drawn with replacement; the paper's CelebA-HQ is not built here (celeba is the aligned
  set).
- G's loss reuses the fakes of D's step (one G forward a step, as dcgan.py does); the authors' code
  draws fresh latents for G's step. Same expectation; not yet measured against the official choice.
"""
import copy
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from common.cli import RunArgs, arg, user_errors
from common.run import Run
from common.step import autocast_to, frozen

# Per-GPU batch size at each resolution (appendix A.1: 16 for 4^2-128^2, then 14, 6, 3 for memory).
BATCH_SIZES = {4: 16, 8: 16, 16: 16, 32: 16, 64: 16, 128: 16, 256: 14, 512: 6, 1024: 3}


@dataclasses.dataclass
class Args(RunArgs):
    image_size: int = arg(128, "final resolution (paper: 1024 CelebA-HQ, 128 CelebA)",
                          within="[8, 1024]", power_of_two=True)
    batch_size: int = arg(16, "cap on the per-GPU batch of BATCH_SIZES "
                          "(paper: 16 up to 128x128, then 14, 6, 3)", within="[1, 16]")
    steps: int = arg(0, "generator updates to train for (0: to the end of the growing schedule)")
    z_dim: int = arg(512, "dimension of z (paper: 512)", within="[1, inf)")
    max_channels: int = arg(512, "channel cap; channels are min(this, 16384 / resolution) "
                            "(paper: 512)", within="[1, inf)")
    kimg_per_phase: float = arg(800.0, "thousands of real images per fade-in and per stabilisation "
                                "phase (paper: 800)", within="[0.001, inf)")
    lr: float = arg(1e-3, "Adam learning rate for G and D (paper: 1e-3)", within="(0, inf)")
    beta1: float = arg(0.0, "Adam beta1 (paper: 0)", within="[0, 1)")
    beta2: float = arg(0.99, "Adam beta2 (paper: 0.99)", within="[0, 1)")
    adam_eps: float = arg(1e-8, "Adam epsilon (paper: 1e-8)", within="(0, inf)")
    gp_lambda: float = arg(10.0, "gradient penalty weight lambda (paper: 10)", within="[0, inf)")
    eps_drift: float = arg(0.001, "weight of the drift term E[D(x)^2] (paper: 0.001)",
                           within="[0, inf)")
    mbstd_group: int = arg(4, "group size of the minibatch standard deviation "
                           "(released code: 4; paper: whole batch)", within="[1, inf)")
    ema: bool = arg(True, "sample, export and score with an EMA of G's weights (paper: yes)")
    ema_decay: float = arg(0.999, "EMA decay per step (paper: 0.999)")


def schedule(images: int, image_size: int, phase_images: int):
    """(phase, resolution, alpha) after `images` real images. Phase 0 is 4x4; odd phases fade in,
    even ones stabilise."""
    last = 2 * (int(math.log2(image_size)) - 2)
    phase = min(images // phase_images, last)
    resolution = 4 * 2 ** ((phase + 1) // 2)
    alpha = (images - phase * phase_images) / phase_images if phase % 2 == 1 else 1.0
    return phase, resolution, alpha


def batch_at(resolution: int, cap: int) -> int:
    return min(cap, BATCH_SIZES[resolution])


def steps_to_end(image_size: int, phase_images: int, cap: int, world: int) -> int:
    """Generator updates until the last stabilisation phase has shown its images (each phase keeps
    one batch size); --steps 0 trains that many."""
    images = steps = 0
    for phase in range(2 * (int(math.log2(image_size)) - 2) + 1):
        per_step = (batch_at(schedule(phase * phase_images, image_size, phase_images)[1], cap)
                    * world)
        k = max(0, math.ceil(((phase + 1) * phase_images - images) / per_step))
        steps, images = steps + k, images + k * per_step
    return steps


class EqualizedConv2d(nn.Module):
    """Conv with weights ~ N(0, 1) scaled at run time by gain / sqrt(fan_in) (sec. 4.1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int = 0,
                 gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.scale, self.padding = gain / math.sqrt(in_ch * kernel_size ** 2), padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x, eps: float = 1e-8):
    """Each pixel's feature vector scaled to unit root mean square (sec. 4.2)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def lrelu(x):
    return F.leaky_relu(x, negative_slope=0.2)


def minibatch_stddev(x, group_size: int):
    """Append the mean over features and pixels of the per-group standard deviation as one feature
    map (sec. 3)."""
    n, _, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    # sample i is grouped with i + n/g, i + 2n/g, ...
    groups = rearrange(x.float(), "(g m) c h w -> g m c h w", g=g)
    # one value per group
    std = (groups.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    feature = std.repeat(g).view(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, feature.to(x.dtype)], dim=1)


def channels_at(resolution: int, max_channels: int) -> int:
    return min(max_channels, 16384 // resolution)  # table 2: 512 up to 32x32, then halving


class Generator(nn.Module):
    """`depth` (index of the current resolution) and `fading` are set per phase; alpha is a tensor
    input."""

    def __init__(self, z_dim: int, image_size: int, channels: int, max_channels: int):
        super().__init__()
        res = [4 * 2 ** i for i in range(int(math.log2(image_size)) - 1)]
        ch = [channels_at(r, max_channels) for r in res]
        self.dense = EqualizedLinear(z_dim, ch[0] * 16, gain=math.sqrt(2) / 4)
        self.conv4 = EqualizedConv2d(ch[0], ch[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(ch[i - 1], ch[i], 3, padding=1),
                           EqualizedConv2d(ch[i], ch[i], 3, padding=1)])
            for i in range(1, len(res)))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, channels, 1, gain=1.0) for c in ch)
        self.depth, self.fading = 0, False

    def in_use(self):
        """The layers forward runs in this phase (the later resolutions' wait for theirs)."""
        old_rgb = [self.to_rgb[self.depth - 1]] if self.fading else []
        return [self.dense, self.conv4, *self.blocks[:self.depth], self.to_rgb[self.depth],
                *old_rgb]

    def block(self, i, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        for conv in self.blocks[i]:
            x = pixel_norm(lrelu(conv(x)))
        return x

    def forward(self, z, alpha):
        x = pixel_norm(lrelu(self.dense(pixel_norm(z)).view(len(z), -1, 4, 4)))
        x = pixel_norm(lrelu(self.conv4(x)))
        for i in range(self.depth - 1):
            x = self.block(i, x)
        if self.depth == 0:
            return self.to_rgb[0](x)
        new = self.to_rgb[self.depth](self.block(self.depth - 1, x))
        if not self.fading:
            return new
        old = F.interpolate(self.to_rgb[self.depth - 1](x), scale_factor=2, mode="nearest")
        return old + alpha * (new - old)


class Discriminator(nn.Module):
    """Mirror of G: fromRGB at the current resolution, blocks down to 4x4, then the 4x4 head."""

    def __init__(self, image_size: int, channels: int, max_channels: int, mbstd_group: int):
        super().__init__()
        res = [4 * 2 ** i for i in range(int(math.log2(image_size)) - 1)]
        ch = [channels_at(r, max_channels) for r in res]
        self.from_rgb = nn.ModuleList(EqualizedConv2d(channels, c, 1) for c in ch)
        self.blocks = nn.ModuleList(  # blocks[i-1] takes resolution res[i] down to res[i-1]
            nn.ModuleList([EqualizedConv2d(ch[i], ch[i], 3, padding=1),
                           EqualizedConv2d(ch[i], ch[i - 1], 3, padding=1)])
            for i in range(1, len(res)))
        self.conv3 = EqualizedConv2d(ch[0] + 1, ch[0], 3, padding=1)
        self.conv4 = EqualizedConv2d(ch[0], ch[0], 4)
        self.linear = EqualizedLinear(ch[0], 1, gain=1.0)
        self.mbstd_group, self.depth, self.fading = mbstd_group, 0, False

    def in_use(self):
        """The layers forward runs in this phase (the later resolutions' wait for theirs)."""
        old_rgb = [self.from_rgb[self.depth - 1]] if self.fading else []
        return [self.from_rgb[self.depth], *old_rgb, *self.blocks[:self.depth], self.conv3,
                self.conv4, self.linear]

    def block(self, i, x):
        for conv in self.blocks[i]:
            x = lrelu(conv(x))
        return F.avg_pool2d(x, kernel_size=2)

    def forward(self, x, alpha):
        h = lrelu(self.from_rgb[self.depth](x))
        if self.depth > 0:
            h = self.block(self.depth - 1, h)
            if self.fading:
                old = lrelu(self.from_rgb[self.depth - 1](F.avg_pool2d(x, kernel_size=2)))
                h = old + alpha * (h - old)
            for i in reversed(range(self.depth - 1)):
                h = self.block(i, h)
        h = lrelu(self.conv3(minibatch_stddev(h, self.mbstd_group)))
        h = lrelu(self.conv4(h))
        return self.linear(h.flatten(1)).flatten()  # one score per image


def real_at(real, resolution: int, fading: bool, alpha):
    """Real images at the network's resolution, blended from half resolution while fading in
    (appendix A.1)."""
    x = (F.avg_pool2d(real, kernel_size=real.shape[-1] // resolution)
         if real.shape[-1] != resolution else real)
    if not fading:
        return x
    old = F.interpolate(F.avg_pool2d(x, kernel_size=2), scale_factor=2, mode="nearest")
    return old + alpha * (x - old)


def gradient_penalty(D, real, fake, alpha, scaler, autocast):
    """E[(||grad_x_hat D(x_hat)||_2 - 1)^2], one e ~ U(0, 1) per sample, norm over all non-batch
    dims."""
    e = torch.rand(len(real), 1, 1, 1, device=real.device)
    x_hat = (e * real + (1 - e) * fake).requires_grad_(True)
    with autocast:
        score = D(x_hat, alpha).float().sum()
    # fp16: differentiate the scaled score so small gradients survive, then unscale
    # (AMP gradient-penalty recipe); the scale is read as a tensor (scaler.scale of a one) so there
    # is no host sync.
    scale = scaler.scale(torch.ones((), device=real.device)) if scaler.is_enabled() else None
    (grad,) = torch.autograd.grad(score * scale if scale is not None else score, x_hat,
                                  create_graph=True)
    grad = grad.float() / scale if scale is not None else grad.float()
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def d_loss(critic_real, critic_fake, penalty, gp_lambda: float, eps_drift: float):
    """WGAN-GP critic loss plus the drift term eps_drift * E[D(x)^2], in float32."""
    critic_real, critic_fake = critic_real.float(), critic_fake.float()
    return (critic_fake.mean() - critic_real.mean() + gp_lambda * penalty
            + eps_drift * critic_real.pow(2).mean())


def g_loss(critic_fake):
    return -critic_fake.float().mean()


def train_step(G, D, D_plain, opt_g, opt_d, scaler, real, alpha, args, amp_dtype):
    """One D update (WGAN-GP + drift) and one G update (n_critic 1). Returns detached losses."""
    autocast = autocast_to(real.device.type, amp_dtype)  # bf16/fp16 under --amp, else float32
    z = torch.randn(len(real), args.z_dim, device=real.device)
    with autocast:
        fake = G(z, alpha)
        critic_real, critic_fake = D(real, alpha), D(fake.detach(), alpha)
    # Double backward is not supported under torch.compile (PyTorch #91469): the penalty runs
    # through the plain D. Under DDP its gradients join the compiled/DDP path's in the one backward
    # below, so DDP all-reduces their sum.
    penalty = gradient_penalty(D_plain, real, fake.detach(), alpha, scaler, autocast)
    loss_d = d_loss(critic_real, critic_fake, penalty, args.gp_lambda, args.eps_drift)
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)
    with autocast, frozen(D):  # gradients through D for G, none for D's own weights
        loss_g = g_loss(D(fake, alpha))
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach(), "gp": penalty.detach(),
            "wasserstein": (critic_real.detach().float().mean()
                            - critic_fake.detach().float().mean())}


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float):
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, alpha: torch.Tensor, image_size: int) -> torch.Tensor:
    """Images at the current resolution from the plain G, upsampled (nearest) to the final size."""
    return F.interpolate(G(z, alpha).float(), size=image_size, mode="nearest")


def enter_phase(phase: int, run, G, D, ema):
    """Set every network's depth (resolutions in use) and fade-in flag for `phase`; return G and D
    to train."""
    for net in (G, D, ema):
        if net is not None:
            net.depth, net.fading = (phase + 1) // 2, phase % 2 == 1
    if run.compile:
        # one compile per phase: drop the last phase's graphs and recompile budget
        torch._dynamo.reset()
    # DDP over this phase's layers only: all of them get gradients, so DDP needs no search for
    # unused ones.
    return run.wrap(G, in_use=G.in_use()), run.wrap(D, in_use=D.in_use())


def reset_adam(phase: int, opt_phase, *optimizers):
    """Fresh Adam moments when a phase starts (new layers, or the end of a fade-in), as the authors'
    code does."""
    if phase != opt_phase:
        for opt in optimizers:
            opt.state.clear()
        opt_phase.fill_(phase)


def main():
    # flags (the saved ones under --resume), device, precision, DDP under torchrun, seed
    end = lambda args, world: steps_to_end(args.image_size, round(args.kimg_per_phase * 1000),
                                           args.batch_size, world)
    run = Run.start("progan", Args,
                    "Progressive Growing of GANs for Improved Quality, Stability, and Variation",
                    total_steps=lambda args, world: args.steps or end(args, world),
                    note=lambda args, world: f" (schedule ends at step {end(args, world)})")
    args, device = run.args, run.device
    with user_errors():
        # the dataset decoded once into a uint8 tensor on the device; batches are drawn from it
        data = run.load_data(args.image_size)
        phase_images = round(args.kimg_per_phase * 1000)
        G = Generator(args.z_dim, args.image_size, data.shape[0], args.max_channels).to(device)
        D = Discriminator(args.image_size, data.shape[0], args.max_channels,
                          args.mbstd_group).to(device)
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        fused, betas = device.type == "cuda", (args.beta1, args.beta2)
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=betas, eps=args.adam_eps,
                                 fused=fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=betas, eps=args.adam_eps,
                                 fused=fused)
        z_fixed = torch.randn(64, args.z_dim, device=device)
        # schedule clock, Adam's phase
        images, opt_phase = torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long)
        # the state a checkpoint holds: restored on --resume, else a new run in RUN_DIR
        run.restore_or_start(G=G, D=D, ema=ema, opt_g=opt_g, opt_d=opt_d, z_fixed=z_fixed,
                             images=images, opt_phase=opt_phase)
        # where this run starts
        phase, _, alpha_value = schedule(int(images), args.image_size, phase_images)
        # a tensor input: a changing alpha does not recompile
        alpha = torch.full((), alpha_value, device=device)
        sample = lambda z: generate(ema if ema is not None else G, z, alpha, args.image_size)
        # how sample grids, FID and --export draw images
        run.set_samplers(sample=lambda k: sample(torch.randn(k, args.z_dim, device=device)),
                         grid=lambda: sample(z_fixed))
        G_train, D_train = enter_phase(phase, run, G, D, ema)

        # one iteration per G update; step counts the updates made before it (0, 1, ...)
        for step in run.steps():
            new_phase, resolution, alpha_value = schedule(int(images), args.image_size,
                                                          phase_images)
            if new_phase != phase:
                phase = new_phase
                G_train, D_train = enter_phase(phase, run, G, D, ema)
            reset_adam(new_phase, opt_phase, opt_g, opt_d)
            alpha.fill_(alpha_value)  # on-device fill: no host-to-device copy
            batch = batch_at(resolution, args.batch_size)
            real = real_at(data.batch(batch)[0], resolution, phase % 2 == 1, alpha)
            losses = train_step(G_train, D_train, D, opt_g, opt_d, run.scaler, real, alpha, args,
                                run.amp_dtype)
            if ema is not None:
                ema_update(ema, G, args.ema_decay)
            images += batch * run.world
            # count the step; then log, sample, score FID, checkpoint and stop on a signal, as due
            run.after_step({**losses, "res": resolution, "alpha": alpha_value,
                            "kimg": int(images) / 1000}, batch * run.world)
        # --export N samples
        run.finish()


if __name__ == "__main__":
    main()
