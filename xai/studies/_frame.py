"""What every study stands on: typed options, the models by id, the report's images for a model's label
space with their targets and top-1, the model's identity for cache keys, and one batched prediction.

A study computes on these and writes JSON and images through :class:`~xai.render.store.Store`; what the
book shows is drawn in :mod:`xai.render`. Nothing here branches on a model's name: images come by label
space (for ImageNet-1k the photo manifest and the config's ImageNet-1k folder sets; for a user's own
class list the folder sets labelled by it; for Fashion-MNIST the test set).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .. import models
from ..data import fashion_mnist, images
from ..errors import XaiError
from ..profiles import Profile
from ..render.store import Store, cache_key


def options(study: str, defaults: dict) -> Callable[[Profile, str], object]:
    """A study's ``option(profile, key)``: the profile's value, else the study's default (a key missing from
    ``defaults`` is a KeyError, so a misspelt option in the code fails at once)."""
    def option(profile: Profile, key: str):
        return profile.option(study, key, defaults[key])

    return option


class TimedJobs:
    """A study's cached jobs (:meth:`Store.job`, records under ``<study>/jobs/``), each timed in wall and
    process CPU seconds, with the log of what each cost (a cached job reports its first run). ``base``
    goes into every key (the model's identity, the seed)."""

    def __init__(self, store: Store, study: str, version: int, base: dict):
        self.store, self.study, self.version, self.base, self.log = store, study, version, base, []

    def run(self, name: str, spec: dict, compute: Callable) -> dict:
        record = f"{self.study}/jobs/{name.replace('/', '__')}.json"
        key = cache_key(self.study, self.version, name, self.base, spec)
        ran = []

        def timed(out):
            start, cpu = time.perf_counter(), time.process_time()
            result = compute(out)
            ran.append(True)
            result["seconds"] = round(time.perf_counter() - start, 2)
            result["cpu_seconds"] = round(time.process_time() - cpu, 2)
            return result

        result = self.store.job(record, key, timed)
        self.log.append({"name": name, "images": result.get("images", 0), "steps": result.get("steps", 0),
                         "seconds": result["seconds"], "cpu_seconds": result.get("cpu_seconds"), "cached": not ran})
        return result


def book_group(entry: models.ModelEntry) -> str:
    """The word the book's pages group models by ("imagenet", "fmnist"), from the entry's label space."""
    return {models.IMAGENET_1K: "imagenet", models.FASHION_MNIST: "fmnist"}.get(entry.label_space, entry.label_space)


def photo_ids(profile: Profile, label_space: str = models.IMAGENET_1K) -> list[str]:
    """The profile's photos labelled in ``label_space``: its image folder sets' images first (a study that
    shows the first N shows the user's own), then, for ImageNet-1k, its manifest ids (None: all)."""
    ids = [pid for src in profile.folders if src.label_space == label_space for pid in folder_photos(src)]
    if label_space == models.IMAGENET_1K:
        ids += list(profile.photos) if profile.photos is not None else list(images.manifest())
    return ids


def photos_of(profile: Profile, entry: models.ModelEntry, n: int | None = None) -> list[str]:
    """The first ``n`` (None: all) photos of the entry's label space."""
    ids = photo_ids(profile, require_photos(entry, profile).label_space)
    return ids[:n] if n else ids


def labelled_photos(profile: Profile, entry: models.ModelEntry, n: int | None = None) -> list[str]:
    """The first ``n`` (None: all) photos of the entry's label space that have a label."""
    ids = [p for p in photos_of(profile, entry) if images.photo(p).label is not None]
    return ids[:n] if n else ids


def photos_by_model(profile: Profile, entries: dict, n: int | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """Each entry's first ``n`` photos of its label space, and every one of them once, in that order."""
    own = {name: photos_of(profile, e, n) for name, e in entries.items()}
    return own, list(dict.fromkeys(p for ids in own.values() for p in ids))


def all_photo_ids(profile: Profile) -> list[str]:
    """Every photo of the profile, of every label space, each once."""
    return list(dict.fromkeys(pid for space in profile.photo_spaces for pid in photo_ids(profile, space)))


def folder_photos(src) -> list[str]:
    """A folder set's photo ids, registered with :mod:`xai.data.images` (each file hashed once per process
    while it is unchanged, :func:`xai.data.folders.digest`)."""
    from ..data import folders

    return images.register(folders.scan(src))


def small_inputs(entry: models.ModelEntry | None) -> bool:
    """Whether an entry's images are small (Fashion-MNIST's 28 px), which wants larger internal batches."""
    return entry is not None and entry.input_size[1] * entry.input_size[2] <= 64 * 64


def load(name: str, profile: Profile) -> models.ModelEntry:
    """A model of the profile by its id (a config's spec, weights, classes and layers; else the id is the
    spec), its convolutions in channels-last layout: on CPU that runs EfficientNet's depthwise
    convolutions about 1.8x faster (measured), with the same results up to rounding."""
    entry = load_source(profile.source(name), **loader_kwargs(profile.source(name).spec, profile))
    if entry.device.type == "cpu":
        entry.model.to(memory_format=torch.channels_last)
    return entry


def load_source(src, **options) -> models.ModelEntry:
    """A :class:`~xai.profiles.ModelSource` loaded, named by its id, with its layers of interest."""
    entry = models.load(src.spec, weights=src.weights, classes=src.classes, **options)
    entry.name = src.id
    if src.layers is not None:
        from ..layers import resolve

        for layer in src.layers:
            resolve(entry.model, layer)  # an unknown layer: close matches, before any work
        entry.layers = list(src.layers)
    return entry


def loader_kwargs(name: str, profile: Profile) -> dict:
    """The profile's options that the model's own loader takes (a training budget for the models
    trained here), and no others. ``name``: a spec."""
    wanted = {"budget": profile.fmnist_budget, "progress": False}
    return {k: v for k, v in wanted.items() if k in models.loader_options(name)}


# -- images and targets ---------------------------------------------------------------------------------

@dataclass
class Batch:
    """Images prepared for one model, with their ids, cache identities and the explained targets."""

    ids: list[str]
    keys: list[str]  # content identity of each image (sha256 or dataset hash + index)
    x: torch.Tensor
    targets: torch.Tensor
    probs: torch.Tensor  # softmax probability of the target

    def subset(self, n: int) -> "Batch":
        return Batch(self.ids[:n], self.keys[:n], self.x[:n], self.targets[:n], self.probs[:n])


def model_id(entry: models.ModelEntry) -> str:
    """What identifies the weights: the checkpoint key of a trained model, the weights' source otherwise."""
    return f"{entry.name}:{entry.info.get('key') or entry.info.get('weights')}"


@torch.no_grad()
def probabilities(entry: models.ModelEntry, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The model's softmax on a batch, ``chunk`` images at a time (a 10,000-image test set or 300 masked
    photos do not fit one forward pass), as float32 on the CPU: the one batched prediction of the studies."""
    return torch.cat([entry.model(c.to(entry.device)).softmax(-1).float().cpu() for c in torch.split(x, chunk)])


def predicted(entry: models.ModelEntry, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The top-1 class of each image."""
    return probabilities(entry, x, chunk).argmax(-1)


def top1(entry: models.ModelEntry, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    conf, idx = probabilities(entry, x).max(-1)
    return idx, conf


def photo_batch(entry: models.ModelEntry, photos: Sequence[str]) -> Batch:
    x = torch.stack([entry.prepare(images.load(pid)) for pid in photos])
    idx, conf = top1(entry, x)
    return Batch(list(photos), [images.photo(p).sha256 for p in photos], x, idx, conf)


def fmnist_indices(n: int) -> list[int]:
    """Test-set indices: the first image of each class in turn, so ten images show ten classes."""
    _, y = fashion_mnist.load("test")
    per_class = [(y == c).nonzero().flatten().tolist() for c in range(len(fashion_mnist.CLASSES))]
    out, depth = [], 0
    while len(out) < n:
        for c in range(len(per_class)):
            if len(out) < n and depth < len(per_class[c]):
                out.append(per_class[c][depth])
        depth += 1
    return out


def fmnist_batch(entry: models.ModelEntry, indices: Sequence[int]) -> Batch:
    x, _ = fashion_mnist.load("test")
    xb = torch.stack([entry.prepare(img) for img in x[list(indices)]])  # the model's own channels and size
    idx, conf = top1(entry, xb)
    data = fashion_mnist.data_hash()
    return Batch([str(i) for i in indices], [f"{data}:{i}" for i in indices], xb, idx, conf)


def batch_for(entry: models.ModelEntry, profile: Profile, n_photos: int | None, n_fmnist: int) -> Batch:
    """The report's images for an entry's label space: ``n_fmnist`` test images for Fashion-MNIST, else the
    first ``n_photos`` photos (None: all) labelled in its space."""
    if entry.label_space == models.FASHION_MNIST:
        return fmnist_batch(entry, fmnist_indices(n_fmnist))
    return photo_batch(entry, photos_of(profile, entry, n_photos))


def require_photos(entry: models.ModelEntry, profile: Profile) -> models.ModelEntry:
    """The entry, if the report has photos labelled in its label space: a study that fed it another
    space's photos would explain classes the photos do not have."""
    if entry.label_space not in profile.photo_spaces:
        raise XaiError(f"{entry.name}: the report has no photos labelled in its label space ({entry.label_space})")
    return entry


def require_label_space(entry: models.ModelEntry, label_space: str) -> models.ModelEntry:
    """The entry, if its classes are ``label_space`` (Fashion-MNIST's test set is labelled in one)."""
    if entry.label_space != label_space:
        raise XaiError(f"{entry.name} has the label space {entry.label_space}, but this part of the report "
                       f"explains {label_space} images")
    return entry


def skipped(reason: str) -> dict:
    """A part of a study's results that had nothing to run on, with why; the book shows the reason in
    place of everything built on the part (its ``Part`` objects refuse every other key)."""
    return {"skipped": reason}


NO_PHOTOS = ("the config of this report has no model with labelled photos (an ImageNet-1k model, or an image "
             "folder set in a model's own label space)")
NO_FMNIST = "the config of this report has no Fashion-MNIST model"
