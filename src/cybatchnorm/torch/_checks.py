"""The one validation boundary of the PyTorch drop-in.

Every way in (the modules, :func:`~cybatchnorm.torch.batch_norm`, the ops
themselves) passes through :func:`check_batch_norm` before a kernel runs, and
it raises what ``torch.nn.functional.batch_norm`` raises for the same mistake:
the same exception type and, word for word, the same message (PyTorch's
Python-level checks first, then those of its CPU kernel, in its order). Only
shapes, dtypes and devices are read, so the checks also run on the fake tensors
of ``torch.compile`` and FakeTensorMode and on tensors of device "meta" (whose
operators only say what shapes and dtypes they would make).
"""
from typing import Any

import torch

REDUCED = (torch.float16, torch.bfloat16)
FLOATS = (torch.float32, torch.float64)

_NAMES = {torch.float16: "Half", torch.bfloat16: "BFloat16", torch.float32: "Float",
          torch.float64: "Double", torch.int64: "Long", torch.int32: "Int", torch.int16: "Short",
          torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool",
          torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble"}


def scalar_name(dtype: Any) -> str:
    """PyTorch's C++ name of a dtype ("Float", "Half", ...), as its messages spell it."""
    return _NAMES.get(dtype, str(dtype).replace("torch.", ""))


def verify_batch_size(shape: Any) -> None:
    """``torch.nn.functional._verify_batch_size``: training needs more than one
    value per channel."""
    count = shape[0]
    for s in shape[2:]:
        count *= s
    if count == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {shape}")


def check_torch_eps(eps: Any, training: Any) -> None:
    """torch's rule for ``eps``: positive in training, non-negative in eval
    (``_validation.check_eps`` is the numpy side's, positive always)."""
    if training and not eps > 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if not eps >= 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def check_batch_norm(
    x: Any,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    training: Any,
    eps: Any,
    *,
    shard: Any = False,
) -> Any:
    """Raise as PyTorch would for ``batch_norm(x, ...)``; return the
    computation dtype (float64 for float16/bfloat16 input, else x's dtype).

    ``training`` here means "normalize with the batch statistics". A
    ``shard`` of a distributed batch may hold a single value per channel (the
    whole batch's count is checked once gathered).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"batch_norm(): argument 'input' (position 1) must be Tensor, "
                        f"not {type(x).__name__}")
    if training and not shard:
        verify_batch_size(x.size())
    check_torch_eps(eps, training)
    params = (("weight", weight), ("bias", bias), ("running_mean", running_mean),
              ("running_var", running_var))
    for name, t in params:
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"batch_norm(): argument '{name}' must be Tensor, "
                            f"not {type(t).__name__}")
    if x.dtype not in FLOATS + REDUCED:
        raise NotImplementedError(f'"batch_norm" not implemented for \'{scalar_name(x.dtype)}\'')
    check_cpu("BatchNorm", input=x, **dict(params))
    # torch counts no channels in 1-D input: its parameters are checked
    # against 0, an empty one is returned as it is, any other fails to index
    C = x.shape[1] if x.dim() > 1 else 0
    # in the order of torch's _batch_norm_impl_index
    for name, t in params[2:] + params[:2]:
        if t is not None and t.numel() != C:
            raise RuntimeError(f"{name} should contain {C} elements not {t.numel()}")
        if t is None and not training and name.startswith("running"):
            raise RuntimeError(f"{name} must be defined in evaluation mode")
    if x.dim() < 2 and x.numel():
        raise IndexError(
            f"Dimension out of range (expected to be in range of [-{max(x.dim(), 1)}, "
            f"{max(x.dim(), 1) - 1}], but got 1)")
    if C == 0 and weight is not None and x.numel() == 0 and x.dim() > 1 and x.shape[0] > 0:
        # torch's CPU kernel selects channel 0 of the weight of no channels
        raise IndexError("select(): index 0 out of range for tensor of size [0] at dimension 0")
    # the CPU kernel's mixed-dtype rule: the parameters' dtype is the first
    # one given; it may differ from the input's only for float16/bfloat16
    # input with float32 parameters
    first = next((t.dtype for _, t in params if t is not None), None)
    if first is not None and first != x.dtype:
        for _, t in params:
            if t is not None and t.dtype != torch.float32:
                raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type "
                                   "of Float")
        if x.dtype not in REDUCED:
            raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")
    elif first is not None:
        for _, t in params:
            if t is not None and t.dtype != first:
                raise RuntimeError(f"expected scalar type {scalar_name(first)} but found "
                                   f"{scalar_name(t.dtype)}")
    return torch.float64 if x.dtype in REDUCED else x.dtype


_MESSAGE = ("cybatchnorm.torch's {what} does not support {how} yet: its operators have "
            "autograd formulas (.backward() and torch.autograd.grad, to second order) but no "
            "forward-mode or torch.func rules (batch norm has them); use torch.autograd, or "
            "torch.nn's module under these transforms")
_UNSUPPORTED = {"Grad": "torch.func.grad, vjp, jacrev and hessian",
                "Jvp": "torch.func.jvp and jacfwd (forward-mode AD)"}


def transformed() -> bool:
    """Whether batch norm runs under a torch.func transform or forward-mode
    AD (and not while ``torch.compile`` traces, where the operators run):
    then ``_func``'s functions, which have their rules, compute it."""
    return not torch.compiler.is_compiling() and (
        torch._C._functorch.peek_interpreter_stack() is not None
        or torch.autograd.forward_ad._current_level >= 0)


def check_running_not_differentiated(running_mean: Any, running_var: Any) -> None:
    """Raise as torch's autograd kernel does when a running statistic
    requires grad: batch norm is not differentiable in them (a gradient
    would silently be zero)."""
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"The function 'native_batch_norm' is not differentiable with "
                               f"respect to argument '{name}'. This input cannot have "
                               "requires_grad True.")


