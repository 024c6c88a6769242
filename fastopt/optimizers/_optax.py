"""What the optimizers that follow optax share: optax's elementwise conventions, and the golden script's optax oracle.

Conventions, measured against optax 0.2.8 / jax 0.10 on CPU (un-jitted updates, x64 enabled):

- `sign(x)` is jnp.sign: +-1 for nonzero x, and x itself for +-0 and NaN (np.sign turns -0.0 into +0.0).
- optax divides a moment by its bias correction `1 - beta ** count` (computed in float64, then cast to the array's
  dtype), but XLA compiles a division by a broadcast scalar into a product with its reciprocal, rounded in the
  array's dtype: `m * (1 / bc)`. `inverse(bc, like)` computes that reciprocal, so the references (and the kernels,
  which do the same division once per call) follow optax bit for bit in float32. In float64 XLA keeps the division
  when several tensors share one bias correction; there the two differ by at most an ulp or two.
- A Python float scalar meets an array in the array's dtype (jax's weak types, NumPy's NEP 50), so `(1 - b) * g`
  is the float64 `1 - b` rounded to the array's dtype times g, exactly what the kernels receive as `one_minus_beta`.
- XLA on CPU flushes subnormal results to zero (float32 1e-38 * 0.1 gives 0; float64 likewise), and no jax option
  turns that off. fastopt's kernels are IEEE (denormals kept), so optax cannot judge make_golden's smallest extreme
  magnitudes or a subnormal eps: these optimizers have no `*-extreme_*` golden files, and their kernels are checked
  against the reference at the extremes without an oracle (tests/test_extremes_unjudged.py, reading each record's
  `extreme_unjudged`).
  Measured per magnitude, the references equal optax at every other extreme magnitude, inf and NaN included.

The oracle (`oracle(build, state_of)`) is a `Record.oracle` for tests/golden/make_golden.py: it runs an optax
transformation over the stored params and grads and returns the trajectory and final state in make_golden's format.
jax and optax are imported only when it runs, so nothing else in fastopt needs them.
"""

from __future__ import annotations

import functools

import numpy as np


def sign(x):
    """jnp.sign in NumPy: +-1 for nonzero x; +-0 and NaN unchanged."""
    one = x.dtype.type(1)
    return np.where(x > 0, one, np.where(x < 0, -one, x))


def inverse(value, like):
    """1 / value with both rounded to `like`'s dtype: what XLA multiplies by where optax divides by a scalar."""
    one = like.dtype.type(1)
    return one / like.dtype.type(value)


def run_optax(tx, params0, grads, steps: int):
    """Run the optax GradientTransformation `tx` for `steps` steps, un-jitted, from `params0` (a list of NumPy
    arrays) with `grads[i][t]` as the gradient of param i at step t. Returns (trajectory, final optax state):
    trajectory[i] holds param i after every step, shape (steps, *shape), in the params' dtype.

    Un-jitted, each jnp operation is compiled on its own, so XLA cannot fuse across the operations optax writes one
    after another (a jitted update may contract or reorder them: measured up to 64 ulp apart in float64)."""
    import jax

    jax.config.update("jax_enable_x64", True)   # float64 arrays stay float64; bias corrections in float64
    import jax.numpy as jnp
    import optax

    params = [jnp.asarray(p) for p in params0]
    state = tx.init(params)
    trajectory = [np.empty((steps,) + p.shape, dtype=p.dtype) for p in params0]
    for t in range(steps):
        updates, state = tx.update([jnp.asarray(g[t]) for g in grads], state, params)
        params = optax.apply_updates(params, updates)
        for i, p in enumerate(params):
            assert p.dtype == params0[i].dtype, f"optax changed param {i}'s dtype to {p.dtype}"
            trajectory[i][t] = np.asarray(p)
    return trajectory, state


def _oracle(build, state_of, name, hyper, dtype, params0, grads, steps):
    import optax

    tx = build(optax, hyper)
    if hyper.get("maximize"):   # optax minimises: maximising follows the negated gradient (negation is exact)
        grads = [-g for g in grads]
    trajectory, state = run_optax(tx, params0, grads, steps)
    slots, count = state_of(state)
    states = [({k: np.asarray(v[i]).copy() for k, v in slots.items()}, float(count)) for i in range(len(params0))]
    return trajectory, states


def oracle(build, state_of):
    """A Record.oracle running optax: `build(optax, hyper) -> GradientTransformation` (the learning rate and the
    weight decay included, so that applying its updates is the whole step) and `state_of(final optax state) ->
    ({slot name: [one array per param]}, step count)` naming optax's state by the spec's slot names."""
    return functools.partial(_oracle, build, state_of)
