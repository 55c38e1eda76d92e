"""Deterministic civic.band-like meeting databases, plus mutations that mimic upstream rebuilds.

Each municipality is `<root>/<subdomain>/meetings.db` with tables `agendas` and `minutes`,
shaped like the real site (see /work/shared/civicband-api.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

TABLES = {"agenda": "agendas", "minutes": "minutes"}
COLUMNS = ("id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json")
MEETINGS = (
    "CityCouncil", "PlanningCommission", "ParksAndRecreation", "BoardOfZoningAdjustments",
    "TransportationCommission", "LibraryBoard", "PublicSafetyCommittee", "BudgetCommittee",
    "HousingAuthority", "ArtsCommission",
)
WORDS = (
    "the council approved resolution ordinance amendment budget appropriation fiscal year "
    "public hearing item motion seconded carried unanimously staff report recommendation "
    "consent calendar agenda minutes zoning variance permit parcel street avenue boulevard "
    "housing affordable units development agreement contract vendor services award bid "
    "infrastructure sewer water storm drain repaving sidewalk bicycle lane traffic signal "
    "police fire department emergency response community park playground library grant "
    "funding allocation million dollars review environmental impact report CEQA exemption "
    "commissioner councilmember mayor clerk attorney manager director residents speakers "
    "comment period closed opened continued adopted denied referred committee session "
    "closed discussion pursuant government code section litigation negotiation labor "
    "property acquisition lease easement tax assessment district bond measure election"
).split()
NAMES = ("Alvarez", "Chen", "Johnson", "Nguyen", "Okafor", "Patel", "Rivera", "Smith", "Williams")


def page_id(kind, meeting, date, page, text) -> str:
    """civic.band's page id: changes whenever the OCR text changes."""
    payload = {"kind": kind, "meeting": meeting, "date": date, "page": page, "text": text}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def page_image(kind, meeting, date, page) -> str:
    prefix = "/_agendas" if kind == "agenda" else ""
    return f"{prefix}/{meeting}/{date}/{page}.png"


def create_db(path) -> None:
    with sqlite3.connect(path) as conn:
        for table in TABLES.values():
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, meeting TEXT, date TEXT,"
                " page INTEGER, text TEXT, page_image TEXT, entities_json TEXT, votes_json TEXT)"
            )
    conn.close()


def _place_name(subdomain: str) -> str:
    return subdomain.split(".")[0].replace("-", " ").title()


