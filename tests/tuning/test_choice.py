"""The choice rule, on injected timings and losses: fastest within tolerance, never a diverging one."""
import math

from leantrain.tuning.choice import Trial, choose


def _trials(**spec):
    return {name: Trial(ms_per_step=[ms, ms * 1.01, ms * 0.99], loss=loss) for name, (ms, loss) in spec.items()}


def test_the_fastest_precision_whose_loss_keeps_with_fp32_is_chosen():
    choice, rejected = choose(_trials(fp32=(10.0, 1.00), bf16=(5.0, 1.01), fp16=(7.0, 1.00)), "fp32")
    assert choice == "bf16"
    assert rejected["fp16"] == "slower than bf16" and rejected["fp32"] == "slower than bf16"


def test_a_diverging_precision_is_never_chosen_however_fast():
    for bad in (math.nan, math.inf, 50.0):
        choice, rejected = choose(_trials(fp32=(10.0, 1.0), bf16=(9.0, 1.02), fp16=(1.0, bad)), "fp32")
        assert choice == "bf16", bad
        assert "fp16" in rejected and ("outside tolerance" in rejected["fp16"])


def test_fp32_is_kept_when_the_others_are_slower_or_only_within_noise():
    assert choose(_trials(fp32=(10.0, 1.0), bf16=(60.0, 1.0)), "fp32")[0] == "fp32"  # AVX2: bf16 emulated
    choice, rejected = choose(_trials(fp32=(10.0, 1.0), bf16=(9.9, 1.0)), "fp32")  # 1% faster: noise
    assert choice == "fp32" and "not faster than fp32" in rejected["bf16"]


def test_skipped_alternatives_are_never_chosen_and_keep_their_reason():
    trials = _trials(fp32=(10.0, 1.0))
    trials["fp16"] = Trial(skipped="no fp16 arithmetic on this CPU")
    trials["bf16"] = Trial(ms_per_step=[1.0], skipped="6.0x slower than fp32 in warm-up")
    choice, rejected = choose(trials, "fp32")
    assert choice == "fp32" and rejected == {"fp16": "no fp16 arithmetic on this CPU",
                                             "bf16": "6.0x slower than fp32 in warm-up"}


def test_when_the_reference_itself_diverges_it_stays_the_choice():
    choice, rejected = choose(_trials(fp32=(10.0, math.nan), bf16=(5.0, math.nan)), "fp32")
    assert choice == "fp32" and "unusable" in rejected["bf16"]


def test_alternatives_without_a_loss_are_judged_by_time_alone():
    trials = {k: Trial(ms_per_step=[ms]) for k, ms in {"adam": 1.0, "foreach-adam": 0.5, "fused-adam": 0.2}.items()}
    assert choose(trials, "adam")[0] == "fused-adam"
