"""Which optimizers the study runs, with which hyperparameters.

Each entry names a fastopt class and its keyword arguments (torch.optim's names). The MLP settings are the classic
teaching values; the toy settings are per-optimizer learning rates that make each path on f(x, y) = x^2/20 + y^2
visible in 30 steps (the toy is badly conditioned, so one learning rate for all would show nothing useful).
The settings are in each optimizer's record (fastopt.records), beside its tests and benchmark cases.
"""

from __future__ import annotations

from fastopt.records import RECORDS

# The entries live in each optimizer's record (fastopt.records: Record.convergence), in registration order.
_ENTRIES = [e for record in RECORDS.values() for e in record.convergence]

# name shown in plots/tables -> (fastopt class name, keyword arguments)
MLP = {e.label: (e.cls, dict(e.mlp)) for e in _ENTRIES}
TOY = {e.label: (e.cls, dict(e.toy)) for e in _ENTRIES}
COLORS = {e.label: e.color for e in _ENTRIES}


def make(entry, params, backend=None):
    """Instantiate a fastopt optimizer from a table entry over `params`."""
    import fastopt.optim

    cls_name, kwargs = entry
    return getattr(fastopt.optim, cls_name)(params, **kwargs, backend=backend)   # every class, added ones too
