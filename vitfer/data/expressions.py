"""One vocabulary for facial expressions across datasets (cross-dataset training and evaluation).

Datasets spell the same expression differently: CK+48 says ``sadness`` and ``happy``, JAFFE
``sad`` and ``happy``, FER2013 ``angry``; CK+48 has ``contempt`` where JAFFE has ``neutral``.
This module maps every spelling to one **canonical name**, the nouns of Ekman's basic emotions
plus neutral (the spelling of the CK+ paper's emotion labels, with ``happiness`` for
``happy``):

=============  ===========================================================================
canonical      accepted names (case-insensitive; surrounding spaces, ``-`` and ``_`` ignored)
=============  ===========================================================================
anger          anger, angry, mad
contempt       contempt, contemptuous
disgust        disgust, disgusted
fear           fear, fearful, afraid, scared
happiness      happiness, happy, joy, joyful
neutral        neutral, neutrality, calm
sadness        sadness, sad
surprise       surprise, surprised
=============  ===========================================================================

Typical use, a model trained on CK+48 evaluated on JAFFE's shared classes::

    m = class_index_map(CKPLUS48_CLASSES, JAFFE_CLASSES)
    m.shared                      # ('anger', 'disgust', 'fear', 'happiness', 'sadness', 'surprise')
    keep = m.dataset_items(jaffe.labels)               # JAFFE items of a shared class
    logits = model(x)[:, list(m.model_indices)]        # scores of the shared classes only
    pred = [m.model_indices[k] for k in logits.argmax(-1).tolist()]   # model class indices
    target = [m.dataset_to_model[jaffe.labels[i]] for i in keep]     # the same indices
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CANONICAL_EXPRESSIONS",
    "DATASET_EXPRESSIONS",
    "CKPLUS48_CLASSES",
    "JAFFE_CODES",
    "JAFFE_CLASSES",
    "FER2013_CLASSES",
    "UnknownExpressionError",
    "ClassIndexMap",
    "canonical",
    "canonical_classes",
    "shared_classes",
    "class_index_map",
]

#: The canonical expression names, sorted.
CANONICAL_EXPRESSIONS: tuple[str, ...] = (
    "anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
)

#: FER2013's classes in its label order (0 = angry ... 6 = neutral), as the dataset names them.
FER2013_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: CK+48's classes: its folder names, sorted (label order).
CKPLUS48_CLASSES: tuple[str, ...] = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
#: JAFFE's expression codes (second field of a file name) and their classes, in class order.
JAFFE_CODES: dict[str, str] = {
    "AN": "anger",
    "DI": "disgust",
    "FE": "fear",
    "HA": "happy",
    "NE": "neutral",
    "SA": "sad",
    "SU": "surprise",
}
#: JAFFE's classes, in the AN DI FE HA NE SA SU order.
JAFFE_CLASSES: tuple[str, ...] = tuple(JAFFE_CODES.values())

_SYNONYMS: dict[str, tuple[str, ...]] = {
    "anger": ("angry", "mad"),
    "contempt": ("contemptuous",),
    "disgust": ("disgusted",),
    "fear": ("fearful", "afraid", "scared"),
    "happiness": ("happy", "joy", "joyful"),
    "neutral": ("neutrality", "calm"),
    "sadness": ("sad",),
    "surprise": ("surprised",),
}
_LOOKUP: dict[str, str] = {name: c for c in CANONICAL_EXPRESSIONS for name in (c, *_SYNONYMS[c])}


class UnknownExpressionError(ValueError):
    """A class name that is no known expression (nor a synonym of one)."""


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def canonical(name: str) -> str:
    """The canonical name of an expression: ``canonical("Sad") == "sadness"``.

    Args:
        name: a class name (any case; ``-``, ``_`` and spaces ignored), canonical or a synonym
            (see the module table).

    Returns:
        One of :data:`CANONICAL_EXPRESSIONS`.

    Raises:
        UnknownExpressionError: ``name`` is not a known expression; the message lists the
            canonical names.
    """
    if not isinstance(name, str):
        raise UnknownExpressionError(f"an expression name must be a string, got {name!r}")
    found = _LOOKUP.get(_key(name))
    if found is None:
        raise UnknownExpressionError(
            f"unknown expression {name!r}; expected one of {', '.join(CANONICAL_EXPRESSIONS)} "
            f"or a synonym ({', '.join(sorted(k for k in _LOOKUP if k not in CANONICAL_EXPRESSIONS))})"
        )
    return found


def canonical_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """Canonical names of a dataset's classes, in its label order.

    Raises:
        UnknownExpressionError: a class is no known expression.
        ValueError: two classes are the same expression (``happy`` and ``joy``).
    """
    out = tuple(canonical(c) for c in classes)
    if len(set(out)) != len(out):
        dup = sorted({c for c in out if out.count(c) > 1})
        raise ValueError(f"classes {list(classes)} name the same expression more than once: {', '.join(dup)}")
    return out


#: Canonical class names of each known dataset, in its label order (label ``k`` is entry ``k``).
DATASET_EXPRESSIONS: dict[str, tuple[str, ...]] = {
    "ckplus48": ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise"),
    "jaffe": ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"),
    "synthetic": ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"),
    "fer2013": canonical_classes(FER2013_CLASSES),
}


def shared_classes(classes_a: Sequence[str], classes_b: Sequence[str]) -> tuple[str, ...]:
    """Canonical names of the expressions that both class lists have, in ``classes_a``'s order.

    ``shared_classes(CKPLUS48_CLASSES, JAFFE_CLASSES)`` is ``('anger', 'disgust', 'fear',
    'happiness', 'sadness', 'surprise')`` (CK+48 lacks neutral, JAFFE contempt).

    Raises:
        UnknownExpressionError: a class of either list is no known expression.
    """
    b = set(canonical_classes(classes_b))
    return tuple(c for c in canonical_classes(classes_a) if c in b)


@dataclass(frozen=True)
class ClassIndexMap:
    """Index maps between a model's classes and a dataset's, over their shared expressions.

    Attributes:
        shared: canonical names of the shared expressions, in the model's class order.
        model_indices: the model's class index of each shared expression (same order).
        dataset_indices: the dataset's class index of each shared expression (same order).
        model_to_dataset: model class index -> dataset class index, shared classes only.
        dataset_to_model: dataset class index -> model class index, shared classes only.
        model_only: canonical names of the model's classes the dataset lacks.
        dataset_only: canonical names of the dataset's classes the model lacks.
    """

    shared: tuple[str, ...]
    model_indices: tuple[int, ...]
    dataset_indices: tuple[int, ...]
    model_to_dataset: dict[int, int]
    dataset_to_model: dict[int, int]
    model_only: tuple[str, ...]
    dataset_only: tuple[str, ...]

    def dataset_items(self, labels: Sequence[int]) -> list[int]:
        """Positions of the items whose dataset label is a shared class (e.g. a test subset)."""
        return [i for i, y in enumerate(labels) if int(y) in self.dataset_to_model]


def class_index_map(model_classes: Sequence[str], dataset_classes: Sequence[str]) -> ClassIndexMap:
    """Map a model's class indices to a dataset's, by canonical expression.

    For cross-dataset evaluation (train on CK+48, test on JAFFE): keep the dataset's items of a
    shared class (:meth:`ClassIndexMap.dataset_items`), take the model's scores of the shared
    classes only (``logits[:, model_indices]``) and compare the model class they pick with
    ``dataset_to_model[label]``.

    Args:
        model_classes: the model's class names (e.g. ``model.class_names``), label order.
        dataset_classes: the dataset's class names (``dataset.classes``), label order.

    Returns:
        A :class:`ClassIndexMap`.

    Raises:
        UnknownExpressionError: a class is no known expression.
        ValueError: a list names an expression twice, or the lists share no expression.
    """
    model = canonical_classes(model_classes)
    data = canonical_classes(dataset_classes)
    data_index = {c: k for k, c in enumerate(data)}
    pairs = [(k, data_index[c]) for k, c in enumerate(model) if c in data_index]
    if not pairs:
        raise ValueError(f"the model's classes {list(model_classes)} and the dataset's {list(dataset_classes)} share no expression")
    return ClassIndexMap(
        shared=tuple(model[m] for m, _ in pairs),
        model_indices=tuple(m for m, _ in pairs),
        dataset_indices=tuple(d for _, d in pairs),
        model_to_dataset={m: d for m, d in pairs},
        dataset_to_model={d: m for m, d in pairs},
        model_only=tuple(c for c in model if c not in data_index),
        dataset_only=tuple(c for c in data if c not in set(model)),
    )
