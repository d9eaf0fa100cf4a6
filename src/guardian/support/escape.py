"""Text from targets made inert for each sink it lands in: Markdown, HTML, the terminal.

A check reason, a ComfyUI version string or a health body is written by whatever answers
on the port, so it is data, never markup: ``# x`` must not become a heading in a report,
``<script>`` must not become HTML, ``[a](javascript:...)`` must not become a link, and
``[/]`` must not be read as rich markup by the CLI (where it raised ``MarkupError``).
Escape at the point where such text is inserted into a document, after redaction (the
secret patterns match the raw text).
"""

from __future__ import annotations

import html
import re

# C0/C1 controls except tab: ANSI escape sequences (terminal retitling, cursor moves,
# clickable OSC 8 links) and carriage returns that overwrite what was printed before.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NEWLINES = re.compile(r"\s*[\r\n]+\s*")
# What could make target text *act* inside a Markdown line: code spans, links and images
# (no ``[`` means no link, whatever follows), raw HTML, autolinks and entities, table
# pipes, and the backslash itself (so target text cannot undo an escape). Emphasis
# characters stay as they are: harmless, and ``vram_used_mb`` stays readable. Headings,
# lists and fences need a line start, which :func:`markdown_inline` never gives.
_MD_SPECIAL = re.compile(r"([\\`\[\]<>&|])")


_SHOWN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _shown(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group()):02x}"


def inert(text: object) -> str:
    """``text`` with every C0/C1 control but tab and newline shown as ``\\xNN``.

    For terminals and plain-text logs: an ESC from a target (OSC title setting, clear
    screen, cursor moves) or a carriage return that overwrites a line arrives as four
    visible characters, so the evidence stays readable and does nothing.
    """
    return _SHOWN.sub(_shown, str(text))


API_TEXT_LIMIT = 2048  # characters of one target-supplied string in an API answer


def bounded(text: str, limit: int = API_TEXT_LIMIT) -> str:
    """``text`` cut at ``limit`` characters with a marker saying how much was left out:
    a target's megabyte prompt id must not become a megabyte in every API answer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated {len(text) - limit} chars]"


def strip_controls(text: str) -> str:
    """``text`` without control characters (tabs kept, other controls removed)."""
    return _CONTROLS.sub("", text)


def markdown_inline(text: object) -> str:
    """One line of Markdown that renders as exactly ``text``, nothing more.

    Newlines become spaces (a line break would let target text start a heading or a
    list), and every character Markdown could interpret is backslash-escaped.
    """
    one_line = _NEWLINES.sub(" ", strip_controls(str(text).replace("\t", " "))).strip()
    return _MD_SPECIAL.sub(r"\\\1", one_line)


def markdown_cell(text: object) -> str:
    """A GFM table cell: :func:`markdown_inline` (which also escapes ``|``)."""
    return markdown_inline(text)


def html_text(text: object) -> str:
    """Text for an HTML text node or quoted attribute (``&``, ``<``, ``>``, quotes)."""
    return html.escape(strip_controls(str(text)), quote=True)


def terminal(text: object) -> str:
    """Text for a rich console or table cell: markup escaped, control characters shown
    as ``\\xNN`` (:func:`inert`)."""
    from rich.markup import escape  # only the CLI prints to a terminal; `run` never loads rich

    return escape(inert(text))
