"""BatchNorm: a layer with parameters, running statistics and train/eval modes.

Its forward validates once (``_validation.forward_args``) and runs the
functional API's engine call (``api.run_forward_m2``), keeping a minimal
cache (its own copy of x, written by the forward's normalize sweep) for the
fused backward, or the full cache for the staged one (``backward="staged"``);
the running statistics follow PyTorch's rule (``_engine.update_running_stats``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from . import _engine
from ._cache import Cache
from ._typing import AnyArray, ArrayLike
from ._validation import DEFAULT_EPS, forward_args, layer_args, layer_state, state_dict_args
from .api import batchnorm_backward, batchnorm_backward_fused, run_forward_m2

__all__ = ["BatchNorm"]

class BatchNorm:
    """Batch normalization layer for (N, C) or (N, C, spatial...) input.

    Running statistics follow PyTorch's ``BatchNorm1d/2d``: each training
    forward updates ``running = (1 - momentum) * running + momentum * batch``,
    with the *unbiased* batch variance for ``running_var``; ``momentum=None``
    gives a cumulative average over all batches seen. The update is torch's
    CPU arithmetic, so equal batch statistics give bitwise equal running
    statistics (the batch statistics themselves are float64-accurate here;
    torch's float32 sums differ from them in the last bits, see
    ``docs/train_eval.md``).

    A forward checks the input and the layer's state (parameters, running
    statistics, counter) before it changes anything: a call that raises
    leaves the layer as it was. The layer can be copied (``copy.deepcopy``)
    and pickled at any point, a pending backward included; its
    :meth:`state_dict` uses torch's names, so a checkpoint moves between
    this layer, ``cybatchnorm.torch.BatchNorm1d`` and ``torch.nn.BatchNorm1d``.

    Parameters
    ----------
    num_features : int
        C, the number of channels (axis 1 of the input).
    eps : float, default 1e-5
        Added to the variance; finite and > 0.
    momentum : float in [0, 1] or None, default 0.1
        Weight of the newest batch in the running statistics.
    affine : bool, default True
        Learn ``gamma`` (ones) and ``beta`` (zeros); otherwise both are None and
        the output is just normalized.
    track_running_stats : bool, default True
        Keep ``running_mean`` and ``running_var``. Without them eval mode also
        normalizes with the batch statistics.
    dtype : float32 or float64, default numpy.float64
        dtype of the parameters and running statistics.
    num_threads : int or None, keyword-only
        OpenMP threads of the kernels; None uses all cores.
    axis : int, keyword-only, default 1
        The channel axis of the input: 1 for ``(N, C, *spatial)``, -1 for
        channels-last ``(N, *spatial, C)``, reduced in place as an
        ``(N*H*W, C)`` matrix.
    backward : str, keyword-only, default "fused"
        ``"fused"``: the closed-form backward, and the forward keeps only what
        it needs (the statistics and x itself, copied when it is the caller's
        array, so changing x after the forward cannot change the gradient);
        ``"staged"``: the forward keeps the full cache (``xmu`` and ``xhat``)
        and the backward walks the graph node by node. Both give the same
        gradients to rounding.

    Attributes
    ----------
    gamma, beta : ndarray (C,) or None
        Learnable scale and shift.
    dgamma, dbeta : ndarray (C,) or None
        Their gradients, set by :meth:`backward`.
    running_mean, running_var : ndarray (C,) or None
        Running statistics (None without ``track_running_stats``).
    num_batches_tracked : int
        Training forwards seen since the statistics were reset.
    training : bool
        True in training mode (the default); see :meth:`train` and :meth:`eval`.

    Examples
    --------
    >>> import numpy as np, cybatchnorm as bn
    >>> layer = bn.BatchNorm(2)
    >>> x = np.array([[0.0, 10.0], [2.0, 30.0]])
    >>> out = layer.forward(x)
    >>> layer.running_mean          # 0.9 * 0 + 0.1 * batch mean
    array([0.1, 2. ])
    >>> layer.running_var           # 0.9 * 1 + 0.1 * unbiased batch variance
    array([ 1.1, 20.9])
    >>> dx = layer.backward(np.ones_like(x))
    >>> layer.dbeta
    array([2., 2.])
    >>> out_eval = layer.eval().forward(x)
    """

    gamma: AnyArray | None
    beta: AnyArray | None
    dgamma: AnyArray | None
    dbeta: AnyArray | None
    running_mean: AnyArray | None
    running_var: AnyArray | None
    _cache: Cache | None

    def __init__(self, num_features: int, eps: float = DEFAULT_EPS, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype: Any = np.float64,
                 *, num_threads: int | None = None, axis: int = 1,
                 backward: Literal["fused", "staged"] = "fused") -> None:
        num_features, eps, momentum, dtype = layer_args(num_features, eps, momentum, dtype,
                                                        num_threads, axis, backward)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.dtype = dtype
        self.num_threads = num_threads
        self.backward_kind = backward
        self.axis = axis
        self.training = True
        self.gamma = self.beta = self.dgamma = self.dbeta = None
        self.running_mean = self.running_var = None
        self.num_batches_tracked = 0
        self._cache = None
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean to zeros, running variance to ones, batch count to 0."""
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features, self.dtype)
            self.running_var = np.ones(self.num_features, self.dtype)
        self.num_batches_tracked = 0

    def reset_parameters(self) -> None:
        """Reset the running statistics, ``gamma`` to ones and ``beta`` to zeros."""
        self.reset_running_stats()
        if self.affine:
            self.gamma = np.ones(self.num_features, self.dtype)
            self.beta = np.zeros(self.num_features, self.dtype)

    def train(self, mode: bool = True) -> BatchNorm:
        """Switch to training mode (``mode=False``: eval mode); returns self."""
        self.training = bool(mode)
        return self

    def eval(self) -> BatchNorm:
        """Switch to eval mode: normalize with the running statistics; returns self."""
        return self.train(False)

    def _params(self, dtype: np.dtype[Any]) -> tuple[AnyArray, AnyArray]:
        if self.gamma is not None and self.beta is not None:
            return self.gamma, self.beta
        return np.ones(self.num_features, dtype), np.zeros(self.num_features, dtype)

    def forward(self, x: ArrayLike) -> AnyArray:
        """Normalize ``x`` (N, C, ...) and remember what :meth:`backward` needs.

        Training mode uses the batch statistics and updates the running ones;
        eval mode uses the running statistics (or the batch's, without
        ``track_running_stats``). Everything is checked before anything
        changes: a call that raises leaves the layer as it was.
        """
        kind = "minimal" if self.backward_kind == "fused" else "full"
        # the state the user may have replaced since: checked, never half-used
        momentum = layer_state(self)
        use_running = not self.training and self.track_running_stats
        stats = (self.running_mean, self.running_var) if use_running else None
        gamma, beta = self._params(self.dtype)
        # the fused backward reads x: own_x keeps our own copy of it (the
        # kernel writes it as it normalizes), so that a caller who changes x
        # after the forward does not change the gradient
        a = forward_args(x, gamma, beta, self.eps, axis=self.axis, num_threads=self.num_threads,
                         cache=kind, stats=stats, own_x=True, channels=self.num_features)
        out, cache, m2 = run_forward_m2(a)
        # nothing below can fail: the state changes only now
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            f = 1.0 / self.num_batches_tracked if momentum is None else momentum
            _engine.update_running_stats(self.running_mean, self.running_var, cache.mu, m2,
                                         a.x3.size // self.num_features, f)
        self._cache = cache
        return out

    __call__ = forward

    def state_dict(self) -> dict[str, Any]:
        """The parameters and running statistics by torch's names: ``weight``,
        ``bias`` (with ``affine``), ``running_mean``, ``running_var`` and
        ``num_batches_tracked`` (a 0-d int64 array; with
        ``track_running_stats``). Copies, in the layer's dtype.

        ``torch.nn.BatchNorm1d(C).load_state_dict({k: torch.as_tensor(v) for
        k, v in layer.state_dict().items()})`` moves them into torch.
        """
        d: dict[str, Any] = {}
        if self.affine:
            d["weight"], d["bias"] = np.array(self.gamma), np.array(self.beta)
        if self.track_running_stats:
            d["running_mean"] = np.array(self.running_mean)
            d["running_var"] = np.array(self.running_var)
            d["num_batches_tracked"] = np.array(self.num_batches_tracked, np.int64)
        return d

    def load_state_dict(self, state_dict: Any) -> None:
        """Load what :meth:`state_dict` returns, or a torch ``BatchNorm``'s
        state dict (tensors are read through numpy). The keys must be exactly
        the layer's; every value is checked (shape ``(C,)``, real numbers,
        a whole ``num_batches_tracked`` >= 0) before any is loaded, and
        copied into the layer's dtype."""
        values = state_dict_args(state_dict, self.affine, self.track_running_stats,
                                 self.num_features, self.dtype)
        if self.affine:
            self.gamma, self.beta = values["weight"], values["bias"]
        if self.track_running_stats:
            self.running_mean, self.running_var = values["running_mean"], values["running_var"]
            self.num_batches_tracked = values["num_batches_tracked"]

    def backward(self, dout: ArrayLike) -> AnyArray:
        """Gradient of the loss with respect to the last forward's input.

        The closed form or the staged walk, as the ``backward`` option says.
        Returns ``dx`` and sets ``dgamma`` and ``dbeta`` (None without
        ``affine``). In eval mode with running statistics the statistics are
        constants, so ``dx = gamma * ivar * dout``.
        """
        if self._cache is None:
            raise RuntimeError("backward: call forward first")
        walk = batchnorm_backward_fused if self.backward_kind == "fused" else batchnorm_backward
        dx, dgamma, dbeta = walk(dout, self._cache, num_threads=self.num_threads)
        if self.affine:
            self.dgamma, self.dbeta = dgamma, dbeta
        return dx

    def __repr__(self) -> str:
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"dtype={self.dtype.name}"
                + (f", axis={self.axis}" if self.axis != 1 else "")
                + (", backward='staged')" if self.backward_kind == "staged" else ")"))
