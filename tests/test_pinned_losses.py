"""Per-step losses pinned through the command line: a refactor of the methods, the loop, the engine or the
optimizers must leave every step's loss where it was (float32 rounding aside).

Each pin says which optimizer it holds (unlearn.optim). The RM methods run the old transformers.AdamW, tiny-random's
default for them as for the published recipes; `rmu_adamw` runs torch.optim.AdamW and holds the losses RMU was
first pinned with, before the optimizer was a setting (torch's was the only one then). NPO and SimNPO run torch's
AdamW, their presets' default."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import only_run_dir, unlearn

# (loss, forget_loss, retain_loss) of steps 0..5: model=tiny-random eval=none steps=6, seed 42.
PINNED = {
    "rmu_adamw": (  # torch.optim.AdamW: the values first pinned, before the optimizer became a setting
        (0.6590077877044678, 0.6590077877044678, 0.0),
        (0.6569859981536865, 0.6531935930252075, 0.0037923932541161776),
        (0.6566306352615356, 0.6554628610610962, 0.001167748006992042),
        (0.6604750156402588, 0.6574561595916748, 0.00301886978559196),
        (0.6611188054084778, 0.6587406992912292, 0.0023781172931194305),
        (0.6624853014945984, 0.660029947757721, 0.002455337205901742),
    ),
    "rmu": (
        (0.6590077877044678, 0.6590077877044678, 0.0),
        (0.656179666519165, 0.653618574142456, 0.002561066998168826),
        (0.6565931439399719, 0.6556073427200317, 0.0009858221746981144),
        (0.6603124737739563, 0.6574284434318542, 0.0028840561863034964),
        (0.660968542098999, 0.6585615277290344, 0.002407027641311288),
        (0.6623675227165222, 0.6598438620567322, 0.0025236390065401793),
    ),
    "adaptive_rmu": (
        (0.08242390304803848, 0.08242390304803848, 0.0),
        (0.08232597261667252, 0.08063987642526627, 0.0016860998002812266),
        (0.08164145797491074, 0.08124005049467087, 0.0004014067235402763),
        (0.08320591598749161, 0.0823328047990799, 0.0008731140987947583),
        (0.08322780579328537, 0.08235125243663788, 0.0008765499223954976),
        (0.08438089489936829, 0.08289818465709686, 0.0014827094273641706),
    ),
    "rna": (  # over rmu, nu = 0.5
        (298.72308349609375, 0.6590077877044678, 298.0640869140625),
        (302.9330139160156, 0.6556555032730103, 302.27734375),
        (300.5555114746094, 0.6568719148635864, 299.8986511230469),
        (299.9501037597656, 0.6593478918075562, 299.2907409667969),
        (301.9822998046875, 0.6595133543014526, 301.3227844238281),
        (302.6483154296875, 0.6609278321266174, 301.9873962402344),
    ),
    "rna_adaptive": (  # over adaptive_rmu, nu = 0.5
        (298.1465148925781, 0.08242390304803848, 298.0640869140625),
        (302.3584899902344, 0.08122439682483673, 302.2772521972656),
        (299.9798889160156, 0.08127807080745697, 299.89862060546875),
        (299.3724060058594, 0.08233974128961563, 299.2900695800781),
        (301.4056701660156, 0.08233840763568878, 301.3233337402344),
        (302.07037353515625, 0.08292104303836823, 301.9874572753906),
    ),
    "npo": (  # KL retain term, beta 0.1, alpha 1
        (13.862943649291992, 13.862943649291992, 0.0),
        (13.852477073669434, 13.852433204650879, 4.412283669807948e-05),
        (13.84401798248291, 13.843915939331055, 0.00010197544179391116),
        (13.834197044372559, 13.833877563476562, 0.0003192214644514024),
        (13.835752487182617, 13.835206031799316, 0.0005465522408485413),
        (13.820145606994629, 13.819332122802734, 0.0008139468263834715),
    ),
    "simnpo": (
        (9.045153617858887, 9.045153617858887, 0.0),
        (9.046489715576172, 9.046445846557617, 4.404575520311482e-05),
        (9.052375793457031, 9.052273750305176, 0.00010168558219447732),
        (9.0305757522583, 9.030257225036621, 0.0003183161898050457),
        (9.052952766418457, 9.052409172058105, 0.0005440604873001575),
        (9.02390193939209, 9.023092269897461, 0.0008096452220343053),
    ),
}
OVERRIDES = {
    "rmu_adamw": ["method=rmu", "optimizer=adamw"],
    "rmu": ["method=rmu", "optimizer=transformers_adamw"],
    "adaptive_rmu": ["method=adaptive_rmu", "optimizer=transformers_adamw"],
    "rna": ["method=rna", "method.nu=0.5", "optimizer=transformers_adamw"],
    "rna_adaptive": ["method=rna", "method.base=adaptive_rmu", "method.nu=0.5", "optimizer=transformers_adamw"],
    "npo": ["method=npo", "optimizer=adamw"],
    "simnpo": ["method=simnpo", "optimizer=adamw"],
}


@pytest.mark.parametrize("name", list(PINNED))
def test_per_step_losses_are_pinned(tmp_path, name):
    done = unlearn("model=tiny-random", "eval=none", "steps=6", "save_model=false", *OVERRIDES[name],
                   f"output_root={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    lines = (only_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(PINNED[name])
    for record, pinned in zip(records, PINNED[name]):
        got = (record["loss"], record["forget_loss"], record["retain_loss"])
        assert got == pytest.approx(pinned, rel=1e-5, abs=1e-7), record["step"]
