//! Per-user state and the summable totals derived from it.

use pulse_model::{Day, Event, EventKind, Fy, Millis, Minutes, Month};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::vecmap::VecMap;

/// The latest org-carrying event of a user: with the profile, it names the
/// current org.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgStamp {
    pub ts: Millis,
    pub id: String,
    pub org: String,
}

/// The user's current profile (contract section 10): the latest record of
/// the profile topic, in topic order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub ts: Millis,
    pub org: String,
    pub designation: Option<String>,
}

/// The current rating of one (user, course): the latest by (ts, id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatingStamp {
    pub ts: Millis,
    pub id: String,
    /// Thousandths of a star.
    pub stars: i64,
}

/// The assessment attempts of one (user, course) (contract section 12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub best_score: f64,
    /// The earliest passing attempt's `ts`; `None` until one passes.
    pub passed_at: Option<Millis>,
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
    /// Boxed, as most pairs have neither: a pair takes 72 bytes, not 120
    /// (the write-back cache and the commit in flight hold many).
    pub rating: Option<Box<RatingStamp>>,
    pub assessment: Option<Box<Assessment>>,
}

/// Everything Pulse keeps about one user. The user is registered while it
/// has a profile or an accepted event (every event leaves an org or a course).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    /// The latest org-carrying event (profiles apart).
    pub org: Option<OrgStamp>,
    pub profile: Option<Profile>,
    pub courses: VecMap<String, CourseState>,
    /// Every IST month with activity, with the learning milliseconds of the
    /// sessions in it (0 for a month of other activity only).
    pub months: VecMap<Month, i64>,
    /// Learning milliseconds per IST day, for the days the shard's window
    /// horizon still covers (older ones count nowhere, and are dropped when
    /// the user next learns on a new day).
    pub days: VecMap<Day, i64>,
    /// The user's standing in each plan assigned to it, as last counted in
    /// its org's totals (kept so that a re-evaluation removes exactly what
    /// was added, whatever changed since).
    pub plans: VecMap<String, PlanCounts>,
    /// The time of the latest activity (any event but a registration).
    pub last_active: Option<Millis>,
}

/// Replaces a string's content, reusing its buffer.
fn overwrite(s: &mut String, with: &str) {
    s.clear();
    s.push_str(with);
}

fn later(ts: Millis, id: &str, than_ts: Millis, than_id: &str) -> bool {
    (ts, id.as_bytes()) > (than_ts, than_id.as_bytes())
}

fn earliest(cur: Option<Millis>, ts: Millis) -> Option<Millis> {
    Some(cur.map_or(ts, |t| t.min(ts)))
}

/// What [`UserState::apply`] changed.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The (user, course)'s share of the course totals, before and after.
    pub(crate) course: Option<(CourseTotals, CourseTotals)>,
    /// The change of the user's share of its org's totals; `None` for a profile.
    pub(crate) change: Option<Totals>,
}

/// Moves one count of a (user, course) from the month and day of `old` to
/// those of `new` (either may be absent); days before `horizon` are not kept.
fn moved(
    d: &mut Totals,
    old: Option<Millis>,
    new: Option<Millis>,
    horizon: Day,
    field: fn(&mut PeriodTotals) -> &mut i64,
) {
    if old == new {
        return;
    }
    for (at, sign) in [(old, -1), (new, 1)] {
        let Some(at) = at else { continue };
        *field(slot(&mut d.months, Month::of(at))) += sign;
        let day = Day::of(at);
        if day >= horizon {
            *field(slot(&mut d.days, day)) += sign;
        }
    }
}

/// The first fields of a [`UserState`], in its order: what names its
/// current org, decoded alone where only that is needed (a restore
/// indexing users by org reads every user of a changelog).
#[derive(Debug, Deserialize)]
pub(crate) struct UserOrg {
    org: Option<OrgStamp>,
    profile: Option<Profile>,
}

impl UserOrg {
    pub(crate) fn org_key(&self) -> &str {
        current_org(&self.org, &self.profile).unwrap_or(crate::UNASSIGNED)
    }
}

