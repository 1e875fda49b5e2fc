"""CIFAR-10/100, MNIST and Fashion-MNIST through torchvision's own dataset classes.

Each dataset lives in ``<root>/<name>/``, which is the ``root`` handed to the
torchvision class; the official test set is ``evals["eval"]``.
"""
from dataclasses import dataclass

import numpy as np
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


_CIFAR10 = _TorchvisionSet(
    cls=datasets.CIFAR10,
    name="cifar10",
    title="CIFAR-10",
    in_channels=3,
    native=32,
    # Per-channel pixel mean/std of the 50 000 training images.
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    files_dir="cifar-10-batches-py",
    files="data_batch_1 ... data_batch_5, test_batch, batches.meta (extract "
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into {dir}; "
    "torchvision checks their md5 sums)",
)
_CIFAR100 = _TorchvisionSet(
    cls=datasets.CIFAR100,
    name="cifar100",
    title="CIFAR-100",
    in_channels=3,
    native=32,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    files_dir="cifar-100-python",
    files="train, test, meta (extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz "
    "into {dir}; torchvision checks their md5 sums)",
)
_MNIST = _TorchvisionSet(
    cls=datasets.MNIST,
    name="mnist",
    title="MNIST",
    in_channels=1,
    native=28,
    mean=(0.1307,),
    std=(0.3081,),
    files_dir="MNIST/raw",
    files="train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (the gunzipped idx files)",
)
_FASHIONMNIST = _TorchvisionSet(
    cls=datasets.FashionMNIST,
    name="fashionmnist",
    title="Fashion-MNIST",
    in_channels=1,
    native=28,
    mean=(0.2860,),
    std=(0.3530,),
    files_dir="FashionMNIST/raw",
    files=_MNIST.files,
)


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
    return Source(
        name=spec.name,
        root=dataset_dir,
        train=train,
        train_labels=np.asarray(train.targets),
        test=test,
        classes=list(train.classes),
        in_channels=spec.in_channels,
        native=spec.native,
        mean=spec.mean,
        std=spec.std,
        pil_input=True,
    )


cifar10 = dataset_factory(
    lambda root, download, _res: _load(_CIFAR10, root, download), resolution=32,
    doc="""CIFAR-10: 50 000 train / 10 000 test RGB 32x32 images, 10 classes.

    Files: ``<root>/cifar10/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.
    Normalisation: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616).

    Returns:
        A :class:`DataBundle` of items ``(float tensor (3, resolution, resolution), label)``.
    """)


cifar100 = dataset_factory(
    lambda root, download, _res: _load(_CIFAR100, root, download), resolution=32,
    doc="""CIFAR-100 (fine labels): 50 000 train / 10 000 test RGB 32x32 images, 100 classes.

    Files: ``<root>/cifar100/cifar-100-python/{train, test, meta}``.
    Normalisation: mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762).

    Returns:
        A :class:`DataBundle` of items ``(float tensor (3, resolution, resolution), label)``.
    """)


mnist = dataset_factory(
    lambda root, download, _res: _load(_MNIST, root, download), resolution=28,
    doc="""MNIST: 60 000 train / 10 000 test grayscale 28x28 digits, 10 classes.

    Files: ``<root>/mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
    Normalisation: mean 0.1307, std 0.3081.

    Returns:
        A :class:`DataBundle` of items ``(float tensor (1, resolution, resolution), label)``.
    """)


fashionmnist = dataset_factory(
    lambda root, download, _res: _load(_FASHIONMNIST, root, download), resolution=28,
    doc="""Fashion-MNIST: 60 000 train / 10 000 test grayscale 28x28 clothing images, 10 classes.

    Files: ``<root>/fashionmnist/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
    Normalisation: mean 0.2860, std 0.3530.

    Returns:
        A :class:`DataBundle` of items ``(float tensor (1, resolution, resolution), label)``.
    """)
