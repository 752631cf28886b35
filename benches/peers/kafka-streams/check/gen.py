#!/usr/bin/env python3
"""Test data for the peer, and the national totals it must compute.

Writes, into OUT_DIR:
  orgs.txt      org registry records, `key<TAB>json` per line (ministries,
                departments, organisations; one user org is left unregistered)
  events.txt    pulse-v1 events keyed by user, `key<TAB>json` per line: learner
                journeys over FY 2024-25 and 2025-26, epoch-ms and RFC 3339
                times, slight disorder, some users moving org, and ~1% of the
                events sent twice (same id, within the dedup horizon)
  expected.json the national totals (and per-FY ones, and a few org rollups)
                computed here independently of the peer, from contract
                section 6 and 7.

usage: gen.py OUT_DIR EVENTS USERS [SEED]
"""
import json
import random
import sys
from datetime import datetime, timedelta, timezone

IST = timezone(timedelta(hours=5, minutes=30))
HOUR = 3_600_000


def fy_of(ms):
    d = datetime.fromtimestamp(ms / 1000, IST)
    return d.year if d.month >= 4 else d.year - 1


def fy_name(fy):
    return f"{fy}-{(fy + 1) % 100:02d}"


def rfc3339(ms, tz):
    d = datetime.fromtimestamp(ms / 1000, tz)
    frac = ms % 1000
    s = d.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        s += f".{frac:03d}"
    if tz is timezone.utc:
        return s + "Z"
    return s + "+05:30"


