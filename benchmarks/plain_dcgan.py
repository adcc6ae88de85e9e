"""The PyTorch DCGAN tutorial's training loop, as the speed baseline for dcgan.py.

Follows https://pytorch.org/tutorials/beginner/dcgan_faces_tutorial.html: torchvision ImageFolder
over DATA_DIR/celeba (the folder that holds img_align_celeba/) with Resize, CenterCrop, ToTensor and
Normalize(0.5, 0.5); a shuffling DataLoader with 2 workers; eager float32; D on the real batch
(backward), D on fake.detach() (backward), D step; then G through D. The networks are dcgan.py's own
Generator and Discriminator at the same batch, image size and width, so only the loop differs.
img_per_s is logged to RUN_DIR/metrics.jsonl by common.run.Logger, exactly as the scripts log it.

Differences from the tutorial: dcgan.Discriminator returns logits, so BCEWithLogitsLoss replaces
Sigmoid + BCELoss (the same loss); training runs for --steps batches across epochs instead of a
number of epochs; no sample grids or loss plots.

--decoded draws the batches from the images decoded once into a tensor on the device (common/data.py,
as dcgan.py does: centre-cropped to 178x178, resized bicubic, no flips) instead of the DataLoader. On
a GPU the DataLoader's JPEG decoding, not the models, sets the tutorial loop's pace; with --decoded
the loop is the fair peer of the compiled + bf16 scripts.
"""
import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # dcgan.py and common/ live in the repository root
import dcgan  # noqa: E402
from common import data  # noqa: E402
from common.cli import UserError, arg, parse_args, resolve_device, user_errors  # noqa: E402
from common.run import Logger  # noqa: E402


@dataclasses.dataclass
class Args:
    data_dir: str = arg("data", "folder holding celeba/img_align_celeba/*.jpg")
    image_size: int = arg(64, "training resolution (tutorial: 64)")
    batch_size: int = arg(128, "batch size (tutorial: 128)")
    z_dim: int = arg(100, "dimension of z (tutorial: 100)")
    width: int = arg(64, "dcgan.py's width (tutorial: ngf = ndf = 64)")
    lr: float = arg(2e-4, "Adam learning rate (tutorial: 2e-4)")
    beta1: float = arg(0.5, "Adam beta1 (tutorial: 0.5)")
    workers: int = arg(2, "DataLoader worker processes (tutorial: 2)")
    decoded: bool = arg(False, "draw batches from the decoded images on the device, not the DataLoader (tutorial: no)")
    steps: int = arg(1000, "batches to train for")
    seed: int = arg(999, "random seed (tutorial: 999)")
    device: str = arg("auto", "cuda, cuda:N, cpu, or auto")
    run_dir: str = arg("runs/plain_dcgan", "where config.json and metrics.jsonl are written")
    log_every: int = arg(50, "console and metrics line every N steps (tutorial: 50)")
    track: bool = arg(False, "log to Weights & Biases")
    wandb_project: str = arg("gan-reference", "wandb project")
    wandb_entity: str = arg(None, "wandb entity")


def main():
    args, _ = parse_args(Args, __doc__.split("\n")[0])
    with user_errors():
        root = Path(args.data_dir) / "celeba"
        if not any(root.glob("*/*.jpg")):
            raise UserError(f"no images in {root}/*/ (the tutorial's layout: {root}/img_align_celeba/*.jpg)")
        device = resolve_device(args.device)
        torch.manual_seed(args.seed)
        if args.decoded:  # one pass of --steps batches, drawn with replacement on the device
            images = data.load("celeba", args.data_dir, args.image_size, device)
            loader = (images.batch(args.batch_size) for _ in range(args.steps))
        else:
            dataset = torchvision.datasets.ImageFolder(root=str(root), transform=T.Compose([
                T.Resize(args.image_size), T.CenterCrop(args.image_size), T.ToTensor(),
                T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
            loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                                 num_workers=args.workers)

        G = dcgan.Generator(args.z_dim, args.width, args.image_size, 3).to(device)
        D = dcgan.Discriminator(args.width, args.image_size, 3).to(device)
        G.apply(dcgan.init_weights), D.apply(dcgan.init_weights)
        criterion = nn.BCEWithLogitsLoss()
        opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
        opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
        run = Logger(args, "plain_dcgan", args.run_dir)

        step = 0
        while step < args.steps:
            for real, _ in loader:
                real = real.to(device)
                b = real.size(0)
                label = torch.full((b,), 1.0, device=device)
                D.zero_grad()
                err_d_real = criterion(D(real), label)
                err_d_real.backward()
                fake = G(torch.randn(b, args.z_dim, 1, 1, device=device))
                label.fill_(0.0)
                err_d_fake = criterion(D(fake.detach()), label)
                err_d_fake.backward()
                opt_d.step()
                G.zero_grad()
                label.fill_(1.0)  # fake labels are real for the generator cost
                err_g = criterion(D(fake), label)
                err_g.backward()
                opt_g.step()
                step += 1
                if step % args.log_every == 0 or step == args.steps:
                    run.log(step, args.steps, {"d_loss": err_d_real + err_d_fake, "g_loss": err_g}, b)
                if step == args.steps:
                    break
        run.close()


if __name__ == "__main__":
    main()
