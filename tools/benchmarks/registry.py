"""The sections of tools/benchmark.py by name, in the order a full run measures them."""

import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Tuple

__all__ = ["SECTIONS", "Section", "ordered", "section", "select"]


@dataclass(frozen=True)
class Section:
    """One measurement of tools/benchmark.py."""

    name: str  # what --only / --skip take
    number: str  # its number in the docs ("1", "1b", ...)
    title: str  # the line printed before it runs
    key: str  # where its results go in the JSON
    run: Callable  # run(ctx: Context) -> dict (the results under ``key``)


#: name -> Section (see :func:`ordered` for the order of a run).
SECTIONS: Dict[str, Section] = {}


def _order(s: Section) -> Tuple[int, str]:
    digits = re.match(r"\d+", s.number).group()
    return int(digits), s.number[len(digits) :]


def ordered() -> List[Section]:
    """Every section in the order of a full run: by number ("1", "1b", "2", ..., "11")."""
    return sorted(SECTIONS.values(), key=_order)


def section(name: str, number: str, title: str, key: str) -> Callable[[Callable], Callable]:
    """Register ``run(ctx) -> dict`` as the section ``name``."""

    def register(run: Callable) -> Callable:
        if name in SECTIONS:
            raise ValueError(f"benchmark section {name!r} registered twice")
        SECTIONS[name] = Section(name, number, title, key, run)
        return run

    return register


def select(only: Iterable[str] = (), skip: Iterable[str] = ()) -> List[Section]:
    """The sections to run, in :func:`ordered` order: ``only`` those (all if empty), less ``skip``.
    An unknown name is a ValueError listing the known ones."""
    only, skip = list(only), list(skip)
    unknown = sorted(set(only + skip) - set(SECTIONS))
    if unknown:
        raise ValueError(
            f"unknown benchmark section(s) {', '.join(unknown)}; "
            f"the sections are: {' '.join(SECTIONS)}"
        )
    return [s for s in ordered() if (not only or s.name in only) and s.name not in skip]
