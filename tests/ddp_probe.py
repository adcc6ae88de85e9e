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

from common import log  # noqa: E402  (after the path is set)


def main():
    script, argv = sys.argv[1], sys.argv[2:]
    if os.environ.get("PROBE_RANK_STATES"):
        save = log.Run.save_checkpoint

        def save_checkpoint(self, state):
            self.dir.mkdir(parents=True, exist_ok=True)
            rank_state = {"step": state["step"], "G": state["G"], "D": state["D"]}
            torch.save(rank_state, self.dir / f"rank_{os.environ.get('RANK', '0')}.pt")
            save(self, state)

        log.Run.save_checkpoint = save_checkpoint
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
