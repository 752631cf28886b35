//! What each user did, recomputed from its events and profile.

use std::collections::BTreeMap;

use pulse_model::{Event, EventKind};

use crate::fy_of;
use crate::world::{ProfileFacts, World};

/// Everything about one user, recomputed from the user's events and profile.
#[derive(Default)]
pub(crate) struct UserFacts {
    pub(crate) org: Option<String>,
    pub(crate) designation: Option<String>,
    pub(crate) courses: BTreeMap<String, CourseFacts>,
    /// Progress minutes (ms) with their event times.
    pub(crate) sessions: Vec<(i64, i64)>,
    /// Times of every activity (every event but a registration).
    pub(crate) activity: Vec<i64>,
}

#[derive(Default)]
pub(crate) struct CourseFacts {
    pub(crate) enrolled: Option<i64>,
    pub(crate) completed: Option<i64>,
    pub(crate) minutes: i64,
    pub(crate) percent: Option<f64>,
    pub(crate) rating: Option<(i64, String, i64)>,
    /// Every attempt: (ts, score, pass).
    pub(crate) attempts: Vec<(i64, f64, bool)>,
}

impl CourseFacts {
    pub(crate) fn best_score(&self) -> Option<f64> {
        self.attempts.iter().map(|a| a.1).reduce(f64::max)
    }

    /// The earliest passing attempt's time.
    pub(crate) fn passed(&self) -> Option<i64> {
        self.attempts.iter().filter(|a| a.2).map(|a| a.0).min()
    }
}

impl UserFacts {
    pub(crate) fn minutes_in_fy(&self, fy: i32) -> i64 {
        self.sessions.iter().filter(|(ts, _)| fy_of(*ts) == fy).map(|(_, ms)| ms).sum()
    }
}

fn user_facts(events: &[&Event<'static>], profile: Option<&ProfileFacts>) -> UserFacts {
    // Every org-carrying item as (ts, id, org); the profile's id is "".
    let mut items: Vec<(i64, String, String)> =
        events.iter().filter_map(|e| Some((e.ts, e.id.to_string(), e.org.as_ref()?.to_string()))).collect();
    if let Some((ts, org, _)) = profile {
        items.push((*ts, String::new(), org.clone()));
    }
    let org = items.into_iter().max_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes()))).map(|i| i.2);
    let designation = profile.and_then(|p| p.2.clone());
    let mut f = UserFacts { org, designation, ..UserFacts::default() };
    for e in events {
        let Some(course) = e.kind.course() else {
            continue;
        };
        f.activity.push(e.ts);
        let c = f.courses.entry(course.to_string()).or_default();
        match &e.kind {
            EventKind::Enrolment { .. } => c.enrolled = Some(c.enrolled.map_or(e.ts, |t| t.min(e.ts))),
            EventKind::Completion { .. } => {
                c.enrolled = Some(c.enrolled.map_or(e.ts, |t| t.min(e.ts)));
                c.completed = Some(c.completed.map_or(e.ts, |t| t.min(e.ts)));
            }
            EventKind::Progress { minutes, percent, .. } => {
                c.minutes += minutes.0;
                f.sessions.push((e.ts, minutes.0));
                if let Some(p) = percent {
                    c.percent = Some(c.percent.map_or(*p, |q| q.max(*p)));
                }
            }
            EventKind::Rating { stars, .. } => {
                let newer = c.rating.as_ref().is_none_or(|(ts, id, _)| (e.ts, e.id.as_bytes()) > (*ts, id.as_bytes()));
                if newer {
                    c.rating = Some((e.ts, e.id.to_string(), stars.0));
                }
            }
            EventKind::Assessment { score, pass, .. } => c.attempts.push((e.ts, *score, *pass)),
            EventKind::Registration | EventKind::Profile { .. } | EventKind::ProfileRemoved => {}
        }
    }
    f
}

/// Every registered user (an accepted event or a profile) with its facts.
pub(crate) fn users(w: &World) -> BTreeMap<String, UserFacts> {
    let mut by_user: BTreeMap<String, Vec<&Event<'static>>> = BTreeMap::new();
    for e in &w.events {
        by_user.entry(e.user.to_string()).or_default().push(e);
    }
    for user in w.profiles.keys() {
        by_user.entry(user.clone()).or_default();
    }
    by_user.into_iter().map(|(u, events)| (u.clone(), user_facts(&events, w.profiles.get(&u)))).collect()
}