class _TextMaker:
    """Builds ~N-char OCR-ish pages by sampling a pre-built pool of sentences (fast)."""

    def __init__(self, rng: random.Random, place: str, chars: int):
        self.rng, self.place, self.chars = rng, place.upper(), chars
        self.pool = [self._sentence() for _ in range(3000)]
        self.per_page = max(1, chars // (sum(map(len, self.pool)) // len(self.pool) + 1) + 1)
        self.entities = [self._entities() for _ in range(50)]
        self.votes = [self._votes() for _ in range(50)]

    def _sentence(self) -> str:
        r = self.rng
        words = r.choices(WORDS, k=r.randint(6, 18))
        if r.random() < 0.2:
            words.insert(r.randrange(len(words)), f"${r.randint(1, 999):,},{r.randint(0, 999):03d}")
        s = " ".join(words).capitalize() + r.choice(".......;:")
        if r.random() < 0.05:  # OCR noise: misread glyphs
            s = s.replace("l", "1", 1).replace("o", "0", 1)
        return s

    def _entities(self) -> str:
        r = self.rng
        return json.dumps({
            "persons": [f"{r.choice(('Councilmember', 'Commissioner', 'Mayor'))} {n}"
                        for n in r.sample(NAMES, r.randint(1, 3))],
            "orgs": r.sample(["Public Works", "City Attorney", "Caltrans", "School District"], 2),
            "locations": [f"{r.randint(100, 9999)} {r.choice(NAMES)} Street"],
        })

    def _votes(self) -> str:
        r = self.rng
        ayes = r.randint(3, 7)
        return json.dumps([{"motion": f"Item {r.randint(1, 20)}.{r.randint(1, 9)}",
                            "ayes": ayes, "noes": r.randint(0, 2), "result": "passed"}])

    def text(self, kind, meeting, date, page) -> str:
        title = "AGENDA" if kind == "agenda" else "MINUTES"
        head = f"CITY OF {self.place}\n{meeting} {title}\n{date}\nPage {page}\n\n"
        return head + " ".join(self.rng.choices(self.pool, k=self.per_page))[: self.chars]

    def extras(self, kind) -> tuple[str | None, str | None]:
        r = self.rng
        entities = r.choice(self.entities) if r.random() < 0.6 else None
        votes = r.choice(self.votes) if r.random() < (0.3 if kind == "minutes" else 0.03) else None
        return entities, votes


def _page_rows(maker: _TextMaker, kind, meeting, date, pages) -> list[tuple]:
    rows = []
    for page in range(1, pages + 1):
        text = maker.text(kind, meeting, date, page)
        rows.append((page_id(kind, meeting, date, page, text), meeting, date, page, text,
                     page_image(kind, meeting, date, page), *maker.extras(kind)))
    return rows


def _pick_dates(rng: random.Random, n: int, start: dt.date, end: dt.date, today: dt.date):
    """Unique (meeting, date) pairs, stratified so there are future, recent and older ones."""
    day = dt.timedelta(days=1)
    future, recent, older = (today + day, end), (today - 180 * day, today), (start, today - 181 * day)
    strata = [future, recent, recent, older, older, older, older, older]
    strata = [(max(lo, start), min(hi, end)) for lo, hi in strata]
    strata = [s for s in strata if s[0] <= s[1]] or [(start, end)]
    slots = len(MEETINGS) * ((end - start).days + 1)
    if n > slots:
        raise ValueError(f"{n} documents do not fit in {start}..{end}")
    seen: set[tuple[str, str]] = set()
    for attempt in itertools.count():  # round-robin, so a full stratum cannot stall us
        if len(seen) == n:
            break
        lo, hi = strata[attempt % len(strata)]
        date = lo + rng.randint(0, (hi - lo).days) * day
        seen.add((rng.choice(MEETINGS), date.isoformat()))
    return sorted(seen)


@dataclass(frozen=True)
class OddRow:
    """A deliberately unusual row; `accepted` says whether a sync should keep it."""

    kind: str
    reason: str
    accepted: bool
    row: tuple  # values in COLUMNS order

    @property
    def id(self) -> str:
        return self.row[0]


# reason -> should a sync accept the row?
ODD_ROW_REASONS = {
    "null_meeting": False, "bad_date": False, "tbd_date": False, "page_not_number": False, "nul_in_id": False,
    "nul_in_text": True, "empty_text": True, "null_text": True,
    "url_special_id": True, "url_special_id_2": True,
}


def odd_rows_for(subdomain: str, kind: str) -> list[OddRow]:
    """The odd rows `build_municipality(odd_rows=True)` adds to table TABLES[kind]."""
    tag = hashlib.sha256(subdomain.encode()).hexdigest()[:6]
    m, d = "SpecialSession", "2021-06-15"
    place = _place_name(subdomain)
    specs = {  # reason -> (id override or None, meeting, date, page, text)
        "null_meeting": (None, None, "2021-06-16", 1, f"{place} untitled meeting page"),
        "bad_date": (None, m, "2024-13-45", 1, f"{place} page with impossible date"),
        "tbd_date": (None, m, "TBD", 1, f"{place} page with undecided date"),
        "page_not_number": (None, m, "2021-06-16", "abc", f"{place} page numbered abc"),
        "nul_in_id": (f"nul\x00id-{tag}", m, "2021-06-16", 2, f"{place} page whose id holds a NUL"),
        "nul_in_text": (None, m, d, 1, f"{place} scanned\x00page\x00with NULs"),
        "empty_text": (None, m, d, 2, ""),
        "null_text": (None, m, d, 3, None),
        "url_special_id": (f"a~b,c&d/e f+g%h-{tag}", m, d, 4, f"{place} special id page"),
        "url_special_id_2": (f"{tag[:2]}~2F?x=1#y;z%2B~", m, d, 5, f"{place} another special id"),
    }
    rows = []
    for reason, (rid, meeting, date, page, text) in specs.items():
        rid = rid or page_id(kind, meeting, date, page, text)
        image = page_image(kind, meeting, date, page)
        rows.append(OddRow(kind, reason, ODD_ROW_REASONS[reason],
                           (rid, meeting, date, page, text, image, None, None)))
    return rows


def _insert(conn: sqlite3.Connection, table: str, rows) -> None:
    conn.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def build_municipality(
    root, subdomain: str, documents_per_type: int = 40, pages_per_document=(3, 12),
    seed: int = 0, odd_rows: bool = False, start_date: dt.date | None = None,
    end_date: dt.date | None = None, text_chars: int = 2000, today: dt.date | None = None,
) -> Path:
    """Write `<root>/<subdomain>/meetings.db` from scratch (atomically replacing any old one)."""
    today = today or dt.date.today()
    start = start_date or today - dt.timedelta(days=3 * 365)
    end = end_date or today + dt.timedelta(days=45)
    lo, hi = pages_per_document
    rng = random.Random(f"{subdomain}:{seed}")
    maker = _TextMaker(rng, _place_name(subdomain), text_chars)
    directory = Path(root) / subdomain
    directory.mkdir(parents=True, exist_ok=True)
    final, tmp = directory / "meetings.db", directory / "meetings.db.tmp"
    tmp.unlink(missing_ok=True)
    create_db(tmp)
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA synchronous=OFF")
    with conn:  # one transaction for everything
        for kind, table in TABLES.items():
            for meeting, date in _pick_dates(rng, documents_per_type, start, end, today):
                _insert(conn, table, _page_rows(maker, kind, meeting, date, rng.randint(lo, hi)))
            if odd_rows:
                _insert(conn, table, [o.row for o in odd_rows_for(subdomain, kind)])
    conn.close()
    os.replace(tmp, final)  # the server notices the new inode and reopens
    return final


# ---- mutations (what an upstream rebuild does to a municipality) ----

@dataclass
class Change:
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    documents: list[tuple[str, str]] = field(default_factory=list)  # (meeting, date)


# Regular generated rows only: mutations never touch the odd rows.
_REGULAR = "meeting IS NOT NULL AND meeting != 'SpecialSession' AND typeof(page) = 'integer'"


def _mutation_context(db_path, seed):
    conn = sqlite3.connect(db_path)
    subdomain = Path(db_path).parent.name
    rng = random.Random(f"{subdomain}:mutate:{seed}")
    return conn, rng, _TextMaker(rng, _place_name(subdomain), 2000)


def reocr_pages(db_path, kind: str, n: int, seed: int = 0) -> Change:
    """Change the text of n pages: each gets a new id, same meeting/date/page."""
    table, change = TABLES[kind], Change()
    conn, rng, _ = _mutation_context(db_path, seed)
    ids = [r[0] for r in conn.execute(f"SELECT id FROM {table} WHERE {_REGULAR} ORDER BY id")]
    with conn:
        for old in rng.sample(ids, min(n, len(ids))):
            row = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (old,)).fetchone()
            _, meeting, date, page, text, *rest = row
            text = f"{text or ''}\n[re-OCR {seed}:{rng.randrange(10**9)}]"
            new = page_id(kind, meeting, date, page, text)
            conn.execute(f"DELETE FROM {table} WHERE id = ?", (old,))
            _insert(conn, table, [(new, meeting, date, page, text, *rest)])
            change.removed.append(old)
            change.added.append(new)
            change.documents.append((meeting, date))
    conn.close()
    return change


