"""A config's `hf://` sources turned into their object-storage copies: resolved and copied by `validate`, only
looked up by `train`.

Why two sides: the Validating step (CPU only) is the one pod that reaches the hub (core/hub.py). It resolves each
source's revision to a commit, copies the commit's files into the cache (`<output.uri>hub-cache/`), records the
commits in the run's metadata (`<runUri>hub-sources.json`) and reports them in its summary (`sources`, which the
operator puts into status.validation). Training pods then replace each `hf://` URI by the cached folder of the
recorded commit, from that file or from a revision that is already a full commit hash (the operator pins it so
when a later run reuses a passed validation), and never contact the hub: a moved branch changes nothing.

Which files of a dataset repo are train, validation and test, as `datasets` decides it: the dataset card's
`configs` (`data_files` by split, of the config named `default`, else the first) when it has them; else the
commit's folder is `dataset.train`, split by file names with `datasets`' own patterns (data/split_files.py,
as for any S3 folder: `data/train-00000-of-00001.parquet`, `validation-...`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as default
from pathlib import Path
from typing import Any

import yaml
from fsspec.utils import glob_translate

from finetune_trainer.config import DataRef, TrainerConfig
from finetune_trainer.core import hub
from finetune_trainer.core.errors import ConfigInvalid, DatasetInvalid, DatasetNotFound
from finetune_trainer.core.s3_uri import S3Uri
from finetune_trainer.core.storage import Storage
from finetune_trainer.memory.disk import check_request

log = logging.getLogger(__name__)

SOURCES_FILE = "hub-sources.json"
CACHE_FOLDER = "hub-cache/"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Field:
    """One URI field of the config (`baseModel.uri`, `dataset.validation.uri`) with its revision."""

    name: str
    uri: str
    revision: str | None


def hub_fields(cfg: TrainerConfig) -> list[Field]:
    found = [Field("baseModel.uri", cfg.base_model.uri, cfg.base_model.revision)]
    for split in SPLITS:
        ref = getattr(cfg.dataset, split)
        if ref is not None:
            found.append(Field(f"dataset.{split}.uri", ref.uri, ref.revision))
    return [f for f in found if hub.is_hub_uri(f.uri)]


def cache_uri(cfg: TrainerConfig) -> S3Uri:
    base = cfg.output.uri if cfg.output.uri.endswith("/") else cfg.output.uri + "/"
    return S3Uri.parse(base + CACHE_FOLDER)


def _matches(pattern: str, path: str) -> bool:
    return re.fullmatch(glob_translate(pattern), path) is not None


def card_data_files(card: str | None, where: str) -> dict[str, list[str]] | None:
    """The `data_files` by split of the card's config `default` (else its first), as patterns; None when the card
    declares none. Forms `datasets` reads: a pattern or list (all train), a list of {split, path}, a mapping."""
    if not card or not card.startswith("---"):
        return None
    front = card.split("---", 2)
    try:
        meta = yaml.safe_load(front[1]) if len(front) == 3 else None
    except yaml.YAMLError as error:
        raise DatasetInvalid(f"{where}README.md: the dataset card's YAML header does not parse: {error}") from None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list) or not configs:
        return None
    chosen = next((c for c in configs if isinstance(c, dict) and c.get("config_name") == "default"), configs[0])
    files = chosen.get("data_files") if isinstance(chosen, dict) else None
    if files is None:
        return None

    def patterns(value: Any) -> list[str]:
        return [value] if isinstance(value, str) else [str(v) for v in value] if isinstance(value, list) else []

    if isinstance(files, str) or (isinstance(files, list) and all(isinstance(v, str) for v in files)):
        return {"train": patterns(files)}
    by_split: dict[str, list[str]] = {}
    if isinstance(files, dict):
        items = list(files.items())
    elif isinstance(files, list):
        items = [(e.get("split"), e.get("path")) for e in files if isinstance(e, dict)]
    else:
        items = []
    for split, value in items:
        if split not in SPLITS:
            raise DatasetInvalid(
                f"{where}README.md: configs data_files names split {split!r}; the trainer uses only "
                f"{', '.join(SPLITS)} (name the files to use with a path in the hf:// URI)"
            )
        by_split.setdefault(str(split), []).extend(patterns(value))
    if "train" not in by_split:
        raise DatasetInvalid(f"{where}README.md: configs data_files has no train split")
    return by_split


def _split_uri(folder: S3Uri, files: Sequence[str], all_paths: Sequence[str], split: str, where: str) -> str:
    """One URI naming exactly `files`: the file itself, or their longest common key prefix when no other file of
    the repo shares it (a DataRef names one file, folder or prefix)."""
    if len(files) == 1:
        return str(S3Uri(folder.bucket, folder.key + files[0]))
    prefix = files[0]
    for name in files[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    others = [p for p in all_paths if p.startswith(prefix) and p not in files]
    if not prefix or others:
        raise DatasetInvalid(
            f"{where}: the card's {split} files ({', '.join(files[:3])}...) share no key prefix that names them "
            f"alone{f' ({others[0]} shares it)' if others else ''}; give dataset.{split}.uri with a path instead"
        )
    return str(S3Uri(folder.bucket, folder.key + prefix))


def dataset_uris(folder: S3Uri, path: str, paths: Sequence[str], card: str | None, where: str) -> dict[str, str]:
    """The S3 URI of each split a dataset source gives (pure): its path inside the cached commit when it names
    one; else the card's `data_files`; else the whole folder as train (split by file names downstream)."""
    if path:
        return {"train": str(S3Uri(folder.bucket, folder.key + path))}
    declared = card_data_files(card, where)
    if declared is None:
        return {"train": str(folder)}
    uris = {}
    for split, patterns in declared.items():
        files = [p for p in paths if any(_matches(pattern, p) for pattern in patterns)]
        if not files:
            raise DatasetNotFound(f"{where}README.md: the {split} data_files ({', '.join(patterns)}) match no file")
        uris[split] = _split_uri(folder, files, paths, split, where)
    return uris


