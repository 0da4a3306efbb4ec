"""A registry of forget requests: named, versioned offsets in one folder.

    root/
      authors-a/
        v1/            an Offset folder (model.safetensors + offset.json, see offsets.py)
        v2/
        v3.removed     a tombstone: v3 existed and was removed
      a-and-b/
        v1/            a composition: composition.json lists member refs and their α

A reference ``name@N`` always means the same entry: versions are immutable and their
numbers are never reused, even after a removal (the tombstone keeps the number taken).
A bare ``name`` means its latest version.

Writes are atomic: a version is assembled in ``root/.staging`` and renamed into place in
one step, so neither a reader nor a process killed mid-save ever sees half of one. Two
processes adding to the same name cannot both get the same number: renaming onto an
existing version fails, and the loser takes the next number.

Offsets compose by adding their deltas in fusion (see fusion.py), so a composition is no
weight merge: it is the list of its members (pinned ``name@N`` refs) with their α.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .artifact import META, Offset

DEFAULT_ROOT = "offsets/registry"
COMPOSITION = "composition.json"
FORMAT_VERSION = 1
# A staging folder this old belongs to a process that died mid-save; it is deleted.
STALE_STAGING_SECONDS = 24 * 3600

NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
REF = re.compile(rf"(?P<name>{NAME})(?:@(?P<version>[1-9][0-9]*))?")
VERSION_DIR = re.compile(r"v([1-9][0-9]*)")
TAKEN = re.compile(r"v([1-9][0-9]*)(?:\.removed)?")


class RegistryError(KeyError):
    """A ref that names nothing in the registry; the message says what exists."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


