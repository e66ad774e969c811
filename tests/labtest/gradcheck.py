"""A float64 directional-derivative check whose bound holds on any machine.

ComfyUI hands the model output back in float32 (`BaseModel._apply_model` ends in `.float()`),
so even with float64 weights the loss carries float32 rounding. The bound is derived from it:

- each output element p is off by at most u·|p| (u = 2⁻²⁴, float32's unit roundoff), so a loss
  value is off by at most R = u·Σ|∂L/∂p|·|p| (first order), and the central difference
  (L₊ − L₋)/(2ε) by (R₊ + R₋)/(2ε);
- the central difference's truncation error (ε²/6·L‴) is estimated from a second difference at 2ε
  (D(2ε) − D(ε) ≈ 3·(its error)), plus that estimate's own rounding;
- autograd's derivative passes ∂L/∂p through the float32 cast back, so each term is off by
  u·|∂L/∂p|·|Jd| (Jd from the differences of the outputs).

The check asserts |analytic − numeric| ≤ bound and bound ≤ 0.5% of |numeric|: then a gradient
1% off always fails (|1.01·a − n| ≥ 1%·|n| − bound ≥ bound)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

U32 = 2.0 ** -24
DETECTS = 0.005  # the bound may be at most this fraction of the derivative


@dataclass
class Check:
    analytic: float
    numeric: float
    bound: float

    @property
    def error(self) -> float:
        return abs(self.analytic - self.numeric)

    def __str__(self) -> str:
        return (f"analytic {self.analytic!r}, numeric {self.numeric!r}, |difference| {self.error:.3g}, "
                f"derived bound {self.bound:.3g} ({self.bound / abs(self.numeric):.2g} relative)")


def _loss_rounding(loss_fn, pred: torch.Tensor) -> tuple[float, torch.Tensor]:
    p = pred.detach().double().requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(p), p)
    return U32 * float((g.abs() * p.detach().abs()).sum()), g


def directional_check(predict, loss_fn, params, direction, eps: float) -> Check:
    """`predict()` runs the model (float64 weights) and returns its output; `loss_fn(pred)` the
    float64 loss. Returns the autograd and finite-difference derivatives along `direction` and the
    bound their difference must stay within."""
    for p in params:
        p.grad = None
    pred = predict()
    loss_fn(pred.double()).backward()
    # A parameter the loss never reaches has no .grad: its derivative is 0 (e.g. Qwen-Image's last
    # block's text-stream MLP, whose output the model discards); the finite difference agrees.
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, direction) if p.grad is not None)

    def shifted(h: float):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(h * d)
            out = predict().double()
            for p, d in zip(params, direction):
                p.sub_(h * d)
        return out

    diffs, rounding = {}, {}
    for h in (eps, 2 * eps):
        plus, minus = shifted(h), shifted(-h)
        r_plus, _ = _loss_rounding(loss_fn, plus)
        r_minus, _ = _loss_rounding(loss_fn, minus)
        diffs[h] = (float(loss_fn(plus)) - float(loss_fn(minus))) / (2 * h)
        rounding[h] = (r_plus + r_minus) / (2 * h)
        if h == eps:
            jd = (plus - minus) / (2 * h)
    _, g = _loss_rounding(loss_fn, pred)
    backward_rounding = U32 * float((g.abs() * jd.abs()).sum())
    truncation = (abs(diffs[2 * eps] - diffs[eps]) + rounding[eps] + rounding[2 * eps]) / 3
    return Check(analytic, diffs[eps], rounding[eps] + truncation + backward_rounding)


def assert_sound(check: Check) -> None:
    assert check.bound <= DETECTS * abs(check.numeric), f"bound too loose to catch a 1% error: {check}"
    assert check.error <= check.bound, f"gradient off: {check}"
