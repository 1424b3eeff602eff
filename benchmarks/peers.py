"""Peer optimizers the fused SANER/SAM steps are measured against, written from their published algorithms.

- ``sgd_fused`` / ``sgd_foreach``: ``torch.optim.SGD`` with momentum and weight decay, the speed
  anchor (one read-modify-write pass: 20 bytes/elem in fp32).
- ``SAMLoop``: the widely used SAM wrapper of davda54/sam (Foret et al. 2021, "Sharpness-Aware
  Minimization"), a per-parameter Python loop over a base ``torch.optim.SGD``: ``first_step`` stacks
  per-parameter norms, clones every weight (``old_p``) and perturbs in place; ``second_step`` puts the
  old weights back and calls the base optimizer.
- ``PaperSANERLoop``: SANER (arXiv 2411.17132) as the paper describes it, built on that same wrapper:
  it also keeps ``g_sgd`` per parameter, and in ``second_step`` computes per parameter the ratio
  ``r = g_SAM / (g_SGD + eps)``, the Group B mask ``0 < r < 1``, scales Group B by ``alpha``, and counts
  the group sizes with a per-parameter ``.item()`` (the published loop reads them on the host every
  step: one device sync per parameter on a GPU). Weight decay and momentum are the base SGD's, so
  weight decay comes after the reweighting, as in docs/design.md, "Semantics".

Both loops follow the published code structure; they are baselines, not fast paths.
"""

from __future__ import annotations

import torch


def sgd_fused(params, lr=0.1, momentum=0.9, weight_decay=5e-4):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)


def adamw_fused(params, lr=1e-3, weight_decay=0.05):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def sgd_foreach(params, lr=0.1, momentum=0.9, weight_decay=5e-4):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)


class SAMLoop(torch.optim.Optimizer):
    """davda54/sam-style SAM over a base optimizer (``torch.optim.SGD`` by default)."""

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.1, adaptive=False, **kwargs):
        if rho < 0.0:
            raise ValueError(f"invalid rho {rho}")
        defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._save(p)
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)  # climb to the local maximum "w + e(w)"
        if zero_grad:
            self.zero_grad()

    def _save(self, p):
        self.state[p]["old_p"] = p.data.clone()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]  # get back to "w" from "w + e(w)"
                self._reweight(p)
        self.base_optimizer.step()  # the actual "sharpness-aware" update
        if zero_grad:
            self.zero_grad()

    def _reweight(self, p):
        """SAM steps with the gradient at ``w + e`` as it is (the SANER loop overrides this)."""

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("SAM needs a closure that does a full forward-backward pass")
        closure = torch.enable_grad()(closure)
        self.first_step(zero_grad=True)
        closure()
        self.second_step()

    def _grad_norm(self):
        shared_device = self.param_groups[0]["params"][0].device
        return torch.norm(
            torch.stack(
                [
                    ((torch.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2).to(shared_device)
                    for group in self.param_groups
                    for p in group["params"]
                    if p.grad is not None
                ]
            ),
            p=2,
        )


class PaperSANERLoop(SAMLoop):
    """SANER as a per-parameter loop: SAM plus Group B down-weighting by ``alpha``."""

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho=0.1, alpha=0.5, eps=1e-8, adaptive=False, **kwargs):
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, **kwargs)
        self.alpha, self.eps = alpha, eps
        self.group_counts = [0, 0, 0]  # A, B, C over all steps, read on the host

    def _save(self, p):
        super()._save(p)
        self.state[p]["g_sgd"] = p.grad.clone()

    def _reweight(self, p):
        ratio = p.grad / (self.state[p]["g_sgd"] + self.eps)
        group_a = ratio >= 1
        group_b = (ratio > 0) & (ratio < 1)
        n_a, n_b = group_a.sum().item(), group_b.sum().item()
        self.group_counts[0] += n_a
        self.group_counts[1] += n_b
        self.group_counts[2] += p.numel() - n_a - n_b
        p.grad[group_b] *= self.alpha
