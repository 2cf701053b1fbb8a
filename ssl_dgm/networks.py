"""MLP builders shared by M1, M2 and M1+M2.

Every network is an `MLP` whose first layer takes several inputs and sums their
projections: ``h = act(x W_x + y W_y + b)``.  That is exactly a dense layer on
``concat([x, y])``, but because each input is projected separately the inputs may
be *broadcast*: M2's unlabeled bound feeds ``x`` as ``[batch, 1, d]`` and all
labels as ``[1, classes, classes]``, so ``x W_x`` — the largest matrix product —
is computed once per image instead of once per (image, label) pair.
"""

from typing import Sequence

import keras

from ssl_dgm import distributions


class MLP(keras.layers.Layer):
    """Multi-input perceptron, applied on the last axis of broadcastable inputs.

    Args:
      hidden_sizes: widths of the hidden layers, e.g. ``(500, 500)``; ``()`` gives
        a linear map.
      output_size: width of the (linear) output.
      num_inputs: how many tensors `call` receives; their projections are summed.
      activation: hidden activation (the paper uses softplus; ``"softplus"`` is
        `distributions.softplus`, whose gradient reuses its forward pass's exp).
      output_bias: optional initial value of the output bias (e.g. the logit of
        the mean pixel for a Bernoulli decoder), a float or a vector.
    """

    def __init__(self, hidden_sizes: Sequence[int], output_size: int,
                 num_inputs: int = 1, activation: str = "softplus",
                 output_bias=None, **kwargs):
        super().__init__(**kwargs)
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        widths = hidden_sizes + (int(output_size),)
        self.activation = (distributions.softplus if activation == "softplus"
                           else keras.activations.get(activation))
        self.num_inputs = num_inputs
        bias_init = ("zeros" if output_bias is None
                     else keras.initializers.Constant(output_bias))
        last = len(widths) - 1

        def bias_for(layer_index):
            return bias_init if layer_index == last else "zeros"

        # Only the first projection carries a bias: the sum needs one.
        self.projections = [
            keras.layers.Dense(widths[0], use_bias=(i == 0), bias_initializer=bias_for(0),
                               dtype=self.dtype_policy, name=f"input_{i}")
            for i in range(num_inputs)
        ]
        self.layers_after = [
            keras.layers.Dense(w, bias_initializer=bias_for(i), dtype=self.dtype_policy,
                               name=f"dense_{i}")
            for i, w in enumerate(widths) if i > 0
        ]

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        if len(inputs) != self.num_inputs:
            raise ValueError(f"{self.name} takes {self.num_inputs} inputs, got {len(inputs)}")
        h = self.projections[0](inputs[0])
        for projection, x in zip(self.projections[1:], inputs[1:]):
            h = h + projection(x)
        for layer in self.layers_after:
            h = layer(self.activation(h))
        # Distributions and bounds are always float32, whatever the compute dtype.
        return keras.ops.cast(h, "float32")
