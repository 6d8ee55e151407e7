"""``python -m nnunet_xfer.experiment.checkpoints FILE``: the runner's checkpoint check for shell scripts.

Before ``nnUNetv2_train --c`` / ``--val`` (which unpickle blindly), the runner and each SLURM job
open the file with :func:`nnunet_xfer.nnunet_checkpoint.open_nnunet_checkpoint` (exit 0: safe;
exit 2 and one line on stderr: refused).
"""
from __future__ import annotations

import sys
from pathlib import Path

from nnunet_xfer.errors import UserError
from nnunet_xfer.nnunet_checkpoint import CHECKPOINT_ADVICE as ADVICE
from nnunet_xfer.nnunet_checkpoint import open_nnunet_checkpoint


def check_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path`` opened safely (see :mod:`nnunet_xfer.nnunet_checkpoint`); one-line
    :class:`UserError` when it will not be handed to nnU-Net."""
    return open_nnunet_checkpoint(path, ADVICE)


def main(argv: list[str] | None = None) -> int:
    """Check each FILE; exit 2 at the first one refused."""
    for name in (sys.argv[1:] if argv is None else argv):
        try:
            check_checkpoint(Path(name))
        except UserError as e:
            print(f"nnunet-xfer: error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
