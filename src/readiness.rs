//! Readiness as a set of named pending components (Istio's composition, protocols.md §7): the
//! proxy is ready when nothing is pending. A component is pending while its guard lives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub(crate) struct Readiness {
    pending: Arc<Mutex<BTreeMap<String, usize>>>,
}

/// Keeps its component pending until dropped.
pub(crate) struct BlockReady {
    name: String,
    pending: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Readiness {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn block(&self, name: &str) -> BlockReady {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default() += 1;
        BlockReady { name: name.to_string(), pending: self.pending.clone() }
    }

    pub(crate) fn pending(&self) -> Vec<String> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = p.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_all_guards_dropped() {
        let r = Readiness::new();
        assert!(r.is_ready());
        let a = r.block("state manager");
        let b1 = r.block("proxy");
        let b2 = r.block("proxy");
        assert_eq!(r.pending(), ["proxy", "state manager"]);
        drop(a);
        drop(b1);
        assert_eq!(r.pending(), ["proxy"]);
        drop(b2);
        assert!(r.is_ready());
    }
}
