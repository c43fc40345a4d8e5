//! The social graph (SPEC §11-13): who added whom as subscriber, who blocks
//! whom, each user's visibility and location sharing, and the sight rules
//! derived from them (AWR-9, LOC-1). It changes only by [`SocialEvent`]s, which
//! the engine records durably (SES-8) before applying them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::StoreError;

pub const PUBLIC: i32 = 1;
pub const CONTACTS: i32 = 2;
pub const PRIVATE: i32 = 3;
pub const SHARING_ON: i32 = 1;
pub const SHARING_OFF: i32 = 2;

/// One durable change to the graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SocialEvent {
    SubscriberAdded {
        owner: String,
        subscriber: String,
        resource_id: String,
        nickname: String,
        group: String,
    },
    SubscriberRemoved {
        owner: String,
        subscriber: String,
    },
    Blocked {
        owner: String,
        blocked: String,
    },
    Unblocked {
        owner: String,
        blocked: String,
    },
    Settings {
        eid: String,
        visibility: i32,
        location_sharing: i32,
    },
}

impl SocialEvent {
    /// The users whose audience the change may alter: the changer, and for a block the blocked user too (AWR-9).
    pub fn owners(&self) -> Vec<String> {
        match self {
            SocialEvent::SubscriberAdded { owner, .. } | SocialEvent::SubscriberRemoved { owner, .. } => {
                vec![owner.clone()]
            }
            SocialEvent::Blocked { owner, blocked } | SocialEvent::Unblocked { owner, blocked } => {
                vec![owner.clone(), blocked.clone()]
            }
            SocialEvent::Settings { eid, .. } => vec![eid.clone()],
        }
    }
}

/// Where the engine records social events; `append` returns once durable.
pub trait EventLog: Send {
    fn append(&mut self, event: &SocialEvent) -> Result<(), StoreError>;
}

/// An event log in memory only: for tests and simulations without restarts.
#[derive(Debug, Default)]
pub struct MemoryEventLog {
    pub events: Vec<SocialEvent>,
}

impl EventLog for MemoryEventLog {
    fn append(&mut self, event: &SocialEvent) -> Result<(), StoreError> {
        self.events.push(event.clone());
        Ok(())
    }
}

/// A subscriber as its owner filed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberEntry {
    pub resource_id: String,
    pub nickname: String,
    pub group: String,
}

/// The graph, rebuilt from events.
#[derive(Debug, Default)]
pub struct Social {
    subscribers: BTreeMap<String, BTreeMap<String, SubscriberEntry>>,
    /// subscriber -> owners who added them (the reverse of `subscribers`).
    following: BTreeMap<String, BTreeSet<String>>,
    /// (blocker, blocked)
    blocks: BTreeSet<(String, String)>,
    /// eid -> (visibility, location sharing)
    settings: BTreeMap<String, (i32, i32)>,
}

