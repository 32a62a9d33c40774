"""A GGUF file's metadata and tensors, read in one pass (what `core.weights.load_gguf` needs),
and `Packed`: a matrix kept in GGUF block types.

gguf's own `GGUFReader` builds a numpy view per metadata item: the 49k tokens and merges of the
default model's tokenizer took it 5 s, most of the app's first-answer time. This reads the same
layout (GGUF v2/v3: header, key/value metadata, tensor infos, aligned data) with `struct` over
the bytes, and maps the tensor data read-only with numpy. `fields[key].contents()` and
`tensors[i].name / tensor_type / shape / data` mirror GGUFReader's, so the tokenizer and config
code read either.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
SCALARS |= {11: "<q", 12: "<d"}
NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32}
NUMPY |= {6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
STRING, ARRAY = 8, 9


@dataclass
class Field:
    value: Any

    def contents(self) -> Any:
        return self.value


@dataclass
class Tensor:
    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: np.ndarray  # dims as stored: (K, N) for a matrix of N rows of K
    data: np.ndarray  # (N, K) values, or (N, row bytes) uint8 for block types


class Reader:
    """`fields` (key -> Field) and `tensors` of the GGUF at `path`; ValueError if it is not one."""

    def __init__(self, path: str | Path) -> None:
        import gguf

        self.map = np.memmap(path, dtype=np.uint8, mode="r")
        self.buf = memoryview(self.map)
        self.at = 0
        magic, version = self.buf[:4].tobytes(), self._scalar(4, at=4)
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"not a GGUF v2/v3 file (magic {magic!r}, version {version})")
        self.at = 8
        n_tensors, n_fields = self._scalar(10), self._scalar(10)
        self.fields = {}
        for _ in range(n_fields):
            key = self._string()
            self.fields[key] = Field(self._value(self._scalar(4)))
        infos = []
        for _ in range(n_tensors):
            name, n_dims = self._string(), self._scalar(4)
            dims = [self._scalar(10) for _ in range(n_dims)]
            infos.append((name, dims, self._scalar(4), self._scalar(10)))
        align = int(self.fields.get("general.alignment", Field(32)).value)
        start = -(-self.at // align) * align
        self.tensors = [self._tensor(gguf, start, *info) for info in infos]

    def _scalar(self, kind: int, at: int | None = None) -> Any:
        fmt = SCALARS[kind]
        pos = self.at if at is None else at
        (value,) = struct.unpack_from(fmt, self.buf, pos)
        if at is None:
            self.at += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._scalar(10)
        text = self.buf[self.at : self.at + n].tobytes().decode("utf-8", errors="replace")
        self.at += n
        return text

    def _value(self, kind: int) -> Any:
        if kind == STRING:
            return self._string()
        if kind != ARRAY:
            return self._scalar(kind)
        item, count = self._scalar(4), self._scalar(10)
        if item in NUMPY:  # numbers: one read for the whole array
            dtype = np.dtype(NUMPY[item]).newbyteorder("<")
            values = np.frombuffer(self.buf, dtype, count, self.at)
            self.at += values.nbytes
            return values.tolist()
        return [self._value(item) for _ in range(count)]

    def _tensor(self, gguf: Any, start: int, name: str, dims: list, kind: int, offset: int):
        qtype = gguf.GGMLQuantizationType(kind)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        shape = tuple(reversed(dims))  # (N, K): rows of K
        nbytes = int(np.prod(dims)) // block * size
        raw = self.map[start + offset : start + offset + nbytes]
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = raw.view(np.float32 if size == 4 else np.float16).reshape(shape)
        else:
            data = raw.reshape(*shape[:-1], shape[-1] // block * size)
        return Tensor(name, qtype, np.array(dims), data)


# GGUF block types `core.kernels` multiplies by without dequantizing: (weights, bytes) per block
PACKED_TYPES = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q8_0": (32, 34), "Q4_K": (256, 144)}
PACKED_TYPES["Q6_K"] = (256, 210)


@dataclass(frozen=True)
class Packed:
    """A matrix (N, K) kept in GGUF block types: `parts` are its rows in order, each
    (type name, uint8 blocks (rows, row_bytes)); Q, K and V stored in different types stay
    separate parts of one stacked matrix."""

    parts: tuple[tuple[str, torch.Tensor], ...]
    shape: tuple[int, int]

    @classmethod
    def of(cls, qtype: str, blocks: np.ndarray, k: int, copy: bool = True) -> Packed:
        """One part from (rows, row_bytes) blocks; `copy=False` keeps a GGUF's memory map
        (read-only: nothing writes to packed blocks), so only the pages in use are resident."""
        if copy:
            return cls(
                ((qtype, torch.from_numpy(np.array(blocks, dtype=np.uint8))),), (len(blocks), k)
            )
        with warnings.catch_warnings():  # torch warns that the map is read-only: we never write
            warnings.simplefilter("ignore", UserWarning)
            data = torch.from_numpy(blocks.view(np.uint8))
        return cls(((qtype, data),), (data.shape[0], k))

    @classmethod
    def cat(cls, items: Sequence[Packed]) -> Packed:
        """Rows of `items` stacked, each part kept where it lies (no copy)."""
        parts = tuple(part for item in items for part in item.parts)
        return cls(parts, (sum(i.shape[0] for i in items), items[0].shape[1]))

    def rows(self, start: int, stop: int) -> Packed:
        """Rows start..stop-1 (Q, K and V back apart)."""
        parts, at = [], 0
        for qtype, data in self.parts:
            lo, hi = max(start - at, 0), min(stop - at, data.shape[0])
            if lo < hi:
                parts.append((qtype, data[lo:hi]))
            at += data.shape[0]
        return Packed(tuple(parts), (stop - start, self.shape[1]))

    @property
    def nbytes(self) -> int:
        return sum(data.numel() for _, data in self.parts)

    def dequantize(self) -> torch.Tensor:
        """The dense fp32 matrix (N, K), by gguf's reference dequantizers."""
        import gguf

        dense = [
            gguf.quants.dequantize(data.numpy(), gguf.GGMLQuantizationType[qtype])
            for qtype, data in self.parts
        ]
        return torch.from_numpy(np.concatenate(dense).astype(np.float32, copy=False))
