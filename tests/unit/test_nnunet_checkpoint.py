"""``plain_numbers``: the training log the ``Xfer*`` trainers store (numpy scalars made Python numbers)."""
import numpy as np

from nnunet_xfer.nnunet_checkpoint import plain_numbers


def test_numpy_scalars_become_python_numbers_of_the_same_value():
    log = {"train_losses": [np.float32(0.1), np.float32(-1.5)],
           "dice_per_class_or_region": [[np.float64(0.25), np.float32(0.5)]],
           "lrs": [0.01], "epoch": np.int64(7), "ok": np.bool_(True), "pair": (np.int32(3), "x")}
    out = plain_numbers(log)
    assert out == {"train_losses": [float(np.float32(0.1)), -1.5],
                   "dice_per_class_or_region": [[0.25, 0.5]], "lrs": [0.01], "epoch": 7,
                   "ok": True, "pair": (3, "x")}
    assert out["train_losses"][0] == np.float32(0.1)  # float32 widens exactly
    leaves = [*out["train_losses"], *out["dice_per_class_or_region"][0], out["epoch"], out["ok"],
              out["pair"][0]]
    assert [type(x) for x in leaves] == [float, float, float, float, int, bool, int]
    assert isinstance(out["pair"], tuple)


def test_other_values_pass_through_untouched():
    array = np.zeros(3, dtype=np.float32)
    values = [array, "text", None, np.str_("s"), np.datetime64("2026-12-07")]
    out = plain_numbers(values)
    assert out[0] is array and out[1:3] == ["text", None]
    assert type(out[3]) is np.str_ and type(out[4]) is np.datetime64
