"""Conditional GAN: Mirza & Osindero, "Conditional Generative Adversarial Nets", 2014,
arXiv:1411.1784, on the DCGAN backbone (Radford, Metz & Chintala 2015, arXiv:1511.06434).

Objective (paper eq. 2, in the non-saturating form for G as in Goodfellow et al. 2014, sec. 3):
    d_loss = -log D(x|y) - log(1 - D(G(z|y)|y))  = softplus(-D_logit(x, y))
                                                   + softplus(D_logit(G(z, y), y))
    g_loss = -log D(G(z|y)|y)                     = softplus(-D_logit(G(z, y), y))

Conditioning: the paper feeds y "as an additional input layer" to both players. G: a learned
embedding of y is concatenated with z before the first 4x4 transposed convolution. D: y enters
as one-hot feature maps (one constant map per class) concatenated with the image channels at
the input. We chose input concatenation over a projection discriminator (Miyato & Koyama 2018,
arXiv:1802.05637) because it is what this paper does (y joins x at D's input) and it costs only
num_classes extra input channels; the projection head is the later, stronger alternative.

Architecture: dcgan.py's (stride-2 4x4 (transposed) convolutions, BatchNorm, ReLU / LeakyReLU(0.2),
tanh output, one logit), 64x64 by default; fake images are drawn with the labels of the real batch.

Hyperparameters: Adam lr 2e-4, beta1 0.5, batch 128, weights ~ N(0, 0.02) (DCGAN, sec. 4).
Differences from the paper: its MNIST model is an MLP (z and y through 200- and 1000-unit ReLU
layers; a maxout D) trained with SGD + momentum, dropout and a decaying learning rate; we use the
DCGAN convolutional networks and optimiser so that the file compares with dcgan.py and scales to
CIFAR-10. z ~ N(0, I) instead of U(0, 1); the label embedding (a linear map of the one-hot y)
starts at N(0, 1); batches are drawn with replacement.
Sampling (grids, FID, --export) uses BatchNorm's running statistics (eval mode); DCGAN's code
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
from common.run import Run, export_images
from common.step import autocast_to, frozen


@dataclasses.dataclass
class Args(RunArgs):
    dataset: str = arg("mnist", "a labelled dataset: mnist, fashion_mnist, cifar10, or a folder "
                       "with one sub-folder per class")
    image_size: int = arg(64, "training resolution (paper: 28x28 MNIST with an MLP; DCGAN: 64)",
                          within="[32, inf)", power_of_two=True)
    batch_size: int = arg(128, "batch size per GPU (paper: 100; DCGAN: 128)")
    z_dim: int = arg(100, "dimension of z (paper: 100)", within="[1, inf)")
    embed_dim: int = arg(50, "size of G's label embedding "
                         "(the paper maps one-hot y through a 1000-unit layer)", within="[1, inf)")
    width: int = arg(64, "channels of the last G layer and first D layer "
                     "(dcgan.py's: 64, 512 at 4x4)", within="[1, inf)")
    lr: float = arg(2e-4, "Adam learning rate for G and D "
                    "(DCGAN: 2e-4; the paper used SGD, lr 0.1 decayed)", within="(0, inf)")
    beta1: float = arg(0.5, "Adam beta1 (DCGAN: 0.5)", within="[0, 1)")
    beta2: float = arg(0.999, "Adam beta2 (DCGAN: default 0.999)", within="[0, 1)")
    sample_every: int = arg(1000, "sample grid (one row per class) every N steps "
                            "(0: only at the end)")
    fid_samples: int = arg(10000, "generated images per FID (labels drawn as in the training set)")
    export: int = arg(0, "after training, write N class-balanced PNGs named <class>_<index>.png to "
                      "RUN_DIR/export")


def init_weights(m: nn.Module):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, mean=0.0, std=0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, mean=1.0, std=0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, z_dim: int, num_classes: int, embed_dim: int, width: int, image_size: int,
                 channels: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)  # N(0, 1) init: the same scale as z
        n_up = int(math.log2(image_size)) - 2  # stride-2 layers after the 4x4 start
        c = width * 2 ** (n_up - 1)
        layers = [nn.ConvTranspose2d(z_dim + embed_dim, c, kernel_size=4, stride=1, padding=0,
                                     bias=False),
                  nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, kernel_size=4, stride=2, padding=1,
                                          bias=False),
                       nn.BatchNorm2d(c // 2), nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, kernel_size=4, stride=2, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, y):
        h = torch.cat([z, self.embed(y)], dim=1)
        return self.net(h[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, width: int, image_size: int, channels: int):
        super().__init__()
        n_down = int(math.log2(image_size)) - 2
        c = width
        layers = [nn.Conv2d(channels + num_classes, c, kernel_size=4, stride=2, padding=1),
                  nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(c, c * 2, kernel_size=4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c * 2), nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        layers += [nn.Conv2d(c, 1, kernel_size=4, stride=1, padding=0)]
        self.net = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, x, y):
        n, _, h, w = x.shape
        label_maps = (F.one_hot(y, self.num_classes).to(x.dtype)[:, :, None, None]
                      .expand(n, self.num_classes, h, w))
        # one logit per (image, label) pair
        return self.net(torch.cat([x, label_maps], dim=1)).flatten()


def d_loss(real_logits, fake_logits):
    """-log D(x|y) - log(1 - D(G(z|y)|y)), from logits, in float32."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def g_loss(fake_logits):
    """Non-saturating generator loss -log D(G(z|y)|y)."""
    return F.softplus(-fake_logits.float()).mean()


