"""Packaging of the start-up hook only; everything else is in pyproject.toml.

``build_py`` also writes ``nnunet_xfer_trainers.pth`` at the root of the build, so the wheel puts
it into site-packages beside the package (see docs/trainers.md, "Trainer discovery").
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "nnunet_xfer_trainers.pth"
# One line; guarded so that a missing or broken package never disturbs Python's start-up.
PTH_LINE = ('import sys; exec("try:\\n import nnunet_xfer._startup\\nexcept Exception:\\n pass")\n')


class build_py_with_pth(build_py):
    """``build_py`` plus the ``.pth`` start-up hook at the root of ``build_lib``."""

    def run(self):
        super().run()
        if not self.editable_mode:
            target = os.path.join(self.build_lib, PTH_NAME)
            with open(target, "w", encoding="utf-8") as f:
                f.write(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


setup(cmdclass={"build_py": build_py_with_pth})
