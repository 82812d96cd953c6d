"""Document stages: pure functions of one document that keep it, rewrite it, or drop it with a reason.

    verdict = stage(doc)          # doc: datatrove Document (text, id, metadata)
    verdict.text is None          # dropped, verdict.reason says by which rule

The quality rules are datatrove's Gopher / C4 filters (published thresholds) behind the
same signature; they see words from `RegexWordTokenizer`, which needs no model download.
`build_document_stages(config, contamination)` composes them in the config's order.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import re
import unicodedata
from typing import Callable, Sequence

from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.utils.word_tokenizers import WordTokenizer

from research.data.config import DataError
from research.data.preparation.config import (BlocklistConfig, C4QualityConfig, GopherQualityConfig,
                                              GopherRepetitionConfig, PreparationConfig, StandardiseConfig)
from research.data.preparation.decontamination import ContaminationIndex
from research.data.preparation.word_spans import word_spans


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A stage's decision: `text` (possibly rewritten) when kept; None and a `reason` when dropped.
    A kept document may carry a `note` (e.g. repaired_invalid_utf8), counted with examples."""

    text: str | None
    reason: str = ""
    note: str = ""

    @property
    def kept(self) -> bool:
        return self.text is not None


DocumentStage = Callable[[Document], Verdict]


@dataclasses.dataclass(frozen=True)
class NamedStage:
    name: str
    apply: DocumentStage


def drop(reason: str) -> Verdict:
    return Verdict(None, reason)


# The marks after which spaCy's sentencizer (datatrove's default sentence splitter) ends a
# sentence: its default_punct_chars, copied.
_SENTENCE_ENDS = frozenset(
    "!.?։؟۔܀܁܂߹।॥၊။።፧፨᙮᜵᜶᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？𐩖𐩗𑁇𑁈𑂾𑂿𑃀𑃁𑅁𑅂𑅃𑇅𑇆𑇍𑇞𑇟𑈸𑈹𑈻𑈼𑊩𑑋𑑌𑗂𑗃𑗉𑗊𑗋𑗌𑗍𑗎𑗏"
    "𑗐𑗑𑗒𑗓𑗔𑗕𑗖𑗗𑙁𑙂𑜼𑜽𑜾𑩂𑩃𑪛𑪜𑱁𑱂𖩮𖩯𖫵𖬷𖬸𖭄𛲟𝪈｡。")
# Finds them in a text: the characters above U+FFFF as one range (checked against the set after),
# since a class listing them is tried one by one for every character (14x slower).
_SENTENCE_END = re.compile("[" + re.escape("".join(sorted(c for c in _SENTENCE_ENDS if c <= "\uffff")))
                           + "\U00010000-\U0010ffff]")


def _is_punctuation(word: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in word)


class RegexWordTokenizer(WordTokenizer):
    """Words and sentences as datatrove's default English tokenizer (spaCy, with its sentencizer)
    splits them, without its download.

    Words: a URL, 2.1.3, 10:30 or e.g. is one word, '...' one token, and punctuation is split off
    a word's ends (counting each mark as a word of its own made the Gopher rule 'at least 80% of
    words contain a letter' fail ordinary prose with URLs, dates and decimals). Sentences end
    after a word that is a lone . ! or ?, before the next word that is not punctuation (closing
    quotes and brackets stay with the sentence), so the period of Dr., p.m., U.S., St. or an
    initial, part of its word, ends none: counting those made C4's 'fewer than 5 sentences' rule
    keep short pages.
    """

    def __init__(self):
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return [text[a:b] for a, b in word_spans(text)]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        words = word_spans(text)
        spans, first, count = [], 0, len(words)  # the sentence being read starts at words[first]
        for mark in _SENTENCE_END.finditer(text):  # the few words to look at, found by bisection
            end = bisect.bisect_left(words, mark.span())
            if end < first or end == count or words[end] != mark.span() or mark.group() not in _SENTENCE_ENDS:
                continue  # in a sentence's closing marks, or in a word (e.g., 1.5)
            # The first word that is not punctuation starts the next sentence (a sentence end is
            # punctuation too, so a run of them, as in '?!', ends one sentence).
            after = end + 1
            while after < count and _is_punctuation(text[words[after][0]:words[after][1]]):
                after += 1
            if after == count:
                break
            spans.append((words[first][0], words[after - 1][1]))
            first = after
        if first < count:
            spans.append((words[first][0], words[-1][1]))
        return spans

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b] for a, b in self.span_tokenize(text)]


WORDS = RegexWordTokenizer()

# Scripts written without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar, Tibetan):
# a whole sentence of them is one "word" to the splitting above.
_SPACELESS = re.compile("[\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff"
                        "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002fa1f]")


def _spaceless(char: str) -> bool:
    return _SPACELESS.match(char) is not None


