"""The training sources (music21 corpus folders), their licences, and which ones a run uses.

Each licence is given as its distributor states it: music21's `corpus/license.txt` for the
corpus as a whole, plus any licence file or header inside the folder. A source is
`redistributable` only when nothing its distributor states restricts commercial use or
puts terms on derived works: the shipped weights are MIT-licensed and used commercially.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CORPUS_TERMS = (
    "music21 corpus/license.txt: the corpus is distributed with the permission of the "
    "encoders; some encodings may not be used commercially, as stated in licence files of "
    "individual works or folders"
)


@dataclass(frozen=True)
class Source:
    """One folder of music21's corpus that holds ABC."""

    collection: str  # folder name under music21/corpus
    name: str
    licence: str  # as the distributor states it, in short
    redistributable: bool


SOURCES: dict[str, Source] = {
    s.collection: s
    for s in (
        Source(
            "oneills1850",
            "O'Neill's Music of Ireland (1,850 melodies, 1903), ABC by Norbert Paap",
            "corpus terms only; no licence file or header in the folder; the book is in the "
            "public domain",
            True,
        ),
        Source(
            "ryansMammoth",
            "Ryan's Mammoth Collection (1883), ABC contributed by Ray Davies and others",
            "corpus terms only; no licence file or header in the folder; the book is in the "
            "public domain",
            True,
        ),
        Source(
            "airdsAirs",
            "Aird's Selection of Scotch, English, Irish and Foreign Airs (1778-1803), ABC "
            "by Jack Campin",
            "corpus terms only; no licence file or header in the folder; the books are in "
            "the public domain",
            True,
        ),
        Source(
            "miscFolk",
            "American fife music and Northumbrian Minstrelsy (1882), ABC by Jack Campin",
            "corpus terms only; no licence file or header in the folder; the sources are in "
            "the public domain",
            True,
        ),
        Source(
            "nottingham-dataset",
            "Nottingham Music Database (2 tunes in music21)",
            "corpus terms only; no licence file or header in the folder",
            True,
        ),
        Source(
            "essenFolksong",
            "Essen folk song collection (EsAC), ABC by Seymour Shlien",
            "essenFolksong/license.txt: legal status unclear; permission given for "
            "NON-COMMERCIAL distribution and use of these files in music21",
            False,
        ),
        Source(
            "josquin",
            "Josquin des Prez, bicinia, ABC by Laura E. Conrad (1999)",
            "file headers: GNU General Public License, version 2 or later",
            False,
        ),
    )
}

# Left out of the shipped model's training so that its numbers on an unseen collection
# are honest: Ryan's has 900+ jigs, reels and hornpipes in a house style of its own.
HELDOUT_COLLECTIONS: tuple[str, ...] = ("ryansMammoth",)
# Leave-one-collection-out folds (--heldout-collection C): the two collections with hundreds
# of jigs, reels and hornpipes each, in house styles of their own, so each fold tests
# transfer from one notation dialect to another. The shipped model is the first fold.
LOCO_FOLDS: tuple[str, ...] = ("ryansMammoth", "oneills1850")


class UnknownSourceError(ValueError):
    pass


def check_known(collections: Iterable[str]) -> None:
    unknown = sorted(set(collections) - set(SOURCES))
    if unknown:
        raise UnknownSourceError(f"unknown source(s) {unknown}; known: {sorted(SOURCES)}")


def training_collections(
    include_restricted: Iterable[str] = (), exclude: Iterable[str] = HELDOUT_COLLECTIONS
) -> list[str]:
    """Collections a run trains on: the redistributable ones, plus restricted ones named
    explicitly (opt-in), minus `exclude` (held out for evaluation)."""
    include_restricted, exclude = list(include_restricted), list(exclude)
    check_known([*include_restricted, *exclude])
    chosen = {c for c, s in SOURCES.items() if s.redistributable} | set(include_restricted)
    return sorted(chosen - set(exclude))


def licence_table(collections: Iterable[str]) -> list[dict[str, object]]:
    """Rows for the manifest and the model card: every source a model saw, with its terms."""
    return [
        {
            "collection": c,
            "name": SOURCES[c].name,
            "licence": SOURCES[c].licence,
            "redistributable": SOURCES[c].redistributable,
        }
        for c in sorted(collections)
    ]
