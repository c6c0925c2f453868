"""FER data: datasets held in memory, honest splits, hand-written transforms, synthetic faces.

Typical use::

    from vitfer.data import load_dataset, make_split, build_transforms

    ds = load_dataset("ckplus48", "/path/to/datasets")           # 981 images, 118 subjects
    split = make_split(ds, "subject", seed=0, val_size=0.1)        # no subject on two sides
    train = ds.subset(split["train"], transform=build_transforms(cfg, train=True))
    test = ds.subset(split["test"], transform=build_transforms(cfg, train=False))

``SyntheticFaces`` is the built-in dataset that needs no files.
"""
from .datasets import (
    CKPLUS48_CLASSES,
    JAFFE_CLASSES,
    JAFFE_CODES,
    STUDY_TEST_SIZE,
    FERDataset,
    SkippedFilesWarning,
    load_ckplus48,
    load_dataset,
    load_image_folder,
    load_jaffe,
)
from .io import IMAGE_EXTENSIONS, DatasetError, ImageDecodeError, image_to_tensor, load_image
from .splits import SPLIT_KINDS, SplitError, iter_folds, make_split
from .synthetic import SYNTHETIC_CLASSES, SyntheticFaces
from .transforms import (
    DEFAULT_AUGMENT,
    CenterCrop,
    ColorJitter,
    Compose,
    GaussianNoise,
    Normalize,
    RandomAffine,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    RandomTranslation,
    RandomVerticalFlip,
    Resize,
    Transform,
    build_transforms,
    item_generator,
)

#: Alias: the generic class-folder dataset is a :class:`FERDataset` too.
ImageFolderDataset = FERDataset

__all__ = [
    "CKPLUS48_CLASSES",
    "JAFFE_CLASSES",
    "JAFFE_CODES",
    "SYNTHETIC_CLASSES",
    "STUDY_TEST_SIZE",
    "IMAGE_EXTENSIONS",
    "SPLIT_KINDS",
    "DEFAULT_AUGMENT",
    "FERDataset",
    "ImageFolderDataset",
    "SyntheticFaces",
    "DatasetError",
    "ImageDecodeError",
    "SkippedFilesWarning",
    "SplitError",
    "load_dataset",
    "load_ckplus48",
    "load_jaffe",
    "load_image_folder",
    "load_image",
    "image_to_tensor",
    "make_split",
    "iter_folds",
    "Transform",
    "Compose",
    "Resize",
    "CenterCrop",
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "RandomAffine",
    "RandomRotation",
    "RandomTranslation",
    "ColorJitter",
    "GaussianNoise",
    "Normalize",
    "build_transforms",
    "item_generator",
]