def train_step(G, D, opt_g, opt_d, scaler, real, labels, z_dim, amp_dtype):
    """One D update on a real and a fake batch with the same labels, then one G update. Returns
    detached losses."""
    autocast = autocast_to(real.device.type, amp_dtype)  # bf16/fp16 under --amp, else float32
    z = torch.randn(len(real), z_dim, device=real.device)
    with autocast:
        fake = G(z, labels)
        # separate BatchNorm batches, as DCGAN
        real_logits, fake_logits = D(real, labels), D(fake.detach(), labels)
        loss_d = d_loss(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)
    with autocast, frozen(D):  # gradients through D for G, none for D's own weights
        loss_g = g_loss(D(fake, labels))
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
def generate(G: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Images of classes y from the plain (uncompiled) G in eval mode: BatchNorm uses its running
    statistics."""
    G.eval()
    images = G(z, y).float()
    G.train()
    return images


def export_by_class(G, n: int, folder, classes, args, device):
    """--export for a conditional G: image i shows class i % num_classes, named
    <class index>_<i>.png; the index-to-class list goes beside the export (export_classes.json)."""
    num_classes, done = len(classes), 0

    def images(k):  # a batch at a time: memory stays flat for any n
        nonlocal done
        labels = torch.arange(done, done + k, device=device) % num_classes
        done += k
        return generate(G, torch.randn(k, args.z_dim, device=device), labels)
    export_images(images, n, folder, args.batch_size,
                  name=lambda i: f"{i % num_classes}_{i:06d}.png", classes=classes)


def main():
    # flags (the saved ones under --resume), device, precision, DDP under torchrun, seed
    run = Run.start("cgan", Args, "Conditional Generative Adversarial Nets")
    args, device = run.args, run.device
    with user_errors():
        # the dataset decoded once into a uint8 tensor on the device; batches are drawn from it
        data = run.load_data(args.image_size, need_labels=True)
        channels, num_classes = data.shape[0], data.num_classes
        G = Generator(args.z_dim, num_classes, args.embed_dim, args.width, args.image_size,
                      channels).to(device)
        D = Discriminator(num_classes, args.width, args.image_size, channels).to(device)
        G.apply(init_weights), D.apply(init_weights)
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        fused = device.type == "cuda"
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr,
                                 betas=(args.beta1, args.beta2), fused=fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr,
                                 betas=(args.beta1, args.beta2), fused=fused)
        # one z per grid column, shared by every class row
        z_fixed = torch.randn(8, args.z_dim, device=device)
        # the state a checkpoint holds: restored on --resume, else a new run in RUN_DIR
        run.restore_or_start(G=G, D=D, ema=ema, opt_g=opt_g, opt_d=opt_d, z_fixed=z_fixed)
        G_sample = ema if ema is not None else G
        grid_y = torch.arange(num_classes, device=device).repeat_interleave(len(z_fixed))

        def sample(k):  # labels drawn as in the training set, so FID compares like with like
            y = data.labels[torch.randint(len(data.labels), (k,),
                                          device=data.labels.device)].to(device)
            return generate(G_sample, torch.randn(k, args.z_dim, device=device), y)
        # how sample grids, FID and --export draw images
        run.set_samplers(sample,
                         grid=lambda: generate(G_sample, z_fixed.repeat(num_classes, 1), grid_y),
                         grid_rows=len(z_fixed), own_bn=ema)
        # DDP across processes and torch.compile, when on
        # Under DDP each GPU keeps its own BatchNorm statistics, as on the paper's one GPU (this
        # also avoids PyTorch #175024).
        G_train = run.wrap(G, forward_sync_buffers=False)
        D_train = run.wrap(D, forward_sync_buffers=False)

        # one iteration per G update; step counts the updates made before it (0, 1, ...)
        for step in run.steps():
            real, labels = data.batch(args.batch_size)
            losses = train_step(G_train, D_train, opt_g, opt_d, run.scaler, real, labels,
                                args.z_dim, run.amp_dtype)
            if ema is not None:
                ema_update(ema, G, args.ema_decay)
            # count the step; then log, sample, score FID, checkpoint and stop on a signal, as due
            run.after_step(losses)
        # --export N samples
        run.finish(export=lambda n, folder: export_by_class(G_sample, n, folder, data.classes,
                                                            args, device))


if __name__ == "__main__":
    main()
