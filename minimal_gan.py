"""The original GAN: Goodfellow, Pouget-Abadie, Mirza, Xu, Warde-Farley, Ozair, Courville &
Bengio, "Generative Adversarial Nets", 2014, arXiv:1406.2661.

Objective (eq. 1), D(x) = sigmoid(D_logit(x)):
    min_G max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))]
    d_loss           = -log D(x) - log(1 - D(G(z)))   = softplus(-D_logit(x))
                                                        + softplus(D_logit(G(z)))
    g_loss (minimax) =  log(1 - D(G(z)))              = -softplus(D_logit(G(z)))
    g_loss (non-sat) = -log D(G(z))                   = softplus(-D_logit(G(z)))
                       (sec. 3: "stronger gradients early in learning"; the default)
Algorithm 1: k discriminator steps (k = 1 in the paper's experiments) per generator step.

Models: multilayer perceptrons. G: ReLU hidden layers (the paper: "a mixture of rectifier
linear activations and sigmoid"), linear output for 2-D points, tanh for images. D: maxout
hidden layers (the paper's choice), one logit out.

Data: the 2-D mixtures ring8 and grid25 (the mode-collapse benchmarks of Metz et al. 2017,
VEEGAN and PacGAN), where we report, over 2,500 samples, the modes captured (a mode with at
least one sample within 3 std), the share of high-quality samples (within 3 std of the nearest
mode) and the reverse KL between the histogram of high-quality samples over the modes and the
uniform histogram. Any image dataset works too, flattened (the paper: MNIST, TFD, CIFAR-10).

Differences from the paper: Adam (lr 5e-4, betas (0.5, 0.999)) instead of SGD with momentum,
as the 2-D benchmark papers train. D's dropout: 0.2 after each maxout layer and none on its
input, where the paper's MNIST model drops 0.2 of D's input and 0.5 of its hidden units (--dropout
0.5 kept D too weak to sharpen the 2-D modes); maxout units of 2 pieces (the paper's MNIST D: 5;
--maxout 5). These settings were chosen by short CPU runs on grid25 (README gives the measured
figures). z is 2-d for 2-D data (as in PacGAN's setting), 100-d for images.

Remedies for mode collapse, each off by default (the file is the 2014 GAN unless a flag is given):
    --feature-matching       Salimans et al. 2016, arXiv:1606.03498, sec. 3.1: G minimises
                             ||mean f(x) - mean f(G(z))||^2, f = D's last hidden layer
    --minibatch-disc B       sec. 3.2: D's last hidden layer gets B features
                             o(x_i)_b = sum_j exp(-||M_i,b - M_j,b||_1), M_i = f(x_i) T,
                             T of shape (A, B, C), computed within the real or the fake batch
    --label-smoothing a      sec. 3.4, one-sided: D's target for real samples is 1 - a
                             (fake stays 0)
    --historical-averaging w sec. 3.3: each player's loss + w ||theta - mean of its past theta||^2
    --unroll K               Metz et al. 2017, arXiv:1611.02163: G minimises the minimax value
                             f(theta_G, theta_D^K) at D's parameters after K more Adam steps
                             (eq. 7-10; its real term reaches G through theta_D^K; --loss does not
                             apply), differentiated through the steps (their main variant; the
                             Adam second moments are held fixed in the differentiation), on a copy
                             of D's parameters (torch.func.functional_call); D trains as before
    --pack m                 PacGAN, Lin et al. 2018, arXiv:1712.04086: D sees m samples side by
                             side, all real or all fake; each step draws m x batch samples
Where they differ from their papers: minibatch discrimination uses the paper's plain T and its sum
over all j (Salimans' code also weight-normalises T, initialises from data and leaves out j = i);
the K unrolled steps reuse one real batch and one z, as Metz et al.'s notebook does. Measured on
ring8 / grid25: benchmarks/RESULTS.md.

The setting of PacGAN's 2-D tables (its code, fjxmlzn/PacGAN, after VEEGAN's), reached by flags:
G 4 x 400 ReLU with BatchNorm, D 3 x 200 maxout units of 5 pieces and no dropout, weights from
N(0, 0.02), Adam lr 1e-4 with beta1 0.8, 100 (packed) inputs a batch, both players' gradients
taken at the same weights before either steps, 400 passes over a fixed set of 100,000 points
(their ring: ours at half the scale, --toy-scale 0.5); PacGAN4 on grid25:
    python minimal_gan.py --dataset grid25 --g-hidden 400 --g-layers 4 --g-batchnorm --hidden 200
        --maxout 5 --dropout 0 --init-std 0.02 --lr 1e-4 --beta1 0.8 --batch-size 100
        --simultaneous --toy-points 100000 --steps 400000 --pack 4
"""
import copy
import dataclasses
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.func import functional_call

