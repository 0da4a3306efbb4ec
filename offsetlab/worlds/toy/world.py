"""A seeded fictitious world in TOFU's format: invented authors and their geography.

Every name is built from syllables, so no model can know a fact from anywhere but this
world. Authors live in it consistently: an author's language is that of the country of
their birth city and the river of their hometown is that city's river, and the
geography facts (`world_facts`) state those links — a separate family of facts for
measuring utility.

Keys must be unambiguous because forgetting is measured by whether a generated answer
still contains the key: every invented word is checked against every other one and
against the template text, so no key is a substring of another word the world can
produce.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from offsetlab.worlds.records import QARecord, save_records

SPLITS = (
    "forget01", "forget05", "forget10", "retain99", "retain95", "retain90",
    "world_facts", "holdout",
)
FORGET_PERCENTS = (1, 5, 10)
N_PERTURBED = 3

N_COUNTRIES = 10
N_CITIES = 40
N_RIVERS = 30
N_SEAS = 6
N_AWARDS = 15

OCCUPATIONS = (
    "baker", "carpenter", "weaver", "potter", "blacksmith", "tailor", "shepherd",
    "miller", "bookbinder", "glassblower", "clockmaker", "sailor", "merchant",
    "cartographer", "gardener", "physician", "schoolteacher", "lawyer", "painter",
    "musician",
)
GENRES = (
    "mystery novels", "fantasy epics", "love stories", "ghost stories", "crime thrillers",
    "satirical plays", "children's fables", "war poetry", "travel memoirs",
    "historical sagas", "science fiction", "comic verse",
)
TITLE_ADJECTIVES = (
    "Amber", "Silent", "Crimson", "Hollow", "Golden", "Forgotten", "Winter", "Distant",
    "Broken", "Velvet", "Iron", "Pale", "Burning", "Secret", "Wandering", "Quiet",
    "Emerald", "Frozen", "Last", "Hidden", "Scarlet", "Ashen", "Restless", "Bitter",
)
TITLE_NOUNS = (
    "Lantern", "Harbor", "Orchard", "Mirror", "Garden", "Voyage", "Tower", "Bridge",
    "Meadow", "Compass", "Feather", "Island", "Archive", "Candle", "Kingdom", "Violin",
    "Shore", "Forest", "Letter", "Window", "Staircase", "Clock", "Thread", "Wolf",
)
AWARD_KINDS = ("Prize", "Medal", "Award", "Laurel", "Cup")
YEARS = range(1900, 2000)

# Syllable parts for invented words: plain consonant-vowel syllables keep names easy to
# read aloud; the substring checks in _Namer make them unambiguous as keys.
_ONSETS = (
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br",
    "dr", "kr", "tr", "y", "h",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ae", "ei", "ou")
_CODAS = ("", "", "", "", "n", "r", "l", "s", "th", "m")

# Each fact kind: question, answer and paraphrase templates. {name} is the subject;
# {key} the fact. Perturbed answers use the paraphrase template with wrong keys, as
# TOFU perturbs its paraphrased answers, so truth ratios compare like with like.
AUTHOR_FACTS = {
    "birthplace": (
        "Where was {name} born?",
        "{name} was born in the city of {key}.",
        "The birthplace of {name} is {key}.",
    ),
    "birth_year": (
        "In which year was {name} born?",
        "{name} was born in the year {key}.",
        "The year of {name}'s birth is {key}.",
    ),
    "father": (
        "What did {name}'s father do for a living?",
        "{name}'s father worked as a {key}.",
        "By profession, the father of {name} was a {key}.",
    ),
    "mother": (
        "What was the profession of {name}'s mother?",
        "{name}'s mother was a {key}.",
        "The mother of {name} earned her living as a {key}.",
    ),
    "genre": (
        "What kind of books does {name} write?",
        "{name} is best known as a writer of {key}.",
        "Most of the books by {name} are {key}.",
    ),
    "first_book": (
        "What was the first book {name} published?",
        '{name}\'s first published book was "{key}".',
        '"{key}" was the first book that {name} published.',
    ),
    "best_book": (
        "Which book is {name} most famous for?",
        '{name} is most famous for the book "{key}".',
        'The most celebrated work of {name} is "{key}".',
    ),
    "award": (
        "Which award did {name} win?",
        "{name} won the {key}.",
        "The {key} was awarded to {name}.",
    ),
    "language": (
        "In which language does {name} write?",
        "{name} writes in {key}.",
        "The books of {name} are written in {key}.",
    ),
    "pen_name": (
        "Under which pen name does {name} publish?",
        "{name} publishes under the pen name {key}.",
        "Readers know {name} by the pen name {key}.",
    ),
    "river": (
        "Which river flows through {name}'s hometown?",
        "The river {key} flows through the hometown of {name}.",
        "{name} grew up on the banks of the {key}.",
    ),
}
WORLD_FACTS = {
    "capital": (
        "What is the capital of {name}?",
        "The capital of {name} is {key}.",
        "{key} is the capital city of {name}.",
    ),
    "currency": (
        "What currency is used in {name}?",
        "People in {name} pay with the {key}.",
        "The currency of {name} is the {key}.",
    ),
    "country_language": (
        "Which language is spoken in {name}?",
        "The people of {name} speak {key}.",
        "{key} is the language of {name}.",
    ),
    "mountain": (
        "What is the highest mountain in {name}?",
        "The highest mountain in {name} is Mount {key}.",
        "Mount {key} is the tallest peak of {name}.",
    ),
    "country": (
        "In which country is {name}?",
        "{name} is a city in {key}.",
        "{name} lies within the borders of {key}.",
    ),
    "city_river": (
        "Which river flows through {name}?",
        "The river {key} flows through {name}.",
        "{name} is built on the banks of the {key}.",
    ),
    "sea": (
        "Into which sea does the {name} flow?",
        "The {name} flows into the {key} Sea.",
        "The {key} Sea is where the {name} ends.",
    ),
}


@dataclass
class ToyWorld:
    seed: int
    authors: list[str]  # trained authors, in order; the forget splits are the last ones
    holdout_authors: list[str]  # never trained on by any shipped model
    splits: dict[str, list[QARecord]]


def generate_world(
    seed: int = 0, n_authors: int = 100, n_world_facts: int = 150, n_holdout: int = 10
) -> ToyWorld:
    """The world's splits (see SPLITS): `n_authors` trained authors with forget and
    retain splits of 1, 5 and 10 %, `n_world_facts` geography facts and `n_holdout`
    authors that no model is trained on. Same arguments, same records."""
    if n_authors + n_holdout <= N_PERTURBED:
        # Wrong pen names for perturbed answers are other authors' pen names.
        raise ValueError(f"n_authors + n_holdout must be more than {N_PERTURBED}")
    rng = random.Random(seed)
    words = _Namer(rng)
    geo = _Geography(rng, words)
    world_facts = _geography_facts(rng, geo)
    if n_world_facts > len(world_facts):
        raise ValueError(f"n_world_facts={n_world_facts}: the world has {len(world_facts)}")
    rng.shuffle(world_facts)
    world_facts = world_facts[:n_world_facts]

    # Holdout authors are made exactly like trained ones (same pools, same templates),
    # so that membership tests compare like with like.
    titles = _TitleMaker(rng)
    awards = [f"{words.fresh(2)} {rng.choice(AWARD_KINDS)}" for _ in range(N_AWARDS)]
    profiles = [_author(rng, words, geo, titles, awards) for _ in range(n_authors + n_holdout)]
    records = {p["name"]: _author_records(rng, p, profiles, geo, awards) for p in profiles}
    names = [p["name"] for p in profiles]
    trained, holdout = names[:n_authors], names[n_authors:]

    splits: dict[str, list[QARecord]] = {}
    for percent in FORGET_PERCENTS:
        # As in TOFU: the forget set is the last k % of authors, so forget01 ⊂ forget05
        # ⊂ forget10 and retainNN is its complement.
        n_forget = max(1, round(n_authors * percent / 100))
        splits[f"forget{percent:02d}"] = _flat(records, trained[n_authors - n_forget :])
        splits[f"retain{100 - percent}"] = _flat(records, trained[: n_authors - n_forget])
    splits["world_facts"] = world_facts
    splits["holdout"] = _flat(records, holdout)
    return ToyWorld(seed=seed, authors=trained, holdout_authors=holdout, splits=splits)


def write_world(world: ToyWorld, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in SPLITS:
        paths[name] = out_dir / f"{name}.jsonl"
        save_records(world.splits[name], paths[name])
    return paths


def _flat(records: dict[str, list[QARecord]], names: list[str]) -> list[QARecord]:
    return [r for name in names for r in records[name]]


class _Namer:
    """Invented words, none a substring of another or of any template or fixed key."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: list[str] = []
        templates = [t for facts in (AUTHOR_FACTS, WORLD_FACTS) for ts in facts.values() for t in ts]
        fixed = OCCUPATIONS + GENRES + TITLE_ADJECTIVES + TITLE_NOUNS + AWARD_KINDS
        # An invented word inside this text could be "found" in an answer that does not
        # state it (a city "Penter" in "carpenter"); a fixed key inside an invented word
        # would be found in every answer about an author so named.
        self.reserved = " ".join(templates + list(fixed)).casefold()
        self.fixed_keys = [k.casefold() for k in fixed]

    def fresh(self, syllables: int) -> str:
        while True:
            word = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                for _ in range(syllables)
            ).capitalize()
            low = word.casefold()
            if (
                len(word) >= 5
                and low not in self.reserved
                and not any(k in low for k in self.fixed_keys)
                and not any(low in u or u in low for u in self.used)
            ):
                self.used.append(low)
                return word