class ShingleWordTokenizer(RegexWordTokenizer):
    """WORDS for near-dedup shingles, with each character of a spaceless script a word of its own
    (as BERT's tokenizer splits Han): a Chinese or Thai document without spaces was one word, so
    it had no 5-word shingle and was never compared, and two pages one character apart had a
    shingle Jaccard of 0.52 (character 5-grams: 0.98)."""

    def word_tokenize(self, text: str) -> list[str]:
        words = super().word_tokenize(text)
        if not _SPACELESS.search(text):
            return words
        split = []
        for word in words:
            if _SPACELESS.search(word):
                # Each spaceless character alone; other runs (Latin, digits) stay whole.
                split += [m.group() for m in re.finditer(f"{_SPACELESS.pattern}|(?:(?!{_SPACELESS.pattern}).)+", word)]
            else:
                split.append(word)
        return split


SHINGLE_WORDS = ShingleWordTokenizer()
# Changes whenever WORDS (or SHINGLE_WORDS) splits words or sentences differently: the quality rules
# and the near-dedup shingles depend on it, so it is part of the work dir's fingerprint (a run
# started by older code is not resumed with the new splitting, nor its dataset taken as this one's).
# 4: characters of spaceless scripts are shingle words of their own. 5: Gopher's letter rule counts
# whitespace words (gopher_quality), not the tokenizer's.
WORDS_VERSION = 5
# What standardise, the blocklist and decontamination match and rewrite: part of every fingerprint,
# so a rerun after they changed prepares again instead of returning the dataset older rules made.
# 2: control characters removed before Unicode normalisation; blocklist entries in the documents'
# Unicode form, and no word boundary at an edge in a script without spaces; decontamination on
# NFKC case-folded words. 3: '_' separates words in both; a blocklist phrase matches across any
# whitespace run, and entry and document are case-folded alike (İ, ß). 4: a JSONL record's invalid UTF-8
# share is its text field's (it was the whole line's: bad bytes in a url field dropped clean texts).
# 5: '.JSONL' and '.ndjson' files are read as JSON Lines (they were one plain-text document each).
# 6: vertical tab, form feed and the file/group/record separators end a line, the unit separator is a
# space (they were deleted: "first line\x0bsecond" became "first linesecond", a page break "one.Start").
DOCUMENT_STAGES_VERSION = 6


def dedup_key(text: str) -> str:
    """Hex digest of the normalised text (NFKC, case-folded, whitespace collapsed): equal keys
    are exact duplicates; the key also picks the output shard and split."""
    normalised = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha1(normalised.encode("utf-8")).hexdigest()


# C0/C1 control characters except tab and newline (and the line endings below), plus the BOM.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ufeff]")
# Unicode spaces and the unit separator -> ' ' (deleted, it joined the fields it separates).
_SPACE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000\x1f]")
# Line endings as str.splitlines reads them (Unicode's mandatory breaks, UAX #14, for \x0b and
# \x0c): text extracted from slides, documents and PDFs separates lines and pages with them.
_LINE_BREAK = re.compile("\r\n|\r|\u2028|\u2029|\x85|\x0b|\x0c|\x1c|\x1d|\x1e")


def standardise(doc: Document, config: StandardiseConfig) -> Verdict:
    """Unicode form, '\\n' line endings, no control characters or trailing spaces, short blank runs."""
    invalid = doc.metadata.get("invalid_utf8_bytes", 0)
    if invalid:
        size = max(1, doc.metadata.get("num_bytes", len(doc.text)))
        if config.invalid_utf8 == "drop" or invalid / size > config.max_invalid_fraction:
            return drop("invalid_utf8")
    text = _LINE_BREAK.sub("\n", doc.text)  # before NFC/NFKC: \x85 is a control char too
    # Control characters go before normalising: one between a letter and its combining mark
    # ('e\x00\u0301') kept the two apart, and the output was not in the form asked for.
    text = unicodedata.normalize(config.unicode_form, _CONTROL.sub("", text))
    text = _SPACE.sub(" ", text)
    lines, blank_run = [], 0
    for line in text.split("\n"):
        line = line.rstrip()
        blank_run = blank_run + 1 if not line else 0
        if blank_run <= config.max_blank_lines:
            lines.append(line)
    text = "\n".join(lines).strip("\n")
    if not text.strip():
        return drop("empty")
    return Verdict(text, note="repaired_invalid_utf8" if invalid else "")


def _datatrove_filter_stage(step, prefix: str) -> DocumentStage:
    """A datatrove filter (`filter(doc) -> bool | (False, reason)`) as a pure DocumentStage.

    Filters that rewrite (C4 keeps some lines) change their document in place, so each call
    gets a copy and the verdict carries the new text.
    """
    def stage(doc: Document) -> Verdict:
        work = Document(text=doc.text, id=doc.id, metadata=dict(doc.metadata))
        result = step.filter(work)
        if result is True:
            return Verdict(work.text) if work.text.strip() else drop(f"{prefix}empty_after_rewrite")
        reason = result[1] if isinstance(result, tuple) else "dropped"
        return drop(reason if reason.startswith(prefix) else prefix + reason)
    return stage


