"""Run a script's main() in this process, with test hooks set by environment variables.

    python tests/ddp_probe.py SCRIPT.py ARGS...                      (one process)
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_probe.py SCRIPT.py ARGS...

PROBE_RANK_STATES=1: whenever the script checkpoints, every rank also writes its step, G and D to
    RUN_DIR/rank_<RANK>.pt (the script itself writes checkpoint.pt on rank 0 only).
PROBE_DDP_LOG=FILE: rank 0 appends a line to FILE per DistributedDataParallel built: the module's class, its
    find_unused_parameters, and the names of the parameters it synchronises.
PROBE_EXIT_DIR=DIR: each rank writes the status its main() ends with (sys.exit's, 0 on return, 1 on an
    exception) to DIR/exit_<RANK>, and whether its process group was still up then to DIR/group_<RANK>.
"""
import importlib
import json
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
    if os.environ.get("PROBE_DDP_LOG"):
        ddp_init = torch.nn.parallel.DistributedDataParallel.__init__

        def logged_init(self, module, *args, **kwargs):
            ddp_init(self, module, *args, **kwargs)
            if os.environ.get("RANK", "0") == "0":
                synced = [name for name, _ in module.named_parameters() if name not in self.parameters_to_ignore]
                with open(os.environ["PROBE_DDP_LOG"], "a") as f:
                    f.write(json.dumps({"module": type(module).__name__, "params": synced,
                                        "find_unused_parameters": self.find_unused_parameters}) + "\n")

        torch.nn.parallel.DistributedDataParallel.__init__ = logged_init
    module = importlib.import_module(Path(script).stem)
    sys.argv = [script, *argv]
    status = 1
    try:
        module.main()
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else int(e.code is not None)
        raise
    finally:
        if os.environ.get("PROBE_EXIT_DIR"):
            folder, rank = Path(os.environ["PROBE_EXIT_DIR"]), os.environ.get("RANK", "0")
            (folder / f"exit_{rank}").write_text(str(status))
            (folder / f"group_{rank}").write_text(str(torch.distributed.is_initialized()))


if __name__ == "__main__":
    main()