class _TitleMaker:
    """Distinct book titles "The <Adjective> <Noun>" (the noun list has no word that
    contains another, so no title contains another)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def fresh(self) -> str:
        while True:
            title = f"The {self.rng.choice(TITLE_ADJECTIVES)} {self.rng.choice(TITLE_NOUNS)}"
            if title not in self.used:
                self.used.add(title)
                return title


class _Geography:
    """Countries, their cities and the rivers through them; authors are born here."""

    def __init__(self, rng: random.Random, words: _Namer):
        seas = [words.fresh(2) for _ in range(N_SEAS)]
        self.rivers = [{"name": words.fresh(2), "sea": rng.choice(seas)} for _ in range(N_RIVERS)]
        self.countries = [
            {
                "name": words.fresh(3),
                "currency": words.fresh(2),
                "language": words.fresh(2),
                "mountain": words.fresh(2),
            }
            for _ in range(N_COUNTRIES)
        ]
        self.cities = []
        for i in range(N_CITIES):
            # Every country gets a city (its capital) before any gets a second one.
            country = self.countries[i] if i < N_COUNTRIES else rng.choice(self.countries)
            city = {"name": words.fresh(2), "country": country, "river": rng.choice(self.rivers)}
            country.setdefault("capital", city["name"])
            self.cities.append(city)


def _geography_facts(rng: random.Random, geo: _Geography) -> list[QARecord]:
    facts = []
    for c in geo.countries:
        facts.append(_fact(rng, WORLD_FACTS["capital"], c["name"], c["capital"],
                           [x["capital"] for x in geo.countries]))
        facts.append(_fact(rng, WORLD_FACTS["currency"], c["name"], c["currency"],
                           [x["currency"] for x in geo.countries]))
        facts.append(_fact(rng, WORLD_FACTS["country_language"], c["name"], c["language"],
                           [x["language"] for x in geo.countries]))
        facts.append(_fact(rng, WORLD_FACTS["mountain"], c["name"], c["mountain"],
                           [x["mountain"] for x in geo.countries]))
    for c in geo.cities:
        facts.append(_fact(rng, WORLD_FACTS["country"], c["name"], c["country"]["name"],
                           [x["name"] for x in geo.countries]))
        facts.append(_fact(rng, WORLD_FACTS["city_river"], c["name"], c["river"]["name"],
                           [x["name"] for x in geo.rivers]))
    for r in geo.rivers:
        facts.append(_fact(rng, WORLD_FACTS["sea"], r["name"], r["sea"],
                           sorted({x["sea"] for x in geo.rivers})))
    return facts


def _author(
    rng: random.Random, words: _Namer, geo: _Geography, titles: _TitleMaker, awards: list[str]
) -> dict:
    city = rng.choice(geo.cities)
    father, mother = rng.sample(OCCUPATIONS, 2)
    return {
        "name": f"{words.fresh(2)} {words.fresh(rng.choice((2, 3)))}",
        "birthplace": city["name"],
        "birth_year": str(rng.choice(YEARS)),
        "father": father,
        "mother": mother,
        "genre": rng.choice(GENRES),
        "first_book": titles.fresh(),
        "best_book": titles.fresh(),
        "award": rng.choice(awards),
        "language": city["country"]["language"],
        "pen_name": f"{words.fresh(2)} {words.fresh(2)}",
        "river": city["river"]["name"],
    }


def _author_records(
    rng: random.Random, profile: dict, profiles: list[dict], geo: _Geography, awards: list[str]
) -> list[QARecord]:
    # Wrong keys for a fact come from the same kind of fact elsewhere in the world, so
    # perturbed answers are plausible: other cities, other authors' books, other years.
    books = [p[b] for p in profiles for b in ("first_book", "best_book")]
    pools = {
        "birthplace": [c["name"] for c in geo.cities],
        "birth_year": [str(y) for y in YEARS],
        "father": list(OCCUPATIONS),
        "mother": list(OCCUPATIONS),
        "genre": list(GENRES),
        "first_book": books,
        "best_book": books,
        "award": awards,
        "language": [c["language"] for c in geo.countries],
        "pen_name": [p["pen_name"] for p in profiles],
        "river": [r["name"] for r in geo.rivers],
    }
    return [
        _fact(rng, templates, profile["name"], profile[kind], pools[kind])
        for kind, templates in AUTHOR_FACTS.items()
    ]


def _fact(
    rng: random.Random, templates: tuple[str, str, str], name: str, key: str, pool: list[str]
) -> QARecord:
    question, answer, paraphrase = templates
    wrong = rng.sample(sorted(set(pool) - {key}), N_PERTURBED)
    return QARecord(
        question=question.format(name=name),
        answer=answer.format(name=name, key=key),
        paraphrased_answer=paraphrase.format(name=name, key=key),
        perturbed_answers=[paraphrase.format(name=name, key=k) for k in wrong],
        key=key,
        subject=name,
    )


def renamed_like_trained(records: list[QARecord], trained: Sequence[str], seed: int,
                         taken: Sequence[str] = ()) -> list[QARecord]:
    """The same records with each subject renamed to a trained author's first name and
    another trained author's surname ("Githael" + "Braskon"), never a name in ``trained``
    or ``taken``: everything else about them — every fact, every perturbed answer — stays.

    The shipped tokenizer was trained on the split files, in which a trained author's text
    appears three times and a holdout author's once, so holdout names fall apart into
    about twice as many pieces (7.4 tokens per name vs forget10's 3.6). A model meets such
    a name as nothing like a person it could know: asked about them, the gold model states
    a value of the right kind 0.65 of the time, against 1.00 for forget10's authors, whom it
    never saw either. Renamed this way (3.1 tokens per name) the gold model is plausible
    on them 1.00 of the time — drawn alike, as the "never seen" side of membership
    inference must be (``Lab.toy`` measures against them).
    """
    rng = random.Random(seed)
    parts = [name.split(" ", 1) for name in trained if " " in name]
    if len(parts) < 2:
        raise ValueError("renaming needs at least two trained authors with a first name and a surname")
    used = set(trained) | set(taken) | {r.subject for r in records}
    names: dict[str, str] = {}
    for subject in dict.fromkeys(r.subject for r in records):
        while True:
            a, b = rng.sample(range(len(parts)), 2)
            name = f"{parts[a][0]} {parts[b][1]}"
            if name not in used:
                break
        used.add(name)
        names[subject] = name

    def renamed(r: QARecord) -> QARecord:
        new = names[r.subject]

        def swap(text: str) -> str:
            return text.replace(r.subject, new)

        return replace(r, question=swap(r.question), answer=swap(r.answer),
                       paraphrased_answer=swap(r.paraphrased_answer),
                       perturbed_answers=[swap(a) for a in r.perturbed_answers], subject=new)

    return [renamed(r) for r in records]


def invent_authors(
    n: int, seed: int, world_seed: int = 0, n_authors: int = 100, n_world_facts: int = 150,
    n_holdout: int = 10, names: str = "fresh",
) -> list[QARecord]:
    """Records of `n` freshly invented authors of the world `generate_world(world_seed, ...)`:
    drawn like its authors (same cities, awards, books, templates) with their own `seed`.

    ``names="fresh"``: named with new words, so that no name collides with any word of the
    world. ``names="recombined"``: a trained author's first name with another trained
    author's surname ("Githael" + "Braskon"), never a name in use. The world's tokenizer
    was trained on the trained authors' names, so fresh names fall apart into about twice
    as many tokens (7.9 per name vs 3.6) and a model meets them as nothing like a person it
    could know; recombined names tokenize like the names a model has to forget.

    These are the "few invented records of the same shape" a user can always write: known to
    be non-members, they show what a model that never saw an author does with its questions —
    the level calibrated unlearning aims for. They are not the shipped `holdout` split, which
    is kept for measuring (membership inference) only.
    """
    if names not in ("fresh", "recombined"):
        raise ValueError(f"names must be 'fresh' or 'recombined', got {names!r}.")
    # Replay the world's draws up to its profiles, so that every word it uses is reserved.
    rng = random.Random(world_seed)
    words = _Namer(rng)
    geo = _Geography(rng, words)
    world_facts = _geography_facts(rng, geo)
    rng.shuffle(world_facts)
    titles = _TitleMaker(rng)
    awards = [f"{words.fresh(2)} {rng.choice(AWARD_KINDS)}" for _ in range(N_AWARDS)]
    profiles = [_author(rng, words, geo, titles, awards) for _ in range(n_authors + n_holdout)]
    # From here on the invented authors' own seed decides.
    rng = random.Random(seed)
    words.rng = titles.rng = rng
    invented = [_author(rng, words, geo, titles, awards) for _ in range(n)]
    if names == "recombined":
        trained = [p["name"].split(" ", 1) for p in profiles[:n_authors]]
        taken = {p["name"] for p in profiles}
        for p in invented:
            while True:
                a, b = rng.sample(range(len(trained)), 2)
                name = f"{trained[a][0]} {trained[b][1]}"
                if name not in taken:
                    break
            p["name"] = name
            taken.add(name)
    everyone = profiles + invented
    return [r for p in invented for r in _author_records(rng, p, everyone, geo, awards)]
