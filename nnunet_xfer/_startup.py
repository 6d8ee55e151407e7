"""Start-up hook: make nnU-Net find the ``Xfer*`` trainers, and guard its predictor's unpickling.

The wheel installs ``nnunet_xfer_trainers.pth`` into site-packages; Python runs its one line at
every start-up, which imports this module. It

* appends this package's trainer folder to ``nnUNet_extTrainer`` (a user's own entries stay, and
  come first);
* registers an import hook for nnU-Net's predictor module only: when (and if) a process imports
  ``nnunetv2.inference.predict_from_raw_data``, :func:`nnunet_xfer.nnunet_checkpoint.guard_predictor`
  wraps ``nnUNetPredictor.initialize_from_trained_model_folder`` so that the checkpoints of an
  ``Xfer*`` run are opened with the restricted unpickler before nnU-Net unpickles them
  (``nnUNetv2_predict`` loads them before any trainer code could run). Other imports only pass
  one string comparison.

Standard library only, and it never raises: a start-up hook must not break Python.
"""

#: The nnU-Net module whose predictor class gets the checkpoint guard.
PREDICTOR_MODULE = "nnunetv2.inference.predict_from_raw_data"


def _register() -> None:
    import os

    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainers")
    if not os.path.isdir(folder):
        return
    entries = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if folder not in entries:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(entries + [folder])


class _GuardingLoader:
    """Runs the real loader, then installs the checkpoint guard on the loaded module."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            from nnunet_xfer.nnunet_checkpoint import guard_predictor
            guard_predictor(module)
        except Exception:  # noqa: BLE001 - nnU-Net must still work if the package is broken
            pass

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PredictorGuardFinder:
    """A meta-path finder that answers for nnU-Net's predictor module only."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != PREDICTOR_MODULE:
            return None
        import sys
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _GuardingLoader(spec.loader)
                return spec
        return None


def install_predictor_guard() -> None:
    """Register the import hook (once); a predictor module already imported is guarded now."""
    import sys
    if any(isinstance(f, _PredictorGuardFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _PredictorGuardFinder())
    module = sys.modules.get(PREDICTOR_MODULE)
    if module is not None:
        from nnunet_xfer.nnunet_checkpoint import guard_predictor
        guard_predictor(module)


try:
    _register()
    install_predictor_guard()
except Exception:  # noqa: BLE001 - see the module docstring
    pass
