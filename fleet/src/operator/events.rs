//! Kubernetes Events (`events.k8s.io/v1`) about a fleet: each scaling decision and what the
//! operator did to a pod, with its reason. Each is its own Event: kube-runtime's `Recorder`
//! folds events of the same reason into one series and keeps the first note, which would hide
//! every decision after the first. They are few (a decision or a pod's start, drain, crash).

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};

/// Longest note the API takes.
pub const MAX_NOTE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

/// Publishes Events as one operator replica.
#[derive(Clone)]
pub struct Events {
    pub client: Client,
    pub controller: String,
    pub instance: String,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("controller", &self.controller).field("instance", &self.instance).finish()
    }
}

/// `note` cut to what the API takes, on a character boundary.
pub fn clip(note: &str) -> String {
    if note.len() <= MAX_NOTE {
        return note.to_owned();
    }
    let mut end = MAX_NOTE - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

impl Events {
    /// The Event about `regarding`, as it is sent.
    pub fn event(&self, regarding: &ObjectReference, kind: Kind, reason: &str, action: &str, note: &str) -> Event {
        Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", regarding.name.as_deref().unwrap_or("arena"))),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(jiff::Timestamp::now())),
            type_: Some(match kind {
                Kind::Normal => "Normal".into(),
                Kind::Warning => "Warning".into(),
            }),
            reason: Some(reason.into()),
            action: Some(action.into()),
            note: Some(clip(note)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }

    /// Publish; a failure is logged, never fatal (the status and the logs say it too).
    pub async fn publish(&self, regarding: &ObjectReference, kind: Kind, reason: &str, action: &str, note: &str) {
        let Some(ns) = &regarding.namespace else { return };
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let ev = self.event(regarding, kind, reason, action, note);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::warn!(error = %e, reason, "cannot publish an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_clipped_on_a_character() {
        let long = "é".repeat(600);
        let c = clip(&long);
        assert!(c.len() <= MAX_NOTE && c.ends_with("..."));
        assert_eq!(clip("short"), "short");
    }
}