@dataclass
class Source:
    """What one hf:// field resolved to and where its copy is: the run's metadata and status.validation.sources."""

    field: str
    uri: str
    revision: str
    commit: str
    cached_uri: str
    copied_files: int = 0
    copied_bytes: int = 0
    uris: dict[str, str] = default(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "uri": self.uri,
            "revision": self.revision,
            "commit": self.commit,
            "cachedUri": self.cached_uri,
            "copiedFiles": self.copied_files,
            "copiedBytes": self.copied_bytes,
        }


def _rewritten(cfg: TrainerConfig, model_uri: str | None, data: dict[str, str]) -> TrainerConfig:
    """The config with each hf:// URI replaced by its S3 copy (revision dropped); a split the user gave
    explicitly is never replaced by one the card declares."""
    base = cfg.base_model
    if model_uri is not None:
        base = base.model_copy(update={"uri": model_uri, "revision": None})
    dataset = cfg.dataset
    for split, uri in data.items():
        ref = getattr(dataset, split)
        if ref is not None and not hub.is_hub_uri(ref.uri):
            continue
        dataset = dataset.model_copy(update={split: DataRef(uri=uri)})
    return cfg.model_copy(update={"base_model": base, "dataset": dataset})


def _merge(data: dict[str, str], uris: dict[str, str], split: str) -> None:
    """A split's own field (dataset.validation.uri) wins over what the train repo's card declares for it."""
    for name, uri in uris.items():
        if name == split:
            data[name] = uri
        else:
            data.setdefault(name, uri)


@dataclass
class Prepared:
    """`validate`'s state between the two copies: the config on S3 URIs, the sources, the model's weights left."""

    cfg: TrainerConfig
    sources: list[Source]
    weights: tuple[hub.Hub, hub.Resolved, list[hub.HubFile], Source] | None


