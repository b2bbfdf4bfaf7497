"""Latent actions against the true actions recorded in the data (evaluation only, never training).

- the confusion matrix C[latent, true] of transition counts;
- the best one-to-one mapping latent -> true (the assignment that maximises matched counts, solved
  exactly with the Hungarian algorithm, Kuhn 1955 / Munkres 1957) and its accuracy; with more true
  actions than latent ones (CoinRun: 15 vs 8) some true actions stay unmatched and count as wrong;
- normalised mutual information NMI = I(L; A) / sqrt(H(L) H(A)) (Strehl & Ghosh 2002), in [0, 1];
- a linear probe: a multinomial logistic regression on the LAM's frozen pooled features, trained on
  one half of the episodes and scored on the other (the DeCAF recipe, Donahue et al. 2014);
- key classes: true actions a game cannot tell apart counted as one (``--merge A=B,...`` of the benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def key_classes(merge: str, num_keys: int) -> tuple[list[int], np.ndarray]:
    """``merge`` "A=B,C=D" (key A counts as key B, ...) over keys 0..num_keys-1 -> (the keys that stand for
    a class, ascending; (num_keys,) the class index of every key)."""
    pairs: dict[int, int] = {}
    for item in filter(None, merge.split(",")):
        a, sep, b = item.partition("=")
        if not (sep and a.strip().isdigit() and b.strip().isdigit()):
            raise ValueError(f"merge {merge!r}: {item!r} is not KEY=KEY")
        pairs[int(a)] = int(b)
    out_of_range = sorted(k for kv in pairs.items() for k in kv if k >= num_keys)
    if out_of_range:
        raise ValueError(f"merge {merge!r}: keys {out_of_range} are not in the {num_keys} recorded actions")
    kept = sorted({pairs.get(a, a) for a in range(num_keys)})
    return kept, np.array([kept.index(pairs.get(a, a)) for a in range(num_keys)], dtype=np.int64)


def confusion(latent: np.ndarray, true: np.ndarray, num_latent: int, num_true: int) -> np.ndarray:
    """latent, true: (N,) ints -> counts (num_latent, num_true)."""
    latent, true = np.asarray(latent).ravel(), np.asarray(true).ravel()
    if latent.shape != true.shape:
        raise ValueError(f"latent {latent.shape} and true {true.shape} actions differ in shape")
    for name, x, k in (("latent", latent, num_latent), ("true", true, num_true)):
        if x.size and (x.min() < 0 or x.max() >= k):
            raise ValueError(f"{name} actions must lie in [0, {k}), got {x.min()}..{x.max()}")
    out = np.zeros((num_latent, num_true), dtype=np.int64)
    np.add.at(out, (latent, true), 1)
    return out


def assignment(score: np.ndarray) -> list[tuple[int, int]]:
    """Maximum-score one-to-one assignment of rows to columns of ``score`` (R, C): min(R, C) pairs
    (row, col), sorted by row. Hungarian algorithm with potentials, O(min^2 max)."""
    score = np.asarray(score, dtype=np.float64)
    transposed = score.shape[0] > score.shape[1]
    cost = -(score.T if transposed else score)  # n rows <= m columns, minimise
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    match = np.zeros(m + 1, dtype=np.int64)  # match[j] = row (1-based) assigned to column j; 0 = none
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        match[0], j0 = i, 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = match[j0]
            cur = cost[i0 - 1] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            j1 = int(np.argmin(np.where(free, minv[1:], np.inf))) + 1
            delta = minv[j1]
            u[match[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    pairs = [(int(match[j]) - 1, j - 1) for j in range(1, m + 1) if match[j]]
    pairs = [(c, r) for r, c in pairs] if transposed else pairs
    return sorted(pairs)


def best_mapping(conf: np.ndarray) -> tuple[dict[int, int], float]:
    """conf (L, A) -> ({latent: true} of the best one-to-one mapping, its accuracy)."""
    total = conf.sum()
    if total == 0:
        raise ValueError("best_mapping: the confusion matrix is empty")
    pairs = assignment(conf)
    return dict(pairs), float(sum(conf[r, c] for r, c in pairs) / total)


def nmi(conf: np.ndarray) -> float:
    """Normalised mutual information (geometric mean normalisation) of a confusion matrix; 1 if both
    variables are the same partition, 0 if independent. Defined as 0 when either is constant."""
    p = conf / conf.sum()
    pl, pa = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pl, pa)[nz])).sum())
    hl = -float((pl[pl > 0] * np.log(pl[pl > 0])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    return 0.0 if hl <= 0 or ha <= 0 else max(0.0, min(1.0, mi / np.sqrt(hl * ha)))


@dataclass
class ProbeResult:
    """correct: (N_test,) 0/1 per held-out transition; groups: (N_test,) episode of each (for the
    bootstrap); majority: accuracy of always answering the most common training action."""

    correct: np.ndarray
    groups: np.ndarray
    majority: float


def linear_probe(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int, *,
                 seed: int, steps: int = 300, weight_decay: float = 1e-3) -> ProbeResult:
    """Train a linear classifier on the frozen ``features`` (N, D) of half of the ``groups`` (episodes)
    and score it on the other half. Features are standardised with the training half's statistics."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError(f"linear probe needs transitions from >= 2 episodes, got {len(uniq)}")
    test_groups = rng.permutation(uniq)[: len(uniq) // 2]
    is_test = np.isin(groups, test_groups)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    tr, te = torch.as_tensor(~is_test), torch.as_tensor(is_test)
    mu, sd = x[tr].mean(0), x[tr].std(0).clamp_min(1e-6)
    x = (x - mu) / sd
    gen = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.normal_(lin.weight, std=0.01, generator=gen)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(x[tr]), y[tr]) + weight_decay * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = lin(x[te]).argmax(-1)
    majority = int(torch.bincount(y[tr], minlength=num_classes).argmax())
    return ProbeResult(correct=(pred == y[te]).numpy().astype(np.float64), groups=np.asarray(groups)[is_test],
                       majority=float((y[te] == majority).float().mean()))
