"""Turning user input into the contiguous typed arrays the kernels expect.

Every public entry point goes through these helpers before any kernel runs,
so every error names the argument and what was expected. Nothing here ever
writes to an input: conversions copy when they have to and never otherwise.

Full-size arrays of shape (N, C, *spatial) are handed to the kernels as the
(N, C, S) view, S being the product of the spatial sizes (1 for (N, D)).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
import math
import numbers
import operator
from typing import IO, Any, NamedTuple, cast

import numpy as np

from ._cache import KINDS, Cache
from ._norm_cache import NormCache
from ._threads import default_num_threads, thread_cap
from ._typing import AnyArray, F64Array

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: The one default of ``eps`` (added to the variance), everywhere in the package.
DEFAULT_EPS = 1e-5


def as_array(name: str, value: Any) -> AnyArray:
    """``np.asarray(value)``, with a clear error naming ``name`` on failure."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name}: expected an array-like of real numbers, got {type(value).__name__} ({exc})"
        ) from None


def computation_dtype(name: str, arr: AnyArray) -> np.dtype[Any]:
    """The dtype ``arr`` is computed in: float32 and float64 as they are,
    float16 in float32, integers and bools in float64; anything else raises."""
    dt = arr.dtype
    if dt.kind == "f":
        if dt.itemsize <= 4:
            return FLOAT_DTYPES[0]
        if dt.itemsize == 8:
            return FLOAT_DTYPES[1]
    elif dt.kind in "biu":
        return FLOAT_DTYPES[1]
    raise TypeError(
        f"{name}: expected real numbers (float16/32/64, integer or bool), got dtype {dt}"
    )


def check_dtype(name: str, arr: AnyArray) -> None:
    """Raise TypeError unless ``arr`` holds real numbers a kernel can take."""
    computation_dtype(name, arr)


def full(name: str, value: Any, dtype: Any = None,
         shape: Sequence[int] | None = None) -> tuple[AnyArray, tuple[int, ...], np.dtype[Any]]:
    """Validate a full-size array; return ``(view3d, shape, dtype)``.

    ``dtype`` None picks the computation dtype from the array itself. With
    ``shape`` given the array must have exactly that shape.
    """
    arr = as_array(name, value)
    cdt = computation_dtype(name, arr)
    if dtype is None:
        dtype = cdt
    if shape is not None:
        if arr.shape != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    elif arr.ndim < 2:
        raise ValueError(
            f"{name}: expected an array of shape (N, D) or (N, C, *spatial), "
            f"got {arr.ndim} dimension(s) with shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (N == 0 in shape {arr.shape})")
    spatial = math.prod(arr.shape[2:])
    if spatial == 0:
        raise ValueError(f"{name}: a spatial axis has size 0 in shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    return arr.reshape(arr.shape[0], arr.shape[1], spatial), arr.shape, dtype


def feature(name: str, value: Any, C: int, dtype: Any) -> AnyArray:
    """Validate a per-channel array of shape (C,); return it contiguous in ``dtype``."""
    arr = as_array(name, value)
    check_dtype(name, arr)
    if arr.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},), one value per channel, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def param(name: str, value: Any, shape: tuple[int, ...], dtype: Any) -> AnyArray:
    """Validate a parameter of ``shape`` (layer norm's gamma: the normalized
    shape); return it flattened, contiguous in ``dtype``."""
    arr = as_array(name, value)
    check_dtype(name, arr)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype).reshape(-1)


def shape_arg(name: str, value: Any) -> tuple[int, ...]:
    """Validate a shape tuple (N, C, *spatial) given as an argument."""
    try:
        shape = tuple(operator.index(s) for s in value)
    except TypeError:
        raise TypeError(f"{name}: expected a tuple of ints, got {value!r:.80}") from None
    if len(shape) < 2 or shape[0] < 1 or shape[1] < 0 or min(shape[2:], default=1) < 1:
        raise ValueError(
            f"{name}: expected (N, C, *spatial) with N and spatial sizes > 0, got {shape}")
    return shape


def view3d(shape: Sequence[int]) -> tuple[int, int, int]:
    """The (N, C, S) shape the kernels see for an array of ``shape``."""
    return (shape[0], shape[1], math.prod(shape[2:]))