def delete_documents(db_path, kind: str, n: int, seed: int = 0) -> Change:
    """Remove every page of n documents."""
    table, change = TABLES[kind], Change()
    conn, rng, _ = _mutation_context(db_path, seed)
    docs = conn.execute(
        f"SELECT DISTINCT meeting, date FROM {table} WHERE {_REGULAR} ORDER BY meeting, date"
    ).fetchall()
    with conn:
        for meeting, date in sorted(rng.sample(docs, min(n, len(docs)))):
            where = "WHERE meeting = ? AND date = ?"
            ids = [r[0] for r in conn.execute(f"SELECT id FROM {table} {where}", (meeting, date))]
            conn.execute(f"DELETE FROM {table} {where}", (meeting, date))
            change.removed.extend(ids)
            change.documents.append((meeting, date))
    conn.close()
    return change


def add_documents(db_path, kind: str, n: int, pages=5, dates_near_today: bool = True,
                  seed: int = 0, avoid=()) -> Change:
    """Add n new documents (pages: int or (lo, hi)); recent dates unless dates_near_today=False; none of
    the (meeting, date) pairs in `avoid` (say, documents just deleted: one re-added would be changed)."""
    table, change = TABLES[kind], Change()
    conn, rng, maker = _mutation_context(db_path, seed)
    lo, hi = (pages, pages) if isinstance(pages, int) else pages
    today = dt.date.today()
    start = today - dt.timedelta(days=30 if dates_near_today else 5 * 365)
    end = today if dates_near_today else today - dt.timedelta(days=365)
    existing = set(conn.execute(f"SELECT DISTINCT meeting, date FROM {table}").fetchall()) | set(avoid)
    with conn:
        while len(change.documents) < n:
            day = start + dt.timedelta(rng.randint(0, (end - start).days))
            doc = (rng.choice(MEETINGS), day.isoformat())
            if doc in existing:
                continue
            existing.add(doc)
            rows = _page_rows(maker, kind, *doc, rng.randint(lo, hi))
            _insert(conn, table, rows)
            change.added.extend(r[0] for r in rows)
            change.documents.append(doc)
    conn.close()
    return change


# ---- demo ----

@dataclass(frozen=True)
class Municipality:
    subdomain: str
    name: str
    state: str
    latitude: float
    longitude: float
    documents_per_type: int
    pages_per_document: tuple[int, int]
    seed: int


DEMO_MUNICIPALITIES = (
    Municipality("oakland.ca", "Oakland", "CA", 37.8044, -122.2712, 70, (5, 15), 1),
    Municipality("alameda.ca", "Alameda", "CA", 37.7652, -122.2416, 40, (3, 12), 2),
    Municipality("st-louis.mo", "St. Louis", "MO", 38.6270, -90.1994, 60, (4, 10), 3),
    Municipality("berkeley.ca", "Berkeley", "CA", 37.8716, -122.2727, 25, (2, 8), 4),
)


def build_demo(root) -> list[Path]:
    """Build every demo municipality (with odd rows, so the demo shows rejections)."""
    return [build_municipality(root, m.subdomain, m.documents_per_type, m.pages_per_document,
                               seed=m.seed, odd_rows=True) for m in DEMO_MUNICIPALITIES]
