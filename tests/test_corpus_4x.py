"""experiments/corpus_4x.py's document checks, without the network: Project Gutenberg boilerplate is cut and
clean text is left byte for byte, non-prose is rejected with its reason, and a second edition of a work (other
spelling) is rejected as a near-duplicate of the first."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import corpus_4x  # noqa: E402

PROSE = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
         "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light.\n")


def test_gutenberg_header_footer_and_licence_are_cut():
    raw = ("\ufeffThe Project Gutenberg EBook of A Tale, by Someone\r\n\r\nThis eBook is for the use of anyone "
           "anywhere at no cost.\r\n\r\n*** START OF THIS PROJECT GUTENBERG EBOOK A TALE ***\r\n"
           "Produced by a volunteer\r\n\r\n" + PROSE * 3 + "\r\nEnd of the Project Gutenberg EBook of A Tale\r\n"
           "*** END OF THIS PROJECT GUTENBERG EBOOK A TALE ***\r\nSection 1. General Terms of Use\r\n")
    text = corpus_4x.clean(raw.encode())
    assert text == PROSE * 3
    assert corpus_4x.prose_problem(text) == ""


def test_clean_text_is_unchanged_and_trims_are_explicit():
    text = "\n\nTITLE\n\n\n" + PROSE + "   \n"
    assert corpus_4x.clean(text.encode()) == text  # the existing corpus's files stay byte-identical
    raw = ("Release notes of this etext.\n\nParadise Lost\n\n" + PROSE + "\nAppendix: DIRECTORY\nA. Name\n").encode()
    assert corpus_4x.clean(raw, r"^Paradise Lost$", r"^Appendix") == "Paradise Lost\n\n" + PROSE


def test_non_prose_is_rejected_with_a_reason():
    cases = {
        "code": ("def f(x):\n    return {'a': x == 1, 'b': x >= 2}\n" * 20, "code or markup"),
        "html": ("<p>" + PROSE + "</p>", "markup"),
        "word list": ("\n".join(["apple", "banana", "cherry pie"] * 100), "very short lines"),
        "latin": ("Gallia est omnis divisa in partes tres, quarum unam incolunt Belgae, aliam Aquitani. " * 10,
                  "not English"),
        "table": ("\n".join(f"{i} {i * i} {i * 3.5}" for i in range(200)), "non-alphabetic"),
        "licence left": (PROSE * 3 + "\nwww.gutenberg.org\n\n" + PROSE * 3, "boilerplate"),
        "short": ("Call me Ishmael.", "too short"),
    }
    for name, (text, reason) in cases.items():
        assert reason in corpus_4x.prose_problem(text), name


def test_a_second_edition_in_other_spelling_is_a_near_duplicate():
    modern = ("Of man's first disobedience, and the fruit of that forbidden tree whose mortal taste brought death "
              "into the world, and all our woe, with loss of Eden, till one greater Man restore us, and regain the "
              "blissful seat, sing, heavenly Muse, that on the secret top of Oreb, or of Sinai, didst inspire that "
              "shepherd who first taught the chosen seed. ") * 3
    old = (modern.replace("man's", "Mans").replace("taste", "tast").replace("heavenly", "Heav'nly")
           .replace("Eden", "EDEN"))
    first = corpus_4x.Candidate("shakespeare", "a", "a.txt", old.encode(), False)
    second = corpus_4x.Candidate("canterbury", "b", "b.txt", modern.encode(), False)
    other = corpus_4x.Candidate("canterbury", "c", "c.txt", (PROSE * 3).encode(), False)
    accepted, rejected = corpus_4x.select([second, other, first])
    assert [d.cand.name for d in accepted] == ["a.txt", "c.txt"]  # SOURCES order: the earlier source keeps it
    assert [r["origin"] for r in rejected] == ["b"] and "near-duplicate" in rejected[0]["reason"]
