//! Per-user state and the summable totals derived from it.

use pulse_model::{Event, EventKind, Fy, Millis, Minutes};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::vecmap::VecMap;

/// The latest org-carrying event of a user: it names the current org.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgStamp {
    pub ts: Millis,
    pub id: String,
    pub org: String,
}

/// The current rating of one (user, course): the latest by (ts, id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatingStamp {
    pub ts: Millis,
    pub id: String,
    /// Thousandths of a star.
    pub stars: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CourseState {
    /// Earliest `ts` among this pair's enrolment and completion events.
    pub enrolled_at: Option<Millis>,
    /// Earliest completion `ts`.
    pub completed_at: Option<Millis>,
    /// Learning time in milliseconds.
    pub minutes_ms: i64,
    /// Highest progress percentage seen.
    pub percent: Option<f64>,
    pub rating: Option<RatingStamp>,
}

/// Everything Pulse keeps about one user. Its existence means the user has
/// at least one accepted event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub org: Option<OrgStamp>,
    pub courses: VecMap<String, CourseState>,
    /// Learning milliseconds per financial year of the sessions' own `ts`.
    pub fy_minutes_ms: VecMap<Fy, i64>,
    /// Financial years with at least one non-registration event.
    pub active_fys: Vec<Fy>,
}

/// Replaces a string's content, reusing its buffer.
fn overwrite(s: &mut String, with: &str) {
    s.clear();
    s.push_str(with);
}

fn later(ts: Millis, id: &str, than_ts: Millis, than_id: &str) -> bool {
    (ts, id.as_bytes()) > (than_ts, than_id.as_bytes())
}

impl UserState {
    /// The leaf key this user counts under: the current org, or the
    /// `unassigned` node for a user no event has given an org.
    pub fn org_key(&self) -> &str {
        self.org.as_ref().map_or(crate::UNASSIGNED, |o| &o.org)
    }

    /// Applies one accepted (not duplicate) event. For an event on a course,
    /// returns that (user, course)'s share of the course totals before and after.
    pub(crate) fn apply(&mut self, ev: &Event<'_>) -> Option<(CourseTotals, CourseTotals)> {
        if let Some(org) = &ev.org {
            match &mut self.org {
                Some(cur) if !later(ev.ts, &ev.id, cur.ts, &cur.id) => {}
                Some(cur) => {
                    cur.ts = ev.ts;
                    overwrite(&mut cur.id, &ev.id);
                    overwrite(&mut cur.org, org);
                }
                None => self.org = Some(OrgStamp { ts: ev.ts, id: ev.id.to_string(), org: org.to_string() }),
            }
        }
        let course = ev.kind.course()?;
        let fy = Fy::of(ev.ts);
        if let Err(at) = self.active_fys.binary_search(&fy) {
            self.active_fys.insert(at, fy);
        }
        let c = self.courses.get_or_default(course, || course.to_owned());
        let before = c.totals();
        let earliest = |cur: Option<Millis>| Some(cur.map_or(ev.ts, |t| t.min(ev.ts)));
        match &ev.kind {
            EventKind::Registration => {}
            EventKind::Enrolment { .. } => c.enrolled_at = earliest(c.enrolled_at),
            EventKind::Completion { .. } => {
                c.enrolled_at = earliest(c.enrolled_at);
                c.completed_at = earliest(c.completed_at);
            }
            EventKind::Progress { minutes: Minutes(ms), percent, .. } => {
                c.minutes_ms += ms;
                *self.fy_minutes_ms.get_or_default(&fy, || fy) += ms;
                if let Some(p) = percent {
                    c.percent = Some(c.percent.map_or(*p, |cur| cur.max(*p)));
                }
            }
            EventKind::Rating { stars, .. } => match &mut c.rating {
                Some(r) if !later(ev.ts, &ev.id, r.ts, &r.id) => {}
                Some(r) => {
                    r.ts = ev.ts;
                    overwrite(&mut r.id, &ev.id);
                    r.stars = stars.0;
                }
                None => c.rating = Some(RatingStamp { ts: ev.ts, id: ev.id.to_string(), stars: stars.0 }),
            },
        }
        Some((before, c.totals()))
    }

