"""Test-only launcher: ``glmtune.cli`` under accelerate's FSDP2 on CPU processes (gloo), for the CPU tests.

accelerate 1.15 turns FSDP on only for accelerator devices: a CPU process group (``ACCELERATE_USE_CPU=1``) stays
``MULTI_CPU`` and the FSDP plugin is dropped. This script sets the distributed type to FSDP once the state is
built; everything after that (``fully_shard`` on the auto-wrapped layers, the optimizer swap, glmtune's gathers and
checkpoints) is the real path a GPU run takes. Run it as accelerate's training script:
``ACCELERATE_USE_CPU=1 accelerate launch --config_file examples/accelerate/fsdp.yaml tests/smoke/fsdp_cpu.py train …``
"""

from __future__ import annotations

import sys

import accelerate.state
from accelerate.utils import DistributedType

_init = accelerate.state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        accelerate.state.PartialState().distributed_type = DistributedType.FSDP  # later states copy it
        self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin


accelerate.state.AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    from glmtune.cli import main

    sys.exit(main(sys.argv[1:]))
