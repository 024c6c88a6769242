"""AdEMAMix's alpha and beta3 warm-ups (fastopt.optimizers.ademamix.warmups) against the paper's schedules.

optax.contrib.ademamix takes alpha and b3 as schedules of its count and ships none, so the golden script hands optax
fastopt's own `warmups` (tests/golden: the golden data checks when and how the schedule values are applied, not the
formula). The formula is checked here, against an independent evaluation of Pagliardini et al.'s schedules
(section 3: alpha_t = min(t alpha / T_alpha, alpha); beta3_t moves 1 / log(beta) linearly in t from beta1 to beta3).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastopt.optimizers.ademamix import warmups
from fastopt.specs import SPECS


def _hyper(**overrides):
    h = dict(SPECS["ademamix"].defaults)
    h.update(overrides)
    SPECS["ademamix"].validate(h)
    return h


def _paper(b1, b3, alpha, t_alpha, t_beta3, t):
    """The paper's schedules at t steps done, evaluated as 1 / log(beta) interpolated (a form of the same formula)."""
    alpha_t = min(t * alpha / t_alpha, alpha) if t_alpha else alpha
    if not t_beta3 or t >= t_beta3:
        return alpha_t, b3
    a = t / t_beta3
    inverse_log = (1 - a) / math.log(b1) + a / math.log(b3)
    return alpha_t, min(math.exp(1 / inverse_log), b3)


@pytest.mark.parametrize("b1, b3", [(0.9, 0.9999), (0.5, 0.999), (0.99, 0.995)])
@pytest.mark.parametrize("t_alpha, t_beta3", [(0, 0), (1, 1), (7, 10), (1000, 300)])
def test_warmups_follow_the_paper(b1, b3, t_alpha, t_beta3):
    h = _hyper(betas=(b1, 0.999, b3), alpha=4.0, alpha_warmup=t_alpha, beta3_warmup=t_beta3)
    previous = (-1.0, -1.0)
    for step in range(1, max(t_alpha, t_beta3) + 3):
        alpha, beta3 = warmups(h, step)
        want_alpha, want_beta3 = _paper(b1, b3, 4.0, t_alpha, t_beta3, step - 1)
        assert alpha == pytest.approx(want_alpha, rel=1e-14, abs=0), f"alpha at step {step}"
        assert beta3 == pytest.approx(want_beta3, rel=1e-14), f"beta3 at step {step}"
        assert alpha >= previous[0] and beta3 >= previous[1], f"not monotone at step {step}"
        previous = (alpha, beta3)
    # the first step starts from alpha = 0 and beta3 = beta1 (with a warm-up); the end of each warm-up is exact
    first = warmups(h, 1)
    assert first[0] == (0.0 if t_alpha else 4.0)
    assert first[1] == (pytest.approx(b1, rel=1e-15) if t_beta3 else b3)
    assert warmups(h, t_alpha + 1)[0] == 4.0
    assert warmups(h, t_beta3 + 1)[1] == b3


def test_beta3_warmup_limits():
    # beta1 = 0: the formula's limit, beta3 ** (T / t), from 0 at the first step
    h = _hyper(betas=(0.0, 0.999, 0.99), beta3_warmup=4)
    assert [warmups(h, s)[1] for s in range(1, 7)] == [0.0, 0.99 ** 4, 0.99 ** 2, 0.99 ** (4 / 3), 0.99, 0.99]
    near = _hyper(betas=(1e-300, 0.999, 0.99), beta3_warmup=4)
    assert np.allclose([warmups(near, s)[1] for s in range(1, 7)], [warmups(h, s)[1] for s in range(1, 7)],
                       rtol=1e-2, atol=1e-299)
    # beta1 >= beta3: the paper's min(., beta3) holds beta3 throughout
    h = _hyper(betas=(0.99, 0.999, 0.9), beta3_warmup=5)
    assert {warmups(h, s)[1] for s in range(1, 8)} == {0.9}


def test_the_kernels_receive_the_warmed_up_values():
    spec = SPECS["ademamix"]
    h = _hyper(betas=(0.9, 0.999, 0.999), alpha=3.0, alpha_warmup=4, beta3_warmup=6)
    index = {name: i for i, name in enumerate(spec.scalar_names)}
    for step in range(1, 9):
        scalars = spec.scalars(h, step)
        alpha, beta3 = warmups(h, step)
        assert scalars[index["alpha"]] == alpha
        assert scalars[index["beta3"]] == beta3
        assert scalars[index["one_minus_beta3"]] == 1.0 - beta3   # in float64 on the host, as optax's 1 - b3


@pytest.mark.parametrize("bad", [-1, 2.5, True, None, "3"])
def test_warmup_lengths_are_whole_numbers(bad):
    from fastopt.optim import AdEMAMix

    p = np.zeros(3, np.float32)
    for name in ("alpha_warmup", "beta3_warmup"):
        with pytest.raises((TypeError, ValueError), match=name):
            AdEMAMix([p], **{name: bad})
