"""LayerNorm and GroupNorm (cybatchnorm.norm_layers): the functional API's
results, parameters and gradients by torch's names, copyable and picklable
with a backward pending, bad arguments refused by name."""
import copy
import pickle

import numpy as np
import pytest
import reference as ref

import cybatchnorm as bn


def _data(shape, rng):
    return rng.normal(2, 3, shape), rng.normal(size=shape)


@pytest.mark.parametrize("backward", ["fused", "staged"])
def test_layer_norm_layer_is_the_functional_api(rng, backward):
    x, d = _data((6, 4, 5), rng)
    layer = bn.LayerNorm((4, 5), backward=backward)
    layer.gamma[...] = rng.uniform(0.5, 2, (4, 5))
    layer.beta[...] = rng.normal(size=(4, 5))
    out = layer.forward(x)
    dx = layer.backward(d)
    want = ref.layernorm(x, layer.gamma, layer.beta, d)
    for got, w in zip((out, dx, layer.dgamma, layer.dbeta), want):
        np.testing.assert_allclose(got, w, rtol=1e-11, atol=1e-12)
    assert layer.dgamma.shape == (4, 5)


@pytest.mark.parametrize("backward", ["fused", "staged"])
def test_group_norm_layer_is_the_functional_api(rng, backward):
    x, d = (a.astype(np.float32) for a in _data((3, 6, 4, 4), rng))
    layer = bn.GroupNorm(3, 6, backward=backward, dtype=np.float32)
    layer.gamma[...] = rng.uniform(0.5, 2, 6)
    out = layer.forward(x)
    dx = layer.backward(d)
    want = ref.groupnorm(x, layer.gamma, layer.beta, 3, d)
    assert out.dtype == dx.dtype == layer.dgamma.dtype == np.float32
    for got, w in zip((out, dx, layer.dgamma, layer.dbeta), want):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4)


def test_without_affine_parameters_there_are_no_gradients_for_them(rng):
    x, d = _data((4, 6), rng)
    plain = bn.LayerNorm(6, elementwise_affine=False)
    no_bias = bn.LayerNorm(6, bias=False)
    grouped = bn.GroupNorm(2, 6, affine=False)
    for layer in (plain, no_bias, grouped):
        layer.forward(x)
        layer.backward(d)
    assert plain.gamma is None and plain.beta is None and plain.dgamma is None
    assert no_bias.beta is None and no_bias.dbeta is None and no_bias.dgamma is not None
    assert grouped.state_dict() == {} and set(no_bias.state_dict()) == {"weight"}
    np.testing.assert_allclose(plain.forward(x), ref.layernorm(x, np.ones(6), np.zeros(6), d)[0],
                               rtol=1e-12, atol=1e-12)


def test_state_dict_round_trip_and_copies_with_a_backward_pending(rng):
    x, d = _data((5, 4, 3), rng)
    layer = bn.GroupNorm(2, 4)
    layer.load_state_dict({"weight": rng.uniform(0.5, 2, 4), "bias": rng.normal(size=4)})
    other = bn.GroupNorm(2, 4)
    other.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(other.forward(x), layer.forward(x))
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        np.testing.assert_array_equal(clone.backward(d), layer.backward(d))
    assert layer.eval().forward(x).tobytes() == layer.train().forward(x).tobytes()


BAD = [
    ("normalized_shape 0", lambda: bn.LayerNorm(0), ValueError, "normalized_shape"),
    ("normalized_shape empty", lambda: bn.LayerNorm(()), ValueError, "normalized_shape"),
    ("normalized_shape str", lambda: bn.LayerNorm(3.5), TypeError, "normalized_shape"),
    ("layer eps 0", lambda: bn.LayerNorm(3, eps=0.0), ValueError, "eps"),
    ("layer dtype int", lambda: bn.LayerNorm(3, dtype=np.int64), TypeError, "dtype"),
    ("layer backward", lambda: bn.LayerNorm(3, backward="both"), ValueError, "backward"),
    ("layer num_threads", lambda: bn.LayerNorm(3, num_threads=0), ValueError, "num_threads"),
    ("layer x trailing shape", lambda: bn.LayerNorm((2, 3)).forward(np.ones((4, 3, 2))),
     ValueError, "x"),
    ("layer backward first", lambda: bn.LayerNorm(3).backward(np.ones((2, 3))), RuntimeError,
     "backward"),
    ("group num_groups 4 of 6", lambda: bn.GroupNorm(4, 6), ValueError, "num_groups"),
    ("group num_channels 0", lambda: bn.GroupNorm(1, 0), ValueError, "num_channels"),
    ("group x channels", lambda: bn.GroupNorm(2, 6).forward(np.ones((2, 4, 3))), ValueError,
     "x"),
    ("group state_dict keys", lambda: bn.GroupNorm(2, 6).load_state_dict({"weight": np.ones(6)}),
     ValueError, "state_dict"),
    ("group state_dict shape", lambda: bn.GroupNorm(2, 6).load_state_dict(
        {"weight": np.ones(5), "bias": np.ones(6)}), ValueError, "weight"),
]


@pytest.mark.parametrize("call, exc, name", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_arguments_are_refused_by_name(call, exc, name):
    with pytest.raises(exc, match=rf"^{name}\b"):
        call()


def test_a_refused_state_dict_leaves_the_layer_as_it_was():
    layer = bn.LayerNorm(3)
    before = layer.state_dict()
    with pytest.raises(ValueError, match="^bias"):
        layer.load_state_dict({"weight": np.full(3, 2.0), "bias": np.ones(4)})
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_group_norm_layer_takes_channels_last_input():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4, 5, 6))                    # (N, H, W, C)
    d = rng.normal(size=x.shape)
    last = bn.GroupNorm(3, 6, axis=-1)
    first = bn.GroupNorm(3, 6)
    for layer in (last, first):
        layer.gamma[:] = np.linspace(0.5, 2.0, 6)
    out = last.forward(x)
    ref = first.forward(np.moveaxis(x, -1, 1))
    np.testing.assert_allclose(np.moveaxis(out, -1, 1), ref, rtol=1e-12, atol=1e-13)
    dx, dref = last.backward(d), first.backward(np.moveaxis(d, -1, 1))
    np.testing.assert_allclose(np.moveaxis(dx, -1, 1), dref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(last.dgamma, first.dgamma, rtol=1e-12)
    assert repr(last).endswith("axis=-1)") and "axis" not in repr(first)
    with pytest.raises(ValueError, match="expected 6 channels on axis -1"):
        last.forward(np.moveaxis(x, -1, 1))
    with pytest.raises(ValueError, match="axis: expected 1"):
        bn.GroupNorm(3, 6, axis=2)
    import pickle
    again = pickle.loads(pickle.dumps(last))
    assert again.axis == -1
    np.testing.assert_array_equal(again.forward(x), out)
