//! A deterministic, iGOT-shaped world and an endless stream of its telemetry.
//!
//! The world: ministries and states, departments under them, organisations
//! under those, with heavy-tailed sanctioned strength; users spread over the
//! organisations by a Zipf law; courses with Zipf popularity. The stream
//! interleaves many learner journeys (enrol, several progress sessions,
//! sometimes an assessment, completion for ~70% of enrolments, sometimes a
//! rating), each user registering before their first journey, with event
//! time advancing over two financial years (or up to a given time, for
//! recent activity). The world also has a course catalogue with content
//! providers and user profiles with designations. Everything follows from
//! the seed.
//!
//! It owns no KPI rules and must not depend on the engine: it only writes
//! messages in the contract's formats.

use std::fmt::Write as _;

use pulse_model::Fy;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct WorldSpec {
    pub seed: u64,
    /// Ministries and states (top-level nodes).
    pub top_level: usize,
    pub departments: usize,
    pub organisations: usize,
    pub users: u64,
    pub courses: usize,
    /// The first of the two financial years the events span.
    pub first_fy: Fy,
    /// The share of learner journeys with an assessment attempt.
    pub assessments: f64,
    /// Which users the learner journeys go to.
    pub draw: UserDraw,
    /// Learner journeys under way at once (default 4,096): a journey's
    /// events lie about `6 x journeys` events apart in the stream, so this
    /// sets how recently a consumer last saw the user of an event.
    pub journeys: usize,
}

/// How a learner journey picks its user: the shape of the key space the
/// events touch, which decides how much of the users' state a consumer
/// finds cached (docs/BENCHMARKS.md, "The workloads").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserDraw {
    /// Uniformly over all users: 2M events over 1M users touch about 270k
    /// of them, most events going to users seen shortly before.
    #[default]
    Uniform,
    /// Every user comes: three journeys in four go to the next user of a
    /// scrambled sweep over all users (so the first `users / 0.75`
    /// journeys reach every one of them, spread over the whole time span),
    /// the fourth to `floor(users * r^2)` for `r` uniform (a hot head of
    /// users who come back often). As on iGOT, where every registered
    /// user completes some course in a year.
    Everyone,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            seed: 1,
            top_level: 90,
            departments: 600,
            organisations: 2_500,
            users: 1_000_000,
            courses: 4_000,
            first_fy: Fy(2024),
            assessments: 0.0,
            draw: UserDraw::Uniform,
            journeys: 4_096,
        }
    }
}

/// A node of the generated registry.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOrg {
    pub id: String,
    pub name: String,
    pub parent: Option<String>,
    pub kind: &'static str,
    pub employees: u64,
}

/// Samples an index with probability proportional to 1/(rank+1)^s.
#[derive(Debug, Clone)]
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let cdf = (1..=n.max(1))
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = *self.cdf.last().unwrap_or(&1.0);
        let x = rng.gen::<f64>() * total;
        self.cdf.partition_point(|&c| c < x).min(self.cdf.len() - 1)
    }
}

#[derive(Debug, Clone)]
pub struct World {
    pub spec: WorldSpec,
    pub orgs: Vec<GenOrg>,
    /// Indices into `orgs` of the organisations users belong to.
    leaves: Vec<usize>,
    user_orgs: Zipf,
    course_popularity: Zipf,
}