from common.cli import RunArgs, UserError, arg, user_errors
from common.run import Run
from common.step import autocast_to, frozen


@dataclasses.dataclass
class Args(RunArgs):
    dataset: str = arg("grid25", "ring8, grid25, or an image dataset "
                       "(mnist, fashion_mnist, cifar10, celeba, a folder)")
    image_size: int = arg(28, "training resolution for image datasets (paper: 28 for MNIST)",
                          within="[4, inf)")
    batch_size: int = arg(512, "batch size per GPU (paper: 100; 512 keeps more 2-D modes)")
    steps: int = arg(8000, "generator updates to train for")
    flip: Optional[bool] = arg(False, "random horizontal flips of image data (paper: none)")
    loss: str = arg("nonsaturating", "generator loss (paper eq. 1 or its sec. 3 variant)",
                    choices=["minimax", "nonsaturating"])
    d_steps: int = arg(1, "discriminator steps per generator step, k in Algorithm 1 (paper: 1)",
                       within="[1, inf)")
    z_dim: Optional[int] = arg(None, "dimension of z (default: 2 for 2-D data, 100 for images)",
                               within="[1, inf)")
    hidden: int = arg(128, "units per hidden layer", within="[1, inf)")
    layers: int = arg(3, "hidden layers in G and in D", within="[1, inf)")
    maxout: int = arg(2, "pieces per maxout unit in D (paper's MNIST D: 5)", within="[1, inf)")
    dropout: float = arg(0.2, "dropout after each maxout layer of D (paper's MNIST D: 0.2 of its "
                         "input, 0.5 of hidden units; 0.5 kept D too weak to sharpen modes)",
                         within="[0, 1)")
    lr: float = arg(5e-4, "Adam learning rate (paper: SGD with momentum)", within="(0, inf)")
    beta1: float = arg(0.5, "Adam beta1", within="[0, 1)")
    # What the 2-D tables of PacGAN and VEEGAN trained (PacGAN's code); off by default
    g_hidden: Optional[int] = arg(None, "units per hidden layer of G (default: --hidden; PacGAN's "
                                  "2-D G: 400)", within="[1, inf)")
    g_layers: Optional[int] = arg(None, "hidden layers of G (default: --layers; PacGAN's 2-D G: "
                                  "4)", within="[1, inf)")
    g_batchnorm: bool = arg(False, "BatchNorm before each ReLU of G (PacGAN's 2-D G)")
    init_std: float = arg(0.0, "weights drawn from N(0, std), biases 0; 0: PyTorch's default "
                          "(PacGAN's 2-D code: 0.02)", within="[0, inf)")
    simultaneous: bool = arg(False, "D and G step together, both gradients at the current "
                             "weights (PacGAN's code); default: D's step, then G's (Algorithm 1)")
    toy_points: int = arg(0, "2-D data: a fixed training set of N points drawn once from --seed; "
                          "0: fresh points every batch (PacGAN: 100,000)", within="[0, inf)")
    toy_scale: float = arg(1.0, "2-D data: the mixture's centres and std times this (PacGAN's "
                           "ring: 0.5, radius 1 and std 0.01)", within="(0, inf)")
    # Remedies for mode collapse, all off by default (the header cites each)
    feature_matching: bool = arg(False, "G matches the mean of D's last hidden layer on real and "
                                 "fake (paper: Salimans et al. sec. 3.1)")
    minibatch_disc: int = arg(0, "kernels B of the minibatch discrimination layer, 0: off (paper: "
                              "Salimans et al. sec. 3.2; their CIFAR code: 100)", within="[0, inf)")
    minibatch_dim: int = arg(5, "dimension C of each minibatch-discrimination kernel (paper: their "
                             "code's 5)", within="[1, inf)")
    label_smoothing: float = arg(0.0, "one-sided label smoothing: real target 1 - this (paper: "
                                 "Salimans et al. sec. 3.4, target .9)", within="[0, 1)")
    historical_averaging: float = arg(0.0, "weight of ||theta - mean of past theta||^2 in each "
                                      "player's loss, 0: off (paper: Salimans et al. sec. 3.3; the "
                                      "weight is ours)", within="[0, inf)")
    unroll: int = arg(0, "D steps G looks ahead through, 0: off (paper: Metz et al. 2017; VEEGAN's "
                      "runs and the authors' notebook: 5)", within="[0, inf)")
    pack: int = arg(1, "samples per D input, 1: off (paper: PacGAN; 2, 3 or 4)", within="[1, inf)")
    log_every: int = arg(500, "console and metrics line every N steps (2-D data: with the mode "
                         "metrics)")
    sample_every: int = arg(2000, "sample picture every N steps (0: only at the end)")
    ckpt_every: int = arg(2000, "checkpoint every N steps (0: only at the end)")
    fid_every: int = arg(0, "FID every N steps (0: only at the end; image data only)")
    export: int = arg(0, "after training, write N samples (images: PNGs in RUN_DIR/export; 2-D: "
                      "RUN_DIR/export.npy)")


