"""The tests' view of fastopt.records: how to draw valid hyperparameters that reach every branch of an optimizer's
kernels, and one busy configuration each.

The generic tests (test_backends, test_api, test_validation) read only this and `fastopt.SPECS`, so a new optimizer is
tested everywhere once its record is registered (test_api fails until it is).
"""

from hypothesis import strategies as st

from fastopt.records import RECORDS

HYPERPARAMETERS = {name: record.strategy(st) for name, record in RECORDS.items()}

# One fixed configuration per optimizer that takes as many kernel branches as possible at once.
BUSY = {name: dict(record.busy) for name, record in RECORDS.items()}