def _data_split(name: str) -> str:
    return name.split(".")[1]


@dataclass
class _Plan:
    """One hf:// field resolved, with the files it needs: (copied now, copied after the memory plan)."""

    item: Field
    ref: hub.HubRef
    client: hub.Hub
    resolved: hub.Resolved
    now: list[hub.HubFile]
    later: list[hub.HubFile]


def _planned(item: Field, client: hub.Hub | None) -> _Plan:
    """Resolve one field and pick its files; every refusal of its URI, repo or files, before any copy."""
    ref = hub.parse(item.uri, item.name)
    source_client = client or hub.Hub(token_value=hub.token(item.name))
    resolved = source_client.resolve(ref, item.revision)
    if ref.kind == "model":
        if item.name != "baseModel.uri":
            raise ConfigInvalid(f"{item.name}: {item.uri!r} is a model repo; a dataset is hf://datasets/...")
        small, heavy = hub.model_files(resolved)
        return _Plan(item, ref, source_client, resolved, small, heavy)
    if item.name == "baseModel.uri":
        raise ConfigInvalid(f"baseModel.uri: {item.uri!r} is a dataset repo; a model is hf://<org>/<name>")
    split = _data_split(item.name)
    if split != "train" and not ref.path:
        raise ConfigInvalid(
            f"{item.name}: {item.uri!r}: give the path of the {split} files inside the repo "
            "(hf://datasets/<org>/<name>/<path>); a whole repo is given as dataset.train"
        )
    return _Plan(item, ref, source_client, resolved, hub.files_under(resolved, ref.path, item.name), [])


def _check_disk(plans: Sequence[_Plan], storage: Storage, cache: S3Uri, work: Path, disk_limit: str) -> None:
    """Before the first byte is downloaded, from the hub's listing: the sources must fit the training pod's
    requested disk (a user error, memory/disk.check_request), and the largest file still to copy the
    validation pod's free disk (the node's: retryable, core/hub.ensure_room)."""
    check_request(
        [
            (
                f"{p.item.name} {p.ref.describe(p.resolved.revision)} (commit {p.resolved.commit})",
                sum(f.size for f in (*p.now, *p.later)),
            )
            for p in plans
        ],
        disk_limit,
    )
    hub.ensure_room([(p.resolved, hub.pending(storage, cache, p.resolved, [*p.now, *p.later])) for p in plans], work)


def prepare(
    cfg: TrainerConfig, storage: Storage, work: Path, client: hub.Hub | None = None, disk_limit: str = ""
) -> Prepared:
    """Resolve every hf:// field, check the disk they need, copy the datasets and the model's non-weight files
    (config, tokenizer) to the cache, and return the config on their S3 copies; the weights wait for `finish`
    (after the memory plan). `disk_limit`: resources.ephemeralStorage, '' when unset."""
    fields = hub_fields(cfg)
    if not fields:
        return Prepared(cfg, [], None)
    cache = cache_uri(cfg)
    plans = [_planned(item, client) for item in fields]
    _check_disk(plans, storage, cache, work, disk_limit)
    sources: list[Source] = []
    model_uri = None
    data: dict[str, str] = {}
    weights = None
    for p in plans:
        folder = hub.cache_folder(cache, p.resolved)
        source = Source(p.item.name, p.item.uri, p.resolved.revision, p.resolved.commit, str(folder))
        copied = hub.mirror(p.client, p.resolved, p.now, storage, cache, work)
        if p.ref.kind == "model":
            model_uri = str(folder)
            weights = (p.client, p.resolved, p.later, source)
        else:
            split = _data_split(p.item.name)
            uris = _dataset_uris_cached(storage, folder, p.ref, f"{p.item.uri}@{p.resolved.commit}/")
            source.uris = uris if split == "train" else {split: uris["train"]}
            _merge(data, source.uris, split)
        source.copied_files, source.copied_bytes = copied.files, copied.bytes
        sources.append(source)
    return Prepared(_rewritten(cfg, model_uri, data), sources, weights)


