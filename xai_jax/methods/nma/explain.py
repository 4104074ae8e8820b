"""A label's explanation in words (paper section 3.4): its walk from the leaf to the root through the named
clusters, as in "A chair is part of the concept furniture (bed, armchair, chair), which is part of ..."."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Explanation:
    """A label's walk to the root: (concept name, member labels) from the smallest cluster up."""

    label: str
    path: list[tuple[str, list[str]]]
    max_listed: int = 12

    def sentences(self) -> list[str]:
        out, subject = [], f"{_article(self.label)} {self.label}"
        for name, members in self.path:
            listed = ", ".join(members[: self.max_listed])
            if len(members) > self.max_listed:
                listed += f", and {len(members) - self.max_listed} more"
            out.append(f"{subject} is part of the concept {name} ({listed})")
            subject = f"{_article(name).capitalize()} {name}"
        return out

    def text(self) -> str:
        if not self.path:
            return f"{_article(self.label).capitalize()} {self.label} is not part of any named concept."
        sentences = self.sentences()
        first = sentences[0][0].upper() + sentences[0][1:]
        rest = [", which" + s[s.index(" is part of"):] for s in sentences[1:]]
        return first + "".join(rest) + "."


def _article(word: str) -> str:
    """'a' or 'an' as the word is spoken: vowels, and numerals said eight, eleven, eighteen (an 8, an 11)."""
    if word[:1].isdigit():
        digits = word.split()[0].split(".")[0]
        spoken_an = digits.startswith("8") or (digits[:2] in ("11", "18") and len(digits) % 3 == 2)
        return "an" if spoken_an else "a"
    return "an" if word[:1].lower() in "aeiou" else "a"
