"""Start-up hook: make nnU-Net find the ``Xfer*`` trainers without ``eval "$(nnunet-xfer env)"``.

The wheel installs ``nnunet_xfer_trainers.pth`` into site-packages; Python runs its one line at
every start-up, which imports this module. It appends this package's trainer folder to
``nnUNet_extTrainer`` (a user's own entries stay, and come first). Standard library only, and
it never raises: a start-up hook must not break Python.
"""


def _register() -> None:
    import os

    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainers")
    if not os.path.isdir(folder):
        return
    entries = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if folder not in entries:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(entries + [folder])


try:
    _register()
except Exception:  # noqa: BLE001 - see the module docstring
    pass
