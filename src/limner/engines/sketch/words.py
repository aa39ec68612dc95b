"""How the sketch engine reads a prompt: colour words, shape words, night words, and a digest of every
word.

A prompt is lower-cased and split into words. Colour words (``COLOURS``) pick the palette, shape words
(``SHAPES``) pick what is drawn, a colour word up to two words before a shape word also colours that
shape ("a red sun over blue mountains"), and the digest of the whole text (case and spacing aside) seeds the
layout, so that any two different prompts give different pictures even when neither names a colour
or a shape. Words of the
negative prompt are removed from the colour and shape choices, and the colours they name are kept out
of palettes that are derived from the digest.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

#: An RGB colour with channels in 0..1.
RGB = tuple[float, float, float]


def _rgb(r: int, g: int, b: int) -> RGB:
    return (r / 255.0, g / 255.0, b / 255.0)


#: Colour words and the colour each names. A word may also be a shape word ("rose").
COLOURS: dict[str, RGB] = {
    "red": _rgb(218, 32, 36),
    "crimson": _rgb(190, 20, 52),
    "scarlet": _rgb(236, 40, 12),
    "maroon": _rgb(120, 18, 30),
    "ruby": _rgb(200, 16, 70),
    "orange": _rgb(245, 128, 20),
    "amber": _rgb(255, 176, 0),
    "coral": _rgb(250, 118, 88),
    "salmon": _rgb(248, 136, 112),
    "peach": _rgb(252, 180, 140),
    "yellow": _rgb(248, 216, 36),
    "gold": _rgb(222, 176, 40),
    "golden": _rgb(222, 176, 40),
    "green": _rgb(40, 168, 60),
    "lime": _rgb(150, 220, 40),
    "olive": _rgb(118, 128, 36),
    "emerald": _rgb(20, 150, 92),
    "mint": _rgb(150, 230, 190),
    "blue": _rgb(36, 88, 220),
    "navy": _rgb(18, 32, 104),
    "azure": _rgb(40, 140, 240),
    "sapphire": _rgb(20, 60, 170),
    "indigo": _rgb(72, 40, 160),
    "cyan": _rgb(24, 208, 228),
    "teal": _rgb(18, 136, 136),
    "turquoise": _rgb(56, 208, 196),
    "aqua": _rgb(60, 220, 220),
    "purple": _rgb(128, 48, 172),
    "violet": _rgb(148, 78, 222),
    "lavender": _rgb(180, 158, 232),
    "lilac": _rgb(200, 160, 220),
    "magenta": _rgb(222, 36, 180),
    "fuchsia": _rgb(236, 40, 200),
    "pink": _rgb(246, 136, 180),
    "rose": _rgb(232, 88, 128),
    "brown": _rgb(128, 78, 38),
    "chocolate": _rgb(96, 56, 28),
    "tan": _rgb(208, 172, 124),
    "beige": _rgb(226, 206, 166),
    "bronze": _rgb(178, 110, 48),
    "copper": _rgb(186, 100, 50),
    "black": _rgb(16, 16, 20),
    "charcoal": _rgb(54, 58, 62),
    "white": _rgb(246, 246, 242),
    "ivory": _rgb(250, 246, 226),
    "cream": _rgb(248, 238, 200),
    "gray": _rgb(128, 128, 130),
    "grey": _rgb(128, 128, 130),
    "silver": _rgb(192, 194, 202),
}

#: Shape words and the shape each draws.
SHAPES: dict[str, str] = {
    **dict.fromkeys(("circle", "ball", "dot", "orb", "bubble", "disc", "disk", "sphere"), "circle"),
    **dict.fromkeys(("square", "box", "cube", "block", "rectangle"), "square"),
    **dict.fromkeys(("triangle", "pyramid"), "triangle"),
    **dict.fromkeys(("star", "starry", "sparkle"), "star"),
    **dict.fromkeys(("sun", "sunny", "sunset", "sunrise", "sunshine"), "sun"),
    **dict.fromkeys(("moon", "crescent", "moonlight"), "moon"),
    **dict.fromkeys(("tree", "forest", "pine", "oak", "woods"), "tree"),
    **dict.fromkeys(("house", "home", "cottage", "cabin", "building", "village", "hut"), "house"),
    **dict.fromkeys(("mountain", "hill", "peak", "alps", "volcano"), "mountain"),
    **dict.fromkeys(("wave", "sea", "ocean", "water", "lake", "river", "beach"), "wave"),
    **dict.fromkeys(("heart", "love"), "heart"),
    **dict.fromkeys(("cloud", "cloudy", "clouds"), "cloud"),
    **dict.fromkeys(("flower", "rose", "daisy", "tulip", "blossom", "garden", "bloom"), "flower"),
    **dict.fromkeys(("ring", "donut", "halo"), "ring"),
    **dict.fromkeys(("diamond", "gem", "rhombus"), "diamond"),
    **dict.fromkeys(("hexagon", "honeycomb"), "hexagon"),
    **dict.fromkeys(("stripe", "line", "stripes", "lines"), "stripe"),
    **dict.fromkeys(("lighthouse", "beacon"), "lighthouse"),
    **dict.fromkeys(("cat", "kitten", "kitty", "kittens"), "cat"),
}

#: Shape words that stand for several of their shape ("a forest" is many trees, not one).
MANY: dict[str, int] = {"forest": 5, "woods": 5, "village": 3, "garden": 4, "starry": 6}

#: Words that make the scene a night scene: a dark sky and ground, a moon and stars.
NIGHT_WORDS = frozenset({"night", "midnight", "nighttime", "nightfall", "moonlit", "starlit", "tonight"})

#: Every shape the scene renderer knows.
SHAPE_KINDS: frozenset[str] = frozenset(SHAPES.values())

_WORD = re.compile(r"[a-z]+")


def words_of(text: str | None) -> list[str]:
    """Lower-cased words of a text; digits and punctuation separate words."""
    return _WORD.findall((text or "").lower())


def _lookup(word: str, table: dict[str, str] | dict[str, RGB]) -> str | None:
    """The table key a word stands for, allowing simple plurals (trees, boxes, skies are not needed)."""
    if word in table:
        return word
    for suffix in ("es", "s"):
        if word.endswith(suffix) and word[: -len(suffix)] in table:
            return word[: -len(suffix)]
    return None


@dataclass(frozen=True)
class PromptPlan:
    """What a prompt asks for, after the negative prompt has been taken out."""

    #: Colours named by the prompt with how often each was named, in order of first mention.
    colours: tuple[tuple[RGB, int], ...]
    #: Shapes named by the prompt with how often each was named, in order of first mention.
    shapes: tuple[tuple[str, int], ...]
    #: Colours named by the negative prompt: derived palettes steer clear of their hues.
    avoid_colours: tuple[RGB, ...]
    #: Shapes named by the negative prompt: never drawn, not even as the digest's own choice.
    avoid_shapes: frozenset[str]
    #: SHA-256 of the prompt and the negative prompt (lower-cased, spacing normalised): seeds the layout.
    digest: bytes
    #: Colours bound to shapes by the words ("a red sun over blue mountains": sun red, mountain blue).
    #: A bound colour paints its shape, and still counts in `colours` (the palette) like any colour word.
    shape_colours: tuple[tuple[str, RGB], ...] = ()
    #: A night word was used (and not negated): the scene is darkened and gets a moon and stars.
    night: bool = False


def read_prompt(prompt: str, negative_prompt: str | None = None) -> PromptPlan:
    words = words_of(prompt)
    negative = words_of(negative_prompt)
    neg_colours = {k for w in negative if (k := _lookup(w, COLOURS))}
    neg_shapes = {SHAPES[k] for w in negative if (k := _lookup(w, SHAPES))}

    colour_counts: Counter[str] = Counter()
    shape_counts: Counter[str] = Counter()
    bound: dict[str, str] = {}  # shape kind -> colour word
    pending: tuple[str, int] | None = None  # the last colour word not yet bound, and where it stood
    for i, w in enumerate(words):
        shape = _lookup(w, SHAPES)
        if shape and SHAPES[shape] not in neg_shapes:
            kind = SHAPES[shape]
            shape_counts[kind] += MANY.get(shape, 1)
            # A colour word binds to a shape word up to two words after it ("red sun", "red round sun").
            if pending is not None and i - pending[1] <= 2 and kind not in bound:
                bound[kind] = pending[0]
                pending = None
        colour = _lookup(w, COLOURS)
        if colour and colour not in neg_colours:
            colour_counts[colour] += 1
            pending = (colour, i)

    # The digest takes the whole text, lower-cased with its spacing normalised: word order, digits and
    # punctuation all count ("room 1" and "room 2" are different prompts). The separator keeps the
    # negative prompt from running into the prompt.
    text = " ".join(prompt.lower().split()) + "\x00" + " ".join((negative_prompt or "").lower().split())
    return PromptPlan(
        colours=tuple((COLOURS[c], n) for c, n in colour_counts.items()),
        shapes=tuple(shape_counts.items()),
        avoid_colours=tuple(COLOURS[c] for c in sorted(neg_colours)),
        avoid_shapes=frozenset(neg_shapes),
        digest=hashlib.sha256(text.encode()).digest(),
        shape_colours=tuple((kind, COLOURS[c]) for kind, c in bound.items()),
        night=any(w in NIGHT_WORDS for w in words) and not any(w in NIGHT_WORDS for w in negative),
    )