def check_out(name: str, out: Any, shape: Sequence[int], dtype: Any, inputs: Iterable[Any] = (),
              allow: Iterable[Any] = ()) -> AnyArray:
    """Validate an output buffer given by the caller; return it as an (N, C, S) view.

    It must be a writable, C-contiguous ``dtype`` array of exactly ``shape``
    that shares no memory with ``inputs``, except that it may *be* one of
    ``allow`` (the very same array object: an elementwise kernel may then
    work in place, as :func:`cybatchnorm.nodes.branch_sum` does on request).
    """
    if not isinstance(out, np.ndarray) or isinstance(out, (np.matrix, np.ma.MaskedArray)):
        # a matrix cannot take the (N, C, S) view; a masked array's mask would be ignored
        raise TypeError(f"{name}: expected a numpy array (numpy.ndarray), got "
                        f"{type(out).__module__}.{type(out).__name__}")
    shape = tuple(shape)
    if out.dtype != dtype or out.shape != shape:
        raise ValueError(f"{name}: expected a {dtype} array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{name}: expected a writable C-contiguous array")
    for other in inputs:
        if (other is not None and np.may_share_memory(out, other)
                and not any(out is a for a in allow)):
            raise ValueError(f"{name}: must not share memory with an input")
    return out.reshape(view3d(shape))


def int_arg(name: str, value: Any, minimum: int, expected: str) -> int:
    """An int argument (anything with ``__index__``, not a bool) that is at
    least ``minimum``; ``expected`` says what was expected in the errors."""
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected {expected}, got a bool")
    try:
        v: int = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__}") from None
    if v < minimum:
        raise ValueError(f"{name}: expected {expected}, got {v}")
    return v


def cache_kind(cache: Any) -> str:
    """Validate a forward's ``cache``: ``"full"`` or ``"minimal"``."""
    if not isinstance(cache, str) or cache not in KINDS:
        raise ValueError(f"cache: expected 'full' or 'minimal', got {cache!r}")
    return cache


def check_num_threads(num_threads: Any, size: int | None = None) -> int:
    """Validate ``num_threads``: None (the default count for ``size`` values,
    see ``_threads.default_num_threads``) or a positive int, used as given up
    to ``_threads.thread_cap()`` (the usable CPUs, at least 8) and capped
    there: results are bitwise the same for any count, and an OpenMP runtime
    asked for tens of thousands of threads kills the process."""
    if num_threads is None:
        return default_num_threads(size)
    return min(int_arg("num_threads", num_threads, 1, "a positive int or None"), thread_cap())


