"""One entry per optimizer: how to draw valid hyperparameters that reach every branch of its kernels.

The generic tests (test_backends, test_api, test_validation) read only this registry and `fastopt.SPECS`, so a new
optimizer is tested everywhere once it has an entry here (test_registry fails until it does).
"""

from hypothesis import strategies as st

lr = st.floats(1e-3, 0.3)
decay = st.sampled_from([0.0, 0.0, 1e-2, 0.3])
flag = st.booleans()
fraction = st.sampled_from([0.0, 0.5, 0.9, 0.99])


def _sgd(h):
    if h["nesterov"]:
        h["momentum"], h["dampening"] = h["momentum"] or 0.9, 0.0
    return h


HYPERPARAMETERS = {
    "sgd": st.fixed_dictionaries(dict(lr=lr, momentum=st.sampled_from([0.0, 0.5, 0.9]),
                                      dampening=st.sampled_from([0.0, 0.1]), weight_decay=decay,
                                      nesterov=flag, maximize=flag)).map(_sgd),
    "adagrad": st.fixed_dictionaries(dict(lr=lr, lr_decay=st.sampled_from([0.0, 0.01]), weight_decay=decay,
                                          initial_accumulator_value=st.sampled_from([0.0, 0.1]),
                                          eps=st.sampled_from([1e-10, 1e-6]), maximize=flag)),
    "rmsprop": st.fixed_dictionaries(dict(lr=st.floats(1e-4, 1e-2), alpha=st.sampled_from([0.9, 0.99]),
                                          eps=st.sampled_from([1e-8, 1e-4]), weight_decay=decay,
                                          momentum=st.sampled_from([0.0, 0.9]), centered=flag, maximize=flag)),
    "adadelta": st.fixed_dictionaries(dict(lr=st.floats(0.1, 1.0), rho=fraction, eps=st.sampled_from([1e-6, 1e-3]),
                                           weight_decay=decay, maximize=flag)),
    "adam": st.fixed_dictionaries(dict(lr=lr, betas=st.tuples(fraction, st.sampled_from([0.9, 0.999])),
                                       eps=st.sampled_from([1e-8, 1e-3]), weight_decay=decay, amsgrad=flag,
                                       maximize=flag)),
}
HYPERPARAMETERS["adamw"] = HYPERPARAMETERS["adam"]

# One fixed configuration per optimizer that takes as many kernel branches as possible at once.
BUSY = {
    "sgd": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True),
    "adagrad": dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
    "rmsprop": dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01, maximize=True),
    "adadelta": dict(lr=0.5, rho=0.8, weight_decay=0.01, maximize=True),
    "adam": dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.01, amsgrad=True, maximize=True),
    "adamw": dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True),
}