class Maxout(nn.Module):
    """Linear map to `pieces` candidates per unit, keep the largest (Goodfellow et al. 2013)."""

    def __init__(self, n_in: int, n_out: int, pieces: int):
        super().__init__()
        self.linear, self.pieces = nn.Linear(n_in, n_out * pieces), pieces

    def forward(self, x):
        return rearrange(self.linear(x), "b (u k) -> b u k", k=self.pieces).amax(-1)


class Generator(nn.Module):
    def __init__(self, z_dim: int, hidden: int, layers: int, shape: tuple,
                 batchnorm: bool = False):
        super().__init__()
        dims = [z_dim] + [hidden] * layers
        # with BatchNorm, a bias before it would be subtracted again
        blocks = [m for a, b in zip(dims, dims[1:])
                  for m in (nn.Linear(a, b, bias=not batchnorm),
                            *([nn.BatchNorm1d(b)] if batchnorm else []), nn.ReLU(inplace=True))]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, math.prod(shape)))
        self.shape, self.images = shape, len(shape) == 3

    def forward(self, z):
        x = self.net(z)
        return torch.tanh(x).view(len(z), *self.shape) if self.images else x


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016 sec. 3.2: f(x_i) (A features) -> [f(x_i), o(x_i)],
    o(x_i)_b = sum_j exp(-||M_i,b - M_j,b||_1)."""

    def __init__(self, n_in: int, kernels: int, dim: int):
        super().__init__()
        # T: A x B x C; N(0, 0.05) as their code
        self.T = nn.Parameter(0.05 * torch.randn(n_in, kernels * dim))
        self.kernels = kernels

    def forward(self, f):
        # B x n x C: kernel b's row of every M_i
        M = rearrange(f @ self.T, "n (b c) -> b n c", b=self.kernels)
        # B x n; the sum over j includes i, as the paper writes it
        o = torch.exp(-torch.cdist(M, M, p=1)).sum(-1)
        return torch.cat([f, o.T], 1)


class Discriminator(nn.Module):
    def __init__(self, hidden: int, layers: int, pieces: int, dropout: float, shape: tuple,
                 pack: int = 1, minibatch_kernels: int = 0, minibatch_dim: int = 5):
        super().__init__()
        # PacGAN: one input is `pack` samples side by side
        dims = [pack * math.prod(shape)] + [hidden] * layers
        blocks = [m for a, b in zip(dims, dims[1:])
                  for m in (Maxout(a, b, pieces), nn.Dropout(p=dropout))]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden + minibatch_kernels, 1))
        self.minibatch = (MinibatchDiscrimination(hidden, minibatch_kernels, minibatch_dim)
                          if minibatch_kernels else None)
        self.pack = pack

    def features(self, x):
        """f(x): the last hidden layer, one row per pack of `pack` consecutive samples."""
        return self.net[:-1](rearrange(x.flatten(1), "(n m) d -> n (m d)", m=self.pack))

    def forward(self, x):
        f = self.features(x)
        return self.net[-1](f if self.minibatch is None else self.minibatch(f)).flatten()


def init_normal(module: nn.Module, std: float):
    """Linear weights from N(0, std), biases 0 (PacGAN's 2-D code: std 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def d_loss(real_logits, fake_logits, real_target: float = 1.0):
    """-t log D(x) - (1 - t) log(1 - D(x)) - log(1 - D(G(z))), from logits, in float32. The paper's
    t is 1; one-sided label smoothing (Salimans et al. sec. 3.4) lowers it for real samples only."""
    real_logits = real_logits.float()
    real = real_target * F.softplus(-real_logits) + (1 - real_target) * F.softplus(real_logits)
    return real.mean() + F.softplus(fake_logits.float()).mean()


def g_loss(fake_logits, loss: str):
    """minimax: log(1 - D(G(z))); nonsaturating: -log D(G(z))."""
    fake_logits = fake_logits.float()
    return -F.softplus(fake_logits).mean() if loss == "minimax" else F.softplus(-fake_logits).mean()


def feature_matching_loss(real_features, fake_features):
    """||E_x f(x) - E_z f(G(z))||^2 over D's last hidden layer f (Salimans et al. sec. 3.1), in
    float32."""
    return (real_features.float().mean(0) - fake_features.float().mean(0)).pow(2).sum()


def historical_penalty(params, averages):
    """||theta - (1/t) sum_i theta[i]||^2 over one player's parameters
    (Salimans et al. sec. 3.3)."""
    return sum((p.float() - a.float()).pow(2).sum() for p, a in zip(params, averages))


@torch.no_grad()
def update_historical_average(averages, models, t: int):
    """After step t the averages hold the mean of theta[0..t]: the new theta weighs 1 / (t + 1)."""
    for average, model in zip(averages, models):
        torch._foreach_lerp_(list(average.parameters()), list(model.parameters()), 1.0 / (t + 1))


def unrolled_d_params(D, opt_d, real, fake, k: int, real_target: float = 1.0) -> dict:
    """theta_D^K: k Adam steps on D's loss from a copy of D's parameters and Adam moments,
    differentiable in `fake` so that G's gradient flows through them (Metz et al. eq. 7-10; the
    authors' code unrolls Adam too)."""
    (beta1, beta2), lr, eps = (opt_d.param_groups[0]["betas"], opt_d.param_groups[0]["lr"],
                               opt_d.param_groups[0]["eps"])
    names, params = zip(*D.named_parameters())
    state = [opt_d.state.get(p, {}) for p in params]
    theta = [p.detach().requires_grad_() for p in params]
    m = [s.get("exp_avg", torch.zeros_like(p)) for s, p in zip(state, params)]
    v = [s.get("exp_avg_sq", torch.zeros_like(p)) for s, p in zip(state, params)]
    t = float(state[0].get("step", 0))
    for _ in range(k):
        weights = dict(zip(names, theta))
        loss = d_loss(functional_call(D, weights, (real,)), functional_call(D, weights, (fake,)),
                      real_target)
        grads = torch.autograd.grad(loss, theta, create_graph=True)
        t += 1
        m = [beta1 * m_ + (1 - beta1) * g for m_, g in zip(m, grads)]
        # v held fixed: its gradient is of second order,
        # and 0 * inf where a maxout piece never wins (v = 0)
        v = [beta2 * v_ + (1 - beta2) * g.detach() ** 2 for v_, g in zip(v, grads)]
        theta = [p - lr * (m_ / (1 - beta1 ** t)) / ((v_ / (1 - beta2 ** t)).sqrt() + eps)
                 for p, m_, v_ in zip(theta, m, v)]
    return dict(zip(names, theta))


def unrolled_g_loss(real_logits_k, fake_logits_k, real_target: float = 1.0):
    """Metz et al. eq. 10: G minimises the minimax value at the unrolled D, f = -d_loss at
    theta_D^K. Its real term also depends on G, through theta_D^K; --loss does not apply."""
    return -d_loss(real_logits_k, fake_logits_k, real_target)


def train_step(G, D, opt_g, opt_d, scaler, data, args, amp_dtype, history=None):
    """k D steps, each on a fresh real and fake batch (Algorithm 1), then one G step. The remedies'
    flags change the losses; `history` holds the running means of G's and D's parameters for
    historical averaging."""
    device, n = data.device, args.batch_size * args.pack  # PacGAN: m samples per D input
    autocast = autocast_to(device.type, amp_dtype)  # bf16/fp16 under --amp, else float32
    real_target = 1 - args.label_smoothing
    if args.simultaneous:  # one batch; each loss reaches only its own player's weights
        real, _ = data.batch(n)
        with autocast:
            fake = G(torch.randn(n, args.z_dim, device=device))
            loss_d = d_loss(D(real), D(fake.detach()), real_target)
            with frozen(D):
                loss_g = g_loss(D(fake), args.loss)
        opt_d.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_d + loss_g).backward()
        scaler.step(opt_d)
        scaler.step(opt_g)
        scaler.update()
        return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach()}
    for _ in range(args.d_steps):
        real, _ = data.batch(n)
        z = torch.randn(n, args.z_dim, device=device)
        with autocast:
            loss_d = d_loss(D(real), D(G(z).detach()), real_target)
            if history is not None:
                loss_d = loss_d + (args.historical_averaging
                                   * historical_penalty(D.parameters(), history[1].parameters()))
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        scaler.update()  # a GradScaler allows one step per optimizer between updates
    with autocast:
        fake = G(torch.randn(n, args.z_dim, device=device))
        if args.feature_matching:
            with torch.no_grad():
                real_features = D.features(data.batch(n)[0])
            with frozen(D):
                loss_g = feature_matching_loss(real_features, D.features(fake))
        elif args.unroll:  # the paper's surrogate (eq. 10): f(theta_G, theta_D^K)
            real_u = data.batch(n)[0]
            theta_k = unrolled_d_params(D, opt_d, real_u, fake, args.unroll, real_target)
            loss_g = unrolled_g_loss(functional_call(D, theta_k, (real_u,)),
                                     functional_call(D, theta_k, (fake,)), real_target)
        else:
            with frozen(D):  # gradients through D for G, none for D's own weights
                loss_g = g_loss(D(fake), args.loss)
        if history is not None:
            loss_g = loss_g + (args.historical_averaging
                               * historical_penalty(G.parameters(), history[0].parameters()))
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return {"d_loss": loss_d.detach(), "g_loss": loss_g.detach()}


