"""Pick a font that can draw Chinese chart labels, or decide to label the charts in English.

matplotlib's default font (DejaVu Sans) has no CJK glyphs: Chinese text drawn with it comes
out as empty boxes, with "Glyph ... missing from font" warnings. Charts therefore ask
:func:`resolve_chart_language` first. It looks for an installed font whose character map
really covers Chinese (Noto Sans CJK, Source Han Sans, WenQuanYi, SimHei, ... or any other);
when there is none, every label is drawn in English instead of as boxes.

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


def _covers(font_path: str, text: str) -> bool:
    """Whether the font file's character map has a glyph for every character of ``text``."""
    from matplotlib import ft2font

    try:
        charmap = ft2font.FT2Font(font_path).get_charmap()
    except (OSError, RuntimeError, ValueError):
        return False
    return all(ord(char) in charmap for char in text)


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

    entries = font_manager.fontManager.ttflist
    by_name: dict[str, str] = {}
    for entry in entries:
        by_name.setdefault(entry.name, entry.fname)
    for family in PREFERRED_CJK_FAMILIES:
        if family in by_name and _covers(by_name[family], PROBE_TEXT):
            return family
    for name, path in sorted(by_name.items()):
        if name not in PREFERRED_CJK_FAMILIES and _covers(path, PROBE_TEXT):
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
