"""Plumbing shared by the GAN scripts: command line (`cli`), data (`data`), logging and
checkpoints (`log`), FID (`fid`). Nothing a reader needs to understand a method lives here."""