def check_eps(eps: Any) -> float:
    """Validate ``eps``: a real number, finite and > 0; return it as float."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps: expected a positive finite real number, got {type(eps).__name__}")
    e = float(eps)
    if not math.isfinite(e) or e <= 0:
        raise ValueError(f"eps: expected a positive finite real number, got {e}")
    return e


def check_momentum(momentum: Any) -> float | None:
    """Validate a layer's ``momentum``: a real number in [0, 1] (returned as
    float) or None (a cumulative average)."""
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(
            f"momentum: expected a number in [0, 1] or None, got {type(momentum).__name__}"
        )
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum: expected a number in [0, 1] or None, got {momentum}")
    return float(momentum)


def check_batch_count(shape: Sequence[int]) -> int:
    """Training needs at least two values per feature to have a variance."""
    count = shape[0] * math.prod(shape[2:])
    if count < 2:
        raise ValueError(
            f"x: expected more than 1 value per feature in training "
            f"(N x spatial size = {count} for shape {shape})"
        )
    return count


def channel_axis(axis: Any, ndim: int) -> int:
    """Validate the channel axis of an ``ndim``-D array: 1 (channels first,
    (N, C, *spatial)) or the last axis (channels last, (N, *spatial, C));
    return 1 or -1 (-1 only for more than two dimensions, where it differs)."""
    if isinstance(axis, bool):
        raise TypeError("axis: expected 1 or -1, got a bool")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis: expected 1 or -1, got {type(axis).__name__}") from None
    if ndim >= 2 and axis in (1, 1 - ndim):
        return 1
    if ndim >= 2 and axis in (-1, ndim - 1):
        return -1 if ndim > 2 else 1
    raise ValueError(f"axis: expected 1 (channels first) or -1 (channels last) for a "
                     f"{ndim}-D array, got {axis}")


# ------------------------------------------------- the functional entry points

class ForwardArgs(NamedTuple):
    """A forward call, validated: what ``api.run_forward`` hands the engine."""
    x3: AnyArray            # the (N, C, S) view the kernels read (channels last: (N*S, C, 1))
    shape: tuple[int, ...]  # the kernels' shape: x's, or the (N*S, C) matrix's
    x_shape: tuple[int, ...]  # x's own shape
    axis: int               # 1, or -1 for channels last
    dtype: np.dtype[Any]
    gamma: AnyArray         # contiguous, typed (the caller's own when they were)
    beta: AnyArray
    eps: float
    stats: tuple[AnyArray, AnyArray] | None  # None (batch statistics) or (mean, var)
    kind: str               # "full" or "minimal"
    out: AnyArray | None   # the caller's out, or None
    out3: AnyArray | None  # its (N, C, S) view
    nt: int
    copy_x: bool = False    # the kernel keeps its own copy of x3 (a minimal cache of a layer)


def forward_args(x: Any, gamma: Any, beta: Any, eps: Any, *, axis: Any = 1, num_threads: Any = None,
                 cache: Any = "full", out: Any = None, stats: Any = None, own_x: bool = False,
                 channels: int | None = None) -> ForwardArgs:
    """Validate a forward call once; return its :class:`ForwardArgs`.

    ``stats`` None is training (at least two values per channel); a pair
    ``(mean, var)`` normalizes with those (eval mode). ``own_x`` asks the
    kernel for its own copy of x (``copy_x``, written by its normalize sweep)
    when a minimal cache would keep the caller's own array, so that the cache
    cannot change when the caller changes x afterwards. ``channels``: the
    number of channels x must have (a layer's ``num_features``).
    """
    arr = as_array("x", x)
    last = not (type(axis) is int and axis == 1) and channel_axis(axis, max(arr.ndim, 2)) == -1
    if last:
        # (N, *spatial, C) is, in memory, the (N*S, C) matrix of its N*S rows:
        # the kernels reduce that matrix in place (a reshape, no transpose)
        if 0 in arr.shape[:-1]:
            raise ValueError(f"x: the batch is empty (a size 0 in shape {arr.shape} before the "
                             f"channel axis)")
        x_shape = arr.shape
        arr = np.ascontiguousarray(arr, dtype=computation_dtype("x", arr))
        # (an explicit row count: with C == 0, -1 could not be inferred)
        x3, shape, dt = full("x", arr.reshape(math.prod(x_shape[:-1]), x_shape[-1]))
    else:
        x3, shape, dt = full("x", arr)
        x_shape = shape
    if channels is not None and shape[1] != channels:
        raise ValueError(f"x: expected {channels} channels on axis {axis}, got shape {x_shape}")
    if stats is None:
        check_batch_count(shape)
    C = shape[1]
    given = (x, x3, gamma, beta) + (tuple(stats) if stats is not None else ())
    gamma = feature("gamma", gamma, C, dt)      # the engine copies what a cache keeps
    beta = feature("beta", beta, C, dt)
    eps = check_eps(eps)
    cache = cache_kind(cache)
    if stats is not None:
        stats = (feature("running_mean", stats[0], C, dt),
                 feature("running_var", stats[1], C, dt))
    nt = check_num_threads(num_threads, x3.size)
    out3 = None
    if out is not None:
        out3 = check_out("out", out, x_shape, dt, given).reshape(x3.shape)
    copy_x = (own_x and cache == "minimal" and isinstance(x, np.ndarray)
              and np.may_share_memory(x3, x))
    return ForwardArgs(x3, shape, x_shape, -1 if last else 1, dt, gamma, beta, eps, stats,
                       cache, out, out3, nt, copy_x)


def check_cache(cache: Any) -> None:
    """Make sure ``cache`` is a Cache a backward may read
    (:meth:`Cache.check_readable`), so a forged or damaged one is refused
    before a kernel reads it."""
    if not isinstance(cache, Cache):
        raise TypeError(
            f"cache: expected the Cache returned by batchnorm_forward, got {type(cache).__name__}"
        )
    cache.check_readable()


def backward_args(dout: Any, cache: Any, num_threads: Any,
                  dx: Any) -> tuple[AnyArray, int, AnyArray | None]:
    """Validate a backward call once: the cache, ``dout`` of x's shape (cast
    to the cache's dtype) and ``dx``; return ``(g3, nt, dx3)``, ``g3`` and
    ``dx3`` (None when not given) the (N, C, S) views of the cache's shape."""
    check_cache(cache)
    arr = as_array("dout", dout)
    check_dtype("dout", arr)
    if arr.shape != cache.x_shape:
        raise ValueError(f"dout: expected shape {cache.x_shape}, got {arr.shape}")
    g3 = full("dout", arr.reshape(cache.shape) if cache.axis == -1 else arr, cache.dtype,
              cache.shape)[0]
    nt = check_num_threads(num_threads, g3.size)
    dx3 = None
    if dx is not None:
        dx3 = check_out("dx", dx, cache.x_shape, cache.dtype,
                        [dout, arr, g3] + cache.held_arrays())
        dx3 = dx3.reshape(g3.shape)
    return g3, nt, dx3


def layer_args(num_features: Any, eps: Any, momentum: Any, dtype: Any, num_threads: Any, axis: Any,
               backward: Any) -> tuple[int, float, float | None, np.dtype[Any]]:
    """Validate ``BatchNorm``'s constructor arguments; return ``(num_features,
    eps, momentum, dtype)`` normalized (num_threads, axis and backward are
    returned to the caller unchanged once valid)."""
    num_features = int_arg("num_features", num_features, 1, "a positive int")
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    dtype = layer_dtype(dtype)
    check_num_threads(num_threads)    # validated now, not at the first forward
    channel_axis(axis, 3)               # an int (TypeError otherwise) ...
    if axis not in (1, -1):             # ... that is 1 or -1 itself, for any rank
        raise ValueError(f"axis: expected 1 (channels first) or -1 (channels last), got {axis}")
    backward_kind(backward)
    return num_features, eps, momentum, dtype


def layer_dtype(dtype: Any) -> np.dtype[Any]:
    """Validate a layer's ``dtype``: float32 or float64."""
    try:
        dt: np.dtype[Any] = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def backward_kind(backward: Any) -> str:
    """Validate a layer's ``backward``: ``"fused"`` or ``"staged"``."""
    if not isinstance(backward, str) or backward not in ("fused", "staged"):
        raise ValueError(f"backward: expected 'fused' or 'staged', got {backward!r}")
    return backward


def normalized_shape_arg(value: Any) -> tuple[int, ...]:
    """Validate ``LayerNorm``'s ``normalized_shape``: an int or a sequence of
    positive ints (torch's convention); return it as a tuple."""
    items = (value,) if isinstance(value, numbers.Integral) else value
    try:
        shape = tuple(items)
    except TypeError:
        raise TypeError("normalized_shape: expected an int or a sequence of ints, got "
                        f"{type(value).__name__}") from None
    if not shape:
        raise ValueError("normalized_shape: expected at least one axis, got ()")
    return tuple(int_arg("normalized_shape", n, 1, "positive ints") for n in shape)


def _state_vector(name: str, value: Any, C: int, dtype: np.dtype[Any]) -> None:
    # a layer's own (C,) array, used in place: exactly the layer's dtype,
    # writable and contiguous, or the update would fail (or be lost) midway
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array of shape ({C},), got "
                        f"{type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected a {dtype} array (the layer's dtype), got {value.dtype}")
    if value.shape != (C,):
        raise ValueError(f"{name}: expected shape ({C},), one value per channel, got {value.shape}")
    if not (value.flags.writeable and value.flags.c_contiguous):
        raise ValueError(f"{name}: expected a writable C-contiguous array (it is updated in place)")


