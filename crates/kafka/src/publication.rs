//! When committed state is published: the snapshot behind `/metrics` and
//! the API shows only persisted state, and is rebuilt at most so often.

use std::time::{Duration, Instant};

/// How often committed state is published (building the org-level
/// snapshot costs O(orgs x shards), docs/BENCHMARKS.md) and positions and
/// lag are refreshed while no commit happens.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// The interval while catching up: a snapshot costs O(orgs x shards x
/// (months + days)), 7% of a catch-up's CPU at every 500 ms (perf,
/// docs/BENCHMARKS.md), and a backlog's KPIs move under the dashboards'
/// scrape interval anyway.
const CATCH_UP_PUBLISH_INTERVAL: Duration = Duration::from_secs(5);

/// When the state is published (built into the snapshot behind `/metrics`
/// and the API), at most once per [`PUBLISH_INTERVAL`] (building it costs
/// O(orgs x shards)): a commit's state, snapshotted when it is prepared and
/// shown once it is stored; or, after another change (a take-over, a
/// recovery), the state itself once nothing is applied beyond the last
/// commit. So what is shown is always persisted: a crash can take back
/// what was applied, never what was shown.
#[derive(Debug)]
pub(crate) struct Publication {
    /// Committed (or reloaded) state that is not published yet.
    pending: bool,
    last: Instant,
}

impl Default for Publication {
    fn default() -> Self {
        Publication { pending: false, last: Instant::now() }
    }
}

impl Publication {
    /// The committed state changed: a commit, a take-over, a recovery.
    pub(crate) fn changed(&mut self) {
        self.pending = true;
    }

    /// Whether the commit starting now takes a snapshot of the state it
    /// commits, to publish once it is stored (at most once per interval,
    /// a longer one while `catching_up`).
    pub(crate) fn snapshot_due(&mut self, catching_up: bool) -> bool {
        let interval = if catching_up { CATCH_UP_PUBLISH_INTERVAL } else { PUBLISH_INTERVAL };
        let due = self.last.elapsed() >= interval;
        if due {
            (self.pending, self.last) = (false, Instant::now());
        }
        due
    }

    /// Whether to publish now, given the messages applied since the last commit.
    pub(crate) fn due(&mut self, uncommitted: usize) -> bool {
        let due = self.pending && uncommitted == 0 && self.last.elapsed() >= PUBLISH_INTERVAL;
        if due {
            (self.pending, self.last) = (false, Instant::now());
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_committed_state_is_published_and_not_too_often() {
        let long_ago = Instant::now() - PUBLISH_INTERVAL * 2;
        let mut p = Publication { pending: false, last: long_ago };
        assert!(!p.due(0), "nothing changed");
        p.changed();
        assert!(!p.due(3), "events applied since the commit would be shown before they are persisted");
        assert!(p.due(0));
        assert!(!p.due(0), "published already");
        p.changed();
        assert!(!p.due(0), "within the publish interval of the last");
        p.last = long_ago;
        assert!(p.due(0));
        p.changed();
        assert!(!p.snapshot_due(false), "a commit within the interval takes no snapshot");
        p.last = long_ago;
        assert!(!p.snapshot_due(true), "nor one within the longer interval of a catch-up");
        assert!(p.snapshot_due(false), "the commit's own snapshot, shown once it is stored");
        assert!(!p.due(0), "that snapshot covers the change");
    }
}