def legacy_vmap() -> bool:
    """Whether torch's legacy vmap is active (``torch.autograd.grad(...,
    is_grads_batched=True)`` and gradcheck's batched checks run the backward
    or forward-mode AD under it): its batched tensors have no memory and no
    interpreter runs a Function's vmap rule, but its fallback runs a
    registered operator once per batch entry. False while torch.compile
    traces: the level is read by raising and lowering it, which a trace
    interrupted between the two would leave raised."""
    if torch.compiler.is_compiling():
        return False
    level = torch._C._vmapmode_increment_nesting()
    torch._C._vmapmode_decrement_nesting()
    return bool(level > 1)


def check_transforms(x: Any, what: str) -> None:
    """Refuse the torch.func transforms ``what`` (layer, group and instance
    norm, SyncBatchNorm: their operators) has no rule for.

    Autograd (``backward``, ``torch.autograd.grad`` to second order),
    ``torch.compile`` and ``torch.func.vmap`` (one operator call per batch
    entry) work. Under ``torch.func.grad``-like transforms the operators'
    autograd formulas cannot run, and under ``torch.func.jvp`` they would give
    a zero tangent: a wrong value, so these, and forward-mode AD on ``x``,
    raise here instead. (Batch norm runs every transform: ``_func``.)
    """
    if torch.compiler.is_compiling():
        return
    if torch._C._functorch.peek_interpreter_stack() is not None:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
        for interpreter in retrieve_all_functorch_interpreters():
            name = interpreter.key().name
            if name in _UNSUPPORTED:
                raise NotImplementedError(_MESSAGE.format(what=what, how=_UNSUPPORTED[name]))
    if torch.autograd.forward_ad._current_level >= 0 and \
            torch.autograd.forward_ad.unpack_dual(x).tangent is not None:  # type: ignore[no-untyped-call]
        raise NotImplementedError(_MESSAGE.format(
            what=what, how="forward-mode AD (torch.autograd.forward_ad)"))


