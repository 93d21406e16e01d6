"""Reference parameter sequences for chainrule's optimizer tests.

An independent transcription of the update rules in PyTorch's documentation
(torch.optim.SGD, Adagrad, RMSprop, Adam, AdamW; default options unless given), in
Python floats (f64), on the quadratic f(p) = 0.5 * sum(a_i p_i^2), grad = a * p.
Run: python3 tools/optim_reference.py  (prints the literals used in src/optim/mod.rs)
"""
import math

A = [1.0, 2.0, 0.5]
P0 = [1.0, -2.0, 3.0]
STEPS = 3


def run(update):
    p = list(P0)
    state = {}
    out = []
    for t in range(1, STEPS + 1):
        g = [a * x for a, x in zip(A, p)]
        p = update(p, g, t, state)
        out.append(list(p))
    return out


def sgd(lr, momentum=0.0, nesterov=False, wd=0.0):
    def upd(p, g, t, s):
        g = [gi + wd * pi for gi, pi in zip(g, p)]
        if momentum != 0.0:
            b = g if t == 1 else [momentum * bi + gi for bi, gi in zip(s["b"], g)]
            s["b"] = b
            g = [gi + momentum * bi for gi, bi in zip(g, b)] if nesterov else b
        return [pi - lr * gi for pi, gi in zip(p, g)]
    return upd


def adagrad(lr, eps=1e-10):
    def upd(p, g, t, s):
        s["sum"] = [si + gi * gi for si, gi in zip(s.get("sum", [0.0] * 3), g)]
        return [pi - lr * gi / (math.sqrt(si) + eps) for pi, gi, si in zip(p, g, s["sum"])]
    return upd


def rmsprop(lr, alpha=0.99, eps=1e-8):
    def upd(p, g, t, s):
        s["v"] = [alpha * vi + (1 - alpha) * gi * gi for vi, gi in zip(s.get("v", [0.0] * 3), g)]
        return [pi - lr * gi / (math.sqrt(vi) + eps) for pi, gi, vi in zip(p, g, s["v"])]
    return upd


def adam(lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False):
    def upd(p, g, t, s):
        if decoupled:
            p = [pi * (1 - lr * wd) for pi in p]
        else:
            g = [gi + wd * pi for gi, pi in zip(g, p)]
        s["m"] = [b1 * mi + (1 - b1) * gi for mi, gi in zip(s.get("m", [0.0] * 3), g)]
        s["v"] = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(s.get("v", [0.0] * 3), g)]
        mh = [mi / (1 - b1 ** t) for mi in s["m"]]
        vh = [vi / (1 - b2 ** t) for vi in s["v"]]
        return [pi - lr * m / (math.sqrt(v) + eps) for pi, m, v in zip(p, mh, vh)]
    return upd


CASES = {
    "sgd": sgd(0.1),
    "momentum": sgd(0.1, momentum=0.9),
    "nesterov_wd": sgd(0.1, momentum=0.9, nesterov=True, wd=0.01),
    "adagrad": adagrad(0.1),
    "rmsprop": rmsprop(0.01),
    "adam": adam(0.1),
    "adam_l2": adam(0.1, wd=0.1),
    "adamw": adam(0.1, wd=0.1, decoupled=True),
}

for name, upd in CASES.items():
    print(f"{name}: {[[float(f'{v:.17g}') for v in row] for row in run(upd)]}")
