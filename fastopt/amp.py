"""Dynamic loss scaling for float16 training loops in NumPy or CuPy, as torch.amp.GradScaler.

    scaler = fastopt.GradScaler()
    for batch in data:
        grads = backward(scaler.scale(loss))     # gradients of the scaled loss
        scaler.step(opt, grads)                  # unscaled inside the fused update; skipped if any is inf or NaN
        scaler.update()                          # back off after a skipped step, grow after growth_interval good ones

The scale is a float32 value updated with torch's arithmetic (torch._amp_update_scale_): after a step with an
inf or NaN gradient it is multiplied by backoff_factor; after growth_interval steps in a row without one, by
growth_factor (kept only when finite).
"""

from __future__ import annotations

import math

import numpy as np

from fastopt import clip, reference


class GradScaler:
    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        for name, value in (("init_scale", init_scale), ("growth_factor", growth_factor),
                            ("backoff_factor", backoff_factor)):
            clip.max_norm_value(value, name)
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale: expected a finite number > 0, got {init_scale!r}")
        if not growth_factor > 1.0:
            raise ValueError(f"growth_factor: expected a number > 1, got {growth_factor!r}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor: expected a number in (0, 1), got {backoff_factor!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval <= 0:
            raise ValueError(f"growth_interval: expected an int > 0, got {growth_interval!r}")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled: expected True or False, got {enabled!r}")
        self._enabled = enabled
        self._scale = np.float32(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = growth_interval
        self._growth_tracker = 0
        self._found_inf: bool | None = None     # this iteration's verdict, None before step/unscale_
        self._unscaled: set = set()             # ids of optimizers whose grads unscale_ already divided

    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        return float(self._scale) if self._enabled else 1.0

    def scale(self, outputs):
        """outputs * scale (a number, a NumPy or CuPy array, or a list/tuple of them), in the outputs' dtype."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        dtype = getattr(outputs, "dtype", None)
        return outputs * (np.dtype(dtype).type(self._scale) if dtype is not None else float(self._scale))

    def unscale_(self, optimizer, grads) -> None:
        """Divide `grads` in place by the scale (multiplying by its float32 reciprocal, as torch's unscale_), and
        note whether any is inf or NaN; the following step(optimizer, grads) then applies no scale again."""
        if not self._enabled:
            return
        if id(optimizer) in self._unscaled:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        arrays = _flat_arrays(grads)
        inv = np.float32(np.float64(self._scale) ** -1)
        backend = optimizer.backend
        for a in arrays:
            clip._scale_in_place(backend, backend.as_array(a), float(inv))
        per = clip._per_tensor(backend, [backend.as_array(a) for a in arrays], "nonfinite", 1.0)
        found = reference.reduce_group(per, "nonfinite") != 0
        self._found_inf = bool(self._found_inf) or found
        self._unscaled.add(id(optimizer))

    def step(self, optimizer, grads):
        """optimizer.step(grads, grad_scale=scale): unscaled inside the fused update, skipped when any gradient is
        inf or NaN (found by the fused pass). After unscale_(optimizer, grads): step with its verdict, no scale."""
        if not self._enabled:
            return optimizer.step(grads)
        if id(optimizer) in self._unscaled:
            result = optimizer.step(grads, found_inf=1.0 if self._found_inf else 0.0)
        else:
            result = optimizer.step(grads, grad_scale=float(self._scale))
            self._found_inf = bool(self._found_inf) or optimizer.last_step_skipped
        return result

    def update(self, new_scale=None) -> None:
        """Back off or grow the scale from this iteration's verdict (or set `new_scale`), as torch."""
        if not self._enabled:
            return
        if new_scale is not None:
            value = float(new_scale)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"new_scale: expected a finite number > 0, got {new_scale!r}")
            self._scale = np.float32(value)
        elif self._found_inf is not None:
            if self._found_inf:
                self._scale = np.float32(self._scale * np.float32(self._backoff_factor))
                self._growth_tracker = 0
            else:
                successful = self._growth_tracker + 1
                if successful == self._growth_interval:
                    grown = np.float32(self._scale * np.float32(self._growth_factor))
                    if math.isfinite(grown):
                        self._scale = grown
                    self._growth_tracker = 0
                else:
                    self._growth_tracker = successful
        self._found_inf = None
        self._unscaled.clear()

    def state_dict(self) -> dict:
        if not self._enabled:
            return {}
        return {"scale": float(self._scale), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict) -> None:
        if not self._enabled:
            return
        if not isinstance(state_dict, dict) or "scale" not in state_dict:
            raise ValueError("state_dict: expected a dict from GradScaler.state_dict()")
        self._scale = np.float32(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])


def _flat_arrays(grads) -> list:
    if isinstance(grads, dict):
        return list(grads.values())
    out = []
    for g in grads:
        out.extend(_flat_arrays(g) if isinstance(g, (list, tuple, dict)) else [g])
    return out
