"""How a drop-in call runs: the registered operators, the fast path or the
eager Function.

:func:`run_batch_norm` is what the modules' forward and
``functional.batch_norm`` call, with arguments of torch's types (checked by
``_checks`` on the way). The registered operators (``_ops``) run whenever
something watches or replaces torch's dispatcher (``_checks.dispatcher_visible``);
otherwise one compiled call per direction (``_fast``) for inputs its plan
accepts, and the operators' implementations through ``_ops.EagerBatchNorm`` for the
rest. A call reaches its kernel through this file and one of ``_fast`` or
``_ops`` (then ``_engine``).
"""
from typing import Any

import torch
from torch import Tensor

from ._checks import (
    PLAIN,
    check_not_tracing,
    check_running_not_differentiated,
    dispatcher_visible,
    transformed,
)
from ._fast import fast_apply, plan_for, unwrap_if_dead
from ._func import batch_norm_transformed
from ._layout import spatial_size
from ._ops import EagerBatchNorm, batch_norm_forward, update_running_stats

__all__ = ["run_batch_norm"]


def run_batch_norm(
    x: Any,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    training: Any,
    momentum: Any,
    eps: Any,
    num_threads: Any,
    counter: Any = None,
) -> Tensor:
    """Batch norm as the modules and ``batch_norm`` run it: the output, with
    the running statistics updated in training mode and ``counter`` (a
    module's ``num_batches_tracked``, or None) incremented once the batch
    was accepted. TorchScript tracing raises first (``check_not_tracing``);
    under a torch.func transform or forward-mode AD,
    ``_func.batch_norm_transformed`` runs it (functions with every
    transform's rule). Otherwise the registered operators run whenever something watches or replaces
    torch's dispatcher (``_checks.dispatcher_visible``); otherwise one compiled
    call per direction (:class:`_Fast`) for inputs its plan accepts, and the
    operators' implementations through :class:`EagerBatchNorm` for the rest
    (float16/bfloat16, strided input, empty batches)."""
    visible = dispatcher_visible(x, weight, bias, running_mean, running_var)
    if visible or torch._C._is_tracing():
        check_not_tracing()
    check_running_not_differentiated(running_mean, running_var)
    # (a transform makes the dispatcher visible; forward-mode AD does not)
    if (visible or torch.autograd.forward_ad._current_level >= 0) and transformed():
        return batch_norm_transformed(x, weight, bias, running_mean, running_var, training,
                                      momentum, eps, num_threads, counter)
    res: Tensor
    if visible:
        mean: Tensor
        m2: Tensor
        res, mean, _, m2 = batch_norm_forward(x, weight, bias, running_mean, running_var,
                                              training, eps, num_threads)
        if training:
            update_running_stats(running_mean, running_var, mean, m2,
                                 x.shape[0] * spatial_size(x) if x.dim() > 1 else 0, momentum)
    else:
        plan = plan_for(x, weight, bias, running_mean, running_var, training, eps, num_threads) \
            if isinstance(x, torch.Tensor) else None
        if plan is not None and plan.fast:
            # a plain int64 counter is incremented by the compiled call
            count = counter is not None and type(counter) in PLAIN and counter.is_cpu \
                and counter.dtype == torch.int64
            # no functorch transform is active here (dispatcher_visible): what
            # Function.apply would add is unwrapping tensors left by a dead one
            res = fast_apply(unwrap_if_dead(x),
                             None if weight is None else unwrap_if_dead(weight),
                             None if bias is None else unwrap_if_dead(bias),
                             (plan, running_mean, running_var, training, momentum, eps,
                              counter.data_ptr() if count else 0))
            if count:
                return res
        else:
            res = EagerBatchNorm.apply(  # type: ignore[no-untyped-call]
                x, weight, bias, running_mean, running_var, training, momentum, eps, num_threads)
    if counter is not None:
        counter.add_(1)
    return res