impl Social {
    /// Rebuilds the graph from recorded events, in order.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a SocialEvent>) -> Self {
        let mut social = Social::default();
        for event in events {
            social.apply(event);
        }
        social
    }

    pub fn apply(&mut self, event: &SocialEvent) {
        match event {
            SocialEvent::SubscriberAdded {
                owner,
                subscriber,
                resource_id,
                nickname,
                group,
            } => {
                let entry = SubscriberEntry {
                    resource_id: resource_id.clone(),
                    nickname: nickname.clone(),
                    group: group.clone(),
                };
                self.subscribers
                    .entry(owner.clone())
                    .or_default()
                    .insert(subscriber.clone(), entry);
                self.following
                    .entry(subscriber.clone())
                    .or_default()
                    .insert(owner.clone());
            }
            SocialEvent::SubscriberRemoved { owner, subscriber } => {
                if let Some(subs) = self.subscribers.get_mut(owner) {
                    subs.remove(subscriber);
                }
                if let Some(owners) = self.following.get_mut(subscriber) {
                    owners.remove(owner);
                }
            }
            SocialEvent::Blocked { owner, blocked } => {
                self.blocks.insert((owner.clone(), blocked.clone()));
            }
            SocialEvent::Unblocked { owner, blocked } => {
                self.blocks.remove(&(owner.clone(), blocked.clone()));
            }
            SocialEvent::Settings {
                eid,
                visibility,
                location_sharing,
            } => {
                self.settings.insert(eid.clone(), (*visibility, *location_sharing));
            }
        }
    }

    pub fn subscriber(&self, owner: &str, subscriber: &str) -> Option<&SubscriberEntry> {
        self.subscribers.get(owner)?.get(subscriber)
    }

    /// The users `owner` added.
    pub fn subscribers_of(&self, owner: &str) -> impl Iterator<Item = &str> {
        self.subscribers
            .get(owner)
            .into_iter()
            .flat_map(|s| s.keys().map(String::as_str))
    }

    /// The users who added `subscriber`.
    pub fn followed_by(&self, subscriber: &str) -> impl Iterator<Item = &str> {
        self.following
            .get(subscriber)
            .into_iter()
            .flat_map(|s| s.iter().map(String::as_str))
    }

    pub fn blocks(&self, blocker: &str, blocked: &str) -> bool {
        self.blocks.contains(&(blocker.to_string(), blocked.to_string()))
    }

    /// The users `blocker` blocks, in order.
    pub fn blocked_by<'a>(&'a self, blocker: &'a str) -> impl Iterator<Item = &'a str> {
        let from = (blocker.to_string(), String::new());
        self.blocks
            .range(from..)
            .take_while(move |(b, _)| b == blocker)
            .map(|(_, blocked)| blocked.as_str())
    }

    /// Either user of the pair blocks the other.
    pub fn blocked_pair(&self, a: &str, b: &str) -> bool {
        self.blocks(a, b) || self.blocks(b, a)
    }

    /// (visibility, location sharing), with SPEC's defaults (VIS-3).
    pub fn settings(&self, eid: &str) -> (i32, i32) {
        self.settings.get(eid).copied().unwrap_or((CONTACTS, SHARING_OFF))
    }

    /// AWR-9: may `viewer` see `owner`'s awareness?
    pub fn may_see(&self, viewer: &str, owner: &str) -> bool {
        if viewer == owner {
            return true;
        }
        if self.blocked_pair(viewer, owner) {
            return false;
        }
        match self.settings(owner).0 {
            PUBLIC => true,
            CONTACTS => self.subscriber(owner, viewer).is_some(),
            _ => false,
        }
    }

    /// LOC-1: may `viewer` see `owner`'s location?
    pub fn may_see_location(&self, viewer: &str, owner: &str) -> bool {
        viewer != owner
            && self.may_see(viewer, owner)
            && self.subscriber(owner, viewer).is_some()
            && self.settings(owner).1 == SHARING_ON
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(owner: &str, subscriber: &str) -> SocialEvent {
        SocialEvent::SubscriberAdded {
            owner: owner.into(),
            subscriber: subscriber.into(),
            resource_id: "r".into(),
            nickname: String::new(),
            group: String::new(),
        }
    }

    fn settings(eid: &str, visibility: i32, location_sharing: i32) -> SocialEvent {
        SocialEvent::Settings {
            eid: eid.into(),
            visibility,
            location_sharing,
        }
    }

    /// AWR-9's table, LOC-1 and the symmetric block, over every combination.
    #[test]
    fn sight_matrix() {
        for visibility in [PUBLIC, CONTACTS, PRIVATE] {
            for sharing in [SHARING_ON, SHARING_OFF] {
                for is_subscriber in [false, true] {
                    for block in [None, Some(("a", "v")), Some(("v", "a"))] {
                        let mut events = vec![settings("a", visibility, sharing)];
                        if is_subscriber {
                            events.push(added("a", "v"));
                        }
                        if let Some((owner, blocked)) = block {
                            events.push(SocialEvent::Blocked {
                                owner: owner.into(),
                                blocked: blocked.into(),
                            });
                        }
                        let social = Social::replay(&events);
                        let sees =
                            block.is_none() && (visibility == PUBLIC || (visibility == CONTACTS && is_subscriber));
                        let case = format!("vis {visibility} sharing {sharing} sub {is_subscriber} block {block:?}");
                        assert_eq!(social.may_see("v", "a"), sees, "{case}");
                        assert_eq!(
                            social.may_see_location("v", "a"),
                            sees && is_subscriber && sharing == SHARING_ON,
                            "{case}"
                        );
                        assert!(social.may_see("a", "a"));
                    }
                }
            }
        }
    }

    #[test]
    fn subscription_is_one_way_and_removable() {
        let mut social = Social::replay(&[added("a", "b")]);
        assert!(social.may_see("b", "a"));
        assert!(!social.may_see("a", "b"), "SUB-1: one direction");
        assert_eq!(social.followed_by("b").collect::<Vec<_>>(), ["a"]);
        social.apply(&SocialEvent::SubscriberRemoved {
            owner: "a".into(),
            subscriber: "b".into(),
        });
        assert!(!social.may_see("b", "a"));
        assert_eq!(social.followed_by("b").count(), 0);
    }

    #[test]
    fn events_round_trip_through_json() {
        let event = added("a@x.io", "b@x.io");
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.starts_with(r#"{"event":"subscriber_added""#), "{json}");
        assert_eq!(serde_json::from_str::<SocialEvent>(&json).unwrap(), event);
    }
}
