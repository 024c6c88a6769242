"""Backends: the same small contract each (see `base.Backend`); `fastopt.dispatch` chooses one."""
