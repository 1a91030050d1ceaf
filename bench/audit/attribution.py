"""What a reward rewards and penalises: per-token weights (refit, bag-of-tokens tasks) or per-word effects (from
stored per-item rewards, any task), the ground truth's side of each, and their agreement.

Two attributions, chosen by what the stored run allows:

* **token probe (refit)**: when the task's encoder is bag-of-tokens counts (`synthetic`), each trial's reward is
  refitted (`fit_reward`, deterministic: the refit's test rewards are checked against the stored ones) and probed:
  w_t = r̂(x, "t") − r̂(x, ""), the reward of the one-token completion over the empty one, at the first test prompt.
  For a linear head over counts this is exactly the head's weight of token t; the ground truth is probed the same
  way (for the synthetic R* it gives θ_t exactly). Agreement: precision@K of the K most penalised (most negative)
  tokens, and Spearman ρ over the whole vocabulary.
* **word effects (stored rewards)**: when refitting is not possible from what is stored (the detox encoder needs a
  frozen LM and a features table that the committed results do not carry), each seed's stored rewards of the
  scored items (the held-out pool where the task has one, else the test split: bench/audit/evidence.py) are
  per-prompt centred and z-scored over those items, and a word's effect is the mean z of the completions that
  contain it minus the mean z of those that do not (words: lower-cased `\\w\\w+` tokens, English stop words
  dropped, present in at least `min_count` completions and absent from at least as many). This needs no model, but
  it is correlational: words that co-occur with toxic words inherit their effect, and with few bad items the
  ranking is noisy. The same effects are computed on R* itself (the attribution's own ceiling), and, when R* is
  alt-profanity-check, the judge's own word weights give a model-level reference (`profanity_weights`).
"""

from __future__ import annotations

import re

import numpy as np

from bench.audit.pairs import standardised
from bench.audit.seeds import over_seeds
from bench.scoring.metrics import centre_per_prompt, spearman
from bench.scoring.worlds import token_counts

WORD = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern, the one alt-profanity-check uses


def probe_token_weights(reward, prompt: str, vocab: list[str]) -> np.ndarray:
    """w_t = r̂(prompt, "t") − r̂(prompt, "") for every token t of `vocab` (see the module docstring)."""
    scores = np.asarray(reward.score([prompt] * (len(vocab) + 1), [""] + list(vocab)), dtype=float)
    return scores[1:] - scores[0]


def most_penalised(weights: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most negative weights, most negative first (ties by index)."""
    return np.argsort(weights, kind="stable")[:k]


def precision_at_k(weights: np.ndarray, reference: np.ndarray, k: int) -> float:
    """Share of the k most penalised entries of `weights` that are among the k most penalised of `reference`."""
    k = min(k, len(weights))
    return len(set(most_penalised(weights, k).tolist()) & set(most_penalised(reference, k).tolist())) / k


def agreement(per_seed_weights: list[np.ndarray], reference: np.ndarray, k: int) -> dict:
    """precision@k and Spearman ρ of each seed's weights with the reference, each as an estimate over seeds."""
    # a constant weight vector ranks nothing: it gets no precision (not the index order's accidental one)
    return {"precision_at_k": over_seeds([precision_at_k(w, reference, k) if np.ptp(w) > 0 else None
                                          for w in per_seed_weights]),
            "spearman": over_seeds([spearman(w, reference) if np.ptp(w) > 0 else None for w in per_seed_weights])}


def least_squares_weights(reward: np.ndarray, prompt_ids: np.ndarray, texts: list[str], vocab: list[str]) -> np.ndarray:
    """Token weights w minimising ‖centred r̂ − centred counts · w‖ over the items (per-prompt centring of both
    absorbs any per-prompt shift): exact for a reward linear in token counts, up to a common shift of all weights
    when every completion has the same length (the minimum-norm solution is taken; ranks are unaffected)."""
    counts = token_counts(texts, vocab)
    ids = np.unique(prompt_ids, return_inverse=True)[1]
    means = np.zeros((ids.max() + 1, len(vocab)))
    np.add.at(means, ids, counts)
    centred = counts - (means / np.bincount(ids)[:, None])[ids]
    return np.linalg.lstsq(centred, centre_per_prompt(reward, prompt_ids), rcond=None)[0]


def standardised_weights(weights: np.ndarray) -> np.ndarray:
    sd = weights.std()
    return (weights - weights.mean()) / sd if sd > 0 else np.zeros_like(weights)


# ------------------------------------------------------------------------------------ word effects (stored rewards)


def stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS  # scikit-learn is heavy; only this view needs it

    return frozenset(ENGLISH_STOP_WORDS)


def words_of(text: str, stop: frozenset[str]) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in stop}


def presence(texts: list[str], min_count: int) -> tuple[list[str], np.ndarray]:
    """(candidate words, boolean matrix items × words): words in ≥ min_count texts and absent from ≥ min_count."""
    stop = stop_words()
    bags = [words_of(t, stop) for t in texts]
    counts: dict[str, int] = {}
    for bag in bags:
        for w in bag:
            counts[w] = counts.get(w, 0) + 1
    vocab = sorted(w for w, n in counts.items() if min_count <= n <= len(texts) - min_count)
    column = {w: j for j, w in enumerate(vocab)}
    matrix = np.zeros((len(texts), len(vocab)), dtype=bool)
    for i, bag in enumerate(bags):
        for w in bag:
            if w in column:
                matrix[i, column[w]] = True
    return vocab, matrix


def word_effects(reward: np.ndarray, prompt_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Per candidate word: mean standardised r̂ of the items containing it − mean of the items without it."""
    z = standardised(reward, prompt_ids)
    with_word = matrix.sum(axis=0)
    mean_with = (z @ matrix) / with_word
    mean_without = (z.sum() - z @ matrix) / (len(z) - with_word)
    return mean_with - mean_without


def profanity_weights() -> dict[str, float]:
    """alt-profanity-check's weight of each word of its vocabulary: the LinearSVC coefficient (on the word's TF-IDF
    feature) averaged over the calibrated classifiers. Positive = pushes towards profane (penalised by R* = −P)."""
    from profanity_check import profanity_check as judge  # loads scikit-learn and the pickled model (seconds)

    coefs = []
    for calibrated in judge.model.calibrated_classifiers_:
        linear = getattr(calibrated, "estimator", None) or getattr(calibrated, "base_estimator")
        coefs.append(np.asarray(linear.coef_, dtype=float).ravel())
    vocabulary = judge.vectorizer.vocabulary_
    mean = np.mean(coefs, axis=0)
    return {word: float(mean[column]) for word, column in vocabulary.items()}


def top_profane(weights: dict[str, float], k: int) -> list[tuple[str, float]]:
    """The judge's k most penalised words, highest coefficient first (ties by word)."""
    return sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:k]