def layer_state(layer: Any) -> float | None:
    """Check the state a :class:`~cybatchnorm.BatchNorm` forward reads and
    updates (the attributes a user may have replaced since the constructor):
    ``gamma``/``beta`` (the forward checks their values), ``running_mean``,
    ``running_var``, ``num_batches_tracked``, ``momentum``, ``eps``. Returns
    the momentum to use. Raises before the layer changes."""
    C, dt = layer.num_features, layer.dtype
    if layer.track_running_stats:
        _state_vector("running_mean", layer.running_mean, C, dt)
        _state_vector("running_var", layer.running_var, C, dt)
        layer.num_batches_tracked = int_arg("num_batches_tracked", layer.num_batches_tracked, 0,
                                            "an int >= 0")
    check_eps(layer.eps)
    return check_momentum(layer.momentum)


def state_dict_args(state: Any, affine: bool, track: bool, C: int,
                    dtype: np.dtype[Any]) -> dict[str, Any]:
    """Validate a state dict for ``BatchNorm.load_state_dict``: exactly the
    keys of the layer (torch's names), each ``(C,)`` vector of real numbers
    (copied into ``dtype``), ``num_batches_tracked`` a whole number >= 0.
    Returns the converted values; nothing is loaded here."""
    if not isinstance(state, dict) and not callable(getattr(state, "keys", None)):
        raise TypeError(f"state_dict: expected a mapping of names to arrays, got "
                        f"{type(state).__name__}")
    want = (["weight", "bias"] if affine else []) + (
        ["running_mean", "running_var", "num_batches_tracked"] if track else [])
    keys = list(state.keys())
    missing = [k for k in want if k not in keys]
    unexpected = [k for k in keys if k not in want]
    if missing or unexpected:
        raise ValueError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
    out: dict[str, Any] = {}
    for k in want:
        if k == "num_batches_tracked":
            arr = as_array(k, state[k])
            if arr.shape not in ((), (1,)) or arr.dtype.kind not in "iu":
                raise ValueError(f"{k}: expected a whole number (an int64 scalar), got "
                                 f"{arr.dtype} {arr.shape}")
            out[k] = int_arg(k, int(arr.reshape(())), 0, "an int >= 0")
        else:
            out[k] = feature(k, state[k], C, dtype).copy()
    return out


