"""Hand-crafted baselines for the probe sets, so that probe accuracies can be read against something
that involves no learning at all: log-mel statistics (audio), raw pixels (images), bag of words (text).
They go through the same probes (k-NN and linear, same protocol) as the encoders' features."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import torch

from .data import LabelledData
from .probes import knn_accuracy, linear_probe

BASELINE_NAMES = {
    "audio": "log-mel statistics",
    "vision": "raw pixels (16x16 RGB)",
    "text": "bag of words and word bigrams",
}


def log_mel_statistics(audio: np.ndarray, sampling_rate: int = 16000, num_mels: int = 40) -> np.ndarray:
    """Mean and standard deviation over time of 40 log-mel bands (25 ms Hann windows, 10 ms hop)."""
    from transformers.audio_utils import mel_filter_bank

    n_fft, hop, window = 512, sampling_rate // 100, int(0.025 * sampling_rate)
    wave = torch.as_tensor(audio, dtype=torch.float32)
    if len(wave) < window:
        wave = torch.nn.functional.pad(wave, (0, window - len(wave)))
    spectrum = (
        torch.stft(
            wave,
            n_fft,
            hop_length=hop,
            win_length=window,
            window=torch.hann_window(window),
            return_complex=True,
        )
        .abs()
        .square()
    )  # (freq, frames)
    mel = mel_filter_bank(n_fft // 2 + 1, num_mels, 20.0, sampling_rate / 2, sampling_rate, mel_scale="htk")
    log_mel = torch.log(torch.as_tensor(mel.T, dtype=torch.float32) @ spectrum + 1e-6)
    return torch.cat([log_mel.mean(1), log_mel.std(1)]).numpy()


def raw_pixels(image, size: int = 16) -> np.ndarray:
    """The image resized to ``size`` x ``size`` RGB (bicubic), scaled to [0, 1], flattened."""
    from PIL import Image

    return (
        np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32).ravel() / 255
    )


_WORD = re.compile(r"[a-z0-9]+")


def _terms(text: str, bigrams: bool) -> set[str]:
    words = _WORD.findall(text.lower())
    return set(words) | ({f"{a} {b}" for a, b in zip(words, words[1:])} if bigrams else set())


def bag_of_words(
    train: list[str], test: list[str], min_count: int = 2, bigrams: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Binary presence vectors of the lower-cased words (and word bigrams) seen ``min_count`` times in
    the training texts."""
    counts = Counter(term for text in train for term in _terms(text, bigrams))
    vocabulary = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= min_count))}

    def encode(texts):
        out = np.zeros((len(texts), max(len(vocabulary), 1)), dtype=np.float32)
        for row, text in enumerate(texts):
            for term in _terms(text, bigrams):
                if term in vocabulary:
                    out[row, vocabulary[term]] = 1.0
        return out

    return encode(train), encode(test)


def baseline_features(data: LabelledData, sampling_rate: int = 16000) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and test features ``(N, D)`` of the modality's hand-crafted baseline."""
    if data.modality == "audio":
        train = np.stack([log_mel_statistics(a, sampling_rate) for a in data.train.values])
        test = np.stack([log_mel_statistics(a, sampling_rate) for a in data.test.values])
    elif data.modality == "vision":
        train = np.stack([raw_pixels(v) for v in data.train.values])
        test = np.stack([raw_pixels(v) for v in data.test.values])
    else:
        train, test = bag_of_words(data.train.values, data.test.values)
    return torch.from_numpy(train), torch.from_numpy(test)


def baseline_accuracy(
    data: LabelledData, knn_k: int = 20, max_iter: int = 100, seed: int = 0, sampling_rate: int = 16000
) -> dict[str, float | str]:
    """``{"name", "linear", "knn", "chance"}`` of the modality's baseline on ``data`` (same probes as the
    encoders; ``chance`` is the share of the most frequent test class)."""
    train, test = baseline_features(data, sampling_rate)
    y_train, y_test = torch.tensor(data.train.labels), torch.tensor(data.test.labels)
    linear = linear_probe(train, y_train, test, y_test, data.num_classes, max_iter=max_iter, seed=seed)
    knn = knn_accuracy(train, y_train, test, y_test, data.num_classes, k=knn_k)
    return {
        "name": BASELINE_NAMES[data.modality],
        "linear": float(linear.accuracy),
        "knn": float(knn),
        "chance": chance_accuracy(data.test.labels),
    }


def chance_accuracy(labels: list[int]) -> float:
    """Accuracy of always answering the most frequent class."""
    return max(Counter(labels).values()) / len(labels)
