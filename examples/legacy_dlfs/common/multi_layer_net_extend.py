"""An MLP in the book's style: layers in an ordered dict, ``BatchNormalization`` built on the
network's own ``params['gammaN']`` / ``params['betaN']`` arrays, gradients collected from
the layers' attributes."""

from collections import OrderedDict

import numpy as np

from common.layers import *  # noqa: F403


class MultiLayerNetExtend:
    def __init__(self, input_size, hidden_size_list, output_size, use_batchnorm=False,
                 weight_init_std=0.1, seed=0):
        rng = np.random.default_rng(seed)
        self.use_batchnorm = use_batchnorm
        self.hidden_layer_num = len(hidden_size_list)
        sizes = [input_size, *hidden_size_list, output_size]
        self.params = {}
        self.layers = OrderedDict()
        for idx in range(1, len(sizes)):
            self.params[f"W{idx}"] = weight_init_std * rng.standard_normal(
                (sizes[idx - 1], sizes[idx]))
            self.params[f"b{idx}"] = np.zeros(sizes[idx])
        for idx in range(1, self.hidden_layer_num + 1):
            self.layers[f"Affine{idx}"] = Affine(self.params[f"W{idx}"],  # noqa: F405
                                                 self.params[f"b{idx}"])
            if use_batchnorm:
                self.params[f"gamma{idx}"] = np.ones(sizes[idx])
                self.params[f"beta{idx}"] = np.zeros(sizes[idx])
                self.layers[f"BatchNorm{idx}"] = BatchNormalization(  # noqa: F405
                    self.params[f"gamma{idx}"], self.params[f"beta{idx}"])
            self.layers[f"Activation_function{idx}"] = Relu()  # noqa: F405
        idx = self.hidden_layer_num + 1
        self.layers[f"Affine{idx}"] = Affine(self.params[f"W{idx}"],  # noqa: F405
                                             self.params[f"b{idx}"])
        self.last_layer = SoftmaxWithLoss()  # noqa: F405

    def predict(self, x, train_flg=False):
        for key, layer in self.layers.items():
            x = layer.forward(x, train_flg) if "BatchNorm" in key else layer.forward(x)
        return x

    def loss(self, x, t, train_flg=False):
        return self.last_layer.forward(self.predict(x, train_flg), t)

    def accuracy(self, x, t):
        return float(np.mean(self.predict(x, train_flg=False).argmax(axis=1) == t))

    def gradient(self, x, t):
        self.loss(x, t, train_flg=True)
        dout = self.last_layer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        grads = {}
        for idx in range(1, self.hidden_layer_num + 2):
            grads[f"W{idx}"] = self.layers[f"Affine{idx}"].dW
            grads[f"b{idx}"] = self.layers[f"Affine{idx}"].db
            if self.use_batchnorm and idx != self.hidden_layer_num + 1:
                grads[f"gamma{idx}"] = self.layers[f"BatchNorm{idx}"].dgamma
                grads[f"beta{idx}"] = self.layers[f"BatchNorm{idx}"].dbeta
        return grads
