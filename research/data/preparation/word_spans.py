"""Words of a text as spaCy's English tokenizer splits them (closely, not exactly), without its
download: `word_spans(text)` gives each word's (start, end). RegexWordTokenizer
(document_stages) builds the quality rules' and near-dedup's words and sentences on it; a change
to how it splits changes document_stages.WORDS_VERSION.
"""
from __future__ import annotations

import re


# Words with a period that spaCy's English tokenizer keeps whole (its tokenizer exceptions):
# titles, months, US states, company suffixes. A dotted run of one- or two-letter parts
# (U.S., e.g., p.m., Ph.D.) and a single-letter initial (J.) are kept whole by _ABBREVIATED.
_ABBREVIATIONS = frozenset("""
    Adm. Ak. Ala. Apr. Ariz. Ark. Aug. Bros. Calif. Co. Colo. Conn. Corp. Dec. Del. Dr. Feb. Fla. Ga.
    Gen. Gov. Ia. Id. Ill. Inc. Ind. Jan. Jr. Jul. Jun. Kan. Kans. Ky. La. Ltd. Mar. Mass. Md. Messrs.
    Mich. Minn. Miss. Mo. Mont. Mr. Mrs. Ms. Mt. Neb. Nebr. Nev. Nov. Oct. Okla. Ore. Pa. Prof. Rep.
    Rev. Sen. Sep. Sept. St. Tenn. Va. Wash. Wis. co. vs.""".split())
_ABBREVIATED = re.compile(r"[^\W\d_]\.|[^\W\d_]{1,2}\.(?:[^\W\d_]{1,2}\.)+|\d{1,2}[ap]\.m\.")
_URL = re.compile(r"(?:[a-zA-Z][\w+.-]*://|www\.)\S*[\w/]|[\w.+-]+@[\w-]+\.[\w.-]*\w")  # not its final '.'/')'/','.
# What spaCy splits off a word's start and end (its prefix and suffix rules): brackets, quotes,
# , : ; ! ? and similar marks, an ellipsis whole, currency signs at the start; at the end also
# clitics ('s, n't), units and % after a number, and a period after a lower-case letter, a digit,
# a mark or two capitals (so 'USA.' splits, the initial 'J.' not). Not '-', '/', '.' at the
# start: '--verbose', '/etc', '.jsonl' stay whole, as in spaCy.
_MARKS = r",:;!?¿¡()\[\]{}<>_#*&·'\"”“`‘´’‚„»«"
_PREFIX = re.compile(rf"\.\.+|…|[§%=—–$£€¥₹₽{_MARKS}]|\+(?!\d)")
_UNITS = "km|m|cm|mm|nm|ha|yd|in|ft|kg|g|mg|lb|oz|t|mph|kmh|hPa|Pa|mb|MB|kb|KB|gb|GB|tb|TB|T|G|M|K|%"
_SUFFIX = re.compile(rf"(?:\.\.+|…|(?i:n['’]t|['’](?:s|m|d|ll|ve|re))|[—–{_MARKS}]|(?<=\d)(?:[+$£€¥]|{_UNITS})"
                     rf"|(?<=[^\W\d_A-Z]|[\d%²\-+{_MARKS}])\.|(?<=[A-Z][A-Z])\.)$")
# ... and inside what is left (its infix rules): an ellipsis; a hyphen or dash before a letter
# (release-notes, not 2.1-3); an operator between digits (2023-04-05, 3*4); : / < > = before a
# letter; a comma between letters; a period from a lower-case to a capital letter.
_INFIX = re.compile(r"\.\.+|…|(?<=[^\W_])(?:--+|—|–|-|~)(?=[^\W\d_])|(?<=\d)[-+*^](?=[\d-])"
                    r"|(?<=[^\W_])[:/<>=](?=[^\W\d_])|(?<=[^\W\d_]),(?=[^\W\d_])|(?<=[a-z])\.(?=[A-Z])")


_LONGEST_SPLIT = 256  # characters; longer chunks are split by _LINEAR_WORD
_LINEAR_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
_CHUNK = re.compile(r"\S+")

