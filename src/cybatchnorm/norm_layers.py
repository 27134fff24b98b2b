"""LayerNorm and GroupNorm: layers with parameters around :mod:`cybatchnorm.norms`.

Their statistics are each sample's own, so there are no running statistics
and training and eval mode compute the same thing (``train``/``eval`` are
kept for the same interface as :class:`cybatchnorm.BatchNorm`). Parameters
and gradients use torch's names in :meth:`state_dict` (``weight``,
``bias``), so a checkpoint moves to ``torch.nn.LayerNorm``/``GroupNorm``.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ._norm_cache import NormCache
from ._typing import AnyArray, ArrayLike
from ._validation import (
    DEFAULT_EPS,
    as_array,
    backward_kind,
    channel_axis,
    check_eps,
    check_num_threads,
    int_arg,
    layer_dtype,
    normalized_shape_arg,
)
from .norms import (
    groupnorm_backward,
    groupnorm_backward_fused,
    groupnorm_forward,
    layernorm_backward,
    layernorm_backward_fused,
    layernorm_forward,
)

__all__ = ["LayerNorm", "GroupNorm"]


class _PerSampleNorm:
    # what the two layers share: parameters, gradients, modes, the backward
    gamma: AnyArray | None
    beta: AnyArray | None
    dgamma: AnyArray | None
    dbeta: AnyArray | None
    _cache: NormCache | None
    _param_shape: tuple[int, ...]

    def _setup(self, param_shape: tuple[int, ...], scale: bool, shift: bool, eps: Any,
               dtype: Any, num_threads: Any, backward: Any) -> None:
        self.eps = check_eps(eps)
        self.dtype = layer_dtype(dtype)
        check_num_threads(num_threads)        # validated now, not at the first forward
        self.num_threads = num_threads
        self.backward_kind = backward_kind(backward)
        self._param_shape = param_shape
        self.gamma = np.ones(param_shape, self.dtype) if scale else None
        self.beta = np.zeros(param_shape, self.dtype) if shift else None
        self.dgamma = self.dbeta = None
        self.training = True
        self._cache = None

    def _params(self) -> tuple[AnyArray, AnyArray]:
        gamma = self.gamma if self.gamma is not None else np.ones(self._param_shape, self.dtype)
        beta = self.beta if self.beta is not None else np.zeros(self._param_shape, self.dtype)
        return gamma, beta

    def _cache_kind(self) -> Literal["full", "minimal"]:
        return "minimal" if self.backward_kind == "fused" else "full"

    def train(self, mode: bool = True) -> Any:
        """Set ``training`` (no effect on the result: the statistics are each
        sample's own); returns self."""
        self.training = bool(mode)
        return self

    def eval(self) -> Any:
        """``train(False)``; returns self."""
        return self.train(False)

    def _backward(self, dout: ArrayLike, staged: Any, fused: Any) -> AnyArray:
        if self._cache is None:
            raise RuntimeError("backward: call forward first")
        walk = fused if self.backward_kind == "fused" else staged
        dx: AnyArray
        dx, dgamma, dbeta = walk(dout, self._cache, num_threads=self.num_threads)
        self.dgamma = dgamma if self.gamma is not None else None
        self.dbeta = dbeta if self.beta is not None else None
        return dx

    def state_dict(self) -> dict[str, Any]:
        """The parameters by torch's names, ``weight`` and ``bias`` (those the
        layer has), as copies."""
        d: dict[str, Any] = {}
        if self.gamma is not None:
            d["weight"] = np.array(self.gamma)
        if self.beta is not None:
            d["bias"] = np.array(self.beta)
        return d

    def load_state_dict(self, state_dict: Any) -> None:
        """Load what :meth:`state_dict` returns, or the state dict of the torch
        module of the same kind (tensors are read through numpy). The keys
        must be exactly the layer's; every value is checked before any is
        loaded, and copied into the layer's dtype."""
        want = set(self.state_dict())
        if not isinstance(state_dict, dict) or set(state_dict) != want:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(
                state_dict).__name__
            raise ValueError(f"state_dict: expected the keys {sorted(want)}, got {got}")
        values = {}
        for k, v in state_dict.items():
            arr = as_array(k, v.detach().numpy() if hasattr(v, "detach") else v)
            if arr.shape != self._param_shape or arr.dtype.kind not in "fiub":
                raise ValueError(f"{k}: expected real numbers of shape {self._param_shape}, "
                                 f"got {arr.dtype} {arr.shape}")
            values[k] = np.array(arr, dtype=self.dtype)
        self.gamma = values.get("weight", self.gamma)
        self.beta = values.get("bias", self.beta)


class LayerNorm(_PerSampleNorm):
    """Layer normalization over the trailing ``normalized_shape`` axes.

    Same constructor as ``torch.nn.LayerNorm`` (with ``dtype`` a numpy float
    dtype), plus ``num_threads`` and ``backward`` as :class:`BatchNorm` has
    them: ``"fused"`` (the default, the closed form; the forward keeps x and
    the statistics) or ``"staged"`` (batch norm's node kernels in layer norm's
    views; the forward keeps xmu and xhat too).

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing shape of the input each sample is normalized over.
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Learn ``gamma`` (ones of ``normalized_shape``) and, with ``bias``,
        ``beta`` (zeros).
    bias : bool, default True
    dtype : float32 or float64, default numpy.float64

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> layer = bn.LayerNorm(3)
    >>> out = layer.forward(np.array([[1.0, 2.0, 3.0]]))
    >>> out.round(4)
    array([[-1.2247,  0.    ,  1.2247]])
    >>> dx = layer.backward(np.ones((1, 3)))
    >>> layer.dbeta
    array([1., 1., 1.])
    """

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = DEFAULT_EPS,
                 elementwise_affine: bool = True, bias: bool = True, dtype: Any = np.float64,
                 *, num_threads: int | None = None,
                 backward: Literal["fused", "staged"] = "fused") -> None:
        self.normalized_shape = normalized_shape_arg(normalized_shape)
        self.elementwise_affine = bool(elementwise_affine)
        self._setup(self.normalized_shape, self.elementwise_affine,
                    self.elementwise_affine and bool(bias), eps, dtype, num_threads, backward)

    def forward(self, x: ArrayLike) -> AnyArray:
        """Normalize each sample of ``x`` (its shape ending with
        ``normalized_shape``) over its trailing axes; remember what
        :meth:`backward` needs."""
        k = len(self.normalized_shape)
        shape = np.shape(x)
        if tuple(shape[len(shape) - k:]) != self.normalized_shape or len(shape) < k:
            raise ValueError(f"x: expected a shape ending with normalized_shape "
                             f"{self.normalized_shape}, got {shape}")
        gamma, beta = self._params()
        out, cache = layernorm_forward(x, gamma, beta, self.eps, num_threads=self.num_threads,
                                       cache=self._cache_kind())
        self._cache = cache
        return out

    __call__ = forward

    def backward(self, dout: ArrayLike) -> AnyArray:
        """Gradient with respect to the last forward's input; sets ``dgamma``
        and ``dbeta`` (None for a parameter the layer does not have)."""
        return self._backward(dout, layernorm_backward, layernorm_backward_fused)

    def __repr__(self) -> str:
        return (f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.beta is not None}, "
                f"dtype={self.dtype.name})")


