"""The values the generated dataset repeats, as monitoring data does: a few hundred
applications (well-known ones first, then a long tail of line-of-business tools) with
their window titles, a few hundred sites with their paths, browsers, session events,
screen sizes, working hours, ingest delays. ``Vocabulary`` pre-encodes the combinations
as binary COPY fields with cumulative (Zipf) weights."""

from __future__ import annotations

import itertools
import random
import struct

_i32 = struct.Struct("!i").pack


def copy_text(s: str) -> bytes:
    """A text value as a binary COPY field (length, UTF-8 bytes)."""
    b = s.encode()
    return _i32(len(b)) + b


def zipf_weights(n: int, s: float) -> list[float]:
    return [1 / (rank**s) for rank in range(1, n + 1)]


APPS = [
    ("chrome.exe", "Google Chrome"), ("msedge.exe", "Microsoft Edge"), ("outlook.exe", "Outlook"),
    ("excel.exe", "Excel"), ("winword.exe", "Word"), ("teams.exe", "Microsoft Teams"),
    ("explorer.exe", "File Explorer"),
    ("slack.exe", "Slack"), ("firefox.exe", "Mozilla Firefox"), ("code.exe", "Visual Studio Code"),
    ("1cv8.exe", "1C:Enterprise"), ("telegram.exe", "Telegram"), ("powerpnt.exe", "PowerPoint"),
    ("zoom.exe", "Zoom"), ("acrord32.exe", "Adobe Acrobat Reader"), ("notepad.exe", "Notepad"),
    ("onenote.exe", "OneNote"), ("mstsc.exe", "Remote Desktop Connection"), ("putty.exe", "PuTTY"),
    ("idea64.exe", "IntelliJ IDEA"), ("devenv.exe", "Visual Studio"), ("sapgui.exe", "SAP Logon"),
    ("whatsapp.exe", "WhatsApp"), ("skype.exe", "Skype"), ("yandex.exe", "Yandex Browser"),
    ("bitrix24.exe", "Bitrix24"), ("notepad++.exe", "Notepad++"), ("calc.exe", "Calculator"),
    ("mspaint.exe", "Paint"), ("cmd.exe", "Command Prompt"), ("powershell.exe", "Windows PowerShell"),
    ("taskmgr.exe", "Task Manager"), ("spotify.exe", "Spotify"), ("anydesk.exe", "AnyDesk"),
    ("photoshop.exe", "Adobe Photoshop"), ("acad.exe", "AutoCAD"), ("figma.exe", "Figma"),
    ("postman.exe", "Postman"), ("dbeaver.exe", "DBeaver"), ("keepass.exe", "KeePass"),
]  # fmt: skip
SITES = [
    "mail.google.com", "docs.google.com", "www.youtube.com", "github.com", "stackoverflow.com", "outlook.office.com",
    "teams.microsoft.com", "www.linkedin.com", "en.wikipedia.org", "web.whatsapp.com", "yandex.ru", "mail.yandex.ru",
    "vk.com", "ok.ru", "www.google.com", "drive.google.com", "calendar.google.com", "jira.company.local",
    "confluence.company.local", "gitlab.company.local", "portal.company.local", "crm.company.local",
    "www.amazon.com", "www.ozon.ru", "www.wildberries.ru", "hh.ru", "habr.com", "www.reddit.com", "twitter.com",
    "www.facebook.com", "www.instagram.com", "news.ycombinator.com", "www.bbc.com", "lenta.ru", "rbc.ru",
    "chat.openai.com", "translate.google.com", "web.telegram.org", "www.notion.so", "trello.com",
]  # fmt: skip
_WORDS = [
    "Q3 budget", "Contract", "Invoice", "Report", "Minutes", "Roadmap", "Plan", "Offer", "Payroll", "Inventory",
    "Sales", "Forecast", "Checklist", "Proposal", "Timesheet", "Specs", "Agenda", "Notes", "Draft", "Summary",
]  # fmt: skip
_EXTS = {"excel.exe": "xlsx", "winword.exe": "docx", "powerpnt.exe": "pptx", "acrord32.exe": "pdf", "acad.exe": "dwg"}
BROWSERS = [("chrome", 0.55), ("edge", 0.2), ("yandex", 0.15), ("firefox", 0.1)]
SESSION_EVENTS = [("active", 0.3), ("idle", 0.3), ("lock", 0.15), ("unlock", 0.15), ("logon", 0.05), ("logoff", 0.05)]
RESOLUTIONS = [(1920, 1080), (1920, 1080), (1920, 1080), (2560, 1440), (1366, 768), (1536, 864), (3840, 2160)]
_delays = random.Random(0)
# event time -> row written: a log-normal ingest delay around 100 ms with a tail of seconds (4,096 samples)
DELAYS_US = [min(30_000_000, int(_delays.lognormvariate(11.5, 0.8))) for _ in range(4096)]
HABIT_CUM = list(itertools.accumulate(zipf_weights(30, 1.0)))  # a device's 30 usual windows / pages
HOUR_WEIGHTS = [0.2, 0.1, 0.1, 0.1, 0.1, 0.3, 1, 3, 7, 10, 10, 10, 7, 9, 10, 10, 9, 7, 4, 2, 1.5, 1, 0.6, 0.4]