def walk_args(dout: Any, cache: Any, num_threads: Any, constants: Any, dx: Any,
              nodes: Iterable[Any]) -> tuple[AnyArray, tuple[int, ...], int, set[str]]:
    """Validate a call of ``graph.backward`` (the walk the docs read): ``cache``
    any object with the values the visited ``nodes`` save, ``dout`` of their
    shape, ``constants`` an iterable of node names, ``dx`` a suitable output.
    Returns ``(dout, shape, nt, constants)``."""
    g3, shape, dt = full("dout", dout)
    dout = g3.reshape(shape)
    nt = check_num_threads(num_threads, g3.size)
    try:
        constants = set(constants)
    except TypeError:
        raise TypeError(f"constants: expected an iterable of node names, got "
                        f"{type(constants).__name__}") from None
    needed = {s for n in nodes if n.name not in constants for s in n.saved}
    for s in sorted(needed):
        if not hasattr(cache, s):
            raise TypeError(f"cache: expected an object with the forward's values as "
                            f"attributes (a Cache), got {type(cache).__name__} without {s!r}")
        v = getattr(cache, s)
        if isinstance(v, np.ndarray) and v.ndim > 1 and v.shape != shape:
            raise ValueError(f"dout: shape {shape} does not match the cache's {s} {v.shape}")
    if dx is not None:
        check_out("dx", dx, shape, dt, [dout] + [getattr(cache, s) for s in needed if s != "shape"])
    return dout, shape, nt, constants


# ----------------------------------------------- node and split API arguments

def vector(name: str, value: Any) -> tuple[AnyArray, np.dtype[Any]]:
    """A lone (C,) input of a node function: its own length and dtype define
    the node's shape; return ``(array, dtype)``."""
    arr = as_array(name, value)
    dt = computation_dtype(name, arr)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape (C,), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dt), dt


