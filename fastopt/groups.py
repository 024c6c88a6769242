"""Param groups built for the usual exclusions."""

from __future__ import annotations


def exclude_bias_and_norm(params, **group_hyper) -> list[dict]:
    """Split `params` into two param groups for an optimizer's constructor: the tensors with two or more dimensions
    (weights: linear, conv, embedding), then the rest (biases, and the scales and shifts of norm layers, which are
    vectors) with `group_hyper` applied, e.g. `weight_decay=0.0`, or for LAMB and LARS
    `exclude_from_weight_decay=True, exclude_from_trust_ratio=True`. Order within each group is kept; a group with
    no tensors is left out. Works for anything with an `ndim` (NumPy, CuPy, torch)."""
    if isinstance(params, dict) or hasattr(params, "ndim"):
        raise TypeError("exclude_bias_and_norm: params must be an iterable of arrays (e.g. model.parameters()), "
                        f"got {type(params).__name__}")
    params = list(params)
    for i, p in enumerate(params):
        if not hasattr(p, "ndim"):
            raise TypeError(f"exclude_bias_and_norm: params[{i}] is a {type(p).__name__}, not an array")
    weights = [p for p in params if p.ndim >= 2]
    vectors = [p for p in params if p.ndim < 2]
    groups = [{"params": weights}] if weights else []
    if vectors:
        groups.append({"params": vectors, **group_hyper})
    return groups