/// The current org: of the latest of the org-carrying events and the
/// profile by (`ts`, id), where the profile's id is the empty string
/// (an event at the same `ts` wins).
fn current_org<'a>(org: &'a Option<OrgStamp>, profile: &'a Option<Profile>) -> Option<&'a str> {
    match (org, profile) {
        (Some(e), Some(p)) if later(p.ts, "", e.ts, &e.id) => Some(&p.org),
        (Some(e), _) => Some(&e.org),
        (None, p) => p.as_ref().map(|p| p.org.as_str()),
    }
}

impl UserState {
    /// The current org: of the latest of the org-carrying events and the
    /// profile by (`ts`, id), where the profile's id is the empty string
    /// (an event at the same `ts` wins).
    pub fn current_org(&self) -> Option<&str> {
        current_org(&self.org, &self.profile)
    }

    /// The leaf key this user counts under: the current org, or the
    /// `unassigned` node for a user nothing has given an org.
    pub fn org_key(&self) -> &str {
        self.current_org().unwrap_or(crate::UNASSIGNED)
    }

    /// About the bytes it takes in memory, what it points to included:
    /// how the write-back cache and the commit in flight are bounded in
    /// bytes (`store.memory_budget_mib`).
    pub fn memory_bytes(&self) -> usize {
        let org = self.org.as_ref().map_or(0, |o| o.id.capacity() + o.org.capacity());
        let profile = self.profile.as_ref().map_or(0, |p| {
            size_of::<Profile>() + p.org.capacity() + p.designation.as_ref().map_or(0, String::capacity)
        });
        let courses: usize = self
            .courses
            .iter()
            .map(|(id, c)| {
                id.capacity()
                    + c.rating.as_ref().map_or(0, |r| size_of::<RatingStamp>() + r.id.capacity())
                    + c.assessment.as_ref().map_or(0, |_| size_of::<Assessment>())
            })
            .sum();
        let plans: usize = self.plans.iter().map(|(id, _)| id.capacity()).sum();
        size_of::<UserState>()
            + org
            + profile
            + courses
            + plans
            + self.courses.heap_bytes()
            + self.months.heap_bytes()
            + self.days.heap_bytes()
            + self.plans.heap_bytes()
    }

    /// A profile or at least one accepted event.
    pub fn is_registered(&self) -> bool {
        self.profile.is_some() || self.org.is_some() || !self.courses.is_empty()
    }