def main():
    out, n_events, n_users = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 7)

    # Registry: 12 top-level, 40 departments, 150 organisations.
    orgs = {}
    tops = [f"M_{i}" for i in range(12)]
    for t in tops:
        orgs[t] = {"v": 1, "org": t, "name": f"Ministry {t}", "parent": None, "kind": "ministry",
                   "employees": rng.randint(1000, 50000)}
    deps = []
    for d in range(40):
        parent = rng.choice(tops)
        oid = f"{parent}_D_{d}"
        deps.append(oid)
        orgs[oid] = {"v": 1, "org": oid, "name": f"Department {d}", "parent": parent, "kind": "department",
                     "employees": rng.randint(100, 5000)}
    leaves = []
    for o in range(150):
        parent = rng.choice(deps) if rng.random() < 0.8 else rng.choice(tops)
        oid = f"{parent}_O_{o}"
        leaves.append(oid)
        rec = {"v": 1, "org": oid, "name": f"Organisation {o}", "parent": parent, "kind": "organisation"}
        if rng.random() < 0.7:
            rec["employees"] = rng.randint(10, 3000)
        orgs[oid] = rec
    # An org users name but the registry does not know: counts under `unassigned`.
    leaves.append("X_UNREGISTERED_9")

    user_org = [rng.choice(leaves) for _ in range(n_users)]
    start = int(datetime(2024, 4, 1, tzinfo=IST).timestamp() * 1000)
    span = int(datetime(2026, 4, 1, tzinfo=IST).timestamp() * 1000) - start
    n_courses = 400

    registered = bytearray(n_users)
    active = []  # journeys: [user, course, sessions_left, completes, rates, step]
    events = []  # (key, json, id, ts, user, org, type, course, minutes_ms, stars)
    seq = 0
    while len(events) < n_events:
        if len(active) < 2048:
            completes = rng.random() < 0.7
            active.append([rng.randrange(n_users), int(rng.paretovariate(1.2)) % n_courses,
                           rng.randint(1, 6), completes, completes and rng.random() < 0.4, 0])
        i = rng.randrange(len(active))
        j = active[i]
        user = j[0]
        extra = {}
        course = None
        if not registered[user]:
            registered[user] = 1
            kind = "registration"
        elif j[5] == 0:
            j[5] = 1
            kind, course = "enrolment", j[1]
        elif j[2] > 0:
            j[2] -= 1
            j[5] += 1
            kind, course = "progress", j[1]
            extra["minutes"] = rng.randrange(60, 5400) / 60.0
            if rng.random() < 0.8:
                extra["percent"] = min(100, j[5] * 100 // 8)
        elif j[3]:
            j[3] = False
            kind, course = "completion", j[1]
        elif j[4]:
            j[4] = False
            kind, course = "rating", j[1]
            extra["stars"] = rng.choice([3, 4, 5, 4.5])
        else:
            active[i] = active[-1]
            active.pop()
            continue
        progress = min(1.0, seq / n_events)
        ts = start + int(progress * span) + rng.randrange(0, HOUR)
        seq += 1
        org = user_org[user]
        # 2% of the events come from another org (a move, or a late event from an old one).
        if rng.random() < 0.02:
            org = rng.choice(leaves)
            if rng.random() < 0.5:
                user_org[user] = org  # the user moved for good
        eid = f"e-{seq}"
        r = rng.random()
        ts_json = ts if r < 0.8 else rfc3339(ts, IST if r < 0.9 else timezone.utc)
        msg = {"v": 1, "id": eid, "type": kind, "ts": ts_json, "user": f"u-{user}", "org": org}
        if course is not None:
            msg["course"] = f"do_{course}"
        msg.update(extra)
        if rng.random() < 0.01:
            msg["client"] = {"app": "portal", "ver": [1, 2]}  # an unknown field, ignored
        events.append((f"u-{user}", json.dumps(msg, separators=(",", ":")), msg))

    # ~1% duplicates: the same message again, a little later in the stream.
    lines = []
    dup_at = {}
    # Resent at most ~2 days of event time later: well within the 7-day horizon.
    max_delay = max(2, min(500, int(n_events / (span / HOUR) * 48)))
    for k in range(len(events)):
        if rng.random() < 0.01:
            dup_at.setdefault(min(len(events) - 1, k + rng.randrange(1, max_delay)), []).append(k)
    for k, (key, value, _msg) in enumerate(events):
        lines.append(f"{key}\t{value}\n")
        for d in dup_at.get(k, []):
            lines.append(f"{events[d][0]}\t{events[d][1]}\n")
    with open(f"{out}/events.txt", "w") as f:
        f.writelines(lines)
    with open(f"{out}/orgs.txt", "w") as f:
        for oid, rec in orgs.items():
            f.write(f"{oid}\t{json.dumps(rec, separators=(',', ':'))}\n")

    # Expected totals, straight from the contract (all duplicates are within the horizon).
    def ts_ms(v):
        if isinstance(v, int):
            return v
        return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)

    users = {}
    for _key, _value, m in events:
        u = users.setdefault(m["user"], {"org": None, "courses": {}, "fy_ms": {}, "active": set()})
        ts = ts_ms(m["ts"])
        if u["org"] is None or (ts, m["id"].encode()) > (u["org"][0], u["org"][1].encode()):
            u["org"] = (ts, m["id"], m["org"])
        if m["type"] == "registration":
            continue
        fy = fy_of(ts)
        u["active"].add(fy)
        c = u["courses"].setdefault(m["course"], {"enr": None, "cmp": None, "ms": 0, "rating": None})
        t = m["type"]
        if t in ("enrolment", "completion"):
            c["enr"] = ts if c["enr"] is None else min(c["enr"], ts)
        if t == "completion":
            c["cmp"] = ts if c["cmp"] is None else min(c["cmp"], ts)
        if t == "progress":
            ms = max(1, round(m["minutes"] * 60000))
            c["ms"] += ms
            u["fy_ms"][fy] = u["fy_ms"].get(fy, 0) + ms
        if t == "rating":
            if c["rating"] is None or (ts, m["id"].encode()) > (c["rating"][0], c["rating"][1].encode()):
                c["rating"] = (ts, m["id"], round(m["stars"] * 1000))

    def chain(leaf):
        nodes, at, seen = ["national"], leaf, set()
        while at is not None:
            if at not in orgs or at in seen:
                nodes.append("unassigned")
                return nodes
            seen.add(at)
            nodes.append(at)
            at = orgs[at]["parent"]
        return nodes

    check_nodes = ["national", "unassigned"] + tops[:3] + deps[:2]
    nodes = {n: {"registered_users": 0, "learners": 0, "enrolments": 0, "completions": 0, "learning_ms": 0,
                 "ratings": 0, "stars_milli": 0, "fy": {}} for n in check_nodes}
    for u in users.values():
        for n in chain(u["org"][2]):
            if n not in nodes:
                continue
            t = nodes[n]
            t["registered_users"] += 1
            enr = sum(1 for c in u["courses"].values() if c["enr"] is not None)
            t["learners"] += 1 if enr else 0
            for c in u["courses"].values():
                if c["enr"] is not None:
                    t["enrolments"] += 1
                    t["fy"].setdefault(fy_of(c["enr"]), {}).setdefault("enrolments", 0)
                    t["fy"][fy_of(c["enr"])]["enrolments"] += 1
                if c["cmp"] is not None:
                    t["completions"] += 1
                    f = t["fy"].setdefault(fy_of(c["cmp"]), {})
                    f["completions"] = f.get("completions", 0) + 1
                t["learning_ms"] += c["ms"]
                if c["rating"] is not None:
                    t["ratings"] += 1
                    t["stars_milli"] += c["rating"][2]
            for fy, ms in u["fy_ms"].items():
                f = t["fy"].setdefault(fy, {})
                f["learning_ms"] = f.get("learning_ms", 0) + ms
                f["users_meeting_hours"] = f.get("users_meeting_hours", 0) + (1 if ms >= 240 * 60000 else 0)
            for fy in u["active"]:
                f = t["fy"].setdefault(fy, {})
                f["active_users"] = f.get("active_users", 0) + 1

    def render(t):
        r = {k: t[k] for k in ("registered_users", "learners", "enrolments", "completions", "ratings")}
        r["learning_minutes"] = t["learning_ms"] / 60000.0
        r["average_rating"] = t["stars_milli"] / 1000.0 / t["ratings"] if t["ratings"] else None
        r["fy"] = {}
        for fy in sorted(t["fy"]):
            f = t["fy"][fy]
            r["fy"][fy_name(fy)] = {"enrolments": f.get("enrolments", 0), "completions": f.get("completions", 0),
                                    "learning_minutes": f.get("learning_ms", 0) / 60000.0,
                                    "active_users": f.get("active_users", 0),
                                    "users_meeting_hours": f.get("users_meeting_hours", 0)}
        return r

    expected = {n: render(t) for n, t in nodes.items()}
    expected["national"]["events"] = len(events)
    expected["national"]["duplicates"] = len(lines) - len(events)
    expected["national"]["messages"] = len(lines)
    with open(f"{out}/expected.json", "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    print(json.dumps({"messages": len(lines), "events": len(events), "users": len(users),
                      "duplicates": len(lines) - len(events)}))


if __name__ == "__main__":
    main()