impl World {
    pub fn new(spec: WorldSpec) -> World {
        let mut rng = SmallRng::seed_from_u64(spec.seed);
        // Sanctioned strength: Pareto with a heavy tail, in whole employees.
        let mut strength = |scale: f64| (scale / rng.gen_range(0.001f64..1.0).powf(1.0 / 1.3)).round() as u64;
        let mut orgs = Vec::with_capacity(spec.top_level + spec.departments + spec.organisations);
        for m in 0..spec.top_level {
            let (prefix, kind) = if m % 5 == 4 { ("S", "state") } else { ("M", "ministry") };
            orgs.push(GenOrg {
                id: format!("{prefix}_{m}"),
                name: format!("{} {m}", if kind == "state" { "State" } else { "Ministry" }),
                parent: None,
                kind,
                employees: strength(400.0),
            });
        }
        let mut rng = SmallRng::seed_from_u64(spec.seed ^ 0x5eed);
        for d in 0..spec.departments {
            let parent = orgs[rng.gen_range(0..spec.top_level.max(1))].id.clone();
            orgs.push(GenOrg {
                id: format!("{parent}_D_{d}"),
                name: format!("Department {d}"),
                parent: Some(parent),
                kind: "department",
                employees: (200.0 / rng.gen_range(0.001f64..1.0).powf(1.0 / 1.3)).round() as u64,
            });
        }
        let first_org = orgs.len();
        for o in 0..spec.organisations {
            // Most organisations sit under a department, some directly under a ministry or state.
            let parent = if rng.gen_bool(0.8) && spec.departments > 0 {
                &orgs[spec.top_level + rng.gen_range(0..spec.departments)].id
            } else {
                &orgs[rng.gen_range(0..spec.top_level.max(1))].id
            };
            let id = format!("{parent}_O_{o}");
            orgs.push(GenOrg {
                parent: Some(parent.clone()),
                id,
                name: format!("Organisation {o}"),
                kind: "organisation",
                employees: (100.0 / rng.gen_range(0.001f64..1.0).powf(1.0 / 1.2)).round() as u64,
            });
        }
        World {
            leaves: (first_org..orgs.len()).collect(),
            user_orgs: Zipf::new(spec.organisations, 1.0),
            course_popularity: Zipf::new(spec.courses, 1.1),
            orgs,
            spec,
        }
    }

    /// The registry as `pulse.orgs` records, one JSON line each.
    pub fn org_lines(&self) -> Vec<String> {
        self.orgs
            .iter()
            .map(|o| {
                serde_json::json!({"v": 1, "org": o.id, "name": o.name, "parent": o.parent,
                    "kind": o.kind, "employees": o.employees})
                .to_string()
            })
            .collect()
    }

    /// The course catalogue as `pulse.courses` records, one JSON line each:
    /// one content provider per 100 courses, and every tenth course without
    /// one (it counts under `unlisted`).
    pub fn course_lines(&self) -> Vec<(String, String)> {
        let providers = (self.spec.courses / 100).max(1);
        (0..self.spec.courses)
            .map(|c| {
                let id = format!("do_{c}");
                let mut v = serde_json::json!({"v": 1, "course": id, "name": format!("Course {c}")});
                if c % 10 != 9 {
                    let p = c % providers;
                    v["provider"] = format!("P_{p}").into();
                    v["provider_name"] = PROVIDERS[p % PROVIDERS.len()].into();
                }
                (id, v.to_string())
            })
            .collect()
    }

