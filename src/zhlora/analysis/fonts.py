"""Pick a font that can draw Chinese chart labels, or decide to label the charts in English.

matplotlib's default font (DejaVu Sans) has no CJK glyphs: Chinese text drawn with it comes
out as empty boxes, with "Glyph ... missing from font" warnings. Charts therefore ask
:func:`resolve_chart_language` first. It looks for an installed font whose character map
really covers Chinese (Noto Sans CJK, Source Han Sans, WenQuanYi, SimHei, ... or any other);
when there is none, every label is drawn in English instead of as boxes.

A character map is not proof that a font draws: matplotlib (3.11+) ships "Last Resort
High-Efficiency", whose map claims every code point and whose every glyph is a box naming the
Unicode block. So a candidate must also *render* the probe text, and :func:`is_box_font` rejects
any font that draws two different characters of one script as the same bitmap (a box font does;
a real font never does). :func:`boxed_characters` applies the same test to every text of a
finished figure: charts log a warning for it, and the tests fail on it.

``ZHLORA_CJK_FONT=/path/to/font.ttf`` adds a font file that is not installed system-wide
(useful without root rights).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from zhlora.errors import ConfigError

logger = logging.getLogger(__name__)

# Tried first, in this order; any other font that covers PROBE_TEXT is accepted too.
PREFERRED_CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
    "Noto Sans CJK JP",
    "Noto Sans CJK TC",
)
# Characters every Chinese chart label set uses (titles, category names, axis names).
PROBE_TEXT = "中文准确率类别理工社会科学人文其他基准损失步数遗忘"
CHART_LANGUAGES = ("auto", "zh", "en")
FONT_FILE_ENV = "ZHLORA_CJK_FONT"


# Pairs of different characters of one script: a real font draws each pair as two different
# bitmaps; a last-resort font draws both as its one box for the Unicode block.
_DISTINCT_PAIRS = ("Aa", "01", "中文", "准率")


@functools.lru_cache(maxsize=None)
def _open_font(font_path: str, face_index: int = 0):
    """An FT2Font of one face of a font file (``.ttc`` collections hold several), or None."""
    from matplotlib import ft2font

    try:
        return ft2font.FT2Font(font_path, face_index=face_index)
    except (OSError, RuntimeError, ValueError):
        return None


@functools.lru_cache(maxsize=None)
def _charmap(font_path: str, face_index: int = 0) -> frozenset[int]:
    font = _open_font(font_path, face_index)
    return frozenset(font.get_charmap()) if font is not None else frozenset()


def _bitmap(font, char: str) -> tuple[tuple[int, ...], bytes]:
    """The 24 px black-and-white rendering of ``char`` (shape and bytes), for comparisons."""
    import numpy as np

    font.set_size(24, 72)
    font.set_text(char)
    font.draw_glyphs_to_bitmap(antialiased=False)
    image = np.asarray(font.get_image())
    return image.shape, image.tobytes()


@functools.lru_cache(maxsize=None)
def is_box_font(font_path: str, face_index: int = 0) -> bool:
    """Whether the font draws boxes instead of letters (a last-resort / fallback font).

    True when the font claims two different characters of one script (see ``_DISTINCT_PAIRS``)
    but renders them as identical bitmaps, or when it cannot be opened.
    """
    font = _open_font(font_path, face_index)
    if font is None:
        return True
    charmap = _charmap(font_path, face_index)
    for first, second in _DISTINCT_PAIRS:
        if ord(first) in charmap and ord(second) in charmap and _bitmap(font, first) == _bitmap(font, second):
            return True
    return False


def _covers(font_path: str, text: str, face_index: int = 0) -> bool:
    """Whether the font really draws every character of ``text``: mapped, and not a box font."""
    charmap = _charmap(font_path, face_index)
    return all(ord(char) in charmap for char in text) and not is_box_font(font_path, face_index)


def boxed_characters(figure) -> dict[str, str]:
    """Characters of a figure's texts that render as boxes, each with the font that would draw it.

    Follows matplotlib's own font fallback (the first font of the text's family list whose map
    has the character); a character no font maps, or one mapped only by a box font, is a box.
    Call it after the figure was drawn (``savefig``), with the same rcParams active.
    """
    from matplotlib import font_manager
    from matplotlib.text import Text

    boxed: dict[str, str] = {}
    for text in figure.findobj(Text):
        content = text.get_text()
        if not content or not text.get_visible() or text.get_usetex():
            continue
        paths = font_manager.fontManager._find_fonts_by_props(text.get_fontproperties())
        for char in set(content):
            if char.isspace() or char in boxed:
                continue
            for path in paths:
                fname, index = str(getattr(path, "path", path)), int(getattr(path, "face_index", 0))
                if ord(char) in _charmap(fname, index):
                    if is_box_font(fname, index):
                        boxed[char] = Path(fname).name
                    break
            else:
                boxed[char] = "no font"
    return boxed


def _register_font_files(paths: list[str]) -> None:
    """Make font files known to matplotlib (its font cache may predate an apt install)."""
    from matplotlib import font_manager

    for path in paths:
        try:
            font_manager.fontManager.addfont(path)
        except (OSError, RuntimeError, ValueError) as exc:
            logger.debug("cannot read font %s: %s", path, exc)


def _search_known_fonts() -> str | None:
    from matplotlib import font_manager

    by_name: dict[str, tuple[str, int]] = {}
    for entry in font_manager.fontManager.ttflist:
        by_name.setdefault(entry.name, (entry.fname, int(getattr(entry, "index", 0) or 0)))
    for family in PREFERRED_CJK_FAMILIES:
        if family in by_name:
            path, index = by_name[family]
            if _covers(path, PROBE_TEXT, index):
                return family
    for name, (path, index) in sorted(by_name.items()):
        if name not in PREFERRED_CJK_FAMILIES and _covers(path, PROBE_TEXT, index):
            return name
    return None


@functools.lru_cache(maxsize=1)
def find_cjk_font() -> str | None:
    """Family name of an installed font that draws Chinese, or None when there is none.

    Looks in matplotlib's font list, then in font files installed after matplotlib built its
    cache (e.g. ``apt-get install fonts-noto-cjk`` after ``pip install``), then in the file
    named by ``$ZHLORA_CJK_FONT``. The answer is cached for the process.
    """
    from matplotlib import font_manager

    extra = os.environ.get(FONT_FILE_ENV)
    if extra:
        if Path(extra).is_file():
            _register_font_files([extra])
        else:
            logger.warning("$%s=%s is not a file; ignoring it.", FONT_FILE_ENV, extra)
    found = _search_known_fonts()
    if found is None:
        known = {entry.fname for entry in font_manager.fontManager.ttflist}
        new_files = [path for path in font_manager.findSystemFonts() if path not in known]
        if new_files:
            _register_font_files(new_files)
            found = _search_known_fonts()
    return found


def resolve_chart_language(requested: str = "auto") -> tuple[str, str | None]:
    """Return ``(language, cjk_font_family)`` for chart labels.

    ``auto`` means Chinese labels when a CJK font is installed, else English; ``zh`` without
    a CJK font falls back to English with a warning (never empty boxes); ``en`` is English.
    """
    if requested not in CHART_LANGUAGES:
        raise ConfigError(f'--chart_language must be auto, zh or en, got "{requested}".')
    if requested == "en":
        return "en", None
    family = find_cjk_font()
    if family is not None:
        return "zh", family
    if requested == "zh":
        logger.warning(
            "No font that can draw Chinese is installed, so chart labels are in English. "
            "Install one (Debian/Ubuntu: apt-get install fonts-noto-cjk) or set $%s to a .ttf/.otf file.",
            FONT_FILE_ENV,
        )
    return "en", None


def font_rc(cjk_family: str | None) -> dict[str, object]:
    """matplotlib rcParams that draw with ``cjk_family`` first (DejaVu Sans for Latin fallback)."""
    if cjk_family is None:
        return {}
    return {
        "font.family": "sans-serif",
        "font.sans-serif": [cjk_family, "DejaVu Sans"],
        # CJK fonts often lack U+2212 (the typographic minus matplotlib uses for ticks).
        "axes.unicode_minus": False,
    }