    /// Applies one accepted (not duplicate) event or profile. Days before
    /// `horizon` are no longer kept.
    ///
    /// Returns what the event changed: for an event on a course, that
    /// (user, course)'s share of the course totals before and after; and the
    /// change of [`UserState::totals`] (so that the hot path need not build
    /// the user's whole share twice per event), `None` for a profile, whose
    /// change the caller finds by comparing whole shares.
    pub(crate) fn apply(&mut self, ev: &Event<'_>, horizon: Day, meeting_ms: i64) -> Applied {
        match &ev.kind {
            EventKind::Profile { designation } => {
                let org = ev.org.as_deref().unwrap_or_default().to_owned();
                let designation = designation.as_deref().map(str::to_owned);
                self.profile = Some(Profile { ts: ev.ts, org, designation });
                return Applied { course: None, change: None };
            }
            EventKind::ProfileRemoved => {
                self.profile = None;
                return Applied { course: None, change: None };
            }
            _ => {}
        }
        // Every event registers its user (it leaves an org or a course).
        let mut d = Totals { registered_users: i64::from(!self.is_registered()), ..Totals::default() };
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
        let Some(course) = ev.kind.course() else { return Applied { course: None, change: Some(d) } };
        let recent = |at: Millis| Some(Day::of(at)).filter(|day| *day >= horizon);

        // The latest activity moves to this event's day.
        if self.last_active.is_none_or(|last| ev.ts > last) {
            let (old, new) = (self.last_active.and_then(recent), recent(ev.ts));
            if old != new {
                if let Some(day) = old {
                    slot(&mut d.days, day).active_users -= 1;
                }
                if let Some(day) = new {
                    slot(&mut d.days, day).active_users += 1;
                }
            }
            self.last_active = Some(ev.ts);
        }
        // A month (and a year) of activity.
        let month = Month::of(ev.ts);
        let fy = month.fy();
        let fy_was_active = self.months.iter().any(|(m, _)| m.fy() == fy);
        let fy_minutes = self.fy_minutes_ms(fy);
        if self.months.get(&month).is_none() {
            slot(&mut d.months, month).active_users += 1;
            if !fy_was_active {
                slot(&mut d.fys, fy).active_users += 1;
            }
        }
        let month_ms = self.months.get_or_default(&month, || month);
        let c = self.courses.get_or_default(course, || course.to_owned());
        let before = c.totals();
        let (enrolled, completed) = (c.enrolled_at, c.completed_at);
        let passed = c.assessment.as_ref().and_then(|a| a.passed_at);
        let mut progress_ms = 0;
        match &ev.kind {
            EventKind::Registration | EventKind::Profile { .. } | EventKind::ProfileRemoved => {}
            EventKind::Enrolment { .. } => c.enrolled_at = earliest(c.enrolled_at, ev.ts),
            EventKind::Completion { .. } => {
                c.enrolled_at = earliest(c.enrolled_at, ev.ts);
                c.completed_at = earliest(c.completed_at, ev.ts);
            }
            EventKind::Progress { minutes: Minutes(ms), percent, .. } => {
                progress_ms = *ms;
                c.minutes_ms += ms;
                *month_ms += ms;
                slot(&mut d.months, month).minutes_ms += ms;
                if let Some(day) = recent(ev.ts) {
                    // Days the horizon passed are dropped here, where the
                    // days are read anyway; no share counts them meanwhile.
                    self.days.retain(|d, _| *d >= horizon);
                    *self.days.get_or_default(&day, || day) += ms;
                    slot(&mut d.days, day).minutes_ms += ms;
                }
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
                None => c.rating = Some(Box::new(RatingStamp { ts: ev.ts, id: ev.id.to_string(), stars: stars.0 })),
            },
            EventKind::Assessment { score, pass, .. } => {
                let a =
                    c.assessment.get_or_insert_with(|| Box::new(Assessment { best_score: *score, passed_at: None }));
                a.best_score = a.best_score.max(*score);
                if *pass {
                    a.passed_at = earliest(a.passed_at, ev.ts);
                }
            }
        }
        let after = c.totals();
        let mut share = after;
        share.add(&before, -1);
        d.enrolments = share.enrolments;
        d.completions = share.completions;
        d.minutes_ms = share.minutes_ms;
        d.ratings = share.ratings;
        d.rating_milli_sum = share.rating_milli_sum;
        d.assessed = share.assessed;
        d.assessments_passed = share.assessments_passed;
        moved(&mut d, enrolled, c.enrolled_at, horizon, |p| &mut p.enrolments);
        moved(&mut d, completed, c.completed_at, horizon, |p| &mut p.completions);
        let first_enrolment = enrolled.is_none() && c.enrolled_at.is_some();
        let passed_now = c.assessment.as_ref().and_then(|a| a.passed_at);
        // A first enrolment in this course makes a learner of a user with no
        // other; its courses are scanned only then, not on every event.
        if first_enrolment {
            d.learners = i64::from(self.courses.values().filter(|c| c.enrolled_at.is_some()).count() == 1);
        }
        if passed != passed_now {
            if let Some(at) = passed {
                slot(&mut d.fys, Fy::of(at)).assessments_passed -= 1;
            }
            if let Some(at) = passed_now {
                slot(&mut d.fys, Fy::of(at)).assessments_passed += 1;
            }
        }
        // The year's hours goal, over the year's minutes.
        let met_before = fy_was_active && fy_minutes >= meeting_ms;
        let met_after = fy_minutes + progress_ms >= meeting_ms;
        if met_before != met_after {
            slot(&mut d.fys, fy).users_meeting_hours += i64::from(met_after) - i64::from(met_before);
        }
        Applied { course: Some((before, after)), change: Some(d) }
    }

    /// Learning milliseconds in one financial year.
    pub fn fy_minutes_ms(&self, fy: Fy) -> i64 {
        self.months.iter().filter(|(m, _)| m.fy() == fy).map(|(_, ms)| ms).sum()
    }