    /// Capacity-building plans of every assignment type, as `pulse.plans`
    /// records (id, JSON line), due in the second year:
    /// - `acbp-national`: everyone, the five most popular courses, due at
    ///   the end of the year (with the default `start`, its first instant);
    /// - `acbp-{ministry}` for the first ten ministries and states: two
    ///   designations, ten courses, due at the end of September;
    /// - `acbp-{department}` for the first five departments: up to 100 of
    ///   its own users by id (a few not under it, who are not assigned),
    ///   three courses, due at the end of June, paced from the year's start.
    pub fn plan_lines(&self) -> Vec<(String, String)> {
        let year = Fy(self.spec.first_fy.0 + 1);
        let courses = |from: usize, n: usize| -> Vec<String> {
            (from..from + n).map(|c| format!("do_{}", c % self.spec.courses.max(1))).collect()
        };
        // The last second of a day of the year: 30 June is its 91st, 30 September its 183rd.
        let end_of_day = |day: i64| year.start() + day * 86_400_000 - 1_000;
        let mut plans = vec![(
            "acbp-national".to_owned(),
            serde_json::json!({"v": 1, "id": "acbp-national", "org": "national", "courses": courses(0, 5),
                "assign": {"to": "all"}, "due": year.end() - 1_000}),
        )];
        for (i, org) in self.orgs.iter().filter(|o| o.parent.is_none()).take(10).enumerate() {
            let id = format!("acbp-{}", org.id);
            let v = serde_json::json!({"v": 1, "id": id, "org": org.id, "courses": courses(i * 7, 10),
                "assign": {"to": "designations", "designations": [DESIGNATIONS[0], DESIGNATIONS[2]]},
                "due": end_of_day(183), "min_share": 0.3});
            plans.push((id, v));
        }
        let scan = self.spec.users.min(200_000);
        for (i, org) in self.orgs.iter().filter(|o| o.kind == "department").take(5).enumerate() {
            let under = format!("{}_", org.id);
            let mut users: Vec<String> = (0..scan)
                .filter(|&u| self.org_of(u) == org.id || self.org_of(u).starts_with(&under))
                .take(95)
                .map(|u| format!("u-{u}"))
                .collect();
            users.extend((0..5).map(|k| format!("u-{}", k * 7 + i)));
            let id = format!("acbp-{}", org.id);
            let v = serde_json::json!({"v": 1, "id": id, "org": org.id, "courses": courses(i * 3, 3),
                "assign": {"to": "users", "users": users}, "start": year.start(), "due": end_of_day(91)});
            plans.push((id, v));
        }
        plans.into_iter().map(|(id, v)| (id, v.to_string())).collect()
    }

    /// The user service's profile of a user: its org and a designation, as
    /// of the start of the first year (so a later event that moves the user
    /// wins).
    pub fn profile_line(&self, user: u64, out: &mut String) {
        out.clear();
        let designation = DESIGNATIONS[(user.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % DESIGNATIONS.len()];
        let _ = write!(
            out,
            r#"{{"v":1,"user":"u-{user}","org":"{}","designation":"{designation}","ts":{}}}"#,
            self.org_of(user),
            self.spec.first_fy.start()
        );
    }

    /// The org a user belongs to: a Zipf draw seeded by the user, so no table
    /// of users is kept.
    pub fn org_of(&self, user: u64) -> &str {
        let mut rng = SmallRng::seed_from_u64(self.spec.seed.wrapping_mul(0x9e37_79b9) ^ user);
        &self.orgs[self.leaves[self.user_orgs.sample(&mut rng)]].id
    }

    /// An endless event stream over this world.
    pub fn events(&self) -> EventStream<'_> {
        EventStream::new(self)
    }
}

/// Provider names, after some of iGOT's content providers.
const PROVIDERS: [&str; 8] = ["ISTM", "LBSNAA", "NIC", "CBC", "IIPA", "NIFM", "SVPNPA", "Karmayogi Bharat"];

/// Designations of the central services, for profiles.
const DESIGNATIONS: [&str; 8] = [
    "Section Officer",
    "Assistant Section Officer",
    "Under Secretary",
    "Deputy Secretary",
    "Director",
    "Joint Secretary",
    "Multi-Tasking Staff",
    "Stenographer",
];

/// One event of the stream, before it is written in a format.
#[derive(Debug, Clone, PartialEq)]
pub struct GenEvent {
    pub seq: u64,
    pub ts: i64,
    pub user: u64,
    pub kind: GenKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GenKind {
    Registration,
    Enrolment {
        course: usize,
    },
    Progress {
        course: usize,
        seconds: u32,
        percent: u8,
    },
    Completion {
        course: usize,
    },
    Rating {
        course: usize,
        stars: u8,
    },
    /// A pass needs a score of 60.
    Assessment {
        course: usize,
        score: u8,
    },
}

/// A learner working through one course.
#[derive(Debug, Clone)]
struct Journey {
    user: u64,
    course: usize,
    sessions_left: u8,
    completes: bool,
    rates: bool,
    assessed: bool,
    step: u8,
}

/// Interleaved learner journeys with event time advancing over two
/// financial years; `events_hint` sets how fast time advances.
#[derive(Debug)]
pub struct EventStream<'w> {
    world: &'w World,
    rng: SmallRng,
    active: Vec<Journey>,
    registered: Vec<u64>,
    /// Journeys begun: the position of the [`UserDraw::Everyone`] sweep.
    journeys: u64,
    seq: u64,
    start: i64,
    span: i64,
    events_hint: u64,
}

