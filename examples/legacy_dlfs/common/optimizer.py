"""The book's optimiser interface: ``update(params, grads)`` changes the arrays in place."""


class SGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for key in params:
            params[key] -= self.lr * grads[key]
