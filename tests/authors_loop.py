"""A per-parameter loop written from the SANER authors' classes (lhchau/saner, ``optimizer/*.py``): the
oracle their classes in saner_kernels are checked against. No buckets, no kernels: the ratio by division,
each class's own masks and boundaries, their SGD momentum (``buf = momentum * buf + d``)."""

from __future__ import annotations

import torch

SANER_KINDS = ("saner", "fsaner", "vassosaner", "gsaner")


def authors_mask(kind: str, group: str, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """The components each class treats: SAMWO bounds Group B by alpha, the others by 1."""
    bound = alpha if kind == "samwo" else 1.0
    if group == "A":
        return r > bound
    if group == "B":
        return (r > 0) & (r < bound)
    if group == "C":
        return r < 0
    return r > 0  # SAMWO's "AB"


class AuthorsLoop:
    def __init__(self, params, kind="saner", rho=0.05, adaptive=False, alpha=0.0, group="B", lr=0.1, momentum=0.9,
                 weight_decay=5e-4, sigma=1.0, lmbda=0.9, theta=0.2, g_alpha=0.01, last_ids=()):  # fmt: skip
        self.params = list(params)
        self.kind, self.rho, self.adaptive, self.alpha, self.group = kind, rho, adaptive, alpha, group
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.sigma, self.lmbda, self.theta, self.g_alpha = sigma, lmbda, theta, g_alpha
        self.last_ids = set(last_ids)
        self.state = {p: {} for p in self.params}

    def set_alpha(self, alpha: float) -> None:
        self.alpha = alpha

    def _norm(self, vectors) -> torch.Tensor:
        scaled = [((p.abs() if self.adaptive else 1.0) * v).double().pow(2).sum() for p, v in vectors]
        return torch.stack(scaled).sum().sqrt()

    @torch.no_grad()
    def first_step(self) -> None:
        directions = []
        for p in self.params:
            st, g = self.state[p], p.grad
            if self.kind == "fsaner":  # the first step is plain SAM; the average is m <- lmbda m + (1 - lmbda) g
                d = g if "m" not in st else g - self.sigma * st["m"]
                st["m"] = g.clone() if "m" not in st else st["m"] * self.lmbda + g * (1 - self.lmbda)
            elif self.kind == "vassosaner":
                st["ema"] = g.clone() if "ema" not in st else st["ema"] * (1 - self.theta) + g * self.theta
                d = st["ema"]
            else:
                d = g
            directions.append((p, d))
        self.n1 = self._norm(directions)
        scale = self.rho / (self.n1 + 1e-12)
        for p, d in directions:
            e = (p * p if self.adaptive else 1.0) * d * scale.to(p.dtype)
            self.state[p].update(e=e, first_grad=p.grad.clone())
            p.add_(e)
            p.grad = None

    @torch.no_grad()
    def second_step(self) -> None:
        if self.kind == "gsaner":  # the decomposition, at w + e
            dot = sum((self.state[p]["first_grad"].double() * p.grad.double()).sum() for p in self.params)
            n2 = self._norm([(p, p.grad) for p in self.params])
            cos = dot / (n2 * self.n1 + 1e-12)
            for p in self.params:
                g1 = self.state[p]["first_grad"]
                p.grad = p.grad - self.g_alpha * (g1 - (cos * self.n1).to(p.dtype) * p.grad / (n2 + 1e-12).to(p.dtype))
        for p in self.params:
            st = self.state[p]
            p.sub_(st.pop("e"))
            g1, g2 = st["first_grad"], p.grad
            if self.kind == "sanerlast":
                if id(p) in self.last_ids:
                    r = g2 / (g1 + 1e-12)
                    d = g2 * torch.ones_like(r).masked_fill((r > 0) & (r < 1), self.alpha)
                else:
                    d = g2
            else:
                mask = authors_mask(self.kind, self.group, g2 / (g1 + 1e-8), self.alpha)
                if self.kind == "samwo":
                    d = g2 * ~mask + g1 * mask
                elif self.kind == "samonly":
                    d = g2 * mask + g1 * ~mask
                else:
                    d = g2 * mask * self.alpha + g2 * ~mask
            d = d + self.weight_decay * p
            st["buf"] = d.clone() if "buf" not in st else st["buf"] * self.momentum + d
            p.sub_(self.lr * st["buf"])
            p.grad = None
