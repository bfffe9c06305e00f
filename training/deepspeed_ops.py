"""Build DeepSpeed's CPU ops once, at install, so no training run or test pays for it.

On a CPU-only machine DeepSpeed compiles its shared-memory communication op (``shm_comm``) at every
fresh initialisation unless it is in the torch extensions cache (``~/.cache/torch_extensions``);
that takes 40 s to 2 min on 2 cores. ``make install`` runs ``python -m training.deepspeed_ops``.
On GPU machines DeepSpeed's own CUDA ops are built the way its documentation says (``DS_BUILD_OPS``).
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from deepspeed.accelerator import get_accelerator
    except ImportError:
        print("DeepSpeed is not installed: nothing to build")
        return 0
    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        print(f"DeepSpeed accelerator is {accelerator.device_name()}: no CPU op to build")
        return 0
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    try:
        ShareMemCommBuilder().load(verbose=False)
    except Exception as exc:  # a missing compiler: DeepSpeed still runs, building at first use
        print(f"could not prebuild DeepSpeed's shm_comm op ({type(exc).__name__}); it builds at first use")
        return 0
    print("DeepSpeed CPU ops ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
