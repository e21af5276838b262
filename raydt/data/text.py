"""Text corpora for λ2 co-training and ChibiT pre-training, tokenised once and cached.

Sources by URI:

* ``wikitext-103``: WikiText-103 (raw) through the ``datasets`` library (needs the network
  the first time; ``datasets`` keeps its own cache);
* ``text:/path``: a UTF-8 file, or every file under a directory (sorted, recursive);
* ``gcide:[PATH]``: the GNU Collaborative International Dictionary of English (Debian's
  ``dict-gcide``: ``/usr/share/dictd/gcide.dict.dz``, gzip-compatible), markup stripped;
* ``pydoc:``: the Python documentation topics that ship with every CPython (about 65k
  words; enough for smoke tests and the laptop quickstart, not for real pre-training).

Token ids are cached as ``.npy`` under ``$RAYDT_DATA_DIR/text/``, keyed by the source's
identity (paths, sizes, modification times) and the tokenizer's vocabulary, and split into
a training part and the last ``HELD_OUT`` fraction for held-out loss.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raydt.artifacts import refuse_build
from raydt.errors import ConfigError, DataError
from raydt.fsutil import atomic_path, data_dir, locked
from raydt.offline import is_offline

HELD_OUT = 0.02
"""Fraction of a corpus's tokens (its end) kept out of training for held-out loss."""
GCIDE_DEFAULT = "/usr/share/dictd/gcide.dict.dz"


# --------------------------------------------------------------------------------------
# Reading raw text


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if files:
            return files
        raise DataError(f"text:{path}: the directory holds no files")
    raise DataError(f"text:{path}: no such file or directory")


def _clean_gcide(raw: str) -> str:
    """Dictionary prose without dictd's markup: database headers, source tags such as
    ``[1913 Webster]``, pronunciations between backslashes, ``{cross references}``,
    accent codes such as ``[aum]`` (ä → a) and any SGML tags."""
    lines = [ln for ln in raw.splitlines()
             if not ln.startswith("00-database") and not re.fullmatch(r"\s*\[[^\]]*\]\s*", ln)]
    text = "\n".join(lines)
    text = re.sub(r"\\[^\\\n]*\\", " ", text)  # \Lar"va*ted\ pronunciations
    text = re.sub(r"\[(ae|oe)\]", r"\1", text)
    text = re.sub(r"\[([a-z])[a-z]{2,6}\]", r"\1", text)  # [aum] → a
    text = re.sub(r"<[^>]{0,40}>", " ", text).replace("{", "").replace("}", "")
    return re.sub(r"[ \t]+", " ", text)


@dataclass(frozen=True)
class TextSource:
    """A parsed text URI."""

    uri: str
    kind: str
    path: Path | None = None
    key: str = "loss.text"
    """The config key the URI came from, for messages (loss.text or corpus.text)."""

    def identity(self) -> dict[str, Any]:
        """What the cache key depends on: for files, their paths, sizes and mtimes."""
        if self.path is None:
            import sys

            return {"kind": self.kind, "python": sys.version.split()[0]}
        files = _files_under(self.path)
        return {"kind": self.kind, "files": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]}

    def read(self) -> str:
        if self.kind == "pydoc":
            from pydoc_data.topics import topics

            return "\n\n".join(topics[k] for k in sorted(topics))
        if self.kind == "wikitext-103":
            return _read_wikitext()
        assert self.path is not None
        if self.kind == "gcide":
            with gzip.open(self.path, "rt", encoding="utf-8", errors="replace") as fh:
                return _clean_gcide(fh.read())
        parts = []
        files = _files_under(self.path)
        for f in files:
            try:
                parts.append(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{self.key}={self.uri!r}: {f} is not UTF-8 text; remove it or point at text "
                                "files only") from None
        text = "\n\n".join(parts)
        if not text.strip():
            raise DataError(f"{self.key}={self.uri!r}: no text there ({len(files)} file(s), all empty); "
                            "point it at a file or folder of text")
        return text


def parse_text_uri(uri: str, key: str = "loss.text") -> TextSource:
    """Check a text URI without reading it (fails before any training starts); ``key`` is
    the config key it came from, named in errors."""
    if uri in ("wikitext-103", "wikitext:103"):
        return TextSource(uri, "wikitext-103", key=key)
    if uri in ("pydoc", "pydoc:"):
        return TextSource(uri, "pydoc", key=key)
    scheme, sep, rest = uri.partition(":")
    if sep and scheme == "text":
        if not rest:
            raise ConfigError(f"{key}={uri!r}: give a path, for example text:/data/corpus.txt")
        path = Path(rest).expanduser()
        if not path.exists():
            raise ConfigError(f"{key}={uri!r}: {path} does not exist")
        return TextSource(uri, "text", path, key=key)
    if sep and scheme == "gcide":
        path = Path(rest or os.environ.get("RAYDT_GCIDE", GCIDE_DEFAULT)).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{key}={uri!r}: {path} not found; install Debian's dict-gcide "
                "(apt-get install dict-gcide) or give gcide:/path/to/gcide.dict.dz"
            )
        return TextSource(uri, "gcide", path, key=key)
    raise ConfigError(
        f"{key}={uri!r} is not recognised; use wikitext-103, text:/path, gcide:[PATH] or pydoc:"
    )


