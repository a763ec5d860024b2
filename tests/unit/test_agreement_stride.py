"""How often the ranks agree on stopping (trainer/checkpoint/agreement.py, agreement_stride)."""

from trainer.checkpoint.agreement import AGREE_MAX_STEPS, AGREE_WITHIN_S, agreement_stride


def test_the_ranks_agree_every_step_unless_steps_are_short():
    assert agreement_stride(0.0) == 1  # no step timed yet
    assert agreement_stride(0.5) == 1  # a real GPU step: a stop waits for no extra step
    assert agreement_stride(AGREE_WITHIN_S / 2.5) == 2
    assert agreement_stride(1e-6) == AGREE_MAX_STEPS  # bounded: a stop never waits long in steps either