    /// This user's share of the totals of the org it counts under.
    pub fn totals(&self, meeting_ms: i64) -> Totals {
        let mut t = Totals { registered_users: 1, ..Totals::default() };
        for c in self.courses.values() {
            if let Some(at) = c.enrolled_at {
                t.enrolments += 1;
                t.fy(Fy::of(at)).enrolments += 1;
            }
            if let Some(at) = c.completed_at {
                t.completions += 1;
                t.fy(Fy::of(at)).completions += 1;
            }
            t.minutes_ms += c.minutes_ms;
            if let Some(r) = &c.rating {
                t.ratings += 1;
                t.rating_milli_sum += r.stars;
            }
        }
        t.learners = i64::from(t.enrolments > 0);
        for (&fy, &ms) in self.fy_minutes_ms.iter() {
            let f = t.fy(fy);
            f.minutes_ms += ms;
            f.users_meeting_hours = i64::from(ms >= meeting_ms);
        }
        for &fy in &self.active_fys {
            t.fy(fy).active_users = 1;
        }
        t
    }
}

impl CourseState {
    /// This (user, course)'s share of the course's totals.
    pub fn totals(&self) -> CourseTotals {
        CourseTotals {
            enrolments: i64::from(self.enrolled_at.is_some()),
            completions: i64::from(self.completed_at.is_some()),
            minutes_ms: self.minutes_ms,
            ratings: i64::from(self.rating.is_some()),
            rating_milli_sum: self.rating.as_ref().map_or(0, |r| r.stars),
        }
    }
}

/// Summable org-level totals: a sum over the users counted under one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub registered_users: i64,
    pub learners: i64,
    pub enrolments: i64,
    pub completions: i64,
    pub minutes_ms: i64,
    pub ratings: i64,
    pub rating_milli_sum: i64,
    /// Per financial year, sorted by year; inline for the usual one or two.
    pub fys: SmallVec<[(Fy, FyTotals); 2]>,
}

/// The part of [`Totals`] that belongs to one financial year.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FyTotals {
    pub enrolments: i64,
    pub completions: i64,
    pub minutes_ms: i64,
    pub active_users: i64,
    pub users_meeting_hours: i64,
}

impl FyTotals {
    fn add(&mut self, o: &FyTotals, sign: i64) {
        self.enrolments += sign * o.enrolments;
        self.completions += sign * o.completions;
        self.minutes_ms += sign * o.minutes_ms;
        self.active_users += sign * o.active_users;
        self.users_meeting_hours += sign * o.users_meeting_hours;
    }
}

impl Totals {
    fn fy(&mut self, fy: Fy) -> &mut FyTotals {
        let at = match self.fys.binary_search_by_key(&fy, |(y, _)| *y) {
            Ok(at) => at,
            Err(at) => {
                self.fys.insert(at, (fy, FyTotals::default()));
                at
            }
        };
        &mut self.fys[at].1
    }

    /// Adds (`sign` = 1) or subtracts (`sign` = -1) another total. Years that
    /// reach zero are dropped so that state does not grow with history.
    pub fn add(&mut self, o: &Totals, sign: i64) {
        self.registered_users += sign * o.registered_users;
        self.learners += sign * o.learners;
        self.enrolments += sign * o.enrolments;
        self.completions += sign * o.completions;
        self.minutes_ms += sign * o.minutes_ms;
        self.ratings += sign * o.ratings;
        self.rating_milli_sum += sign * o.rating_milli_sum;
        for (fy, f) in &o.fys {
            self.fy(*fy).add(f, sign);
        }
        self.fys.retain(|(_, f)| *f != FyTotals::default());
    }

    pub fn is_zero(&self) -> bool {
        *self == Totals::default()
    }

    pub fn for_fy(&self, fy: Fy) -> FyTotals {
        self.fys.iter().find(|(y, _)| *y == fy).map(|(_, f)| *f).unwrap_or_default()
    }
}

/// Summable course-level totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseTotals {
    pub enrolments: i64,
    pub completions: i64,
    pub minutes_ms: i64,
    pub ratings: i64,
    pub rating_milli_sum: i64,
}

impl CourseTotals {
    pub fn add(&mut self, o: &CourseTotals, sign: i64) {
        self.enrolments += sign * o.enrolments;
        self.completions += sign * o.completions;
        self.minutes_ms += sign * o.minutes_ms;
        self.ratings += sign * o.ratings;
        self.rating_milli_sum += sign * o.rating_milli_sum;
    }

    pub fn is_zero(&self) -> bool {
        *self == CourseTotals::default()
    }
}
