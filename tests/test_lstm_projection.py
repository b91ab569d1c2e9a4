"""The LSTM's input projection inside the time loop (XLA:CPU) and before it (elsewhere)
compute the same outputs, final states and gradients, with masks, dropout masks and
go_backwards."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridnet.layers.recurrent import lstm_recurrence


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_projection_inside_steps_matches_whole_sequence(reverse, masked):
    rng = np.random.default_rng(0)
    T, B, F, U = 7, 3, 5, 4
    x = jnp.asarray(rng.normal(size=(T, B, F)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(F, 4 * U)) * 0.3, jnp.float32)
    recurrent = jnp.asarray(rng.normal(size=(U, 4 * U)) * 0.3, jnp.float32)
    bias = jnp.asarray(rng.normal(size=(4 * U,)), jnp.float32)
    h0 = jnp.asarray(rng.normal(size=(B, U)), jnp.float32)
    c0 = jnp.zeros((B, U), jnp.float32)
    mask = jnp.asarray(rng.random((T, B)) > 0.3) if masked else None
    drop = jnp.asarray(rng.random((B, U)) > 0.5, jnp.float32) * 2.0

    def outside(kernel, recurrent, bias):
        out, h, c = lstm_recurrence(x @ kernel + bias, recurrent, h0, c0, mask,
                                    reverse=reverse, recurrent_dropout_mask=drop)
        return jnp.sum(out ** 2) + jnp.sum(h) + jnp.sum(c ** 3), (out, h, c)

    def inside(kernel, recurrent, bias):
        out, h, c = lstm_recurrence(x, recurrent, h0, c0, mask, reverse=reverse,
                                    recurrent_dropout_mask=drop, kernel=kernel, bias=bias)
        return jnp.sum(out ** 2) + jnp.sum(h) + jnp.sum(c ** 3), (out, h, c)

    (loss_a, outs_a), grads_a = jax.value_and_grad(outside, argnums=(0, 1, 2),
                                                   has_aux=True)(kernel, recurrent, bias)
    (loss_b, outs_b), grads_b = jax.value_and_grad(inside, argnums=(0, 1, 2),
                                                   has_aux=True)(kernel, recurrent, bias)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(outs_a + grads_a, outs_b + grads_b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_layer_takes_the_in_step_path_on_cpu(monkeypatch):
    """On the CPU backend the layer runs the projection inside the loop (the time loop
    is given the raw inputs and the kernel), and both paths give the same output."""
    from hybridnet.layers import LSTM
    from hybridnet.layers import recurrent

    calls = []
    original = recurrent.lstm_recurrence

    def spy(xw, *args, **kwargs):
        calls.append(kwargs.get("kernel") is not None)
        return original(xw, *args, **kwargs)

    monkeypatch.setattr(recurrent, "lstm_recurrence", spy)
    x = np.random.default_rng(1).normal(size=(2, 6, 3)).astype("float32")
    layer = LSTM(5, return_sequences=True)
    inside = np.asarray(layer(x))
    monkeypatch.setattr(recurrent, "_project_inside_steps", lambda: False)
    outside = np.asarray(layer(x))
    assert calls == [jax.default_backend() == "cpu", False]
    np.testing.assert_allclose(inside, outside, rtol=1e-5, atol=1e-6)
