"""Oracles written straight from docs/design.md, "Semantics", one parameter at a time, no buckets, no kernels.

``PlainLoopSANER`` is the per-parameter SANER the whole package is checked against (its Group B mask
uses the division ``r = g / (g_sgd + eps)`` exactly as written); ``davda54_sam_step`` is the classic
SAM loop: clone the weights, perturb, second backward, restore the clone, ``torch.optim.SGD.step``.

The SAM family (a group's ``variant``: fsam, vasso, gsam) is written the way the SANER authors' classes
write it (lhchau/saner, ``optimizer/fsaner.py``, ``vassosaner.py``, ``gsaner.py``): the average is
updated in the first step, GSAM's decomposition happens at ``w + e`` before the weights are restored.
"""

from __future__ import annotations

import torch


class PlainLoopSANER:
    def __init__(self, param_groups: list[dict]):
        self.param_groups = param_groups  # dicts with params and every hyperparameter
        self.state: dict[torch.Tensor, dict] = {}
        self.counts = [0, 0, 0]  # Groups A, B, C of the last second_step

    @torch.no_grad()
    def first_step(self):
        sq = 0.0
        directions = {}
        for group in self.param_groups:
            variant = group.get("variant", "sam")
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state.setdefault(p, {})
                g = p.grad
                if variant == "fsam":
                    if "m" not in st:  # the first step is plain SAM
                        st["m"], d = g.clone(), g
                    else:
                        d = g - group["sigma"] * st["m"]
                        st["m"] = st["m"] * group["lmbda"] + g * (1 - group["lmbda"])
                elif variant == "vasso":
                    st["ema"] = g.clone() if "ema" not in st else (1 - group["theta"]) * st["ema"] + group["theta"] * g
                    d = st["ema"]
                else:
                    d = g
                directions[p] = d
                scaled = (p.abs() if group["adaptive"] else 1.0) * d
                sq = sq + scaled.double().pow(2).sum()  # N accumulated in fp64: no summation-order noise
        norm = torch.as_tensor(sq).sqrt()
        self.n1 = norm
        for group in self.param_groups:
            s = (group["rho"] / (norm + 1e-12)).to(
                torch.float64 if group["params"][0].dtype == torch.float64 else torch.float32
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = (p * p if group["adaptive"] else 1.0) * directions[p] * s
                st = self.state[p]
                st["e"], st["g_sgd"] = e, p.grad.clone()
                p.add_(e)
                p.grad = None

    @torch.no_grad()
    def _gsam_decompose(self):
        """GSAM at w + e: g2 <- g2 - alpha * (g1 - cos * n1 * g2 / (n2 + 1e-12)), over every parameter."""
        live = [(g, p) for g in self.param_groups for p in g["params"] if "e" in self.state.get(p, {})]
        grads = {p: (p.grad if p.grad is not None else torch.zeros_like(p)) for _, p in live}
        dot = sum((self.state[p]["g_sgd"].double() * grads[p].double()).sum() for _, p in live)
        n2 = torch.as_tensor(
            sum(((p.abs() if g["adaptive"] else 1.0) * grads[p]).double().pow(2).sum() for g, p in live)
        ).sqrt()
        n1 = self.n1
        cos = dot / (n2 * n1 + 1e-12)
        for g, p in live:
            k = (cos * n1).to(p.dtype)
            p.grad = grads[p] - g["gsam_alpha"] * (self.state[p]["g_sgd"] - k * grads[p] / (n2 + 1e-12).to(p.dtype))

    @torch.no_grad()
    def second_step(self, base_optimizer=None, clip_max_norm=None):
        """``base_optimizer``: a torch optimizer over the same parameters, stepped on the reweighted gradient
        (weight decay and momentum are then its own). ``clip_max_norm``: the update is scaled by torch's clip
        coefficient of the second gradients, the mask compares the unclipped ones."""
        self.counts = [0, 0, 0]
        coef = 1.0
        if clip_max_norm is not None:
            g2 = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g2]))
            # applied as an fp32 factor, as the update applies GradScaler's 1/scale (docs/design.md, "Numerics")
            coef = torch.clamp(clip_max_norm / (total + 1e-6), max=1.0).float().to(total.dtype)
        if any(g.get("variant") == "gsam" for g in self.param_groups):
            self._gsam_decompose()
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st is None or "e" not in st:
                    continue
                p.sub_(st.pop("e"))
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                # A clip coefficient scales both gradients: the ratio, so the mask, is the unclipped one's.
                g, g_sgd = g * coef, st["g_sgd"] * coef
                r = g / (g_sgd + group["ratio_eps"])
                m = (r > 0) & (r < 1)
                self.counts = [
                    self.counts[0] + int((r >= 1).sum()),
                    self.counts[1] + int(m.sum()),
                    self.counts[2] + int((r <= 0).sum()),
                ]
                d = torch.where(m, group["alpha"] * g, g)
                if base_optimizer is not None:
                    p.grad = d
                    continue
                # weight decay and momentum exactly as torch.optim.SGD writes them
                d = d.add(p, alpha=group["weight_decay"])
                mu, tau = group["momentum"], group["dampening"]
                if mu != 0:
                    if "buf" not in st:
                        st["buf"] = d.clone()
                    else:
                        st["buf"].mul_(mu).add_(d, alpha=1 - tau)
                    d = d.add(st["buf"], alpha=mu) if group["nesterov"] else st["buf"]
                p.add_(d, alpha=-group["lr"])
                p.grad = None
        if base_optimizer is not None:
            base_optimizer.step()
            base_optimizer.zero_grad(set_to_none=True)


def davda54_sam_step(model_params, sgd: torch.optim.SGD, rho: float, closure) -> None:
    """One SAM step as davda54/sam does it (gradients at w already in .grad)."""
    params = [p for p in model_params if p.grad is not None]
    with torch.no_grad():
        norm = torch.stack([p.grad.double().pow(2).sum() for p in params]).sum().sqrt()
        scale = (rho / (norm + 1e-12)).float()
        old = [p.clone() for p in params]
        for p in params:
            p.add_(p.grad * scale)
    for p in params:
        p.grad = None
    closure()
    with torch.no_grad():
        for p, o in zip(params, old):
            p.copy_(o)
    sgd.step()
