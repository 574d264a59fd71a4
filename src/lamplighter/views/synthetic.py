"""A synthetic fleet trace for the policy replay: seeded, with its assumptions written down here.

Assumptions (each app draws a persona; every draw comes from ``random.Random(seed)``):

- **Working days**: Monday to Friday. A user starts the app between 08:00 and 10:00 and works until
  16:30 to 18:30, with a lunch break of 45 to 75 minutes around 12:00-13:00 during which nothing
  happens (a tab stays open), and one or two "meetings" of 20 to 50 minutes without interaction.
- **Interactions** while at the keyboard: a Poisson stream, one every 2 minutes on average.
- **Cells**: while at the keyboard, a cell that prints as it runs (1 to 20 minutes) now and then,
  and, for the ``trainer`` and ``gpu`` personas, *silent* cells of 20 to 90 minutes (a training loop
  that prints nothing until it ends) right before a meeting or lunch.
- **Personas**: ``day`` (55 %): the above, stops the app when leaving on 90 % of days; ``forgetful``
  (20 %): stops it on 40 % of days only, leaves the tab open overnight; ``trainer`` (15 %): on 60 % of
  days starts a ``nohup`` training job of 2 to 10 hours when leaving and does not stop the app that
  day; ``gpu`` (10 %): GPU jobs of 1 to 6 hours during the day and a ``gpu`` job overnight on 40 % of
  days, on a GPU instance type.
- **Weekends**: 5 % of apps log in on a Saturday for one to three hours and forget to stop it.
- **Instance types**: ``ml.t3.medium`` / ``ml.m5.xlarge`` for CPU personas, ``ml.g5.xlarge`` for ``gpu``.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

from lamplighter.views.replay import App, Trace

__all__ = ["ASSUMPTIONS", "generate"]

ASSUMPTIONS = (__doc__ or "").split("Assumptions", 1)[-1].strip()
_DAY = 86400.0
_H = 3600.0
_M = 60.0


def _persona(rng: random.Random) -> str:
    draw = rng.random()
    return "day" if draw < 0.55 else "forgetful" if draw < 0.75 else "trainer" if draw < 0.90 else "gpu"


def _keyboard(rng: random.Random, start: float, end: float, out: list[float]) -> None:
    t = start
    while True:
        t += rng.expovariate(1 / (2 * _M))
        if t >= end:
            return
        out.append(round(t, 1))


def _one_app(number: int, rng: random.Random, days: int, start_weekday: int) -> App:
    persona = _persona(rng)
    sessions: list[tuple[float, float | None]] = []
    interactions: list[float] = []
    work: list[tuple[float, float, str]] = []
    tabs: list[tuple[float, float]] = []
    kind = "gpu" if persona == "gpu" else "silent"
    for day in range(days):
        base = day * _DAY
        weekday = (start_weekday + day) % 7
        if weekday >= 5:
            if weekday == 5 and rng.random() < 0.05:
                begin = base + rng.uniform(10, 14) * _H
                finish = begin + rng.uniform(1, 3) * _H
                sessions.append((begin, None))
                _keyboard(rng, begin, finish, interactions)
            continue
        begin = base + rng.uniform(8, 10) * _H
        leave = base + rng.uniform(16.5, 18.5) * _H
        lunch = base + rng.uniform(12, 13) * _H
        lunch_end = lunch + rng.uniform(45, 75) * _M
        quiet = [(lunch, lunch_end)]
        for _ in range(rng.choice((1, 2))):
            m = rng.uniform(begin + _H, leave - _H)
            quiet.append((m, m + rng.uniform(20, 50) * _M))
        quiet.sort()
        # At the keyboard between the quiet spells.
        cursor = begin
        for q_start, q_end in quiet:
            if q_start > cursor:
                _keyboard(rng, cursor, q_start, interactions)
                if persona in ("trainer", "gpu") and rng.random() < 0.5:
                    work.append((q_start - 60, q_start - 60 + rng.uniform(20, 90) * _M, kind))
            cursor = max(cursor, q_end)
        _keyboard(rng, cursor, leave, interactions)
        for _ in range(rng.randint(1, 4)):
            s = rng.uniform(begin, leave - 30 * _M)
            work.append((s, s + rng.uniform(1, 20) * _M, "cell"))
        if persona == "gpu":
            s = rng.uniform(begin, leave - 2 * _H)
            work.append((s, s + rng.uniform(1, 6) * _H, "gpu"))
        overnight = (persona == "trainer" and rng.random() < 0.6) or (persona == "gpu" and rng.random() < 0.4)
        if overnight:
            work.append(
                (leave - 60, leave - 60 + rng.uniform(2, 10) * _H, "nohup" if persona == "trainer" else "gpu")
            )
        remembers = {"day": 0.9, "forgetful": 0.4}.get(persona, 0.0 if overnight else 0.9)
        stop = leave + rng.uniform(0, 5) * _M if rng.random() < remembers else None
        sessions.append((begin, stop))
        tabs.append((begin, stop if stop is not None else leave + rng.uniform(2, 14) * _H))
    instance = "ml.g5.xlarge" if persona == "gpu" else rng.choice(("ml.t3.medium", "ml.m5.xlarge"))
    return App(
        name=f"app-{number:03d}-{persona}",
        sessions=tuple(sessions),
        interactions=tuple(sorted(interactions)),
        work=tuple(sorted(work)),
        tabs=tuple(tabs),
        instance_type=instance,
    )


def generate(*, apps: int = 100, days: int = 30, seed: int = 1) -> Trace:
    """A month of ``apps`` apps (defaults), reproducible from ``seed``."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 2, tzinfo=timezone.utc)  # a Monday
    return Trace(
        start=start,
        duration_s=days * _DAY,
        apps=tuple(_one_app(n, rng, days, start.weekday()) for n in range(apps)),
        generator={"name": "lamplighter.views.synthetic", "seed": seed, "apps": apps, "days": days},
    )
