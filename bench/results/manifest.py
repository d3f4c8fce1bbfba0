"""manifest.json: the one place that parses it (``load_manifest``) and the one place that writes it
(``save_manifest``), with its self-checksum ``manifest_sha256`` (``manifest_digest``).

The seal covers the manifest's canonical content (sorted keys, no spaces), so an edited spec, commit, preset,
run list or table checksum is refused, not trusted. It guards against accidents and partial edits, not against
a forger who recomputes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from marginbench.bench.errors import SpecError
from marginbench.bench.results.store import atomic_write

MANIFEST = "manifest.json"
SEAL = "manifest_sha256"  # manifest.json's checksum of its own canonical content (``manifest_digest``)


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of a manifest's canonical JSON (sorted keys, no spaces), ``manifest_sha256`` itself left out."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()).hexdigest()


def check_seal(manifest: object, path: Path) -> None:
    """SpecError unless ``manifest`` (manifest.json, parsed) is an object that matches its ``manifest_sha256``."""
    if not isinstance(manifest, dict):
        raise SpecError(f"{path} is not a JSON object")
    if not isinstance(manifest.get(SEAL), str):
        raise SpecError(f"{path} carries no checksum of itself ({SEAL}), so its specs, commit and list of runs cannot be trusted")
    if manifest_digest(manifest) != manifest[SEAL]:
        raise SpecError(f"{path} does not match its own checksum ({SEAL}): its specs, preset, commit, list of runs or table checksums were edited")


def load_manifest(root: Path | str, *, sealed: bool = True) -> dict[str, Any]:
    """DIR/manifest.json as a dict: every reader of a manifest goes through here.

    SpecError (one line) where it cannot be read, is not JSON or not an object, or (``sealed``, the default)
    does not match its own ``manifest_sha256``. ``sealed=False`` only for what is read before the checks
    (the plugins a directory names, whether it is a copy) or to seal an old manifest (``seal_manifest``).
    """
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        text = str(err)
        raise SpecError(f"cannot read {path}: {text.splitlines()[0] if text.strip() else type(err).__name__}") from None
    if sealed:
        check_seal(manifest, path)
    elif not isinstance(manifest, dict):
        raise SpecError(f"{path} is not a JSON object")
    return manifest


def sweep_manifest(root: Path | str) -> dict[str, Any]:
    """``load_manifest``, and SpecError unless it holds the sweep's experiment specs (what run and attack read)."""
    manifest = load_manifest(root)
    specs = manifest.get("specs")
    if not (isinstance(specs, list) and specs and all(isinstance(spec, dict) for spec in specs)):
        raise SpecError(f"{Path(root) / MANIFEST} holds no experiment spec")
    return manifest


def save_manifest(root: Path | str, manifest: Mapping[str, Any]) -> None:
    """DIR/manifest.json with its ``manifest_sha256``, computed on the JSON as it will be read back; atomic."""
    plain = json.loads(json.dumps({k: v for k, v in manifest.items() if k != SEAL}, default=str, allow_nan=True))
    text = json.dumps({**plain, SEAL: manifest_digest(plain)}, indent=2, sort_keys=False, allow_nan=True) + "\n"
    atomic_write(Path(root) / MANIFEST, lambda f: f.write(text.encode()))
