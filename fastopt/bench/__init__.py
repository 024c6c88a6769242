"""fastopt-bench: fused optimizer steps against their baselines and against the memory roofline of this machine.

    from fastopt.bench import Config, run
    results = run(Config(quick=True))          # the dict `fastopt-bench --json` writes

The command line is `fastopt-bench` (`fastopt.bench.cli`); the pytest-benchmark suites in `benchmarks/` reuse the
workloads, optimizer cases and stream kernels defined here.
"""

from .engine import Config, headline, run
from .workloads import CASES, Workload, access_pattern, bytes_per_param, load_model_shapes

__all__ = [
           "CASES",
           "Config",
           "Workload",
           "access_pattern",
           "bytes_per_param",
           "headline",
           "load_model_shapes",
           "run",
]
