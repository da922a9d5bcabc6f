"""Run under torchrun by test_shutdown.py: when each rank ends its group and leaves shutdown.

Rank 0 ends its group a second late; each rank writes both times to ``<argv[1]>/<rank>.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hvkit import distributed


def main(out: Path) -> None:
    rank, _, _ = distributed.world()
    distributed.init(torch.device("cpu"))
    destroy, ended = dist.destroy_process_group, {}

    def late_destroy(*args, **kwargs) -> None:
        if rank == 0:
            time.sleep(1.0)
        destroy(*args, **kwargs)
        ended["at"] = time.time()

    dist.destroy_process_group = late_destroy
    distributed.shutdown()
    (out / f"{rank}.json").write_text(json.dumps({"ended": ended["at"], "left": time.time()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