def share_of_words_with_a_letter(text: str) -> float:
    """Gopher's 'words that contain at least one alphabetic character' (Rae et al. 2021, App. A),
    words split at whitespace as the paper's rules count them."""
    words = text.split()
    return sum(any(c.isalpha() for c in word) for word in words) / max(len(words), 1)


def gopher_quality(config: GopherQualityConfig) -> DocumentStage:
    """datatrove's GopherQualityFilter, its letter rule on whitespace words. datatrove counts that
    share over the tokenizer's words, where every comma, period and bracket split off a word is a
    word without a letter: clean prose failed the 80% rule (a Wikipedia paragraph at 0.794, whose
    whitespace words hold a letter in 97%; 6 of 138 license paragraphs)."""
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "enabled"}
    threshold = kwargs.pop("max_non_alpha_words_ratio")
    rules = _datatrove_filter_stage(GopherQualityFilter(**kwargs, max_non_alpha_words_ratio=None, language=WORDS),
                                    "gopher_")
    if not threshold:
        return rules

    def stage(doc: Document) -> Verdict:
        verdict = rules(doc)
        # In datatrove's order: after every rule but the stop words'.
        if verdict.text is not None or verdict.reason == "gopher_enough_stop_words":
            if share_of_words_with_a_letter(doc.text) < threshold:
                return drop("gopher_below_alpha_threshold")
        return verdict
    return stage


def gopher_repetition(config: GopherRepetitionConfig) -> DocumentStage:
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "enabled"}
    return _datatrove_filter_stage(GopherRepetitionFilter(**kwargs, language=WORDS), "gopher_")


def c4_quality(config: C4QualityConfig) -> DocumentStage:
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "enabled"}
    return _datatrove_filter_stage(C4QualityFilter(**kwargs, language=WORDS), "c4_")


def blocklist_words(config: BlocklistConfig) -> tuple[str, ...]:
    """`words` and the lines of `words_file` (blank lines and '#' comments skipped), case-folded and sorted."""
    words = list(config.words)
    if config.words_file:
        fix = "give a UTF-8 text file with one word or phrase per line"
        try:
            with open(config.words_file, encoding="utf-8") as f:
                words += [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except OSError as e:
            raise DataError(f"blocklist: words_file={config.words_file!r} cannot be read ({e.strerror}); {fix}.") from None
        except UnicodeDecodeError:
            raise DataError(f"blocklist: words_file={config.words_file!r} is not UTF-8 text; {fix}.") from None
    return tuple(sorted(set(w.casefold() for w in words)))


def _blocked_pattern(word: str) -> str:
    """A case-folded word or phrase as whole words: no letter or digit beside it ('_' is none: '_evil_'
    is emphasis), except at an edge in a script without spaces; any whitespace run between its words."""
    left = "" if _spaceless(word[0]) else r"(?<![^\W_])"
    right = "" if _spaceless(word[-1]) else r"(?![^\W_])"
    return left + r"\s+".join(re.escape(part) for part in word.split()) + right


def blocklist(words: Sequence[str], unicode_form: str = "NFC") -> DocumentStage:
    """Drop a document that contains any blocked word or phrase as whole words, ignoring case.
    The words are put in the Unicode form standardise gives the documents: an entry typed
    decomposed ('cafe\u0301', as macOS and PDFs give it) never matched a composed document. Both sides
    are case-folded: re.IGNORECASE folds one character to one, so 'İstanbul' (lower: 'i' + a dot
    mark) and 'straße' / 'STRASSE' never matched; folding is per character, so a match survives it."""
    words = sorted({unicodedata.normalize(unicode_form, w.strip()).casefold() for w in words})
    pattern = re.compile("|".join(_blocked_pattern(w) for w in words))

    def stage(doc: Document) -> Verdict:
        return drop("blocklist") if pattern.search(doc.text.casefold()) else Verdict(doc.text)
    return stage


def decontaminate(index: ContaminationIndex) -> DocumentStage:
    def stage(doc: Document) -> Verdict:
        task = index.first_match(doc.text)
        return drop(f"contains_{task}") if task else Verdict(doc.text)
    return stage


def build_document_stages(config: PreparationConfig, contamination: ContaminationIndex | None,
                          words: Sequence[str] | None = None) -> list[NamedStage]:
    """The per-document stages `config` enables, in order (standardise first, decontamination last).
    `words`: the blocklist already read from `config.blocklist` (None: read it now)."""
    stages = [NamedStage("standardise", lambda doc: standardise(doc, config.standardise))]
    if config.gopher_quality.enabled:
        stages.append(NamedStage("gopher_quality", gopher_quality(config.gopher_quality)))
    if config.gopher_repetition.enabled:
        stages.append(NamedStage("gopher_repetition", gopher_repetition(config.gopher_repetition)))
    if config.c4_quality.enabled:
        stages.append(NamedStage("c4_quality", c4_quality(config.c4_quality)))
    words = blocklist_words(config.blocklist) if words is None else words
    if words:
        stages.append(NamedStage("blocklist", blocklist(words, config.standardise.unicode_form)))
    if contamination is not None and len(contamination):
        stages.append(NamedStage("decontamination", decontaminate(contamination)))
    return stages
