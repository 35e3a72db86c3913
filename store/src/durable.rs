//! Power-loss ordering with group commit. A pre-image must be on disk,
//! and its catalog row committed, before the write that overwrites it is
//! applied; one fsync per write would cost a disk flush per write. So each
//! change that must become durable (pack appends, a catalog commit) takes
//! a ticket, and `wait(ticket)` returns once a sync has covered it: the
//! first waiter syncs for every change made so far while later ones queue
//! behind it, and the next leader covers all of them with one more sync.
//! This file decides when to sync; what a sync flushes is the caller's
//! closure.

use std::sync::{Condvar, Mutex};

use crate::Result;

#[derive(Default)]
struct State {
    made: u64,
    synced: u64,
    syncing: bool,
}

#[derive(Default)]
pub(crate) struct GroupSync {
    state: Mutex<State>,
    done: Condvar,
}

/// A change that must be durable before what depends on it goes ahead.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket(u64);

impl GroupSync {
    /// Call right after the change (for a catalog commit: before releasing
    /// the writer, so that tickets follow the order of commits).
    pub fn ticket(&self) -> Ticket {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.made += 1;
        Ticket(s.made)
    }

    /// Returns once a sync begun after `ticket`'s change has completed.
    pub fn wait(&self, ticket: Ticket, sync: impl Fn() -> Result<()>) -> Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if s.synced >= ticket.0 {
                return Ok(());
            }
            if !s.syncing {
                s.syncing = true;
                let target = s.made;
                drop(s);
                let result = sync();
                s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                s.syncing = false;
                if result.is_ok() {
                    s.synced = s.synced.max(target);
                }
                self.done.notify_all();
                result?;
                continue;
            }
            s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn many_concurrent_commits_share_few_syncs_and_none_returns_unsynced() {
        let group = Arc::new(GroupSync::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (group, syncs) = (group.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let ticket = group.ticket();
                        group
                            .wait(ticket, || {
                                std::thread::sleep(std::time::Duration::from_millis(1));
                                syncs.fetch_add(1, Ordering::SeqCst);
                                Ok(())
                            })
                            .expect("sync");
                        let s = group.state.lock().expect("state");
                        assert!(
                            s.synced >= ticket.0,
                            "returned before a sync covered the commit"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let n = syncs.load(Ordering::SeqCst);
        assert!(n < 400, "400 commits took {n} syncs: no grouping");
    }

    #[test]
    fn a_failed_sync_fails_its_waiter_and_the_next_one_retries() {
        let group = GroupSync::default();
        let t = group.ticket();
        assert!(
            group
                .wait(t, || Err(crate::Error::UnknownSet("disk".into())))
                .is_err()
        );
        group.wait(t, || Ok(())).expect("the retry syncs");
    }
}
