//! Liveness and readiness, as components report them.
//!
//! `/health` and `/ready` must answer from what the parts of the process know, not from a
//! probe of their own: the bridge knows whether NATS is connected, a store knows whether its
//! database answers, the supervisor knows whether an actor gave up. Each reports here under a
//! name; the HTTP layer only reads the snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// What one component says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentStatus {
    /// Whether the component can do its work now (readiness).
    pub ready: bool,
    /// Whether the component is alive; `false` means the process should be restarted.
    pub live: bool,
    /// A short explanation for people, e.g. the last connection error.
    pub detail: String,
}

/// A shared, cheap-to-clone registry of component states.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<RwLock<BTreeMap<String, ComponentStatus>>>,
    /// Woken when a component dies.
    died: Arc<tokio::sync::Notify>,
}

/// A point-in-time copy of every component's state.
#[derive(Debug, Clone, Serialize)]
pub struct HealthSnapshot {
    /// True when every component is ready.
    pub ready: bool,
    /// True when every component is alive.
    pub live: bool,
    /// Each component by name.
    pub components: BTreeMap<String, ComponentStatus>,
}

impl Health {
    /// A new, empty registry (ready and live until a component says otherwise).
    pub fn new() -> Self {
        Self::default()
    }

    fn update(&self, component: &str, f: impl FnOnce(&mut ComponentStatus)) {
        let mut map = match self.inner.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = map
            .entry(component.to_string())
            .or_insert_with(|| ComponentStatus {
                ready: false,
                live: true,
                detail: String::new(),
            });
        f(entry);
    }

    /// Marks a component ready.
    pub fn set_ready(&self, component: &str, detail: impl Into<String>) {
        let detail = detail.into();
        self.update(component, |s| {
            s.ready = true;
            s.detail = detail;
        });
    }

    /// Marks a component not ready, with the reason.
    pub fn set_not_ready(&self, component: &str, detail: impl Into<String>) {
        let detail = detail.into();
        self.update(component, |s| {
            s.ready = false;
            s.detail = detail;
        });
    }

    /// Marks a component dead: liveness fails until the process restarts.
    pub fn set_dead(&self, component: &str, detail: impl Into<String>) {
        let detail = detail.into();
        self.update(component, |s| {
            s.ready = false;
            s.live = false;
            s.detail = detail;
        });
        self.died.notify_waiters();
    }

    /// Resolves once a component is dead (at once if one is): its name and why. A process
    /// stops on it, so that its supervisor (systemd, Kubernetes) starts it anew, instead of
    /// running on without a part it needs.
    pub async fn dead(&self) -> (String, String) {
        loop {
            let died = self.died.notified();
            tokio::pin!(died);
            died.as_mut().enable();
            if let Some((name, status)) = self
                .snapshot()
                .components
                .into_iter()
                .find(|(_, s)| !s.live)
            {
                return (name, status.detail);
            }
            died.await;
        }
    }

    /// Removes a component (it no longer takes part in readiness).
    pub fn remove(&self, component: &str) {
        let mut map = match self.inner.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.remove(component);
    }

    /// The state of one component, if it ever reported.
    pub fn component(&self, component: &str) -> Option<ComponentStatus> {
        let map = match self.inner.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(component).cloned()
    }

    /// A copy of every component's state.
    pub fn snapshot(&self) -> HealthSnapshot {
        let map = match self.inner.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        HealthSnapshot {
            ready: map.values().all(|s| s.ready),
            live: map.values().all(|s| s.live),
            components: map.clone(),
        }
    }

    /// True when every component is ready.
    pub fn is_ready(&self) -> bool {
        self.snapshot().ready
    }

    /// True when every component is alive.
    pub fn is_live(&self) -> bool {
        self.snapshot().live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_registry_is_ready_and_live() {
        let h = Health::new();
        assert!(h.is_ready());
        assert!(h.is_live());
    }

    #[test]
    fn one_unready_component_makes_the_whole_unready() {
        let h = Health::new();
        h.set_ready("nats", "connected");
        h.set_not_ready("database", "connection refused");
        let snap = h.snapshot();
        assert!(!snap.ready);
        assert!(snap.live);
        assert_eq!(snap.components["database"].detail, "connection refused");
        h.set_ready("database", "ok");
        assert!(h.is_ready());
    }

    #[tokio::test]
    async fn dead_resolves_when_a_component_dies_and_at_once_after() {
        let h = Health::new();
        h.set_ready("db", "ok");
        let waiting = tokio::spawn({
            let h = h.clone();
            async move { h.dead().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing died yet");
        h.set_dead("actor:order", "restart budget exhausted");
        let (name, why) = waiting.await.expect("joined");
        assert_eq!(
            (name.as_str(), why.as_str()),
            ("actor:order", "restart budget exhausted")
        );
        assert_eq!(h.dead().await.0, "actor:order");
    }

    #[test]
    fn dead_component_fails_liveness() {
        let h = Health::new();
        h.set_dead("actor:worker", "restart budget exhausted");
        assert!(!h.is_live());
        assert!(!h.is_ready());
    }
}
