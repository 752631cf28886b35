//! What the messages leave, as the contract says: the accepted events (each
//! id once), each user's last profile, and the final registry, targets,
//! catalogue and plans; and the registry's chain of nodes.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use pulse_model::{
    parse, parse_course, parse_org, parse_plan, parse_target, CourseRecord, CourseUpdate, Event, EventKind, OrgRecord,
    OrgUpdate, Parsed, PlanRecord, PlanUpdate, TargetRecord, TargetUpdate,
};

use crate::{Message, Settings};

/// A user's profile as the topic leaves it: (ts, org, designation).
pub(crate) type ProfileFacts = (i64, String, Option<String>);

/// Accepted events, the final profiles, registry, targets and catalogue.
pub(crate) struct World {
    pub(crate) events: Vec<Event<'static>>,
    pub(crate) profiles: BTreeMap<String, ProfileFacts>,
    pub(crate) orgs: BTreeMap<String, OrgRecord>,
    pub(crate) targets: BTreeMap<String, TargetRecord>,
    pub(crate) catalogue: BTreeMap<String, CourseRecord>,
    pub(crate) plans: BTreeMap<String, PlanRecord>,
}

pub(crate) fn world(messages: &[Message], s: &Settings) -> World {
    let mut w = World {
        events: vec![],
        profiles: BTreeMap::new(),
        orgs: BTreeMap::new(),
        targets: BTreeMap::new(),
        catalogue: BTreeMap::new(),
        plans: BTreeMap::new(),
    };
    let mut ids = HashSet::new();
    for m in messages {
        match m {
            Message::Event { format, key, value } => {
                let Ok(Parsed::Event(ev)) = parse(*format, key.as_deref(), value) else { continue };
                if s.time_rules.check_event(&ev, s.ingest_now).is_err() {
                    continue;
                }
                match ev.kind {
                    // The latest record on the topic wins; a tombstone removes it.
                    EventKind::Profile { designation } => {
                        let profile =
                            (ev.ts, ev.org.unwrap_or_default().to_string(), designation.map(|d| d.to_string()));
                        w.profiles.insert(ev.user.to_string(), profile);
                    }
                    EventKind::ProfileRemoved => {
                        w.profiles.remove(&*ev.user);
                    }
                    _ => {
                        if ids.insert(ev.id.to_string()) {
                            w.events.push(ev.into_owned());
                        }
                    }
                }
            }
            Message::Course { key, value } => match parse_course(key.as_deref(), value.as_deref()) {
                Ok(CourseUpdate::Upsert(rec)) => {
                    w.catalogue.insert(rec.course.clone(), rec);
                }
                Ok(CourseUpdate::Remove(id)) => {
                    w.catalogue.remove(&id);
                }
                Err(_) => {}
            },
            Message::Plan { key, value } => match parse_plan(key.as_deref(), value.as_deref()) {
                Ok(PlanUpdate::Upsert(rec)) => {
                    w.plans.insert(rec.id.clone(), rec);
                }
                Ok(PlanUpdate::Remove(id)) => {
                    w.plans.remove(&id);
                }
                Err(_) => {}
            },
            Message::Org { key, value } => match parse_org(key.as_deref(), value.as_deref()) {
                Ok(OrgUpdate::Upsert(rec)) => {
                    if !closes_cycle(&w.orgs, &rec) {
                        w.orgs.insert(rec.org.clone(), rec);
                    }
                }
                Ok(OrgUpdate::Remove(org)) => {
                    w.orgs.remove(&org);
                }
                Err(_) => {}
            },
            Message::Target { key, value } => match parse_target(key.as_deref(), value.as_deref()) {
                Ok(TargetUpdate::Upsert(t)) => {
                    w.targets.insert(t.id.clone(), t);
                }
                Ok(TargetUpdate::Remove(id)) => {
                    w.targets.remove(&id);
                }
                Err(_) => {}
            },
        }
    }
    w
}

/// Would `rec` make its org its own ancestor?
fn closes_cycle(orgs: &BTreeMap<String, OrgRecord>, rec: &OrgRecord) -> bool {
    let mut seen = BTreeSet::new();
    let mut at = rec.parent.clone();
    while let Some(p) = at {
        if p == rec.org {
            return true;
        }
        if !seen.insert(p.clone()) {
            return false;
        }
        at = orgs.get(&p).and_then(|o| o.parent.clone());
    }
    false
}

/// The chain of nodes from `node` up to `national`, both included.
pub(crate) fn chain(orgs: &BTreeMap<String, OrgRecord>, node: &str) -> Vec<String> {
    let mut out = vec![node.to_string()];
    let mut at = node.to_string();
    while at != "national" {
        at = match orgs.get(&at) {
            None => "national".to_string(), // `unassigned`
            Some(rec) => match &rec.parent {
                None => "national".to_string(),
                Some(p) if orgs.contains_key(p) => p.clone(),
                Some(_) => "unassigned".to_string(),
            },
        };
        out.push(at.clone());
    }
    out
}
