//! A consumer's registry of imported services, shared by the streams that fill it (one per
//! owner) and the proxy that routes with it. Every change bumps a version the proxy watches.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

use super::model::Import;

/// A service no longer imported: its name keeps answering, with why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Withdrawn {
    pub owner: String,
    pub name: String,
    /// Completes "federated service NAME (FQDN) …".
    pub why: String,
}

/// How many withdrawn names keep answering with their reason (then they answer as unknown).
const MAX_WITHDRAWN: usize = 10_000;

#[derive(Default)]
struct State {
    /// By (owner, name).
    services: BTreeMap<(String, String), Import>,
    /// fqdn → (owner, name), so two services never claim one name.
    fqdns: HashMap<String, (String, String)>,
    /// By fqdn; the oldest go beyond [`MAX_WITHDRAWN`].
    withdrawn: BTreeMap<String, Withdrawn>,
    withdrawn_order: std::collections::VecDeque<String>,
    /// Services per owner.
    counts: HashMap<String, usize>,
}

/// What the registry holds at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<(String, Import)>,
    pub withdrawn: Vec<(String, Withdrawn)>,
}

pub struct Imports {
    state: Mutex<State>,
    version: watch::Sender<u64>,
}

impl std::fmt::Debug for Imports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imports").field("services", &self.len()).finish()
    }
}

impl Imports {
    pub fn new() -> Arc<Imports> {
        Arc::new(Imports { state: Mutex::default(), version: watch::Sender::new(0) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Adds or replaces `owner`'s service. Refused when another owner's service already has its
    /// fqdn (Hamlet leaves name collisions between owners to the consumer); within one owner an
    /// fqdn is unique, so a service of another name that had it was renamed and goes. Whether
    /// anything changed.
    pub fn upsert(&self, owner: &str, import: Import) -> Result<bool, String> {
        let mut state = self.state();
        let key = (owner.to_owned(), import.name.clone());
        if let Some(holder) = state.fqdns.get(&import.fqdn).cloned()
            && holder != key
        {
            if holder.0 != owner {
                return Err(format!(
                    "{}: fqdn {} is already imported as {} from {}",
                    import.name, import.fqdn, holder.1, holder.0
                ));
            }
            state.services.remove(&holder);
            if let Some(n) = state.counts.get_mut(owner) {
                *n -= 1;
            }
        }
        if state.services.get(&key) == Some(&import) {
            return Ok(false);
        }
        if let Some(old) = state.services.get(&key).map(|old| old.fqdn.clone()) {
            state.fqdns.remove(&old);
        }
        state.withdrawn.remove(&import.fqdn);
        state.fqdns.insert(import.fqdn.clone(), key.clone());
        if state.services.insert(key, import).is_none() {
            *state.counts.entry(owner.to_owned()).or_default() += 1;
        }
        drop(state);
        self.changed();
        Ok(true)
    }

    /// Removes `owner`'s service `name`; its fqdn then answers that it was withdrawn.
    pub fn delete(&self, owner: &str, name: &str) -> Option<Import> {
        self.remove(owner, name, format!("was withdrawn by its owner {owner}"))
    }

    /// Removes every service of `owner`, saying `why`; how many.
    pub fn expire(&self, owner: &str, why: &str) -> usize {
        let names = self.names(owner);
        names.iter().filter(|n| self.remove(owner, n, why.to_owned()).is_some()).count()
    }

    fn remove(&self, owner: &str, name: &str, why: String) -> Option<Import> {
        let mut state = self.state();
        let removed = state.services.remove(&(owner.to_owned(), name.to_owned()))?;
        state.fqdns.remove(&removed.fqdn);
        if let Some(n) = state.counts.get_mut(owner) {
            *n -= 1;
        }
        state.withdrawn.insert(removed.fqdn.clone(), Withdrawn { owner: owner.into(), name: name.into(), why });
        state.withdrawn_order.push_back(removed.fqdn.clone());
        while state.withdrawn_order.len() > MAX_WITHDRAWN {
            if let Some(oldest) = state.withdrawn_order.pop_front()
                && !state.fqdns.contains_key(&oldest)
            {
                state.withdrawn.remove(&oldest);
            }
        }
        drop(state);
        self.changed();
        Some(removed)
    }

    /// Whether `owner`'s service `name` is here.
    pub fn holds(&self, owner: &str, name: &str) -> bool {
        self.state().services.contains_key(&(owner.to_owned(), name.to_owned()))
    }

    /// The names of `owner`'s services.
    pub fn names(&self, owner: &str) -> Vec<String> {
        self.state().services.keys().filter(|(o, _)| o == owner).map(|(_, n)| n.clone()).collect()
    }

    /// How many services `owner`'s are.
    pub fn count(&self, owner: &str) -> usize {
        self.state().counts.get(owner).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.state().services.len()
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.state();
        Snapshot {
            services: state.services.iter().map(|((owner, _), i)| (owner.clone(), i.clone())).collect(),
            withdrawn: state.withdrawn.iter().map(|(fqdn, w)| (fqdn.clone(), w.clone())).collect(),
        }
    }

    /// Changes whenever the registry does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Protocol;
    use super::*;

    fn import(name: &str, fqdn: &str) -> Import {
        Import {
            name: name.into(),
            fqdn: fqdn.into(),
            endpoints: vec![("10.0.0.1".into(), 8443)],
            sans: vec!["a".into()],
            instance: "http".into(),
            protocol: Protocol::Http,
            sni: None,
        }
    }

    #[test]
    fn names_do_not_collide_and_deletes_leave_a_reason() {
        let imports = Imports::new();
        let versions = imports.watch();
        assert_eq!(imports.upsert("a", import("echo", "echo.example")), Ok(true));
        assert_eq!(imports.upsert("a", import("echo", "echo.example")), Ok(false), "no change, no new version");
        assert_eq!(*versions.borrow(), 1);
        let e = imports.upsert("b", import("other", "echo.example")).unwrap_err();
        assert!(e.contains("already imported as echo from a"), "{e}");
        assert!(imports.delete("a", "echo").is_some());
        assert_eq!(
            imports.snapshot().withdrawn,
            [(
                "echo.example".into(),
                Withdrawn { owner: "a".into(), name: "echo".into(), why: "was withdrawn by its owner a".into() }
            )]
        );
        assert_eq!(imports.upsert("b", import("other", "echo.example")), Ok(true), "a withdrawn name is free");
        assert!(imports.snapshot().withdrawn.is_empty());
        assert!(imports.delete("a", "echo").is_none(), "deleting what is not there changes nothing");
        assert_eq!((imports.count("a"), imports.count("b")), (0, 1));
        // One owner renaming a service: the new name takes the fqdn over.
        assert_eq!(imports.upsert("b", import("renamed", "echo.example")), Ok(true));
        assert_eq!(imports.names("b"), ["renamed"]);
        assert_eq!(imports.count("b"), 1);
    }
}