    /// This user's share of the totals of the org it counts under; days
    /// before `horizon` are left out. Nothing for a user not registered.
    pub fn totals(&self, meeting_ms: i64, horizon: Day) -> Totals {
        if !self.is_registered() {
            return Totals::default();
        }
        let mut t = Totals { registered_users: 1, ..Totals::default() };
        let recent = |at: Millis| Some(Day::of(at)).filter(|d| *d >= horizon);
        for c in self.courses.values() {
            if let Some(at) = c.enrolled_at {
                t.enrolments += 1;
                slot(&mut t.months, Month::of(at)).enrolments += 1;
                if let Some(d) = recent(at) {
                    slot(&mut t.days, d).enrolments += 1;
                }
            }
            if let Some(at) = c.completed_at {
                t.completions += 1;
                slot(&mut t.months, Month::of(at)).completions += 1;
                if let Some(d) = recent(at) {
                    slot(&mut t.days, d).completions += 1;
                }
            }
            t.minutes_ms += c.minutes_ms;
            if let Some(r) = &c.rating {
                t.ratings += 1;
                t.rating_milli_sum += r.stars;
            }
            if let Some(a) = &c.assessment {
                t.assessed += 1;
                if let Some(at) = a.passed_at {
                    t.assessments_passed += 1;
                    slot(&mut t.fys, Fy::of(at)).assessments_passed += 1;
                }
            }
        }
        t.learners = i64::from(t.enrolments > 0);
        let mut fy_minutes: SmallVec<[(Fy, i64); 2]> = SmallVec::new();
        for (&month, &ms) in self.months.iter() {
            let m = slot(&mut t.months, month);
            m.minutes_ms += ms;
            m.active_users = 1;
            *slot(&mut fy_minutes, month.fy()) += ms;
        }
        for (fy, ms) in fy_minutes {
            let f = slot(&mut t.fys, fy);
            f.active_users = 1;
            f.users_meeting_hours = i64::from(ms >= meeting_ms);
        }
        for (&day, &ms) in self.days.iter().filter(|(d, _)| **d >= horizon) {
            slot(&mut t.days, day).minutes_ms += ms;
        }
        if let Some(d) = self.last_active.and_then(recent) {
            slot(&mut t.days, d).active_users = 1;
        }
        t.plans = self.plans.iter().map(|(id, c)| (id.clone(), *c)).collect();
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
            assessed: i64::from(self.assessment.is_some()),
            assessments_passed: i64::from(self.assessment.as_ref().is_some_and(|a| a.passed_at.is_some())),
        }
    }
}

/// The value under `key` of a small sorted map, inserted as default if absent.
fn slot<K: Ord + Copy, V: Default, const N: usize>(map: &mut SmallVec<[(K, V); N]>, key: K) -> &mut V
where
    [(K, V); N]: smallvec::Array<Item = (K, V)>,
{
    let at = match map.binary_search_by_key(&key, |(k, _)| *k) {
        Ok(at) => at,
        Err(at) => {
            map.insert(at, (key, V::default()));
            at
        }
    };
    &mut map[at].1
}

/// Adds `sign` times every entry of `from` into `into`, dropping the entries
/// that reach zero, so that state does not grow with history. Both are
/// sorted and the entries are added in place: a change to a user's share
/// has a few, each found by a walk back from the newest entry (an event is
/// almost always about the latest day and month, and an org's 60 days span
/// 40 cache lines, of which a binary search would miss on six); a whole
/// share (a snapshot sums every shard's months and days of every org) is
/// merged in one walk forward.
fn add_each<K: Ord + Copy, V: Summable, const N: usize>(
    into: &mut SmallVec<[(K, V); N]>,
    from: &SmallVec<[(K, V); N]>,
    sign: i64,
) where
    [(K, V); N]: smallvec::Array<Item = (K, V)>,
{
    let signed = |v: &V| {
        let mut out = V::default();
        out.add(v, sign);
        out
    };
    let large = from.len() > 4;
    let mut start = 0;
    for (k, v) in from {
        // A change holds zero entries where a count moved within one period.
        if *v == V::default() {
            continue;
        }
        let at = if large {
            start + into[start..].iter().take_while(|(key, _)| key < k).count()
        } else {
            into.len() - into[start..].iter().rev().take_while(|(key, _)| key >= k).count()
        };
        if at < into.len() && into[at].0 == *k {
            into[at].1.add(v, sign);
            if into[at].1 == V::default() {
                into.remove(at);
                start = at;
                continue;
            }
        } else {
            into.insert(at, (*k, signed(v)));
        }
        start = at + 1;
    }
}