# The common chunk shapes are split by one regex match instead of the prefix/suffix loop below
# (several regex calls per mark): leading marks, a core, a clitic, trailing marks, as in
# '(word),' '"Name":' '}],' "don't." 'end...' '--dry-run' 'snake_case,'. The core is a word
# (letters, then digits, then perhaps _-joined parts) or a number (2.5, 10:30, 1,000), after
# dashes perhaps (--verbose), with -word parts after it (well-known). Anything else ('/', '@',
# '+', a period between letters, 10km, 2023-04-05, a trailing '_') takes the loop, which splits
# these shapes the same way because: no leading mark is a letter or digit, so _PREFIX takes
# them all first, one at a time or a run of periods at once; each trailing mark is a _SUFFIX of
# its own, as is a run of periods and then the clitic (units and clitics end in a letter, units
# follow a digit); none of it is kept whole (a URL needs '://', '@', or 'www.' before a word
# character; an initial, abbreviation or p.m. has a period inside or right after the core,
# checked in _split_simple); a lone period is split after a lower-case letter, a digit or a
# mark, not after '—', '–', '…' (refused by the regex) nor after one capital (checked); the
# only infixes left in the core are the hyphens between its parts.
_LEAD_MARKS = rf"(?:[§%=—–$£€¥₹₽…{_MARKS}]|\.\.+)*"
_WORD = r"[^\W\d_]+\d*(?:_+(?:[^\W\d_]+\d*|\d+))*"  # no digits before letters (10km)
_CORE = rf"-*(?:{_WORD}|\d+(?:[.:,]\d+)*)"
_HYPHENATED = rf"(?:-{_WORD})*"
_CLITIC = r"(?i:n['’]t|['’](?:s|m|d|ll|ve|re))?"
_TRAIL_MARKS = rf"(?:[—–…{_MARKS.replace('_', '')}]|\.\.+|(?<![—–…])\.)*"
_SIMPLE_CHUNK = re.compile(rf"({_LEAD_MARKS})(?:({_CORE})({_HYPHENATED})({_CLITIC}){_TRAIL_MARKS})?")
_MARK_TOKEN = re.compile(r"\.+|[^.]")
_HYPHEN_TOKEN = re.compile(r"-|[^-]+")
_CAPITALS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _kept_whole(word: str) -> bool:
    # Each abbreviation and initial has a period, a URL '://', 'www.' or '@': most words have none.
    if "." not in word and ":" not in word and "@" not in word:
        return False
    return word in _ABBREVIATIONS or bool(_ABBREVIATED.fullmatch(word) or _URL.fullmatch(word))


# Chunk -> its words' (start, end) within it: a chunk splits the same wherever it stands (the
# rules look at no character outside it), and most non-alphanumeric chunks recur ('},' 'the,'
# '(see' '**Note:**': 73% of them in 9 MB of markdown). Cleared when full: 16,384 chunks take
# about 8 MB, and 4 times as many saved no time there.
_CHUNK_SPLITS: dict[str, tuple[tuple[int, int], ...]] = {}
_CHUNK_SPLITS_MAX = 1 << 14


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word, split as spaCy's English tokenizer splits (closely, not exactly):
    punctuation off both ends of each whitespace-separated chunk, then at the infixes."""
    spans = []
    for chunk in _CHUNK.finditer(text):
        start, end = chunk.span()
        word = chunk.group()
        if end - start == 1 or word.isalnum():  # the common case: nothing to split (one character: one word)
            spans.append((start, end))
        elif end - start > _LONGEST_SPLIT:
            _split_long(text, start, end, spans)
        else:
            split = _CHUNK_SPLITS.get(word)
            if split is None:
                split = _split_simple(word) or _split_careful(word)
                if len(_CHUNK_SPLITS) >= _CHUNK_SPLITS_MAX:
                    _CHUNK_SPLITS.clear()
                _CHUNK_SPLITS[word] = split
            spans.extend([(start + a, start + b) for a, b in split])
    return spans


def _marks(word: str, start: int, end: int) -> list[tuple[int, int]]:
    """The marks word[start:end] around a simple chunk's core: each a word, a run of periods one."""
    if "." in word[start:end]:
        return [m.span() for m in _MARK_TOKEN.finditer(word, start, end)]
    return list(zip(range(start, end), range(start + 1, end + 1)))


