"""Thread budgets for numpy's BLAS (threadpoolctl), for the pipeline and the converters alike.

OpenBLAS splits even a small matrix product over all cores, and its idle threads spin: next to a model's
own thread pool and the capture threads that costs far more than it saves. Measured here on 2 cores, the
audio front end's log-mel (one small product per inference) took 40-80 ms instead of 0.3 ms inside the
pipeline, and pruning's least-squares reconstruction ran many times slower on a busy machine.
"""

from __future__ import annotations

import contextlib

from threadpoolctl import threadpool_limits


def limit_blas_threads(threads: int | None):
    """Limit BLAS to ``threads`` threads until the result is exited (or ``restore_original_limits()``
    is called on it); None or 0: leave BLAS as it is."""
    if not threads:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")
