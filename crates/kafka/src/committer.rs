//! The commit thread: writes each commit's changelog transactions, then its
//! store batch, while the loop applies the next messages. One thread for
//! the consumer's life, one commit at a time: a thread per commit left
//! each one's allocator memory behind (docs/BENCHMARKS.md). A thread that
//! died (a panic) fails its commit and is started again for the next.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use pulse_engine::{StoreError, Stored};

/// What a commit's writing came to.
pub(crate) type Outcome = Result<Stored, StoreError>;

/// A commit to write, and where its outcome goes.
type Job = (Box<dyn FnOnce() -> Outcome + Send>, SyncSender<Outcome>);

#[derive(Default)]
pub(crate) struct Committer {
    thread: Option<(SyncSender<Job>, JoinHandle<()>)>,
}

/// A commit handed to the thread, until its outcome is taken.
pub(crate) struct Writing {
    outcome: Receiver<Outcome>,
    done: Option<Outcome>,
}

fn died() -> StoreError {
    StoreError::new("failed to write a commit", "the commit thread panicked")
}

impl Committer {
    /// Hands a commit's writing to the thread (starting it if needed).
    pub(crate) fn write(&mut self, job: impl FnOnce() -> Outcome + Send + 'static) -> Result<Writing, StoreError> {
        if self.thread.as_ref().is_none_or(|(_, t)| t.is_finished()) {
            let (jobs, queue) = mpsc::sync_channel::<Job>(1);
            let thread = std::thread::Builder::new()
                .name("pulse-commit".into())
                .spawn(move || {
                    for (job, reply) in queue {
                        let _ = reply.send(job());
                    }
                })
                .map_err(|e| StoreError::new("failed to start the commit thread", e))?;
            self.thread = Some((jobs, thread));
        }
        let (reply, outcome) = mpsc::sync_channel(1);
        if let Some((jobs, _)) = &self.thread {
            // A thread that died drops `reply`: the outcome is `died()`.
            let _ = jobs.send((Box::new(job), reply));
        }
        Ok(Writing { outcome, done: None })
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        if let Some((jobs, thread)) = self.thread.take() {
            drop(jobs);
            let _ = thread.join();
        }
    }
}

impl Writing {
    /// Whether it is written (or failed), without waiting.
    pub(crate) fn is_done(&mut self) -> bool {
        if self.done.is_none() {
            match self.outcome.try_recv() {
                Ok(outcome) => self.done = Some(outcome),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => self.done = Some(Err(died())),
            }
        }
        self.done.is_some()
    }

    /// Waits for its outcome.
    pub(crate) fn wait(self) -> Outcome {
        match self.done {
            Some(outcome) => outcome,
            None => self.outcome.recv().unwrap_or_else(|_| Err(died())),
        }
    }
}
