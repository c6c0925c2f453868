"""FER data: datasets held in memory, honest splits, hand-written transforms, synthetic faces.

Typical use::

    from vitfer.data import load_dataset, make_split, build_transforms

    ds = load_dataset("ckplus48", "/path/to/datasets")           # 981 images, 118 subjects
    split = make_split(ds, "subject", seed=0, val_size=0.1)        # no subject on two sides
    train = ds.subset(split["train"], transform=build_transforms(cfg, train=True))
    test = ds.subset(split["test"], transform=build_transforms(cfg, train=False))

``SyntheticFaces`` is the built-in dataset that needs no files. Any folder of photos loads with
``load_dataset("folder", root, image_size=224)`` (each image resized at load time, shorter side
then centre crop), FER-2013 with ``load_dataset("fer2013", "fer2013.csv")``, images listed in a
CSV with ``load_dataset("labels", "labels.csv")`` (or ``load_dataset("folder", None,
labels="faces/labels.csv")``, the path relative to the current folder); ``make_split(ds,
"official")`` uses a dataset's own parts (FER-2013's Usage, ``train/`` / ``val/`` / ``test/``
folders) and ``subject_pattern=REGEX`` gives any folder or label file subjects for the subject
splits. ``find_dataset(kind, candidates)`` says which of some folders holds a dataset without
loading it; ``preprocess=FaceCropper(margin)`` (:mod:`vitfer.data.faces`) keeps the face of
each photo at load time.

Channels follow the model: ``build_transforms`` converts to the ``C`` of ``cfg["input_size"]``
(:func:`to_channels`), so a grey model (``in_chans=1``) trains on the same datasets. Face-crop
datasets (``dataset.face_cropped``: CK+48, JAFFE, synthetic) want
``build_transforms(cfg, train=..., crop_pct=1.0)``. :mod:`vitfer.data.expressions` maps each
dataset's class names to one canonical vocabulary (:func:`canonical`, :func:`shared_classes`,
:func:`class_index_map`) for cross-dataset evaluation.

Modules, each importing only those above it: :mod:`~vitfer.data.io` (decoding one file),
:mod:`~vitfer.data.expressions` (class vocabularies), :mod:`~vitfer.data.transforms`,
:mod:`~vitfer.data.base` (:class:`FERDataset`), :mod:`~vitfer.data.files` (listing a dataset's
files), :mod:`~vitfer.data.messages` (error texts), :mod:`~vitfer.data.sizes` (the size
policy), :mod:`~vitfer.data.loading` (decoding a file list, the load report), one module a
loader (:mod:`~vitfer.data.ckplus48`, :mod:`~vitfer.data.jaffe`, :mod:`~vitfer.data.labels`,
:mod:`~vitfer.data.folder`, :mod:`~vitfer.data.fer2013`), :mod:`~vitfer.data.registry`
(:func:`load_dataset`, :func:`find_dataset`), :mod:`~vitfer.data.runs` (a run's dataset and split
rebuilt from its recorded config, for training, evaluation and the report alike); beside them :mod:`~vitfer.data.splits`,
:mod:`~vitfer.data.synthetic` and :mod:`~vitfer.data.faces` (face detection and crops, OpenCV
imported when a detector is built). :mod:`vitfer.data.datasets` re-exports the names it held.
"""
from .base import STUDY_TEST_SIZE, FERDataset, SkippedFilesWarning
from .ckplus48 import load_ckplus48
from .expressions import (
    CANONICAL_EXPRESSIONS,
    CKPLUS48_CLASSES,
    DATASET_EXPRESSIONS,
    FER2013_CLASSES,
    JAFFE_CLASSES,
    JAFFE_CODES,
    ClassIndexMap,
    UnknownExpressionError,
    canonical,
    canonical_classes,
    class_index_map,
    shared_classes,
)
from .fer2013 import FER2013_USAGES, load_fer2013
from .folder import PART_FOLDERS, load_image_folder
from .jaffe import load_jaffe
from .labels import load_label_file
from .registry import DATASET_KINDS, find_dataset, load_dataset
from .runs import check_split, image_digests, run_data, run_dataset, run_split, split_record
from .sizes import DOMINANT_SIZE_SHARE, fit_image
from .io import IMAGE_EXTENSIONS, DatasetError, ImageDecodeError, image_to_tensor, load_image
from .splits import (
    ALL_SPLIT_KINDS, OFFICIAL_PARTS, SPLIT_KINDS, SplitError, iter_folds, make_split, seeds_sharing_test_subjects,
)
from .synthetic import SYNTHETIC_CLASSES, SyntheticFaces
from .transforms import (
    DEFAULT_AUGMENT,
    LUMA_WEIGHTS,
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
    ToChannels,
    Transform,
    build_transforms,
    item_generator,
    to_channels,
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
    "LUMA_WEIGHTS",
    "CANONICAL_EXPRESSIONS",
    "DATASET_EXPRESSIONS",
    "FER2013_CLASSES",
    "FERDataset",
    "ImageFolderDataset",
    "SyntheticFaces",
    "DatasetError",
    "ImageDecodeError",
    "SkippedFilesWarning",
    "SplitError",
    "UnknownExpressionError",
    "load_dataset",
    "find_dataset",
    "check_split",
    "image_digests",
    "run_data",
    "run_dataset",
    "run_split",
    "split_record",
    "load_ckplus48",
    "load_jaffe",
    "load_image_folder",
    "load_label_file",
    "load_fer2013",
    "fit_image",
    "DATASET_KINDS",
    "DOMINANT_SIZE_SHARE",
    "PART_FOLDERS",
    "OFFICIAL_PARTS",
    "ALL_SPLIT_KINDS",
    "FER2013_USAGES",
    "load_image",
    "image_to_tensor",
    "make_split",
    "iter_folds",
    "seeds_sharing_test_subjects",
    "Transform",
    "Compose",
    "ToChannels",
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
    "to_channels",
    "canonical",
    "canonical_classes",
    "shared_classes",
    "class_index_map",
    "ClassIndexMap",
]