def default_root() -> Path:
    """``$OFFSETLAB_REGISTRY`` when set, else ``offsets/registry`` (relative to the cwd)."""
    return Path(os.environ.get("OFFSETLAB_REGISTRY") or DEFAULT_ROOT)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` → (name, None); ``"name@3"`` → (name, 3)."""
    match = REF.fullmatch(ref)
    if not match:
        raise ValueError(f"{ref!r} is not an offset ref: use NAME or NAME@VERSION, where NAME "
                         "starts with a letter or digit and holds only letters, digits, '.', "
                         "'_' and '-', and VERSION is 1, 2, ...")
    version = match["version"]
    return match["name"], int(version) if version else None


class Registry:
    """Named, versioned offsets and compositions of them, in the folder ``root``."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    # -- what is there ---------------------------------------------------------------

    def names(self) -> list[str]:
        """Names with at least one live version."""
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"The registry {self.root} is a file, not a registry folder. "
                             "Pass --registry a folder.")
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if not p.name.startswith(".") and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        """Live versions of ``name``, oldest first."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(int(m[1]) for p in folder.iterdir()
                      if (m := VERSION_DIR.fullmatch(p.name)) and _entry_kind(p))

    def path(self, ref: str) -> Path:
        name, version = self.find(ref)
        return self.root / name / f"v{version}"

    def find(self, ref: str) -> tuple[str, int]:
        """The (name, version) a ref points to; a bare name means its latest version."""
        name, version = parse_ref(ref)
        live = self.versions(name)
        if not live:
            raise RegistryError(f"No offset named {name!r} in the registry at {self.root}; "
                                f"it holds {self._describe()}.")
        if version is None:
            return name, live[-1]
        if version not in live:
            removed = (self.root / name / f"v{version}.removed").exists()
            raise RegistryError(
                f"{name}@{version} {'was removed from' if removed else 'is not in'} the registry "
                f"at {self.root}; {name} has " + ", ".join(f"v{v}" for v in live) + ".")
        return name, version

    def _describe(self) -> str:
        names = self.names()
        if not names:
            return "nothing yet (add offsets with Registry.add or `offsetlab train --register`)"
        return ", ".join(f"{n} ({', '.join(f'v{v}' for v in self.versions(n))})" for n in names)

    def show(self, ref: str) -> dict:
        """An entry's metadata (the loss history shortened to its length)."""
        name, version = self.find(ref)
        path = self.root / name / f"v{version}"
        entry, data = _read_entry(path)
        if "history" in data:
            data["history"] = f"{len(data['history'])} steps"
        return {"ref": f"{name}@{version}", "path": str(path), "entry": entry, **data}

    def list(self) -> list[dict]:
        """One row per live version: what a table of forget requests shows. An entry whose
        files cannot be read is listed as "damaged", with why; it does not hide the others."""
        rows = []
        for name in self.names():
            for version in self.versions(name):
                try:
                    rows.append(self._row(name, version))
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                    rows.append({"ref": f"{name}@{version}", "name": name, "version": version,
                                 "entry": "damaged", "objective": "?", "alpha": None,
                                 "forget_size": 0, "forget_sha256": "", "created": "",
                                 "notes": f"unreadable: {err}", "metrics": ""})
        return rows

    def _row(self, name: str, version: int) -> dict:
        entry, data = _read_entry(self.root / name / f"v{version}")
        if not isinstance(data, dict):
            raise ValueError(f"its metadata is a JSON {type(data).__name__}, not an object")
        if entry == "composition":
            members = data["members"]
            objective = " + ".join(f"{m['alpha']:g}·{m['ref']}" for m in members)
            forget = [self.show(m["ref"]).get("forget_set", {}) for m in members]
            size, digest = sum(f.get("size", 0) for f in forget), ""
        else:
            objective = data.get("objective", "?")
            size = data.get("forget_set", {}).get("size", 0)
            digest = data.get("forget_set", {}).get("sha256", "")[:12]
        return {
            "ref": f"{name}@{version}", "name": name, "version": version,
            "entry": entry, "objective": objective, "alpha": data.get("alpha"),
            "forget_size": size, "forget_sha256": digest,
            "created": data.get("registered") or data.get("created", ""),
            "notes": _summary(data.get("notes")), "metrics": _summary(data.get("metrics")),
        }

    # -- loading ---------------------------------------------------------------------

    def resolve(self, ref: str) -> list[tuple[str, float]]:
        """The pinned offset refs an entry stands for, with their α (one for an offset)."""
        name, version = self.find(ref)
        entry, data = _read_entry(self.root / name / f"v{version}")
        if entry == "composition":
            return [(m["ref"], float(m["alpha"])) for m in data["members"]]
        return [(f"{name}@{version}", float(data["alpha"]))]

    def get(self, ref: str, reference, tokenizer=None, base=None) -> Offset:
        """Load one offset onto ``reference`` (fingerprints checked as in ``Offset.load``)."""
        path = self.path(ref)
        if (path / COMPOSITION).is_file():
            members = ", ".join(f"{r} (α {a:g})" for r, a in self.resolve(ref))
            raise ValueError(f"{ref} is a composition of {members}, not one offset; use "
                             "Lab.add_registry to add its offsets with their α.")
        return Offset.load(path, reference, tokenizer, base)

    # -- changing it -----------------------------------------------------------------

    def check_writable(self) -> None:
        """Refuse, before any work, a root that is a file or a folder this process cannot
        write (a missing root is fine: the first add creates it)."""
        root = self.root
        while not root.exists() and root != root.parent:
            root = root.parent  # the nearest existing folder is where mkdir will write
        if not root.is_dir():
            raise ValueError(f"The registry {self.root} cannot be created: {root} is a file. "
                             "Pass --registry a folder.")
        if not os.access(root, os.W_OK | os.X_OK):
            raise ValueError(f"The registry {self.root} is not writable ({root} is read-only). "
                             "Pass --registry a folder you can write to.")

    def add(self, offset: Offset, name: str, notes: Mapping | None = None,
            metrics: Mapping | None = None) -> str:
        """Store ``offset`` as the next version of ``name``; returns its ref ``name@N``.

        ``notes`` (who asked, what, when — whatever the user records) are merged into the
        offset's own notes; ``metrics`` are measurements to show next to it. Both must be
        JSON-serialisable. The offset given is not changed.
        """
        check_name(name)
        meta = {**offset.meta, "name": name,
                "notes": {**offset.meta.get("notes", {}), **dict(notes or {})},
                "metrics": dict(metrics or {}), "registered": _now()}
        entry = Offset(offset.model, offset.alpha, meta)
        return self._publish(name, entry.save)

    def compose(self, refs: Sequence[str], alphas: Sequence[float] | None, out_name: str,
                notes: Mapping | None = None) -> str:
        """Store a composition of entries as the next version of ``out_name``.

        ``alphas`` (one per ref, or None for each member's own α) sets an offset's
        strength and scales a composition's members. Members are pinned to their current
        versions, so the composition keeps meaning the same offsets.
        """
        check_name(out_name)
        if not refs:
            raise ValueError("A composition needs at least one offset ref.")
        if alphas is not None and len(alphas) != len(refs):
            raise ValueError(f"Give one α per ref ({len(refs)}), or none; got {len(alphas)}.")
        members: list[tuple[str, float]] = []
        for i, ref in enumerate(refs):
            entries = self.resolve(ref)
            if alphas is not None and _entry_kind(self.path(ref)) == "composition":
                entries = [(member, alpha * alphas[i]) for member, alpha in entries]
            elif alphas is not None:
                entries = [(entries[0][0], float(alphas[i]))]
            members += entries
        seen = [m for m, _ in members]
        if dupes := sorted({m for m in seen if seen.count(m) > 1}):
            raise ValueError(f"{', '.join(dupes)} would appear twice in {out_name}; list each "
                             "offset once and give it the summed α instead.")
        data = {"format_version": FORMAT_VERSION, "name": out_name,
                "members": [{"ref": m, "alpha": a} for m, a in members],
                "notes": dict(notes or {}), "registered": _now()}

        def write(folder: Path) -> None:
            folder.mkdir()
            _write_json(folder / COMPOSITION, data)

        return self._publish(out_name, write)

    def remove(self, ref: str) -> list[str]:
        """Remove one version (``name@N``) or every version (``name``); returns the refs.

        Refused while a composition that is not being removed uses one of them. Each
        version disappears in one rename; its number stays taken (see the module doc).
        """
        name, version = self.find(ref)  # raises, naming what exists, when nothing matches
        targets = [version] if parse_ref(ref)[1] else self.versions(name)
        refs = [f"{name}@{v}" for v in targets]
        users = {r: users for r in refs if (users := [c for c in self._used_by(r) if c not in refs])}
        if users:
            which = "; ".join(f"{r} by {', '.join(c)}" for r, c in users.items())
            raise ValueError(f"Cannot remove {ref}: it is used by compositions ({which}). "
                             "Remove those compositions first.")
        trash = self.root / ".trash"
        trash.mkdir(exist_ok=True)
        for item in trash.iterdir():  # left by a removal that was killed before it deleted
            shutil.rmtree(item, ignore_errors=True)
        for v in targets:
            folder = self.root / name / f"v{v}"
            # The tombstone comes first, so the number is taken at every moment.
            _write_json(self.root / name / f"v{v}.removed", {"removed": _now()})
            gone = Path(tempfile.mkdtemp(prefix=f"{name}-v{v}.", dir=trash))
            os.replace(folder, gone / "entry")
            shutil.rmtree(gone, ignore_errors=True)
        return refs

    def _used_by(self, ref: str) -> list[str]:
        """The compositions that list ``ref`` among their members."""
        users = []
        for name in self.names():
            for version in self.versions(name):
                entry, data = _read_entry(self.root / name / f"v{version}")
                if entry == "composition" and any(m["ref"] == ref for m in data["members"]):
                    users.append(f"{name}@{version}")
        return users

    def _publish(self, name: str, write: Callable[[Path], object]) -> str:
        """Let ``write`` build a folder in staging, then rename it to the next free version."""
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            try:  # another add may finish, and remove its staging folder, meanwhile
                stale = time.time() - item.stat().st_mtime > STALE_STAGING_SECONDS
            except FileNotFoundError:
                continue
            if stale:
                shutil.rmtree(item, ignore_errors=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=staging))
        try:
            write(stage / "entry")
            folder = self.root / name
            folder.mkdir(exist_ok=True)
            version = 1 + max((int(m[1]) for p in folder.iterdir() if (m := TAKEN.fullmatch(p.name))),
                              default=0)
            while True:
                try:
                    # Fails when the target exists (a concurrent add took it): try the next.
                    os.rename(stage / "entry", folder / f"v{version}")
                    return f"{name}@{version}"
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    version += 1
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def check_name(name: str) -> None:
    """Refuse a name that cannot name a registry entry, saying what can."""
    if not re.fullmatch(NAME, name):
        raise ValueError(f"{name!r} cannot name an offset: use letters, digits, '.', '_' and '-', "
                         "starting with a letter or digit (e.g. 'forget-authors-a').")


def _entry_kind(path: Path) -> str | None:
    if (path / COMPOSITION).is_file():
        return "composition"
    if (path / META).is_file():
        return "offset"
    return None


def _read_entry(path: Path) -> tuple[str | None, dict]:
    """("offset" | "composition", its JSON metadata)."""
    kind = _entry_kind(path)
    return kind, json.loads((path / (COMPOSITION if kind == "composition" else META)).read_text())


def _summary(values: Mapping | None) -> str:
    parts = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in (values or {}).items()]
    return ", ".join(parts)


def _write_json(path: Path, data: dict) -> None:
    """Write through a temporary sibling and rename, so the file is never half-written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
