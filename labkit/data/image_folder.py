"""Datasets stored as folders of image files, read with torchvision's ``ImageFolder``.

Layout under ``<root>/<name>/``::

    train/<class>/**/<image>          # any depth; .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp
    val/<class>/**/<image>            # optional; or TinyImageNet's layout:
    val/images/<image> + val/val_annotations.txt   # lines "<file>\\t<class>\\t..."

Class indices follow the sorted class folders of ``train/``. With a ``val/`` folder
it is ``evals["eval"]``; without one a seeded stratified ``eval_fraction`` of train
is held out (``eval_fraction`` must then be > 0). Images are loaded as RGB and
always resized (shorter side to ``resolution``, then centre crop), because files
on disk may come in any size.
"""
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder

from labkit.core.errors import UserError
from labkit.core.registry import Seed
from labkit.data.bundle import DataBundle
from labkit.data.splits import (Augment, Fraction, Resolution, Source, Subset, build_bundle,
                                content_digest, dataset_factory, dataset_not_found, resolve_root,
                                with_shared_args)
from labkit.store.identity import note_outside

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_LAYOUT = (
    "train/<class>/<images> and optionally val/<class>/<images> "
    "(or TinyImageNet's val/images/<images> with val/val_annotations.txt)"
)


@dataclass(frozen=True)
class _FolderSet:
    name: str
    title: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    how_to_get: str


_TINYIMAGENET = _FolderSet(
    name="tinyimagenet",
    title="TinyImageNet",
    # Per-channel pixel mean/std of the 100 000 training images.
    mean=(0.4802, 0.4481, 0.3975),
    std=(0.2770, 0.2691, 0.2821),
    how_to_get="Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and move the contents of "
    "its tiny-imagenet-200/ folder (train/, val/, wnids.txt) into that directory.",
)
_IMAGENET = _FolderSet(
    name="imagenet",
    title="ImageNet (ILSVRC2012)",
    mean=_IMAGENET_MEAN,
    std=_IMAGENET_STD,
    how_to_get="Get ILSVRC2012 from https://image-net.org (registration required); extract each "
    "class tar of ILSVRC2012_img_train.tar into train/<wnid>/ and sort the validation images "
    "into val/<wnid>/ (e.g. with the common valprep.sh).",
)
_INATURALIST = _FolderSet(
    name="inaturalist",
    title="iNaturalist",
    # No agreed iNaturalist statistics; the ImageNet ones are the usual choice.
    mean=_IMAGENET_MEAN,
    std=_IMAGENET_STD,
    how_to_get="Get the iNaturalist 2021 train.tar.gz (or train_mini.tar.gz, renamed to train/) and "
    "val.tar.gz from https://github.com/visipedia/inat_comp/tree/master/2021 and extract them "
    "there, giving train/<class>/*.jpg and val/<class>/*.jpg.",
)


