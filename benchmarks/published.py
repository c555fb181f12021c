"""The published zoo code's per-sample training transform, the reference the benchmarks beat."""

import torchvision.transforms as T

from ptmz.data.datasets import CIFAR10_MEAN, CIFAR10_STD


def published_transform() -> T.Compose:
    """RandomCrop(32, padding=4) + flip + RandomRotation(20) on a PIL image, then normalise."""
    return T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.RandomRotation(20),
            T.ToTensor(),
            T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
