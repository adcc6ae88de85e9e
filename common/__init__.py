"""Plumbing shared by the GAN scripts: command line and shared flags (`cli`), data (`data`), the run
(`run`: resume, checkpoints, logging, sample grids, FID during training, stop signals, export) and
FID (`fid`). Nothing a reader needs to understand a method lives here."""