def _apps(rnd: random.Random, count: int) -> list[tuple[str, str]]:
    """``count`` applications: the well-known ones first (most used), then a long tail of
    line-of-business tools."""
    tail = [(f"lob{n:03d}.exe", f"LOB tool {n}") for n in range(count - len(APPS))]
    return (APPS + tail)[:count]


def _titles(app: str, display: str, rnd: random.Random) -> list[str]:
    """Window titles of one application, most frequent first (a head of fixed screens and a
    tail of document names)."""
    if app in _EXTS:
        docs = [f"{w} {y}-{m:02d}.{_EXTS[app]}" for w in _WORDS for y in (2025, 2026) for m in (1, 4, 7, 10, 11)]
        rnd.shuffle(docs)
        return [f"{d} - {display}" for d in docs[:120]]
    if display.endswith(("Chrome", "Edge", "Firefox", "Browser")):
        return [f"{s} - {display}" for s in SITES] + [f"New Tab - {display}"]
    if app in ("outlook.exe", "slack.exe", "teams.exe", "telegram.exe", "whatsapp.exe", "skype.exe"):
        return [
            f"{c} - {display}" for c in ("Inbox", "General", "Chat", "Calendar", "Meeting", "Sent Items", "Team")
        ] + [f"{w} discussion - {display}" for w in _WORDS]
    return [display] + [f"{w} - {display}" for w in _WORDS[: rnd.randint(2, 12)]]


def _paths(site: str, rnd: random.Random) -> list[str]:
    head = ["", "inbox", "search", "home", "dashboard", "projects", "settings", "notifications"]
    return [f"https://{site}/{p}" for p in head[: rnd.randint(3, len(head))]] + [
        f"https://{site}/{rnd.choice(['doc', 'issues', 'view', 'item'])}/{rnd.randint(1, 5000)}" for _ in range(20)
    ]


class Vocabulary:
    """Value combinations, pre-encoded as COPY fields, with cumulative weights."""

    def __init__(self, apps: int, sites: int, rnd: random.Random) -> None:
        apps_ = _apps(rnd, apps)
        self.windows: list[bytes] = []  # title, process_name, icon
        wweights: list[float] = []
        for (app, display), aw in zip(apps_, zipf_weights(len(apps_), 1.1), strict=True):
            titles = _titles(app, display, rnd)
            for title, tw in zip(titles, zipf_weights(len(titles), 1.0), strict=True):
                self.windows.append(
                    copy_text(title) + copy_text(app) + copy_text(f"icons/{app.removesuffix('.exe')}.png")
                )
                wweights.append(aw * tw / sum(zipf_weights(len(titles), 1.0)))
        self.windows_cum = list(itertools.accumulate(wweights))
        names = SITES + [f"www.site{n:03d}.com" for n in range(sites - len(SITES))]
        self.urls: list[tuple[str, str]] = []  # (url, title); a url ending in "=" gets an id
        uweights: list[float] = []
        for site, sw in zip(names[:sites], zipf_weights(sites, 1.1), strict=True):
            paths = _paths(site, rnd)
            if site == "www.youtube.com":
                paths.append(f"https://{site}/watch?v=")
            for p, pw in zip(paths, zipf_weights(len(paths), 0.9), strict=True):
                self.urls.append(
                    (p, f"{site.removeprefix('www.').split('.')[0].capitalize()} - {p.rsplit('/', 1)[-1]}")
                )
                uweights.append(sw * pw / sum(zipf_weights(len(paths), 0.9)))
        self.urls_cum = list(itertools.accumulate(uweights))
        self.browsers = [copy_text(b) for b, _ in BROWSERS]
        self.browsers_cum = list(itertools.accumulate(w for _, w in BROWSERS))
        self.sessions = [copy_text(e) for e, _ in SESSION_EVENTS]
        self.sessions_cum = list(itertools.accumulate(w for _, w in SESSION_EVENTS))
        # seconds in a window / on a page: log-normal, drawn from 4,096 samples (faster than drawing each)
        self.active_times = [min(3600, int(rnd.lognormvariate(3.5, 1.2)) + 1) for _ in range(4096)]
        self.durations = [min(7200, int(rnd.lognormvariate(4, 1.3))) for _ in range(4096)]
