"""Built-in datasets: ``DATASETS`` maps a spec's dataset name to its factory.

Every factory takes keyword parameters only, each annotated and defaulted, and
returns a :class:`DataBundle`. Shared parameters: ``root``, ``download``,
``resolution``, ``augment``, ``normalize``, ``eval_fraction``, ``split_seed``,
``subset`` (see :func:`labkit.data.splits.build_bundle`); ``imagefolder`` adds
``folder``. Data lives under ``root``, else ``$LABKIT_DATA``, else ``./data``.
"""
from collections.abc import Callable

from labkit.data.bundle import DataBundle
from labkit.data.digits import digits
from labkit.data.image_folder import imagefolder, imagenet, inaturalist, tinyimagenet
from labkit.data.torchvision_sets import cifar10, cifar100, fashionmnist, mnist

DATASETS: dict[str, Callable[..., DataBundle]] = {
    "digits": digits,
    "mnist": mnist,
    "fashionmnist": fashionmnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "tinyimagenet": tinyimagenet,
    "imagenet": imagenet,
    "inaturalist": inaturalist,
    "imagefolder": imagefolder,
}

__all__ = ["DATASETS", "DataBundle"]