def grad_shape(shape: Any, grad: AnyArray) -> tuple[int, ...]:
    """Validate the ``shape`` argument of var_backward / mu_backward against
    the (C,) gradient ``grad``."""
    s = shape_arg("shape", shape)
    if s[1] != grad.shape[0]:
        raise ValueError(
            f"shape: expected {grad.shape[0]} channels (shape[1]) to match the gradient, got {s}"
        )
    return s


def f64_vector(name: str, value: Any, C: int) -> F64Array:
    """A per-channel (C,) argument of the split API, read as float64."""
    return feature(name, value, C, np.float64)


def shard_counts(value: Any) -> tuple[F64Array, int]:
    """The (P,) values per channel of every shard (whole numbers >= 0, not all
    0); return ``(float64 counts, total)``."""
    arr = as_array("counts", value)
    check_dtype("counts", arr)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"counts: expected shape (P,) with P >= 1 shards, got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError("counts: expected whole numbers of values per shard")
    if np.any(arr < 0):
        raise ValueError("counts: expected non-negative counts")
    counts = arr.astype(np.float64)
    total = int(arr.astype(np.int64).sum())
    if total < 1:
        raise ValueError("counts: all shards are empty (the counts sum to 0)")
    if total > 2**53:
        raise ValueError("counts: more than 2**53 values per channel")
    return np.ascontiguousarray(counts), total


