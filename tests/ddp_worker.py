"""Run by torchrun in tests/test_distributed.py: train the tiny config, save this rank's final state.

Usage: ddp_worker.py FEATURES RUN_DIR OUT_DIR FAIL_AT_STEP [key=value ...]  (FAIL_AT_STEP < 0: never fail)
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from diffwave.config import load_config
from diffwave.training.distributed import init_distributed, teardown_distributed
from diffwave.training.setup import prepare_run_dir
from diffwave.training.trainer import Trainer


def main() -> None:
    features, run_dir, out_dir = (Path(arg) for arg in sys.argv[1:4])
    fail_at = int(sys.argv[4])
    config = load_config("tiny", sys.argv[5:])
    context = init_distributed("cpu", timeout_s=60)
    try:
        if context.is_main:
            prepare_run_dir(run_dir, resume=False, overwrite=False)
        if context.distributed:
            dist.barrier()
        trainer = Trainer.from_config(config, features, run_dir, context)

        def fail(t: Trainer) -> None:
            if context.rank == 1 and t.step == fail_at:
                raise RuntimeError(f"injected failure on rank 1 at step {t.step}")

        result = trainer.fit(on_step=fail)
        torch.save({"model": trainer.model.state_dict(), "losses": result.losses}, out_dir / f"rank{context.rank}.pt")
    finally:
        teardown_distributed()


if __name__ == "__main__":
    main()