def _read_wikitext() -> str:
    if is_offline():
        raise DataError("wikitext-103 needs the network once and downloads are off (RAYDT_OFFLINE); "
                        "use text:/path, gcide: or pydoc: instead")
    try:
        import datasets
    except ImportError:
        raise DataError("wikitext-103 is read through the datasets library: pip install datasets") from None
    try:
        ds = datasets.load_dataset("Salesforce/wikitext", "wikitext-103-raw-v1", split="train")
    except Exception as exc:  # network, hub or cache errors all end the same way
        raise DataError(f"wikitext-103 could not be loaded ({exc.__class__.__name__}: {exc}); "
                        "use text:/path, gcide: or pydoc: offline") from None
    return "".join(ds["text"])


# --------------------------------------------------------------------------------------
# Tokenising, cached


def tokenizer_fingerprint(tokenizer: Any) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]


def tokens_path(uri: str, tokenizer: Any, key: str = "loss.text") -> Path:
    """Where :func:`tokenize_cached` keeps the token ids of ``uri`` under ``tokenizer``."""
    source = parse_text_uri(uri, key)
    digest = hashlib.sha256(
        json.dumps([source.identity(), tokenizer_fingerprint(tokenizer)], default=str).encode()
    ).hexdigest()[:24]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", source.kind)
    return data_dir() / "text" / f"{slug}-{digest}.npy"


def tokenize_cached(uri: str, tokenizer: Any, log: Callable[[str], None] = print,
                    key: str = "loss.text") -> np.ndarray:
    """All token ids of a text source under ``tokenizer`` (int32), computed once."""
    source = parse_text_uri(uri, key)
    path = tokens_path(uri, tokenizer, key)
    with locked(path):
        if path.is_file():
            return np.load(path)
        refuse_build(f"the tokenised text {uri}")
        text = source.read()
        log(f"tokenising {uri} ({len(text) / 1e6:.1f}M characters) → {path}")
        chunks = [text[i:i + 1_000_000] for i in range(0, len(text), 1_000_000)]
        ids = np.concatenate([np.asarray(tokenizer(c)["input_ids"], dtype=np.int32) for c in chunks])
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, ids)
        return ids


def split_tokens(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training tokens, held-out tokens): the corpus's last ``HELD_OUT`` fraction is held out."""
    cut = int(len(ids) * (1 - HELD_OUT))
    return ids[:cut], ids[cut:]


class TextSampler:
    """Random contiguous blocks of token ids, drawn on the training device."""

    def __init__(self, ids: np.ndarray, block_size: int, device: torch.device | str = "cpu", seed: int = 0) -> None:
        if len(ids) <= block_size + 1:
            raise DataError(
                f"the text has {len(ids)} tokens, fewer than one block of {block_size + 1}; "
                "use more text or a smaller block size"
            )
        # int32 on the device: half of int64's memory (WikiText-103's 100M+ ids: ~0.5 GB
        # less on every GPU); GPT-2's 50k vocabulary fits with room to spare.
        if len(ids) and int(ids.max()) >= 2**31:
            raise DataError(f"token ids up to {int(ids.max())} do not fit int32")
        self.ids = torch.from_numpy(ids.astype(np.int32)).to(device)
        self.block = block_size + 1  # inputs and their next-token targets
        self.offsets = torch.arange(self.block, device=device)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def sample(self, batch_size: int) -> torch.Tensor:
        """(batch_size, block_size + 1) token ids."""
        starts = torch.randint(
            len(self.ids) - self.block + 1, (batch_size, 1), generator=self.generator, device=self.ids.device
        )
        return self.ids[starts + self.offsets].long()  # (B, block+1): only the drawn blocks widen

    def fixed_blocks(self, count: int) -> torch.Tensor:
        """``count`` evenly spaced blocks (the same every call): a stable held-out set."""
        n = len(self.ids) - self.block + 1
        starts = torch.linspace(0, n - 1, min(count, n), device=self.ids.device).long().unsqueeze(1)
        return self.ids[starts + self.offsets].long()