impl<'w> EventStream<'w> {
    fn new(world: &'w World) -> EventStream<'w> {
        let start = world.spec.first_fy.start();
        EventStream {
            world,
            rng: SmallRng::seed_from_u64(world.spec.seed ^ 0xe7e7),
            active: Vec::with_capacity(world.spec.journeys.max(1)),
            registered: vec![0; (world.spec.users as usize).div_ceil(64)],
            journeys: 0,
            seq: 0,
            start,
            span: Fy(world.spec.first_fy.0 + 1).end() - start,
            events_hint: 10_000_000,
        }
    }

    /// Spreads this many events over the two years (default 10M).
    pub fn spread_over(mut self, events: u64) -> Self {
        self.events_hint = events.max(1);
        self
    }

    /// Ends the events' time at `end` instead of the end of the second
    /// year, so that the last of them are recent activity.
    pub fn until(mut self, end: i64) -> Self {
        self.span = (end - 3_600_000 - self.start).max(1);
        self
    }

    fn draw_user(&mut self) -> u64 {
        let users = self.world.spec.users.max(1);
        let k = self.journeys;
        self.journeys += 1;
        match self.world.spec.draw {
            UserDraw::Uniform => self.rng.gen_range(0..users),
            UserDraw::Everyone if k % 4 == 3 => {
                let r: f64 = self.rng.gen();
                ((users as f64 * r * r) as u64).min(users - 1)
            }
            UserDraw::Everyone => {
                // A permutation of 0..users, so that each sweep meets every
                // user once: multiplying by an odd number, xor-shifting
                // right and adding are each a bijection modulo 2^bits, and
                // walking the cycle until it is back below `users` keeps it one.
                let bits = 64 - (users - 1).max(1).leading_zeros();
                let mask = (1u64 << bits) - 1;
                let mut x = (k - k / 4) % users;
                loop {
                    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) & mask;
                    x ^= x >> bits.div_ceil(2);
                    x = x.wrapping_add(self.world.spec.seed) & mask;
                    if x < users {
                        return x;
                    }
                }
            }
        }
    }

    fn new_journey(&mut self) -> Journey {
        let user = self.draw_user();
        let completes = self.rng.gen_bool(0.7);
        Journey {
            user,
            course: self.world.course_popularity.sample(&mut self.rng),
            sessions_left: self.rng.gen_range(1..=6),
            completes,
            rates: completes && self.rng.gen_bool(0.4),
            assessed: !self.rng.gen_bool(1.0 - self.world.spec.assessments),
            step: 0,
        }
    }

    fn is_registered(&mut self, user: u64) -> bool {
        let (word, bit) = ((user / 64) as usize, 1u64 << (user % 64));
        let seen = self.registered[word] & bit != 0;
        self.registered[word] |= bit;
        seen
    }
}

