//! The change follower: applies the backend's change log to memory, in order. The writer calls
//! it after each of its own commits (so a write is visible on this node when it is
//! acknowledged); on a shared database a thread also calls it whenever the database announces a
//! change, and at least every [`POLL`], which keeps the staleness clock running.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::{Backend, Event};
use crate::error::{Error, Result};
use crate::master::MasterKey;
use crate::memory::Memory;

/// The longest a follower waits between two looks at the log.
pub(crate) const POLL: Duration = Duration::from_millis(250);
/// Entries read per query.
const PAGE: usize = 10_000;

pub(crate) struct Follower {
    backend: Arc<dyn Backend>,
    mem: Arc<Memory>,
    master: MasterKey,
    /// One catch-up at a time, so entries apply in order.
    lock: Mutex<()>,
    /// The last applied entry, announced after memory has it (the revocation stream waits on it).
    applied: watch::Sender<u64>,
}

impl Follower {
    pub(crate) fn new(backend: Arc<dyn Backend>, mem: Arc<Memory>, master: MasterKey) -> Self {
        Follower { backend, mem, master, lock: Mutex::new(()), applied: watch::channel(0).0 }
    }

    /// A receiver of the last applied entry's sequence number.
    pub(crate) fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Load every key, then apply the whole log (at open).
    pub(crate) fn load(&self) -> Result<()> {
        self.mem.set_keys(self.backend.keys()?, &self.master)?;
        self.mem.set_signing_keys(self.backend.signing_keys()?, &self.master)?;
        self.mem.set_apps(self.backend.apps()?)?;
        // Revocations go straight into space sized from the log's length, then are sorted once.
        self.mem.begin_revoked_load(self.backend.last_change_seq()?);
        let loaded = self.catch_up();
        self.mem.finish_revoked_load();
        loaded
    }

    /// Apply every entry after the last applied one.
    pub(crate) fn catch_up(&self) -> Result<()> {
        let _guard = self.lock.lock().map_err(|_| Error::Closed)?;
        loop {
            let changes = self.backend.changes_after(self.mem.last_seq(), PAGE)?;
            let (mut keys_changed, mut signing_changed, mut apps_changed) = (false, false, false);
            for c in &changes {
                match c.event {
                    Event::TokenRevoked(tid) => self.mem.revoke(tid),
                    Event::KeyRevoked(_) | Event::KeyChanged(_) => keys_changed = true,
                    Event::SigningKeys => signing_changed = true,
                    Event::Apps => apps_changed = true,
                }
            }
            if apps_changed {
                self.mem.set_apps(self.backend.apps()?)?;
            }
            if keys_changed {
                self.mem.set_keys(self.backend.keys()?, &self.master)?;
            }
            if signing_changed {
                self.mem.set_signing_keys(self.backend.signing_keys()?, &self.master)?;
            }
            if let Some(last) = changes.last() {
                self.mem.set_last_seq(last.seq);
                self.applied.send_replace(last.seq);
            }
            if changes.len() < PAGE {
                break;
            }
        }
        self.mem.touch();
        Ok(())
    }

    /// Follow until `stop` (shared databases only).
    pub(crate) fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Acquire) {
            self.backend.wait_for_change(POLL);
            if stop.load(Ordering::Acquire) {
                break;
            }
            // An error leaves memory as it was; the staleness clock tells the service.
            let _ = self.catch_up();
        }
    }
}
