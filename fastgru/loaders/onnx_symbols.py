"""Symbolic tensors for onnx_dataflow's proofs: sizes as monomials, tensors as runs of axes.

A tensor derived from a source (a graph input, a GRU's Y or Y_h) is a list of dims, each dim a
run of the source's axes ("atoms") in row-major order; a size is an integer times symbols, one
symbol per size the graph leaves open.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    """coef · ∏ symbols: a tensor dimension that may depend on sizes the graph leaves open."""

    coef: int
    symbols: tuple[str, ...] = ()  # sorted, with repetition

    def __mul__(self, other: "Size") -> "Size":
        return Size(self.coef * other.coef, tuple(sorted(self.symbols + other.symbols)))

    def divide(self, other: "Size") -> "Size | None":
        """self / other when it is a monomial for every value of the symbols, else None."""
        if other.coef == 0 or self.coef % other.coef:
            return None
        rest = list(self.symbols)
        for symbol in other.symbols:
            if symbol not in rest:
                return None
            rest.remove(symbol)
        return Size(self.coef // other.coef, tuple(rest))

    @property
    def fixed(self) -> int | None:
        return None if self.symbols else self.coef


ONE = Size(1)


def symbol(name: str) -> Size:
    return Size(1, (name,))


@dataclass(frozen=True)
class Atom:
    """One axis of a source, or the slice [start, start + size) of it (start None: whole)."""

    axis: str
    size: Size
    start: int | None = None


@dataclass(frozen=True)
class Tensor:
    """Data derived from sources: dims, each a run of atoms; `taken` holds the size-1 slices
    a Gather or Squeeze removed (which layer of a state a value is)."""

    dims: tuple[tuple[Atom, ...], ...]
    elem: int
    taken: frozenset = frozenset()

    @staticmethod
    def source(axes: list[tuple[str, Size]], elem: int) -> "Tensor":
        return Tensor(tuple((Atom(name, size),) for name, size in axes), elem)

    def sizes(self) -> list[Size]:
        out = []
        for dim in self.dims:
            size = ONE
            for atom in dim:
                size = size * atom.size
            out.append(size)
        return out

    def key(self) -> tuple:
        """What the tensor holds, independent of where size-1 axes stand."""
        dims = tuple(tuple(a for a in dim if a.size != ONE) for dim in self.dims)
        ones = {a for dim in self.dims for a in dim if a.size == ONE and a.start is not None}
        return dims, frozenset(ones | set(self.taken))


@dataclass(frozen=True)
class Shape:
    """A 1-D integer tensor (or a scalar) of sizes."""

    values: tuple[Size, ...]
    scalar: bool = False