/// A total that can be added to and subtracted from another.
pub(crate) trait Summable: Default + PartialEq {
    fn add(&mut self, o: &Self, sign: i64);
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
    pub assessed: i64,
    pub assessments_passed: i64,
    /// Per financial year, what does not add up over its months; sorted,
    /// inline for the usual one or two.
    pub fys: SmallVec<[(Fy, FyCounts); 2]>,
    /// Per IST month: the monthly series, and the sums of the `_fy` KPIs.
    pub months: SmallVec<[(Month, PeriodTotals); 2]>,
    /// Per IST day within the shard's window horizon: the windows.
    pub days: SmallVec<[(Day, PeriodTotals); 2]>,
    /// Per capacity-building plan, the standing of the users counted here
    /// who are assigned it; sorted by plan id.
    pub plans: Vec<(String, PlanCounts)>,
}

/// The standing in one plan of a set of assigned users (contract section 14);
/// one user's own has `users` 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCounts {
    pub users: i64,
    /// The plan's courses, once per user.
    pub courses: i64,
    pub completed: i64,
    pub on_time: i64,
    pub compliant: i64,
}

impl Summable for PlanCounts {
    fn add(&mut self, o: &PlanCounts, sign: i64) {
        self.users += sign * o.users;
        self.courses += sign * o.courses;
        self.completed += sign * o.completed;
        self.on_time += sign * o.on_time;
        self.compliant += sign * o.compliant;
    }
}

/// [`add_each`] for entries named by a string (few: a user has the plans
/// assigned to it, an org those of its users).
fn add_named<V: Summable + Copy>(into: &mut Vec<(String, V)>, from: &[(String, V)], sign: i64) {
    for (k, v) in from {
        match into.binary_search_by(|(key, _)| key.as_str().cmp(k)) {
            Ok(at) => {
                into[at].1.add(v, sign);
                if into[at].1 == V::default() {
                    into.remove(at);
                }
            }
            Err(at) => {
                let mut signed = V::default();
                signed.add(v, sign);
                if signed != V::default() {
                    into.insert(at, (k.clone(), signed));
                }
            }
        }
    }
}

/// Distinct users and first passes in one financial year.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FyCounts {
    pub active_users: i64,
    pub users_meeting_hours: i64,
    pub assessments_passed: i64,
}

impl Summable for FyCounts {
    fn add(&mut self, o: &FyCounts, sign: i64) {
        self.active_users += sign * o.active_users;
        self.users_meeting_hours += sign * o.users_meeting_hours;
        self.assessments_passed += sign * o.assessments_passed;
    }
}

/// Counts whose time falls in one month or one day; `active_users` counts
/// the users active in the month, or whose latest activity is on the day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodTotals {
    pub enrolments: i64,
    pub completions: i64,
    pub minutes_ms: i64,
    pub active_users: i64,
}

impl Summable for PeriodTotals {
    fn add(&mut self, o: &PeriodTotals, sign: i64) {
        self.enrolments += sign * o.enrolments;
        self.completions += sign * o.completions;
        self.minutes_ms += sign * o.minutes_ms;
        self.active_users += sign * o.active_users;
    }
}

/// The KPIs of one financial year.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FyTotals {
    pub enrolments: i64,
    pub completions: i64,
    pub minutes_ms: i64,
    pub active_users: i64,
    pub users_meeting_hours: i64,
    pub assessments_passed: i64,
}

