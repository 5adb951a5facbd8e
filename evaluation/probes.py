"""Frozen-feature probes: k-NN and linear (multinomial logistic regression), fitted in torch.

Every function takes *stacked* features: ``(G, N, D)`` for G feature sets (one per layer, say) of the
same N examples, so the probes of all layers are computed together on the device the features live on.
Labels are ``(N,)`` class ids. All of it is deterministic: the only randomness (the held-out split that
picks the L2 strength) comes from an explicitly seeded generator.

- :func:`knn_predict` — cosine k-NN with similarity-weighted votes (``exp(sim / T)``, as in DINO and
  solo-learn's online k-NN) on features centred by the training mean.
- :func:`linear_probe` — multinomial logistic regression on standardised features; the L2 strength is
  chosen per feature set on a seeded 80/20 split of the training set from a small grid, then the
  probe is refitted on the whole training set. Full-batch L-BFGS with a fixed iteration budget.
- :func:`weighted_layer_probe` — the SUPERB convention: a learned softmax-weighted sum over layers
  followed by a linear classifier, trained jointly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: L2 strengths tried by the linear probe (on standardised features, loss = mean CE + l2 * |W|^2)
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
KNN_TEMPERATURE = 0.07


def standardise(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6):
    """Scale every feature to zero mean and unit variance with the training statistics (dim -2 is the
    example axis); returns the standardised training features followed by the others."""
    mean = train.mean(dim=-2, keepdim=True)
    std = train.std(dim=-2, keepdim=True, unbiased=False).clamp_min(eps)
    return ((train - mean) / std, *((x - mean) / std for x in others))


# --------------------------------------------------------------------------------------------------
# k-NN


@torch.no_grad()
def knn_predict(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted classes ``(G, M)`` of the test examples by cosine k-NN.

    Features are centred by the training mean (mean-pooled transformer features share a large common
    direction that would otherwise make every cosine close to 1) and L2-normalised. Each of the ``k``
    most similar training examples votes for its class with weight ``exp(sim / temperature)``; the
    class with the largest total wins (ties: the lower class id).
    """
    squeeze = train.dim() == 2
    if squeeze:
        train, test = train.unsqueeze(0), test.unsqueeze(0)
    train, test = train.float(), test.float()
    mean = train.mean(dim=1, keepdim=True)
    train = F.normalize(train - mean, dim=-1)
    test = F.normalize(test - mean, dim=-1)
    k = min(k, train.shape[1])
    labels = train_labels.to(train.device).long()
    predictions = []
    for start in range(0, test.shape[1], chunk_size):
        sims = torch.einsum("gmd,gnd->gmn", test[:, start : start + chunk_size], train)
        top, index = sims.topk(k, dim=-1)
        votes = torch.zeros(*top.shape[:2], num_classes, device=train.device, dtype=top.dtype)
        votes.scatter_add_(-1, labels[index], (top / temperature).exp())
        predictions.append(votes.argmax(dim=-1))
    result = torch.cat(predictions, dim=1)
    return result[0] if squeeze else result


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions along the last axis (``(G, M)`` → ``(G,)``)."""
    return (predictions == labels.to(predictions.device)).float().mean(dim=-1)


def knn_accuracy(train, train_labels, test, test_labels, num_classes: int, k: int = 20, **kwargs):
    """k-NN accuracy per feature set (see :func:`knn_predict`)."""
    return accuracy(knn_predict(train, train_labels, test, num_classes, k, **kwargs), test_labels)


# --------------------------------------------------------------------------------------------------
# Linear probe


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: torch.Tensor,
    max_iter: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``G x K`` independent multinomial logistic regressions at once.

    ``features`` ``(G, N, D)`` (already standardised), ``l2`` ``(K,)`` strengths: problem (g, k) fits
    feature set g with strength ``l2[k]``. The objectives are separable, so one full-batch L-BFGS run
    on their sum reaches every problem's own (unique, the objective being strictly convex) optimum.
    Starts from zero weights; returns ``W`` ``(G, K, D, C)`` and ``b`` ``(G, K, C)``.
    """
    g, n, d = features.shape
    x = features.float()
    l2 = l2.to(x.device, x.dtype)
    weight = torch.zeros(g, len(l2), d, num_classes, device=x.device, requires_grad=True)
    bias = torch.zeros(g, len(l2), num_classes, device=x.device, requires_grad=True)
    targets = labels.to(x.device).long().expand(g, len(l2), n)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        logits = torch.einsum("gnd,gkdc->gknc", x, weight) + bias[:, :, None, :]
        loss = F.cross_entropy(logits.reshape(-1, num_classes), targets.reshape(-1), reduction="none")
        loss = loss.view(g, len(l2), n).mean(-1) + l2 * weight.square().sum(dim=(-2, -1))
        total = loss.sum()
        total.backward()
        return total

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def predict_logistic(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Class predictions ``(G, K, M)`` of fitted probes for features ``(G, M, D)``."""
    return (torch.einsum("gmd,gkdc->gkmc", features.float(), weight) + bias[:, :, None, :]).argmax(-1)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, held-out): ``fraction`` of every class (at least one example of a class with two
    or more) held out, drawn with a generator seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    fit, held = [], []
    for cls in labels.unique().tolist():
        index = (labels == cls).nonzero().flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        count = int(round(fraction * len(index)))
        count = max(count, 1) if len(index) > 1 else 0
        held.append(index[:count])
        fit.append(index[count:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


@dataclass
class LinearProbeResult:
    """Per feature set: test accuracy ``(G,)``, the chosen L2 strength ``(G,)`` and test predictions."""

    accuracy: torch.Tensor
    l2: torch.Tensor
    predictions: torch.Tensor


def linear_probe(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    max_iter: int = 100,
    l2_grid: tuple[float, ...] = L2_GRID,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> LinearProbeResult:
    """Linear-probe test accuracy of every feature set ``(G, N, D)``.

    Features are standardised with the training statistics. The L2 strength of each feature set is the
    grid value with the best accuracy on a seeded, stratified held-out ``validation_fraction`` of the
    training set (ties: the stronger regularisation); the probe is then refitted on all training
    examples with it and evaluated once on the test set.
    """
    squeeze = train.dim() == 2
    if squeeze:
        train, test = train.unsqueeze(0), test.unsqueeze(0)
    train_labels, test_labels = train_labels.to(train.device), test_labels.to(train.device)
    grid = torch.tensor(l2_grid, dtype=torch.float32)
    if len(l2_grid) > 1:
        fit, held = stratified_split(train_labels, validation_fraction, seed)
        fit, held = fit.to(train.device), held.to(train.device)
        x_fit, x_held = standardise(train[:, fit], train[:, held])
        weight, bias = fit_logistic_regression(x_fit, train_labels[fit], num_classes, grid, max_iter)
        held_accuracy = accuracy(predict_logistic(x_held, weight, bias), train_labels[held])  # (G, K)
        # the last maximum of the reversed grid = the strongest regularisation among the best
        best = len(l2_grid) - 1 - held_accuracy.flip(-1).argmax(-1)
        chosen = grid.to(train.device)[best]
    else:
        chosen = grid.to(train.device).expand(train.shape[0])
    x_train, x_test = standardise(train, test)
    # refit each set with its own strength: one problem per set (K = 1), strengths differ per set
    fitted = []
    for strength in chosen.unique().tolist():
        sets = (chosen == strength).nonzero().flatten()
        w, b = fit_logistic_regression(
            x_train[sets], train_labels, num_classes, torch.tensor([strength]), max_iter
        )
        fitted.append((sets, w[:, 0], b[:, 0]))
    weight = torch.zeros(train.shape[0], train.shape[-1], num_classes, device=train.device)
    bias = torch.zeros(train.shape[0], num_classes, device=train.device)
    for sets, w, b in fitted:
        weight[sets], bias[sets] = w, b
    predictions = predict_logistic(x_test, weight[:, None], bias[:, None])[:, 0]
    result = LinearProbeResult(accuracy(predictions, test_labels), chosen.cpu(), predictions)
    if squeeze:
        result = LinearProbeResult(result.accuracy[0], result.l2[0], result.predictions[0])
    return result


# --------------------------------------------------------------------------------------------------
# SUPERB-style weighted sum over layers


@dataclass
class WeightedLayerResult:
    """Test accuracy of the weighted-sum probe, the learned layer weights (softmax) and its L2."""

    accuracy: float
    layer_weights: list[float]
    l2: float


def _fit_weighted(x, labels, num_classes, l2, max_iter):
    layers, n, d = x.shape
    logits_w = torch.zeros(layers, device=x.device, requires_grad=True)
    weight = torch.zeros(d, num_classes, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [logits_w, weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        mixed = torch.einsum("l,lnd->nd", logits_w.softmax(0), x)
        loss = F.cross_entropy(mixed @ weight + bias, labels) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return logits_w.detach().softmax(0), weight.detach(), bias.detach()


def _predict_weighted(x, params):
    layer_weights, weight, bias = params
    return (torch.einsum("l,lnd->nd", layer_weights, x) @ weight + bias).argmax(-1)


def weighted_layer_probe(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    max_iter: int = 100,
    l2_grid: tuple[float, ...] = L2_GRID,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> WeightedLayerResult:
    """SUPERB's frozen-upstream convention on pooled features ``(L, N, D)`` (every layer the same
    width): each layer standardised, mixed by learned softmax weights (initialised uniform), then a
    linear classifier; weights and classifier trained jointly with L-BFGS from a fixed start. The L2
    strength is chosen on a seeded held-out split as in :func:`linear_probe`."""
    train_labels, test_labels = train_labels.to(train.device).long(), test_labels.to(train.device).long()
    best_l2, best_accuracy = l2_grid[-1], -1.0
    if len(l2_grid) > 1:
        fit, held = stratified_split(train_labels, validation_fraction, seed)
        fit, held = fit.to(train.device), held.to(train.device)
        x_fit, x_held = standardise(train[:, fit], train[:, held])
        for l2 in reversed(l2_grid):  # strongest first: ties keep the stronger regularisation
            params = _fit_weighted(x_fit, train_labels[fit], num_classes, l2, max_iter)
            held_accuracy = float(accuracy(_predict_weighted(x_held, params), train_labels[held]))
            if held_accuracy > best_accuracy:
                best_l2, best_accuracy = l2, held_accuracy
    x_train, x_test = standardise(train, test)
    params = _fit_weighted(x_train, train_labels, num_classes, best_l2, max_iter)
    test_accuracy = float(accuracy(_predict_weighted(x_test, params), test_labels))
    return WeightedLayerResult(test_accuracy, params[0].cpu().tolist(), best_l2)