class _ValFolder(ImageFolder):
    """Validation images labelled with the class indices of the train folder.

    Plain ``ImageFolder`` would index only the classes present in ``val/``, shifting
    labels whenever one is missing; TinyImageNet's ``val/images`` has no class
    folders at all, so its labels come from ``val_annotations.txt`` (read, not
    rearranged on disk).
    """

    def __init__(self, root: Path, train_classes: list[str]):
        self._train_classes = list(train_classes)
        super().__init__(str(root), allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._train_classes, {name: i for i, name in enumerate(self._train_classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        annotations = Path(directory, "val_annotations.txt")
        if annotations.is_file():
            return _annotated_samples(annotations, class_to_idx)
        unknown = sorted(e.name for e in os.scandir(directory) if e.is_dir() and e.name not in class_to_idx)
        if unknown:
            raise UserError(
                f"{directory} has class folders that train/ lacks: {', '.join(unknown)}. "
                f"Labels follow train/'s class folders: rename or remove those val/ folders."
            )
        return super().make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty)


def _annotated_samples(annotations: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) pairs from TinyImageNet's ``val_annotations.txt``; images in ``images/``."""
    samples = []
    for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        file_name, class_name = line.split("\t")[:2]
        if class_name not in class_to_idx:
            raise UserError(
                f"{annotations} line {line_no} names class {class_name!r}, which has no folder in train/. "
                f"Use the annotations file that came with the same train/ folder."
            )
        path = annotations.parent / "images" / file_name
        if not path.is_file():
            raise UserError(f"{annotations} line {line_no} lists {path}, which does not exist. Restore the file.")
        samples.append((str(path), class_to_idx[class_name]))
    return samples


def _folders(spec: _FolderSet, dataset_dir: Path) -> tuple[ImageFolder, _ValFolder | None]:
    """torchvision's loaders of ``train/`` and of ``val/`` (``None`` without one): they
    list the files, reading none."""
    fix = f"labkit cannot download {spec.title} (\"download\": true does not help here). {spec.how_to_get}"
    if not (dataset_dir / "train").is_dir():
        raise dataset_not_found(spec.title, dataset_dir, _LAYOUT, fix)
    try:
        train = ImageFolder(str(dataset_dir / "train"))
    except FileNotFoundError as error:  # no class folder, or a class folder without images
        raise dataset_not_found(spec.title, dataset_dir, _LAYOUT, f"ImageFolder said: {error} {fix}") from error
    test = _ValFolder(dataset_dir / "val", train.classes) if (dataset_dir / "val").is_dir() else None
    if test is not None and len(test) == 0:
        raise UserError(f"{dataset_dir / 'val'} holds no images. Fill it as {_LAYOUT}, or remove it.")
    return train, test


def _load(spec: _FolderSet, dataset_dir: Path) -> Source:
    train, test = _folders(spec, dataset_dir)
    return Source.of_image_sets(spec.name, dataset_dir, train, test, 3, None, spec.mean, spec.std)


def _content_identity(spec: _FolderSet, dataset_dir: Path) -> dict[str, Any]:
    """The :func:`~labkit.data.splits.content_digest` of every file the loaders of
    :func:`_folders` read, found by their own walk (``os.walk`` following symbolic
    links, torchvision's image extensions; TinyImageNet's annotated ``val/images``)."""
    train, test = _folders(spec, dataset_dir)
    samples = [("train", path, label) for path, label in train.samples]
    if test is not None:
        samples += [("val", path, label) for path, label in test.samples]
    return content_digest(dataset_dir, train.classes, samples)


def _identified_by_content(factory: Any, folder_set: Callable[[dict[str, Any]], _FolderSet],
                           folder: Callable[[dict[str, Any]], str]) -> Any:
    """Give ``factory`` the ``data_identity`` hook (:func:`labkit.spec.data_identity`):
    the content digest of the folder its params point at."""
    def identify(params: dict[str, Any]) -> dict[str, Any]:
        dataset_dir = resolve_root(params.get("root")) / folder(params)
        note_outside(f"the files of {dataset_dir}", [dataset_dir])  # before they are read
        return _content_identity(folder_set(params), dataset_dir)

    factory.data_identity = identify
    return factory


tinyimagenet = dataset_factory(
    lambda root, download, _res: _load(_TINYIMAGENET, resolve_root(root) / _TINYIMAGENET.name), resolution=64,
    doc="""TinyImageNet: 100 000 train / 10 000 val RGB 64x64 images, 200 classes (WordNet ids).

    Folder: ``<root>/tinyimagenet/`` holding the contents of ``tiny-imagenet-200/``
    (``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` + ``val/val_annotations.txt``),
    or any layout of the module docstring. Not downloadable: ``download`` is ignored.
    Normalisation: mean (0.4802, 0.4481, 0.3975), std (0.2770, 0.2691, 0.2821).

    Returns:
        A :class:`DataBundle` of items ``(float tensor (3, resolution, resolution), label)``.
    """)


imagenet = dataset_factory(
    lambda root, download, _res: _load(_IMAGENET, resolve_root(root) / _IMAGENET.name), resolution=224,
    doc="""ImageNet ILSVRC2012: about 1.28 M train / 50 000 val RGB photos, 1000 classes.

    Folder: ``<root>/imagenet/train/<wnid>/*.JPEG`` and ``<root>/imagenet/val/<wnid>/*.JPEG``.
    Not downloadable: ``download`` is ignored.
    Normalisation: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).

    Returns:
        A :class:`DataBundle` of items ``(float tensor (3, resolution, resolution), label)``.
    """)


inaturalist = dataset_factory(
    lambda root, download, _res: _load(_INATURALIST, resolve_root(root) / _INATURALIST.name), resolution=224,
    doc="""iNaturalist (2021 layout): species photos in one folder per class.

    Folder: ``<root>/inaturalist/train/<class>/*.jpg`` and ``<root>/inaturalist/val/<class>/*.jpg``.
    Not downloadable: ``download`` is ignored.
    Normalisation: the ImageNet constants, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).

    Returns:
        A :class:`DataBundle` of items ``(float tensor (3, resolution, resolution), label)``.
    """)


def _imagefolder_set(folder: str) -> _FolderSet:
    return _FolderSet(
        name="imagefolder",
        title=f"Image folder {folder!r}",
        mean=_IMAGENET_MEAN,
        std=_IMAGENET_STD,
        how_to_get="Put the images there, or set \"folder\" or \"root\" in the spec's dataset object "
        "to where they are.",
    )


def imagefolder(
    root: str | None = None,
    download: bool = False,
    resolution: Resolution = 224,
    augment: Augment = "none",
    normalize: bool = True,
    eval_fraction: Fraction = 0.0,
    split_seed: Seed = 0,
    subset: Subset = None,
    folder: str = "imagefolder",
) -> DataBundle:
    """Any classification dataset laid out as image folders.

    Folder: ``<root>/<folder>/train/<class>/<images>`` and optionally ``val/<class>/<images>``
    (see the module docstring); an absolute ``folder`` is used as is. Without ``val/``
    set ``eval_fraction`` > 0. Not downloadable: ``download`` is ignored.
    Normalisation: the ImageNet constants, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).

    Args:
        folder: the folder under the data root holding ``train/`` (and ``val/``); an
            absolute path is used as is.

    Returns:
        A :class:`DataBundle` of items ``(float tensor (3, resolution, resolution), label)``.
    """
    return build_bundle(
        lambda: _load(_imagefolder_set(folder), resolve_root(root) / folder),
        resolution=resolution,
        augment=augment,
        normalize=normalize,
        eval_fraction=eval_fraction,
        split_seed=split_seed,
        subset=subset,
    )


imagefolder.__doc__ = with_shared_args(imagefolder.__doc__ or "")


for _factory, _set in ((tinyimagenet, _TINYIMAGENET), (imagenet, _IMAGENET),
                       (inaturalist, _INATURALIST)):
    _identified_by_content(_factory, lambda params, folder_set=_set: folder_set,
                           lambda params, name=_set.name: name)
_identified_by_content(imagefolder, lambda params: _imagefolder_set(params.get("folder", "imagefolder")),
                       lambda params: params.get("folder", "imagefolder"))