TORCHSCRIPT = ("cybatchnorm.torch does not support TorchScript ({}): its operators run "
               "Python code; use torch.compile or torch.export, or torch.nn.BatchNorm for "
               "TorchScript")


def check_not_tracing() -> None:
    """Refuse ``torch.jit.trace`` before anything changes: a trace would
    record the running statistics' update as constants (or fail halfway)."""
    if not torch.compiler.is_compiling() and torch._C._is_tracing():
        raise NotImplementedError(TORCHSCRIPT.format("torch.jit.trace"))


#: the tensor types the eager paths read through numpy (no subclass)
PLAIN = (torch.Tensor, torch.nn.Parameter)


def dispatcher_visible(*tensors: Any) -> bool:
    """Whether the registered operators must run instead of the eager path:
    while compiling, under a torch.func transform, under a torch dispatch
    or function mode (TorchDispatchMode, FakeTensorMode, FlopCounterMode,
    ...), while the profiler records, or when a tensor is a subclass
    (FakeTensor, DTensor, ...) or has no CPU memory (device "meta"). The
    eager path reads the tensors' memory through numpy, which none of these
    have or would see."""
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    if (torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
            or torch._C._autograd._profiler_enabled()):
        return True
    return without_memory(*tensors)


def without_memory(*tensors: Any) -> bool:
    """Whether a tensor's memory cannot be read through numpy or its
    address: a subclass (FakeTensor, DTensor, functorch's wrappers, ...) or
    no CPU memory (device "meta")."""
    for t in tensors:
        # is_cpu is false for meta and every other device (a cheap attribute)
        if t is not None and (type(t) not in PLAIN or not t.is_cpu):
            return True
    return False


# ------------------------------------------- layer, group and instance norm

def _check_tensor(fn: str, name: str, position: int, t: Any, optional: bool = True) -> None:
    if (t is None and optional) or isinstance(t, torch.Tensor):
        return
    raise TypeError(f"{fn}(): argument '{name}' (position {position}) must be Tensor, "
                    f"not {type(t).__name__}")


def check_cpu(module: str, **tensors: Any) -> None:
    """Refuse a tensor on another device than the CPU (or "meta", whose
    operators only say what shapes they would make), naming it and the
    ``torch.nn.<module>`` to use there."""
    for name, t in tensors.items():
        if t is not None and t.device.type not in ("cpu", "meta"):
            raise RuntimeError(f"cybatchnorm: {name} is on {t.device}; only CPU tensors are "
                               f"supported (use torch.nn.{module} on other devices)")


def _check_kernel_inputs(kernel: str, module: str, x: Any, weight: Any, bias: Any) -> None:
    # what layer norm's and group norm's CPU kernels check last, in their
    # order: the device, the mixed-dtype rule, then x's dtype
    check_cpu(module, input=x, weight=weight, bias=bias)
    _check_mixed(x, (weight, bias))
    if x.dtype not in FLOATS + REDUCED:
        raise NotImplementedError(
            f'"{kernel}" not implemented for \'{scalar_name(x.dtype)}\'')


def _check_mixed(x: Any, params: Any) -> None:
    # the CPU kernels' mixed-dtype rule (layer norm and group norm alike):
    # float32 parameters may serve float16/bfloat16 input; otherwise every
    # tensor has x's dtype
    given = [t for t in params if t is not None]
    if any(t.dtype != x.dtype for t in given):
        if any(t.dtype != torch.float32 for t in given):
            raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
        if x.dtype not in REDUCED:
            raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")