def per_shard(name: str, value: Any, P: int, like: AnyArray | None = None) -> F64Array:
    """A (P, C) per-shard statistic, read as float64; with ``like`` (the
    means), the m2s: of the means' shape and >= 0."""
    arr = as_array(name, value)
    check_dtype(name, arr)
    if arr.ndim != 2 or arr.shape[0] != P:
        raise ValueError(f"{name}: expected shape (P, C) with P = {P} shards, got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if like is not None:
        if arr.shape != like.shape:
            raise ValueError(f"{name}: expected shape {like.shape} like means, got {arr.shape}")
        if np.any(arr < 0):
            raise ValueError(f"{name}: a sum of squared deviations cannot be negative")
    return arr


def pool_bytes(nbytes: Any) -> int:
    """``nbytes`` of the pool's limit: an int >= 0."""
    return int_arg("nbytes", nbytes, 0, "an int >= 0")


def check_step(h: Any) -> float:
    """The finite-difference step of check_gradients: finite and > 0."""
    if not (isinstance(h, (int, float, np.floating)) and not isinstance(h, bool)
            and np.isfinite(h) and h > 0):
        raise ValueError(f"h: expected a positive finite step, got {h!r}")
    return float(h)


def check_file(file: Any) -> IO[str] | None:
    """A file-like object with write(), or None."""
    if file is not None and not callable(getattr(file, "write", None)):
        raise TypeError(
            f"file: expected a file-like object with write(), got {type(file).__name__}")
    return cast("IO[str] | None", file)


def positive_count(value: Any) -> int:
    """``count``: a positive int (values per channel over all shards)."""
    return int_arg("count", value, 1, "a positive int (values per channel)")


# ------------------------------------------- per-sample normalizations

class NormArgs(NamedTuple):
    """A validated layer-norm or group-norm forward call: x as (R, M) rows, or
    (channels-last group norm, ``axis`` -1) as (N, S, C)."""
    x2: AnyArray
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    gamma: AnyArray
    beta: AnyArray
    param_shape: tuple[int, ...]
    groups: int
    S: int
    eps: float
    nt: int
    out: AnyArray | None
    out2: AnyArray | None
    copy_x: bool
    axis: int = 1


def _norm_out(out: Any, x: Any, arr: AnyArray, x2: AnyArray, params: tuple[Any, ...],
              dt: np.dtype[Any]) -> AnyArray | None:
    # the caller's out checked (x's shape, computation dtype, sharing no
    # memory with an input) as (R, M) rows; None when not given
    if out is None:
        return None
    return check_out("out", out, arr.shape, dt, (x, arr, x2) + params).reshape(x2.shape)


def layernorm_args(x: Any, gamma: Any, beta: Any, eps: Any, num_threads: Any,
                   out: Any) -> NormArgs:
    """Validate a layer-norm forward call once: gamma's shape is the normalized
    trailing shape of x (torch's ``normalized_shape``), beta's the same."""
    arr = as_array("x", x)
    dt = computation_dtype("x", arr)
    g = as_array("gamma", gamma)
    check_dtype("gamma", g)
    k = g.ndim
    if k == 0 or k > arr.ndim or arr.shape[arr.ndim - k:] != g.shape:
        raise ValueError(f"gamma: expected the normalized trailing shape of x (x's shape "
                         f"{arr.shape} ends with gamma's), got {g.shape}")
    pshape = tuple(g.shape)
    M = math.prod(pshape)
    if M == 0:
        raise ValueError(f"gamma: the normalized shape {pshape} holds no values")
    gamma = param("gamma", g, pshape, dt)
    beta = param("beta", beta, pshape, dt)
    x2 = np.ascontiguousarray(arr, dtype=dt).reshape(-1, M)
    eps = check_eps(eps)
    nt = check_num_threads(num_threads, x2.size)
    out2 = _norm_out(out, x, arr, x2, (gamma, beta), dt)
    return NormArgs(x2, tuple(arr.shape), dt, gamma, beta, pshape, 1, 1, eps, nt, out, out2,
                    bool(np.may_share_memory(x2, arr)))


def groupnorm_args(x: Any, gamma: Any, beta: Any, num_groups: Any, eps: Any, num_threads: Any,
                   out: Any, axis: Any = 1) -> NormArgs:
    """Validate a group-norm forward call once: x (N, C, *spatial) (``axis``
    1) or (N, *spatial, C) (``axis`` -1, channels last), gamma and beta
    (C,), ``num_groups`` a divisor of C."""
    arr = as_array("x", x)
    last = not (type(axis) is int and axis == 1) and channel_axis(axis, max(arr.ndim, 2)) == -1
    x3, shape, dt = full("x", arr)
    if last:
        # (N, *spatial, C), as the channels-last kernels read it: (N, S, C)
        N, C = shape[0], shape[-1]
        if x3.size == 0:
            raise ValueError(f"x: an axis has size 0 in shape {tuple(shape)}")
        S = x3.size // (N * C)
    else:
        N, C, S = x3.shape
    G = int_arg("num_groups", num_groups, 1, "a positive int")
    if C % G:
        raise ValueError(f"num_groups: expected a divisor of the {C} channels, got {G}")
    gamma = feature("gamma", gamma, C, dt)
    beta = feature("beta", beta, C, dt)
    eps = check_eps(eps)
    nt = check_num_threads(num_threads, x3.size)
    # what the kernels read: (N, S, C) samples, or (N * G, C / G * S) rows
    xk: AnyArray = x3.reshape(N, S, C) if last else x3.reshape(N * G, (C // G) * S)
    out2 = _norm_out(out, x, arr, xk, (gamma, beta), dt)
    return NormArgs(xk, tuple(shape), dt, gamma, beta, (C,), G, S, eps, nt, out, out2,
                    bool(np.may_share_memory(xk, arr)), -1 if last else 1)


def norm_backward_args(kind: str, dout: Any, cache: Any, num_threads: Any,
                       dx: Any) -> tuple[AnyArray, int, AnyArray | None]:
    """Validate a layer-norm or group-norm backward call once: the cache of
    that normalization, dout of x's shape (cast to the cache's dtype), dx;
    return ``(g2, nt, dx2)`` as (R, M) rows (dx2 None when dx is None)."""
    if not isinstance(cache, NormCache):
        raise TypeError(f"cache: expected the NormCache returned by {kind}norm_forward, "
                        f"got {type(cache).__name__}")
    if cache.kind != kind:
        raise ValueError(f"cache: expected a {kind} norm's cache, got a {cache.kind} norm's")
    arr = as_array("dout", dout)
    check_dtype("dout", arr)
    if arr.shape != cache.shape:
        raise ValueError(f"dout: expected shape {cache.shape}, got {arr.shape}")
    g2 = np.ascontiguousarray(arr, dtype=cache.dtype).reshape(cache.x.shape)
    nt = check_num_threads(num_threads, g2.size)
    if dx is None:
        return g2, nt, None
    dx2 = check_out("dx", dx, cache.shape, cache.dtype, (dout, arr, g2, cache.x))
    return g2, nt, dx2.reshape(cache.x.shape)