impl Iterator for EventStream<'_> {
    type Item = GenEvent;

    fn next(&mut self) -> Option<GenEvent> {
        if self.active.len() < self.world.spec.journeys.max(1) {
            let j = self.new_journey();
            self.active.push(j);
        }
        let i = self.rng.gen_range(0..self.active.len());
        let user = self.active[i].user;
        // A user registers before the first event of their first journey.
        let kind = if !self.is_registered(user) {
            GenKind::Registration
        } else {
            let j = &mut self.active[i];
            let course = j.course;
            if j.step == 0 {
                j.step = 1;
                GenKind::Enrolment { course }
            } else if j.sessions_left > 0 {
                j.sessions_left -= 1;
                j.step += 1;
                let percent = (u32::from(j.step) * 100 / 8).min(100) as u8;
                GenKind::Progress { course, seconds: self.rng.gen_range(60..5400), percent }
            } else if j.assessed {
                j.assessed = false;
                GenKind::Assessment { course, score: self.rng.gen_range(30..=100) }
            } else if j.completes {
                j.completes = false;
                GenKind::Completion { course }
            } else if j.rates {
                j.rates = false;
                GenKind::Rating { course, stars: self.rng.gen_range(3..=5) }
            } else {
                self.active.swap_remove(i);
                return self.next();
            }
        };
        let progress = (self.seq as f64 / self.events_hint as f64).min(1.0);
        let ts = self.start + (progress * self.span as f64) as i64 + self.rng.gen_range(0..3_600_000);
        self.seq += 1;
        Some(GenEvent { seq: self.seq, ts, user, kind })
    }
}

impl World {
    /// Writes one event as a `pulse-v1` message, from the user's own org.
    pub fn pulse_v1(&self, e: &GenEvent, out: &mut String) {
        self.pulse_v1_in(e, self.org_of(e.user), out);
    }