impl Totals {
    /// Adds (`sign` = 1) or subtracts (`sign` = -1) another total.
    pub fn add(&mut self, o: &Totals, sign: i64) {
        self.registered_users += sign * o.registered_users;
        self.learners += sign * o.learners;
        self.enrolments += sign * o.enrolments;
        self.completions += sign * o.completions;
        self.minutes_ms += sign * o.minutes_ms;
        self.ratings += sign * o.ratings;
        self.rating_milli_sum += sign * o.rating_milli_sum;
        self.assessed += sign * o.assessed;
        self.assessments_passed += sign * o.assessments_passed;
        add_each(&mut self.fys, &o.fys, sign);
        add_each(&mut self.months, &o.months, sign);
        add_each(&mut self.days, &o.days, sign);
        add_named(&mut self.plans, &o.plans, sign);
    }

    /// `self - other`: what to add to a total that holds `other` so that it
    /// holds `self` instead (one update of an org's totals per event, not two).
    pub fn minus(mut self, other: &Totals) -> Totals {
        self.add(other, -1);
        self
    }

    /// [`Totals::add`] for an org's totals, which keep the days from
    /// `horizon` on: the older are dropped when a day is added, so an org
    /// holds at most one day more than the windows need, and an update
    /// reads only the newest end of its days (one cache line, not two).
    pub(crate) fn add_kept(&mut self, o: &Totals, sign: i64, horizon: Day) {
        let days = self.days.len();
        self.add(o, sign);
        if self.days.len() > days {
            self.forget_days(horizon);
        }
    }

    /// Drops the days before `horizon` (sorted: usually one comparison).
    pub(crate) fn forget_days(&mut self, horizon: Day) {
        if self.days.first().is_some_and(|(d, _)| *d < horizon) {
            self.days.retain(|(d, _)| *d >= horizon);
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Totals::default()
    }

    pub fn for_fy(&self, fy: Fy) -> FyTotals {
        let counts = self.fys.iter().find(|(y, _)| *y == fy).map(|(_, f)| *f).unwrap_or_default();
        let mut f = FyTotals {
            active_users: counts.active_users,
            users_meeting_hours: counts.users_meeting_hours,
            assessments_passed: counts.assessments_passed,
            ..FyTotals::default()
        };
        for (_, m) in self.months.iter().filter(|(m, _)| m.fy() == fy) {
            f.enrolments += m.enrolments;
            f.completions += m.completions;
            f.minutes_ms += m.minutes_ms;
        }
        f
    }

    pub fn month(&self, month: Month) -> PeriodTotals {
        self.months.iter().find(|(m, _)| *m == month).map(|(_, t)| *t).unwrap_or_default()
    }

    /// The sums over the days from `since` on.
    pub fn since(&self, since: Day) -> PeriodTotals {
        let mut sum = PeriodTotals::default();
        for (_, t) in self.days.iter().filter(|(d, _)| *d >= since) {
            sum.add(t, 1);
        }
        sum
    }

    /// Every financial year with a non-zero total, oldest first.
    pub fn fys(&self) -> impl Iterator<Item = Fy> + '_ {
        let mut fys: Vec<Fy> =
            self.fys.iter().map(|(y, _)| *y).chain(self.months.iter().map(|(m, _)| m.fy())).collect();
        fys.sort();
        fys.dedup();
        fys.into_iter()
    }
}

/// Summable course-level totals (also a provider's, over its courses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseTotals {
    pub enrolments: i64,
    pub completions: i64,
    pub minutes_ms: i64,
    pub ratings: i64,
    pub rating_milli_sum: i64,
    pub assessed: i64,
    pub assessments_passed: i64,
}

impl CourseTotals {
    pub fn add(&mut self, o: &CourseTotals, sign: i64) {
        self.enrolments += sign * o.enrolments;
        self.completions += sign * o.completions;
        self.minutes_ms += sign * o.minutes_ms;
        self.ratings += sign * o.ratings;
        self.rating_milli_sum += sign * o.rating_milli_sum;
        self.assessed += sign * o.assessed;
        self.assessments_passed += sign * o.assessments_passed;
    }

    pub fn is_zero(&self) -> bool {
        *self == CourseTotals::default()
    }
}