def mode_metrics(points: torch.Tensor, centres: torch.Tensor, std: float) -> dict:
    """Modes captured, share of high-quality samples and reverse KL (PacGAN / VEEGAN tables)."""
    dist, nearest = torch.cdist(points.float(), centres.float()).min(1)
    good = dist < 3 * std
    counts = torch.bincount(nearest[good], minlength=len(centres)).double()
    p = counts / counts.sum().clamp(min=1)
    reverse_kl = ((p[p > 0] * (p[p > 0] * len(centres)).log()).sum().item() if good.any()
                  else float("nan"))  # KL(p || U)
    return {"modes": int((counts > 0).sum()), "high_quality": good.float().mean().item(),
            "reverse_kl": reverse_kl}


def draw_points(points: torch.Tensor, centres: torch.Tensor, std: float,
                size: int = 512) -> torch.Tensor:
    """A (3, size, size) picture: 3-std discs around the modes in red, samples in blue."""
    extent = centres.abs().max().item() + 1.5
    to_px = lambda p: ((p / extent + 1) / 2 * (size - 1)).round().long().clamp(0, size - 1)
    image = torch.ones(3, size, size)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    grid = torch.stack([xs, size - 1 - ys], -1).float() / (size - 1) * 2 * extent - extent
    near = (torch.cdist(grid.view(-1, 2), centres.cpu().float()).min(1).values.view(size, size)
            < 3 * std)
    image[1:, near] = 0.6  # light red discs: where a sample counts as high quality
    px = to_px(points.cpu().float())
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            x, y = (px[:, 0] + dx).clamp(0, size - 1), (size - 1 - px[:, 1] + dy).clamp(0, size - 1)
            image[:, y, x] = torch.tensor([0.1, 0.2, 0.9]).view(3, 1)
    return image


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor) -> torch.Tensor:
    G.eval()
    out = G(z).float()
    G.train()
    return out