    /// Writes one event as a `pulse-v1` message from `org` (a user who moved).
    pub fn pulse_v1_in(&self, e: &GenEvent, org: &str, out: &mut String) {
        out.clear();
        let (name, course) = match e.kind {
            GenKind::Registration => ("registration", None),
            GenKind::Enrolment { course } => ("enrolment", Some(course)),
            GenKind::Progress { course, .. } => ("progress", Some(course)),
            GenKind::Completion { course } => ("completion", Some(course)),
            GenKind::Rating { course, .. } => ("rating", Some(course)),
            GenKind::Assessment { course, .. } => ("assessment", Some(course)),
        };
        let _ = write!(
            out,
            r#"{{"v":1,"id":"e-{}-{}","type":"{name}","ts":{},"user":"u-{}","org":"{}""#,
            self.spec.seed, e.seq, e.ts, e.user, org
        );
        if let Some(c) = course {
            let _ = write!(out, r#","course":"do_{c}""#);
        }
        match e.kind {
            GenKind::Progress { seconds, percent, .. } => {
                let _ = write!(out, r#","minutes":{},"percent":{percent}"#, f64::from(seconds) / 60.0);
            }
            GenKind::Rating { stars, .. } => {
                let _ = write!(out, r#","stars":{stars}"#);
            }
            GenKind::Assessment { score, .. } => {
                let _ = write!(out, r#","score":{score},"pass":{}"#, score >= 60);
            }
            _ => {}
        }
        out.push('}');
    }
}

impl World {
    /// Writes one event as a Sunbird telemetry v3 message (contract section
    /// 3.1) from `org`; `false` for a registration or an assessment, which
    /// only `pulse-v1` carries.
    pub fn sunbird(&self, e: &GenEvent, org: &str, out: &mut String) -> bool {
        out.clear();
        let (eid, course) = match e.kind {
            GenKind::Registration | GenKind::Assessment { .. } => return false,
            GenKind::Enrolment { course } | GenKind::Completion { course } => ("AUDIT", course),
            GenKind::Progress { course, .. } => ("END", course),
            GenKind::Rating { course, .. } => ("FEEDBACK", course),
        };
        let _ = write!(
            out,
            r#"{{"eid":"{eid}","ets":{},"ver":"3.0","mid":"e-{}-{}","actor":{{"id":"u-{}","type":"User"}},"context":{{"channel":"{org}","cdata":[{{"id":"do_{course}","type":"Course"}}]}},"object":{{"id":"do_{course}","type":"Course","rollup":{{"l1":"do_{course}"}}}},"edata":"#,
            e.ts, self.spec.seed, e.seq, e.user
        );
        let _ = match e.kind {
            GenKind::Enrolment { .. } => write!(out, r#"{{"type":"enrol"}}}}"#),
            GenKind::Completion { .. } => write!(out, r#"{{"type":"enrol-complete"}}}}"#),
            GenKind::Progress { seconds, percent, .. } => {
                write!(out, r#"{{"type":"content","duration":{seconds},"summary":[{{"progress":{percent}}}]}}}}"#)
            }
            GenKind::Rating { stars, .. } => write!(out, r#"{{"type":"RATING","rating":{stars}}}}}"#),
            GenKind::Registration | GenKind::Assessment { .. } => unreachable!("returned above"),
        };
        true
    }

    /// Writes a rating as an `igot-rating` message (contract section 3.2),
    /// its time inside a version-1 UUID; `false` for any other kind.
    pub fn igot_rating(&self, e: &GenEvent, out: &mut String) -> bool {
        let GenKind::Rating { course, stars } = e.kind else { return false };
        out.clear();
        // 100-ns ticks since 1582-10-15; the sequence number fills the sub-ms
        // ticks, clock sequence and node, so every event's UUID differs.
        let ticks = (e.ts as u64) * 10_000 + 0x01B2_1DD2_1381_4000 + e.seq % 10_000;
        let _ = write!(
            out,
            r#"{{"version":1,"action":"ratingAdd","activity_id":"do_{course}","activity_Type":"Course","user_id":"u-{}","updatedValues":{{"updatedOn":"{:08x}-{:04x}-{:04x}-{:04x}-{:012x}","rating":{stars}}}}}"#,
            e.user,
            ticks & 0xffff_ffff,
            (ticks >> 32) & 0xffff,
            (ticks >> 48) & 0x0fff | 0x1000,
            0x8000 | (e.seq & 0x3fff),
            e.seq & 0xffff_ffff_ffff,
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> World {
        World::new(WorldSpec { users: 1000, ..WorldSpec::default() })
    }

    #[test]
    fn the_world_has_the_requested_shape_and_is_deterministic() {
        let w = small();
        assert_eq!(w.orgs.len(), 90 + 600 + 2500);
        assert_eq!(w.orgs.iter().filter(|o| o.parent.is_none()).count(), 90);
        assert_eq!(w.org_lines(), small().org_lines());
        let a: Vec<_> = w.events().take(1000).collect();
        let b: Vec<_> = small().events().take(1000).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn everyone_draw_reaches_every_user_and_keeps_a_hot_head() {
        let w = World::new(WorldSpec { users: 1000, draw: UserDraw::Everyone, ..WorldSpec::default() });
        let mut stream = w.events();
        let users: Vec<u64> = (0..1334).map(|_| stream.draw_user()).collect();
        let distinct: std::collections::HashSet<_> = users.iter().collect();
        assert_eq!(distinct.len(), 1000, "the first users / 0.75 journeys reach every user");
        let head = users.iter().filter(|&&u| u < 10).count();
        assert!(head > 30, "floor(U r^2) sends a tenth of its draws below U/100: {head}");
        let uniform = World::new(WorldSpec { users: 1000, ..WorldSpec::default() });
        let mut stream = uniform.events();
        let reached: std::collections::HashSet<_> = (0..1334).map(|_| stream.draw_user()).collect();
        assert!(reached.len() < 800, "a uniform draw leaves about e^-1.3 of them out: {}", reached.len());
    }

    #[test]
    fn plans_of_every_assignment_type_parse() {
        let world = small();
        let plans = world.plan_lines();
        let mut kinds = std::collections::HashSet::new();
        for (id, line) in &plans {
            match pulse_model::parse_plan(Some(id.as_bytes()), Some(line.as_bytes())).unwrap() {
                pulse_model::PlanUpdate::Upsert(p) => {
                    assert!(p.start < p.due && p.due <= Fy(2025).end(), "{line}");
                    kinds.insert(std::mem::discriminant(&p.assign));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(kinds.len(), 3, "all, designations and users");
        assert_eq!(plans, world.plan_lines(), "deterministic");
    }

    #[test]
    fn catalogue_and_profiles_parse_and_assessments_come_when_asked() {
        let w = World::new(WorldSpec { users: 1000, assessments: 0.5, ..WorldSpec::default() });
        let lines = w.course_lines();
        assert_eq!(lines.len(), 4000);
        let without = lines.iter().filter(|(_, l)| !l.contains("provider")).count();
        assert_eq!(without, 400, "every tenth course has no provider");
        for (key, line) in &lines {
            assert!(pulse_model::parse_course(Some(key.as_bytes()), Some(line.as_bytes())).is_ok(), "{line}");
        }
        let mut line = String::new();
        w.profile_line(7, &mut line);
        let parsed = pulse_model::parse(pulse_model::InputFormat::UserProfile, Some(b"u-7"), line.as_bytes());
        assert!(matches!(parsed, Ok(pulse_model::Parsed::Event(_))), "{line}");
        let kinds: Vec<GenKind> = w.events().take(50_000).map(|e| e.kind).collect();
        let assessed = kinds.iter().filter(|k| matches!(k, GenKind::Assessment { .. })).count();
        let enrolled = kinds.iter().filter(|k| matches!(k, GenKind::Enrolment { .. })).count();
        let share = assessed as f64 / enrolled as f64;
        assert!((0.35..0.6).contains(&share), "assessments per enrolment {share}");
        assert!(!small().events().take(50_000).any(|e| matches!(e.kind, GenKind::Assessment { .. })));
    }

    #[test]
    fn events_are_valid_pulse_v1_and_completions_are_about_70_percent() {
        let w = small();
        let mut line = String::new();
        let (mut enrol, mut done) = (0, 0);
        for e in w.events().spread_over(300_000).take(300_000) {
            w.pulse_v1(&e, &mut line);
            match pulse_model::parse(pulse_model::InputFormat::PulseV1, None, line.as_bytes()) {
                Ok(pulse_model::Parsed::Event(_)) => {}
                other => panic!("{line}: {other:?}"),
            }
            match e.kind {
                GenKind::Enrolment { .. } => enrol += 1,
                GenKind::Completion { .. } => done += 1,
                _ => {}
            }
        }
        let ratio = f64::from(done) / f64::from(enrol);
        assert!((0.6..0.8).contains(&ratio), "completions/enrolments = {ratio}");
    }

    fn event(format: pulse_model::InputFormat, line: &str) -> pulse_model::Event<'static> {
        match pulse_model::parse(format, None, line.as_bytes()) {
            Ok(pulse_model::Parsed::Event(e)) => e.into_owned(),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn sunbird_and_igot_forms_parse_to_the_same_event_as_pulse_v1() {
        use pulse_model::InputFormat::{IgotRating, PulseV1, SunbirdTelemetry};
        let w = small();
        let (mut v1, mut other) = (String::new(), String::new());
        let (mut sunbird, mut igot) = (0, 0);
        for e in w.events().take(20_000) {
            w.pulse_v1(&e, &mut v1);
            let expected = event(PulseV1, &v1);
            if w.sunbird(&e, w.org_of(e.user), &mut other) {
                let got = event(SunbirdTelemetry, &other);
                assert_eq!(
                    (&got.id, got.ts, &got.user, &got.org),
                    (&expected.id, expected.ts, &expected.user, &expected.org)
                );
                assert_eq!(got.kind, expected.kind, "{other}");
                sunbird += 1;
            }
            if w.igot_rating(&e, &mut other) {
                let got = event(IgotRating, &other);
                assert_eq!((got.ts, &got.user, &got.kind), (expected.ts, &expected.user, &expected.kind), "{other}");
                assert_eq!(got.org, None, "igot-rating events carry no org");
                igot += 1;
            }
        }
        assert!(sunbird > 10_000 && igot > 100, "{sunbird} sunbird, {igot} igot");
    }
}