def _split_simple(word: str) -> tuple[tuple[int, int], ...] | None:
    """The words of a chunk of the _SIMPLE_CHUNK shapes; None for any other chunk."""
    shape = _SIMPLE_CHUNK.fullmatch(word)
    if shape is None:
        return None
    lead_end, (core_start, core_end), parts_end, (clitic_start, clitic_end) = (
        shape.end(1), shape.span(2), shape.end(3), shape.span(4))
    if core_start < 0:  # marks only
        return tuple(_marks(word, 0, len(word)))
    if word[clitic_end:clitic_end + 1] == "." and word[clitic_end + 1:clitic_end + 2] != ".":
        # A lone period right after the word: an initial (J.) or abbreviation (Dr.) keeps it,
        # as one capital does (the loop leaves 'McD.' whole); a digit or two capitals (USA.) not.
        if ((clitic_end - core_start == 1 and not word[core_start].isdecimal())
                or word[core_start:clitic_end + 1] in _ABBREVIATIONS
                or (word[clitic_end - 1] in _CAPITALS and word[clitic_end - 2:clitic_end - 1] not in _CAPITALS)):
            return None
    split = _marks(word, 0, lead_end)
    split.append((core_start, core_end))
    if core_end < parts_end:
        split.extend(m.span() for m in _HYPHEN_TOKEN.finditer(word, core_end, parts_end))
    if clitic_start < clitic_end:
        split.append((clitic_start, clitic_end))
    split.extend(_marks(word, clitic_end, len(word)))
    return tuple(split)


def _split_long(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    # Stripping marks one at a time costs the chunk's length each time, so a run of
    # 100,000 '!' would stall a worker for minutes (spaCy's tokenizer is quadratic there
    # too); no English word is this long: a URL stays whole, anything else is split into
    # runs of word characters and single marks, in one linear pass.
    if _URL.fullmatch(text, start, end):
        spans.append((start, end))
    else:
        spans.extend(m.span() for m in _LINEAR_WORD.finditer(text, start, end))


def _suffix_start(word: str) -> int:
    """Where _SUFFIX.search(word) matches (-1: nowhere), without trying every start: a suffix is
    at most 3 characters long (n't, 'll, mph), but for a run of periods, searched in full when
    one reaches further back."""
    window = max(0, len(word) - 3)
    suffix = _SUFFIX.search(word, window)
    if suffix is None:
        return -1
    if suffix.start() == window > 0 and word[window - 1] == "." == word[window]:
        return _SUFFIX.search(word).start()
    return suffix.start()


def _split_careful(chunk: str) -> tuple[tuple[int, int], ...]:
    """The words of any chunk: marks off its start (_PREFIX) and end (_SUFFIX) one at a time until
    what is left is kept whole or has none, then that split at its infixes."""
    spans, tail, start, end = [], [], 0, len(chunk)
    while start < end and not _kept_whole(chunk[start:end]):
        word = chunk[start:end]
        prefix = _PREFIX.match(word)
        if prefix:
            spans.append((start, start + prefix.end()))
            start += prefix.end()
            continue
        cut = _suffix_start(word)
        if cut <= 0:
            break
        tail.append((start + cut, end))
        end = start + cut
    if start < end:
        core = chunk[start:end]
        cut = start
        if not _kept_whole(core):
            for infix in _INFIX.finditer(core):
                if infix.start() + start > cut:
                    spans.append((cut, start + infix.start()))
                spans.append((start + infix.start(), start + infix.end()))
                cut = start + infix.end()
        if cut < end:
            spans.append((cut, end))
    spans.extend(reversed(tail))
    return tuple(spans)
