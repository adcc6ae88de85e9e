"""Run a script's main() in this process, with test hooks set by environment variables.

    python tests/ddp_probe.py SCRIPT.py ARGS...                      (one process)
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_probe.py SCRIPT.py ARGS...

PROBE_RANK_STATES=1: whenever the script checkpoints, every rank also writes its step, G and D to
    RUN_DIR/rank_<RANK>.pt (the script itself writes checkpoint.pt on rank 0 only).
PROBE_NAN_AFTER=N: the script's g_loss returns NaN from its N-th call on (a simulated divergence).
"""
import importlib
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import run  # noqa: E402  (after the path is set)


def main():
    script, argv = sys.argv[1], sys.argv[2:]
    if os.environ.get("PROBE_RANK_STATES"):
        checkpoint = run.Run.checkpoint

        def checkpoint_and_rank_state(self):
            folder = Path(self.args.run_dir)
            folder.mkdir(parents=True, exist_ok=True)
            rank_state = {"step": self.step, "G": self.tracked["G"].state_dict(), "D": self.tracked["D"].state_dict()}
            torch.save(rank_state, folder / f"rank_{os.environ.get('RANK', '0')}.pt")
            checkpoint(self)

        run.Run.checkpoint = checkpoint_and_rank_state
    module = importlib.import_module(Path(script).stem)
    if os.environ.get("PROBE_NAN_AFTER"):
        nan_after, g_loss, calls = int(os.environ["PROBE_NAN_AFTER"]), module.g_loss, [0]

        def nan_g_loss(*args, **kwargs):
            calls[0] += 1
            loss = g_loss(*args, **kwargs)
            return loss * float("nan") if calls[0] >= nan_after else loss

        module.g_loss = nan_g_loss
    sys.argv = [script, *argv]
    module.main()


if __name__ == "__main__":
    main()
