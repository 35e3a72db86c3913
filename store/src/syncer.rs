//! A long-lived thread that syncs the packs while the group sync's leader
//! syncs the catalog's WAL: the two flushes run side by side, as they
//! must for a first overwrite to wait for the slower of them rather than
//! both, without a thread started per sync (a start and a join cost 35 to
//! 120 µs on two busy cores: as much as the flush of a 64 KiB pre-image).
//! This file only runs `Packs::sync` when asked; when to sync is the
//! group sync's business (durable.rs).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::Result;
use crate::pack::Packs;

#[derive(Default)]
struct Shared {
    /// Syncs asked for, and done: one is in flight while `asked > done`.
    asked: u64,
    done: u64,
    /// The outcome of the last sync done, for its asker.
    outcome: Option<Result<()>>,
    stop: bool,
}

struct Channel {
    shared: Mutex<Shared>,
    changed: Condvar,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct PackSyncer {
    packs: Arc<Packs>,
    channel: Arc<Channel>,
    /// None when the thread could not be started: then the asker syncs.
    thread: Option<JoinHandle<()>>,
}

/// A sync of the packs under way; `finish` waits for its outcome.
pub(crate) struct PackSync<'a> {
    syncer: &'a PackSyncer,
    ticket: Option<u64>,
}

impl PackSyncer {
    pub fn start(packs: Arc<Packs>) -> PackSyncer {
        let channel = Arc::new(Channel {
            shared: Mutex::new(Shared::default()),
            changed: Condvar::new(),
        });
        let thread = {
            let (packs, channel) = (packs.clone(), channel.clone());
            std::thread::Builder::new()
                .name("umbra-packsync".into())
                .spawn(move || serve(&packs, &channel))
        };
        let thread = thread
            .inspect_err(|e| tracing::debug!("starting the pack syncer: {e}; syncs run inline"))
            .ok();
        PackSyncer {
            packs,
            channel,
            thread,
        }
    }

    /// Starts a sync of every chunk appended so far. One at a time: the
    /// group sync has a single leader.
    pub fn begin(&self) -> PackSync<'_> {
        let ticket = self.thread.as_ref().map(|_| {
            let mut s = self.channel.lock();
            s.asked += 1;
            self.channel.changed.notify_all();
            s.asked
        });
        PackSync {
            syncer: self,
            ticket,
        }
    }
}

impl PackSync<'_> {
    pub fn finish(self) -> Result<()> {
        let Some(ticket) = self.ticket else {
            return self.syncer.packs.sync();
        };
        let channel = &self.syncer.channel;
        let mut s = channel.lock();
        while s.done < ticket {
            s = channel.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.outcome.take().unwrap_or(Ok(()))
    }
}

fn serve(packs: &Packs, channel: &Channel) {
    let mut s = channel.lock();
    loop {
        if s.asked > s.done {
            let target = s.asked;
            drop(s);
            let outcome = packs.sync();
            s = channel.lock();
            s.done = target;
            s.outcome = Some(outcome);
            channel.changed.notify_all();
            continue;
        }
        if s.stop {
            return;
        }
        s = channel.changed.wait(s).unwrap_or_else(|p| p.into_inner());
    }
}

impl Drop for PackSyncer {
    fn drop(&mut self) {
        self.channel.lock().stop = true;
        self.channel.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