class GroupNorm(_PerSampleNorm):
    """Group normalization of ``(N, C, *spatial)`` input in ``num_groups`` groups
    of channels (instance norm: ``num_groups == num_channels``).

    Same constructor as ``torch.nn.GroupNorm`` (with ``dtype`` a numpy float
    dtype), plus ``num_threads`` and ``backward`` as :class:`LayerNorm`.

    Parameters
    ----------
    num_groups : int
        A divisor of ``num_channels``.
    num_channels : int
        C, axis 1 of the input (the last with ``axis=-1``).
    eps : float, default 1e-5
    affine : bool, default True
        Learn ``gamma`` (ones) and ``beta`` (zeros), one per channel.
    dtype : float32 or float64, default numpy.float64
    axis : int, keyword-only, default 1
        The channel axis: 1, or -1 for channels-last ``(N, *spatial, C)``
        input (see :func:`cybatchnorm.groupnorm_forward`).

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> layer = bn.GroupNorm(2, 4)
    >>> out = layer.forward(np.arange(8.0).reshape(1, 4, 2))
    >>> out.round(4)[0, :2]
    array([[-1.3416, -0.4472],
           [ 0.4472,  1.3416]])
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = DEFAULT_EPS,
                 affine: bool = True, dtype: Any = np.float64, *,
                 num_threads: int | None = None,
                 backward: Literal["fused", "staged"] = "fused", axis: int = 1) -> None:
        channel_axis(axis, 3)           # an int (TypeError otherwise) ...
        if axis not in (1, -1):         # ... that is 1 or -1 itself, for any rank
            raise ValueError(f"axis: expected 1 (channels first) or -1 (channels last), "
                             f"got {axis}")
        self.axis = int(axis)
        self.num_groups = int_arg("num_groups", num_groups, 1, "a positive int")
        self.num_channels = int_arg("num_channels", num_channels, 1, "a positive int")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups: expected a divisor of num_channels "
                             f"({self.num_channels}), got {self.num_groups}")
        self.affine = bool(affine)
        self._setup((self.num_channels,), self.affine, self.affine, eps, dtype, num_threads,
                    backward)

    def forward(self, x: ArrayLike) -> AnyArray:
        """Normalize each group of channels of each sample of ``x`` (N, C, ...),
        or (N, ..., C) with ``axis=-1``; remember what :meth:`backward` needs."""
        shape = np.shape(x)
        if len(shape) < 2 or shape[self.axis] != self.num_channels:
            raise ValueError(f"x: expected {self.num_channels} channels on axis {self.axis}, "
                             f"got shape {shape}")
        gamma, beta = self._params()
        out, cache = groupnorm_forward(x, gamma, beta, self.num_groups, self.eps,
                                       axis=self.axis, num_threads=self.num_threads,
                                       cache=self._cache_kind())
        self._cache = cache
        return out

    __call__ = forward

    def backward(self, dout: ArrayLike) -> AnyArray:
        """Gradient with respect to the last forward's input; sets ``dgamma``
        and ``dbeta`` (None without ``affine``)."""
        return self._backward(dout, groupnorm_backward, groupnorm_backward_fused)

    def __repr__(self) -> str:
        axis = "" if self.axis == 1 else ", axis=-1"
        return (f"GroupNorm({self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}, dtype={self.dtype.name}{axis})")