def check_layer_norm(x: Any, normalized_shape: Any, weight: Any, bias: Any) -> tuple[int, ...]:
    """Raise as ``torch.nn.functional.layer_norm`` would, in its order;
    return ``normalized_shape`` as a tuple of ints."""
    _check_tensor("layer_norm", "input", 1, x, optional=False)
    if isinstance(normalized_shape, torch.Size):
        shape = tuple(normalized_shape)
    elif isinstance(normalized_shape, (list, tuple)) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in normalized_shape):
        shape = tuple(normalized_shape)
    else:
        raise TypeError("layer_norm(): argument 'normalized_shape' (position 2) must be tuple "
                        f"of ints, not {type(normalized_shape).__name__}")
    _check_tensor("layer_norm", "weight", 3, weight)
    _check_tensor("layer_norm", "bias", 4, bias)
    if not shape:
        raise RuntimeError("Expected normalized_shape to be at least 1-dimensional, i.e., "
                           "containing at least one element, but got normalized_shape = []")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but "
                               f"got {name} of shape {list(t.shape)} and normalized_shape = "
                               f"{list(shape)}")
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise RuntimeError(f"Given normalized_shape={list(shape)}, expected input with shape "
                           f"[*, {', '.join(map(str, shape))}], but got input of size"
                           f"{list(x.shape)}")
    _check_kernel_inputs("LayerNormKernelImpl", "LayerNorm", x, weight, bias)
    return shape


def check_group_norm(x: Any, num_groups: Any, weight: Any, bias: Any) -> None:
    """Raise as ``torch.nn.functional.group_norm`` would, in its order."""
    _check_tensor("group_norm", "input", 1, x, optional=False)
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError("group_norm(): argument 'num_groups' (position 2) must be int, "
                        f"not {type(num_groups).__name__}")
    _check_tensor("group_norm", "weight", 3, weight)
    _check_tensor("group_norm", "bias", 4, bias)
    if x.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {x.dim()}")
    # torch's _verify_batch_size on [N * C // G, G, *spatial] (a zero G
    # raises ZeroDivisionError there, as here)
    verify_batch_size([x.shape[0] * x.shape[1] // num_groups, num_groups] + list(x.shape[2:]))
    C = x.shape[1]
    if num_groups <= 0 or C % num_groups:
        raise RuntimeError("Expected number of channels in input to be divisible by num_groups, "
                           f"but got input of shape {list(x.shape)} and num_groups={num_groups}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.numel() != C):
            raise RuntimeError(f"Expected {name} to be a vector of size equal to the number of "
                               f"channels in input, but got {name} of shape {list(t.shape)} "
                               f"and input of shape {list(x.shape)}")
    _check_kernel_inputs("GroupNormKernelImpl", "GroupNorm", x, weight, bias)


def check_instance_norm(x: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any,
                        use_input_stats: Any) -> None:
    """Raise as ``torch.nn.functional.instance_norm`` would, in its order
    (torch runs it as batch norm of (1, N * C, *spatial) with each
    per-channel tensor repeated N times: its messages count N * C)."""
    _check_tensor("instance_norm", "input", 1, x, optional=False)
    names = ("running_mean", "running_var", "weight", "bias")
    for i, (name, t) in enumerate(zip(names, (running_mean, running_var, weight, bias))):
        _check_tensor("instance_norm", name, i + 2, t)
    if not isinstance(use_input_stats, bool):
        raise TypeError("instance_norm(): argument 'use_input_stats' (position 6) must be bool, "
                        f"not {type(use_input_stats).__name__}")
    if use_input_stats:
        S = 1
        for s in x.shape[2:]:
            S *= s
        if S == 1:
            raise ValueError("Expected more than 1 spatial element when training, got input "
                             f"size {x.size()}")
    elif running_mean is None or running_var is None:
        raise RuntimeError("Expected running_mean and running_var to be defined when "
                           "use_input_stats is false")
    N, C = x.shape[0], x.shape[1]
    for name, t in zip(names, (running_mean, running_var, weight, bias)):
        if t is not None and t.numel() * N != N * C:
            raise RuntimeError(f"{name} should contain {N * C} elements not {t.numel() * N}")
    check_cpu("InstanceNorm1d/2d/3d", input=x, running_mean=running_mean, running_var=running_var,
              weight=weight, bias=bias)
    if x.dtype not in FLOATS + REDUCED:
        raise NotImplementedError(f'"batch_norm" not implemented for \'{scalar_name(x.dtype)}\'')
    _check_mixed(x, (weight, bias, running_mean, running_var))