def _dataset_uris_cached(storage: Storage, folder: S3Uri, ref: hub.HubRef, where: str) -> dict[str, str]:
    """`dataset_uris` over the cached copy: its record lists the files, its README.md is the card."""
    paths = sorted(hub.cached_entries(storage, folder))
    card = None
    if not ref.path and "README.md" in paths:
        card = storage.read_bytes(S3Uri(folder.bucket, folder.key + "README.md")).decode(errors="replace")
    return dataset_uris(folder, ref.path, paths, card, where)


def finish(prepared: Prepared, storage: Storage, cfg: TrainerConfig, work: Path) -> None:
    """Copy the model's weights (after the memory plan passed), then record the sources in the run's metadata."""
    if prepared.weights is not None:
        client, resolved, heavy, source = prepared.weights
        copied = hub.mirror(client, resolved, heavy, storage, cache_uri(cfg), work)
        source.copied_files += copied.files
        source.copied_bytes += copied.bytes
    if prepared.sources:
        run_uri = cfg.output.run_uri if cfg.output.run_uri.endswith("/") else cfg.output.run_uri + "/"
        document = {"sources": [s.to_json() for s in prepared.sources]}
        storage.write_bytes(
            S3Uri.parse(run_uri + SOURCES_FILE), json.dumps(document, indent=2).encode(), "application/json"
        )


def recorded_commits(storage: Storage, cfg: TrainerConfig) -> dict[str, str]:
    """field -> commit, from the run's `hub-sources.json` (written by this run's Validating step); {} if none."""
    run_uri = cfg.output.run_uri if cfg.output.run_uri.endswith("/") else cfg.output.run_uri + "/"
    record = S3Uri.parse(run_uri + SOURCES_FILE)
    if not storage.exists(record):
        return {}
    try:
        document = json.loads(storage.read_bytes(record))
        return {str(s["field"]): str(s["commit"]) for s in document["sources"]}
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigInvalid(f"{record}: unreadable record of the run's Hub sources ({error})") from None


def cached(cfg: TrainerConfig, storage: Storage) -> TrainerConfig:
    """The training side: each hf:// URI replaced by the cached copy of its recorded commit, without the hub.

    The commit is the field's revision when that is a full commit hash, else the one this run's Validating
    step recorded; neither is ConfigInvalid (the run was not validated), and a commit missing from the cache is
    StorageNotFound."""
    fields = hub_fields(cfg)
    if not fields:
        return cfg
    commits = recorded_commits(storage, cfg)
    cache = cache_uri(cfg)
    model_uri = None
    data: dict[str, str] = {}
    for item in fields:
        ref = hub.parse(item.uri, item.name)
        commit = item.revision if item.revision and COMMIT.match(item.revision) else commits.get(item.name)
        if commit is None:
            raise ConfigInvalid(
                f"{item.name}: {item.uri!r} at revision {item.revision or hub.DEFAULT_REVISION!r} has no recorded "
                f"commit in {cfg.output.run_uri}{SOURCES_FILE}: hf:// sources are resolved and copied by the "
                "Validating step (finetune_trainer validate) before training"
            )
        folder = hub.cache_folder(cache, hub.Resolved(ref, item.revision or hub.DEFAULT_REVISION, commit, ()))
        hub.require_cached(storage, folder, f"{item.name}: {item.uri}@{commit}")
        if ref.kind == "model":
            model_uri = str(folder)
        else:
            uris = _dataset_uris_cached(storage, folder, ref, f"{item.uri}@{commit}/")
            split = _data_split(item.name)
            _merge(data, uris if split == "train" else {split: uris["train"]}, split)
        log.info("%s: %s at commit %s, read from %s", item.name, item.uri, commit, folder)
    return _rewritten(cfg, model_uri, data)
