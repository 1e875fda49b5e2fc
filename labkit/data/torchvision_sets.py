"""CIFAR-10/100, MNIST and Fashion-MNIST through torchvision's own dataset classes.

Each dataset lives in ``<root>/<name>/``, which is the ``root`` handed to the
torchvision class; the official test set is ``evals["eval"]``.
"""
from dataclasses import dataclass
from typing import Any, Callable

from torchvision import datasets

from labkit.data.splits import Source, dataset_factory, dataset_not_found, resolve_root


@dataclass(frozen=True)
class _TorchvisionSet:
    cls: type
    name: str
    title: str
    in_channels: int
    native: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files_dir: str  # where torchvision reads the files, relative to <root>/<name>
    files: str  # what must be in files_dir and where it comes from; {dir} = <root>/<name>


# name, title, channels, native side, per-channel mean and std of the training images,
# where torchvision reads the files (relative to <root>/<name>) and what must be there
_CIFAR10 = _TorchvisionSet(
    datasets.CIFAR10, "cifar10", "CIFAR-10", 3, 32, (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616), "cifar-10-batches-py",
    "data_batch_1 ... data_batch_5, test_batch, batches.meta (extract "
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into {dir}; torchvision checks "
    "their md5 sums)")
_CIFAR100 = _TorchvisionSet(
    datasets.CIFAR100, "cifar100", "CIFAR-100", 3, 32, (0.5071, 0.4865, 0.4409),
    (0.2673, 0.2564, 0.2762), "cifar-100-python",
    "train, test, meta (extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz "
    "into {dir}; torchvision checks their md5 sums)")
_IDX_FILES = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
              "t10k-labels-idx1-ubyte (the gunzipped idx files)")
_MNIST = _TorchvisionSet(datasets.MNIST, "mnist", "MNIST", 1, 28, (0.1307,), (0.3081,),
                         "MNIST/raw", _IDX_FILES)
_FASHIONMNIST = _TorchvisionSet(datasets.FashionMNIST, "fashionmnist", "Fashion-MNIST", 1, 28,
                                (0.2860,), (0.3530,), "FashionMNIST/raw", _IDX_FILES)


def _load(spec: _TorchvisionSet, root: str | None, download: bool) -> Source:
    dataset_dir = resolve_root(root) / spec.name
    try:
        # No transform here: one instance per split feeds both train (augmented)
        # and train_plain, so the files are parsed once; SplitDataset applies it.
        train = spec.cls(str(dataset_dir), train=True, download=download)
        test = spec.cls(str(dataset_dir), train=False, download=download)
    except (RuntimeError, OSError) as error:
        # torchvision reports missing or corrupted files as RuntimeError; a failed
        # download surfaces as RuntimeError or URLError (an OSError).
        if download:
            fix = (
                f"Downloading them failed ({error}); this machine may have no internet access: "
                f"put the files there by hand."
            )
        else:
            allow = f'{{"name": "{spec.name}", "download": true}}'
            fix = (
                f"Put them there, or let torchvision fetch them with \"download\": true in the "
                f"data set's object: {allow} as the spec's \"dataset\" (or an evaluate "
                f"analysis's), `labkit evaluate --on '{allow}'` (torchvision said: {error})."
            )
        raise dataset_not_found(
            spec.title, dataset_dir / spec.files_dir, spec.files.format(dir=dataset_dir), fix
        ) from error
    return Source.of_image_sets(spec.name, dataset_dir, train, test, spec.in_channels,
                                spec.native, spec.mean, spec.std)


def _factory(spec: _TorchvisionSet, summary: str, files: str) -> Callable[..., Any]:
    """The registered factory of ``spec``; its docstring says ``summary``, where the
    ``files`` are read and the normalisation."""
    numbers = (lambda values: str(values[0]) if len(values) == 1 else str(values))
    return dataset_factory(
        lambda root, download, _res: _load(spec, root, download), resolution=spec.native,
        doc=f"""{summary}

    Files: ``<root>/{spec.name}/{spec.files_dir}/{files}``.
    Normalisation: mean {numbers(spec.mean)}, std {numbers(spec.std)}.

    Returns:
        A :class:`DataBundle` of items ``(float tensor ({spec.in_channels}, resolution,
        resolution), label)``.
    """)


_IDX = "{train,t10k}-{images-idx3,labels-idx1}-ubyte"
cifar10 = _factory(_CIFAR10, "CIFAR-10: 50 000 train / 10 000 test RGB 32x32 images, 10 classes.",
                   "{data_batch_1..5, test_batch, batches.meta}")
cifar100 = _factory(_CIFAR100, "CIFAR-100 (fine labels): 50 000 train / 10 000 test RGB 32x32 "
                    "images, 100 classes.", "{train, test, meta}")
mnist = _factory(_MNIST, "MNIST: 60 000 train / 10 000 test grayscale 28x28 digits, 10 classes.",
                 _IDX)
fashionmnist = _factory(_FASHIONMNIST, "Fashion-MNIST: 60 000 train / 10 000 test grayscale "
                        "28x28 clothing images, 10 classes.", _IDX)
