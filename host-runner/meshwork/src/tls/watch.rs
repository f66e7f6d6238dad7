//! Certificate rotation without a restart: one thread looks at every watched file's modified
//! time and size every half second and rebuilds the TLS configuration whose files changed. New
//! handshakes use the new certificates; connections already open keep theirs. A change that
//! does not load (a key written before its certificate, say) is logged, the previous
//! configuration keeps serving, and the next change is tried again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use super::TlsError;

/// A configuration built from files.
pub trait Watched: Send + Sync {
    fn describe(&self) -> String;
    fn files(&self) -> Vec<PathBuf>;
    fn reload(&self) -> Result<(), TlsError>;
}

pub type Stamp = Option<(SystemTime, u64)>;

struct Entry {
    target: Weak<dyn Watched>,
    stamps: HashMap<PathBuf, Stamp>,
}

static ENTRIES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
const PERIOD: Duration = Duration::from_millis(500);

/// A file's modified time and size, which change when it is written.
pub fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn stamps(target: &dyn Watched) -> HashMap<PathBuf, Stamp> {
    target
        .files()
        .into_iter()
        .map(|p| {
            let s = stamp(&p);
            (p, s)
        })
        .collect()
}

/// Watches `target`'s files until it is dropped.
pub fn register(target: Arc<dyn Watched>) {
    let entry = Entry { stamps: stamps(target.as_ref()), target: Arc::downgrade(&target) };
    let mut entries = ENTRIES.lock().unwrap_or_else(|p| p.into_inner());
    if entries.is_empty() {
        start_thread();
    }
    entries.push(entry);
}

fn start_thread() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new().name("tls-watch".into()).spawn(|| {
            loop {
                std::thread::sleep(PERIOD);
                check();
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the certificate watcher ({e}): certificate files will not be reloaded");
        }
    });
}

fn check() {
    let mut entries = ENTRIES.lock().unwrap_or_else(|p| p.into_inner());
    entries.retain_mut(|entry| {
        let Some(target) = entry.target.upgrade() else { return false };
        let now = stamps(target.as_ref());
        if now != entry.stamps {
            entry.stamps = now;
            match target.reload() {
                Ok(()) => tracing::info!("{}: reloaded its certificate files", target.describe()),
                Err(e) => tracing::error!(
                    "{}: the changed certificate files do not load, the previous ones keep serving: {e}",
                    target.describe()
                ),
            }
        }
        true
    });
}
