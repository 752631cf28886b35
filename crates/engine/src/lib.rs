//! The KPI state machine of Pulse.
//!
//! This crate owns the rules of contract sections 5-7: deduplication by id
//! within a horizon, idempotent enrolments and completions with earliest-time
//! semantics, additive minutes, latest-wins ratings, the current org of a user,
//! read-time rollups over the org registry, IST financial years and target pace,
//! and those of contract v2: profiles, the catalogue, assessments, windows,
//! monthly series and capacity-building plans (a user's standing in each, kept
//! on the event path, and re-evaluated in bounded slices after a plan or
//! registry change: `engine/reevaluate.rs`).
//!
//! State is split in two:
//! - per-user state ([`UserState`]) and dedup ids live in a [`Store`], grouped in
//!   shards by the Kafka partition of the user id (Java's murmur2): a user's
//!   state and everything derived from it (the user's share of every org and
//!   course total) live in one shard, which can move between instances
//!   through its changelog records ([`changes`], [`restore_into`]);
//! - per-org and per-course totals of each shard, the registry and the targets
//!   are small (O(orgs + courses)) and held in memory, so rendering every
//!   node's KPIs costs time proportional to the number of orgs, not users.
//!
//! The engine only sees the [`Store`] trait; [`MemStore`] is the in-memory
//! implementation. It must not depend on Kafka, RocksDB, HTTP or any clock:
//! callers pass `now` in.

mod changelog;
pub mod codec;
mod engine;
mod filter;
mod partial;
mod plan_work;
pub(crate) mod plans;
mod registry;
mod report;
mod rollup;
mod state;
mod store;
mod table;
mod vecmap;

pub use changelog::{changes, restore_into, Change, ChangeLog};
pub use engine::{Disposition, Engine, EngineConfig, EngineError, IngestStats, PendingCommit, Stored};
pub use partial::Partial;
pub use plan_work::PlanWork;
pub use plans::{PlanKpis, PlanReport};
pub use registry::Registry;
pub use report::{
    windows_today, CourseKpis, CourseReport, MonthKpis, MonthsReport, NodeKpis, ProviderKpis, Report, Snapshot,
    TargetStatus, UserAssessment, UserCourse, UserReport, Windows, UNLISTED,
};
pub use rollup::{NodeView, OrgView};
pub use state::{
    Assessment, CourseState, CourseTotals, FyCounts, FyTotals, OrgStamp, PeriodTotals, PlanCounts, Profile,
    RatingStamp, Totals, UserState,
};
pub use store::{
    Batch, LoadedState, MemStore, MemWriter, OrgUser, SeenIds, SeenKey, SeenLog, ShardId, Store, StoreError,
    StoreWriter, StreamPosition,
};
pub use vecmap::VecMap;

/// The root of the hierarchy: every node rolls up into it.
pub const NATIONAL: &str = "national";
/// Users with an unknown current org, and orgs with an unknown parent.
pub const UNASSIGNED: &str = "unassigned";