def main():
    # flags (the saved ones under --resume), device, precision, DDP under torchrun, seed
    run = Run.start("minimal_gan", Args, "Generative Adversarial Nets")
    args, device = run.args, run.device
    with user_errors():
        if args.feature_matching and args.unroll:
            raise UserError("--feature-matching and --unroll each replace G's loss: choose one")
        if args.simultaneous and (args.feature_matching or args.unroll or args.d_steps > 1
                                  or args.historical_averaging):
            raise UserError("--simultaneous takes one D and one G step on the plain losses: "
                            "leave out --feature-matching, --unroll, --d-steps and "
                            "--historical-averaging")
        if (args.feature_matching or args.unroll) and (run.compile or run.world > 1):
            raise UserError("--feature-matching and --unroll call D's layers directly: "
                            "run them in one process, with --no-compile")
        # the dataset decoded once into a uint8 tensor on the device; batches are drawn from it
        if args.dataset not in ("ring8", "grid25") and (args.toy_points or args.toy_scale != 1):
            raise UserError("--toy-points and --toy-scale are for ring8 and grid25")
        data = run.load_data(args.image_size, toy=True, scale=args.toy_scale,
                             points=args.toy_points)
        if data.is_2d and device.type == "cpu":
            torch.set_num_threads(1)  # MLPs this small run faster on one CPU thread (measured: 2x)
        args.z_dim = args.z_dim or (2 if data.is_2d else 100)
        G = Generator(args.z_dim, args.g_hidden or args.hidden, args.g_layers or args.layers,
                      data.shape, args.g_batchnorm).to(device)
        D = Discriminator(args.hidden, args.layers, args.maxout, args.dropout, data.shape,
                          args.pack, args.minibatch_disc, args.minibatch_dim).to(device)
        if args.init_std:
            init_normal(G, args.init_std)
            init_normal(D, args.init_std)
        history = (tuple(copy.deepcopy(m).requires_grad_(False) for m in (G, D))
                   if args.historical_averaging else None)
        ema = copy.deepcopy(G).requires_grad_(False) if args.ema else None
        fused = device.type == "cuda"
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999), fused=fused)
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999), fused=fused)
        z_fixed = torch.randn(2500 if data.is_2d else 64, args.z_dim, device=device)
        # the state a checkpoint holds: restored on --resume, else a new run in RUN_DIR
        run.restore_or_start(G=G, D=D, ema=ema, opt_g=opt_g, opt_d=opt_d, z_fixed=z_fixed,
                             **({"G_history": history[0], "D_history": history[1]}
                                if history else {}))  # only when on: older checkpoints lack it
        G_sample = ema if ema is not None else G
        sample = lambda k: generate(G_sample, torch.randn(k, args.z_dim, device=device))
        # 2-D data: a picture of 2,500 fixed-z samples and the modes, and the mode metrics
        if data.is_2d:
            # how sample grids, FID and --export draw images
            run.set_samplers(sample, grid=lambda: draw_points(generate(G_sample, z_fixed),
                                                              data.centres, data.std))
            evaluate = lambda: mode_metrics(generate(G_sample, z_fixed), data.centres, data.std)
        else:
            run.set_samplers(sample, grid=lambda: generate(G_sample, z_fixed))
            evaluate = None
        # DDP across processes and torch.compile, when on
        G_train, D_train = run.wrap(G), run.wrap(D)

        # one iteration per G update; step counts the updates made before it (0, 1, ...)
        for step in run.steps():
            losses = train_step(G_train, D_train, opt_g, opt_d, run.scaler, data, args,
                                run.amp_dtype, history)
            if history is not None:
                update_historical_average(history, (G, D), step + 1)
            if ema is not None:
                torch._foreach_lerp_(list(ema.parameters()), list(G.parameters()),
                                     1.0 - args.ema_decay)
            # count the step; then log, sample, score FID, checkpoint and stop on a signal, as due
            run.after_step(losses, log_extra=evaluate)
        if run.main and data.is_2d:
            m = evaluate()
            kl = (f"{m['reverse_kl']:.3f}" if m["high_quality"] > 0
                  else "n/a (no sample near a mode)")
            print(f"{args.dataset}: {m['modes']}/{len(data.centres)} modes, "
                  f"{100 * m['high_quality']:.1f}% high-quality samples, "
                  f"reverse KL {kl} (2,500 samples)")
        # --export N samples
        run.finish()


if __name__ == "__main__":
    main()
