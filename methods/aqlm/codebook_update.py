"""AQLM's codebook step: Adam on the codebooks and scales with hand-written gradients of E.

Notation as in `methods.aqlm.algorithm`: W [out, in] float32, H [in, in], g = in_group_size,
G = in / g, Ŵ = s ⊙ B, E(Ŵ) = tr((Ŵ-W) H (Ŵ-W)ᵀ).

Cost: the gradient of E is 2 (Ŵ-W) H, so one [out,in]x[in,in] matmul per Adam step gives E's
gradient for the codebooks (a sum by code: one sparse product, as CPU scatter-adds are ~10x
slower) and for the scales (a row sum); autograd would need three matmuls. That matmul is
60-83% of a layer at the paper settings and has no cheaper exact form while the scales move
every step (the code co-occurrence form of the quadratic term costs out·in², the same), see
bench/results/paper_settings_speed.md.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["code_matrix", "codebook_adam_steps", "error_gradients", "reconstruct"]

def reconstruct(
    codebooks: Sequence[torch.Tensor], codes: Sequence[torch.Tensor],
    groups: Sequence[torch.Tensor | None], out: int, n_groups: int,
) -> torch.Tensor:
    """B [out, G, g] = Σ_m C_m[codes_m] placed at the groups each codebook covers."""
    g = codebooks[0].shape[1]
    B = None
    for C, c, grp in zip(codebooks, codes, groups):
        if grp is None:
            B = F.embedding(c, C) if B is None else B.add_(F.embedding(c, C))
        else:
            if B is None:
                B = torch.zeros(out, n_groups, g, dtype=C.dtype, device=C.device)
            B[:, grp] += F.embedding(c, C)
    return B


def code_matrix(codes: torch.Tensor, groups: torch.Tensor | None, n_groups: int, K: int) -> torch.Tensor:
    """Sparse CSR [K, out*G] with a 1 at (code, o*G + j) for every vector (o, j) of a codebook.

    `S @ X` sums the rows of X [out*G, d] by code: the codebook gradient in one sparse product
    (CPU scatter-adds are an order of magnitude slower). codes: int64 [out, G_m].
    """
    out, dev = codes.shape[0], codes.device
    cols = torch.arange(n_groups, device=dev) if groups is None else groups
    cols = (torch.arange(out, device=dev)[:, None] * n_groups + cols[None, :]).reshape(-1)
    rows = codes.reshape(-1)
    order = torch.argsort(rows, stable=True)
    crow = torch.zeros(K + 1, dtype=torch.long, device=dev)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=K), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow, cols[order], torch.ones(rows.numel(), device=dev), size=(K, out * n_groups),
            check_invariants=False,
        )


def error_gradients(
    W: torch.Tensor, H: torch.Tensor, codebooks: Sequence[torch.Tensor], codes: Sequence[torch.Tensor],
    groups: Sequence[torch.Tensor | None], scales: torch.Tensor, mats: Sequence[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of E w.r.t. the codebooks and the scales, by hand (one matmul with H).

    dE/dŴ = 2 (Ŵ-W) H = 2P; dE/ds_o = Σ_i 2P_oi B_oi; dE/dC_m[k] = Σ_{(o,j) with code k}
    2 s_o P_{o, group j}. mats: `code_matrix` of each codebook (built here if None).
    Returns (codebook gradients [K_m, g], scale gradient [out], P [out, in], B [out, in]).
    """
    out, n_in = W.shape
    n_groups = n_in // codebooks[0].shape[1]
    if mats is None:
        mats = [code_matrix(c, grp, n_groups, C.shape[0]) for C, c, grp in zip(codebooks, codes, groups)]
    B = reconstruct(codebooks, codes, groups, out, n_groups).view(out, n_in)
    P = (scales[:, None] * B).sub_(W) @ H  # (Ŵ - W) H
    grad_s = torch.linalg.vecdot(P, B).mul_(2.0)
    gB = (P * (2.0 * scales[:, None])).view(out * n_groups, -1)
    return [S @ gB for S in mats], grad_s, P, B


@torch.no_grad()
def codebook_adam_steps(
    W: torch.Tensor, H: torch.Tensor, codebooks: list[torch.Tensor], codes: Sequence[torch.Tensor],
    groups: Sequence[torch.Tensor | None], scales: torch.Tensor, optimizer: torch.optim.Optimizer,
    steps: int,
) -> None:
    """`steps` Adam steps on `codebooks` and `scales` (float32 leaf tensors, updated in
    place) minimising E, with the gradients of `error_gradients`; `optimizer` is a
    `torch.optim.Adam` over exactly those tensors. W: [out, in] float32; H: [in, in] float32.

    The Adam budget per epoch is about steps x lr per coordinate (beta1 = 0): 25 x 4e-4 gives
    the errors of the paper's 100 x 1e-4 (within their seed spread) in a quarter of the steps,
    see bench/results/paper_settings_speed.md (section 4).
    """
    n_groups = W.shape[1] // codebooks[0].shape[1]
    mats = [code_matrix(c, grp, n_groups, C.shape[0]) for C, c, grp in zip(codebooks, codes, groups)]
    for _ in range(steps):
        grads, scales.grad, _, _ = error_gradients(W, H, codebooks, codes, groups, scales, mats)
        for C, grad in zip(codebooks, grads):
            C.grad = grad
        optimizer.step()
