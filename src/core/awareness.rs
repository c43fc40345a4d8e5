//! Awareness (SPEC §10): presence per user, intentions to one peer, requests,
//! live subscriptions, and who hears about what. Presence, subscriptions and
//! location fixes live in memory only (SES-8); the sight rules come from
//! [`super::social::Social`].
//!
//! Every notification about a user A goes to A's *watchers*: the online
//! devices of A's subscribers that may see A, plus the sessions subscribed to
//! A that may see A. Changes to who may see A are run through
//! [`Engine::change_audience`], which compares the watchers before and after
//! and tells the newcomers A's state (AWR-11) and those who lost sight that A
//! is UNAVAILABLE (AWR-12).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::auth::valid_eid;
use super::engine::{Engine, Handled, Rejection, request_only};
use super::limits::AWARENESS_RATE;
use super::shard::Letter;
use super::social::{SHARING_OFF, SocialEvent};
use super::timers::Timer;
use super::{ConnId, Millis, SessionIdentity};
use crate::codec::ErrorKind;
use crate::proto::message_scheme::Payload;
use crate::proto::{AwarenessNotification, AwarenessRequest, AwarenessResponse, AwarenessSubscription, Body, Identity};

pub const UNAVAILABLE: i32 = 0;
pub const ONLINE: i32 = 1;
pub const OFFLINE: i32 = 2;
const RESPONSE: i32 = 2;
const SUBSCRIBE: i32 = 1;
const UNSUBSCRIBE: i32 = 2;
/// Body stanzas stay well under the 65536-byte stanza limit (PUSH-4).
const BODY_BUDGET_BYTES: usize = 60_000;

/// A user's presence while online: the status in force and its lapse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Presence {
    pub status: i32,
    pub lapse_at: Option<Millis>,
}

/// Awareness state kept in memory.
#[derive(Debug, Default)]
pub(super) struct AwarenessState {
    /// Online users' presence, keyed by the EID their sessions share (no copy per user).
    pub presence: BTreeMap<Arc<str>, Presence>,
    /// When each user was last online (AWR-2).
    pub last_seen: BTreeMap<String, Millis>,
    /// Latest location fix per user (LOC-4): (latitude, longitude).
    pub fixes: BTreeMap<String, (f64, f64)>,
    /// Live AwarenessSubscriptions: session -> watched users, and back.
    pub subscriptions: BTreeMap<ConnId, BTreeSet<String>>,
    pub subscribers: BTreeMap<String, BTreeSet<ConnId>>,
}

fn user(eid: &str) -> Option<Identity> {
    Some(Identity {
        eid: eid.to_string(),
        connection_resource_id: String::new(),
    })
}

impl Engine {
    /// The status A has now: its presence while online, else OFFLINE.
    fn status_of(&self, eid: &str) -> i32 {
        self.awareness.presence.get(eid).map_or(OFFLINE, |p| p.status)
    }

    /// A's awareness as `viewer` may see it, addressed to one device.
    pub(super) fn awareness_for(
        &self,
        owner: &str,
        viewer: &SessionIdentity,
        ttl: i32,
        now: Millis,
    ) -> AwarenessNotification {
        let mut note = AwarenessNotification {
            from: user(owner),
            to: Some(viewer.to_proto()),
            status: UNAVAILABLE,
            timestamp: now,
            ..AwarenessNotification::default()
        };
        if !self.social.may_see(&viewer.eid, owner) {
            return note;
        }
        note.status = self.status_of(owner);
        note.ttl = ttl;
        if note.status == OFFLINE {
            note.last_seen = self.awareness.last_seen.get(owner).copied().unwrap_or(0);
        }
        if self.social.may_see_location(&viewer.eid, owner)
            && let Some((latitude, longitude)) = self.awareness.fixes.get(owner)
        {
            note.latitude = *latitude;
            note.longitude = *longitude;
        }
        note
    }

    /// The connections that hear about `owner` (module docs).
    pub(super) fn watchers(&self, owner: &str) -> BTreeSet<ConnId> {
        let mut watchers = BTreeSet::new();
        for subscriber in self.social.subscribers_of(owner) {
            if self.social.may_see(subscriber, owner) {
                watchers.extend(self.registry.devices(subscriber).map(|(_, conn)| conn));
            }
        }
        for conn in self.awareness.subscribers.get(owner).into_iter().flatten() {
            if let Some(me) = self.identity(*conn)
                && *me.eid != *owner
                && self.social.may_see(&me.eid, owner)
            {
                watchers.insert(*conn);
            }
        }
        watchers
    }

    /// Sends `owner`'s current state to every watcher; and, when `self_sync`
    /// is set, to the owner's own devices except `except` (AWR-6).
    fn announce(&mut self, owner: &str, ttl: i32, self_sync: Option<Option<ConnId>>, now: Millis) {
        let mut targets: Vec<ConnId> = self.watchers(owner).into_iter().collect();
        if let Some(except) = self_sync {
            targets.extend(
                self.registry
                    .devices(owner)
                    .map(|(_, c)| c)
                    .filter(|c| Some(*c) != except),
            );
        }
        for conn in targets {
            let Some(viewer) = self.identity(conn).cloned() else {
                continue;
            };
            let note = self.awareness_for(owner, &viewer, ttl, now);
            self.send(conn, Payload::AwarenessNotification(note));
        }
    }

    /// Runs a change to who may see `owners`, then tells newcomers the state
    /// (AWR-11) and those who lost sight UNAVAILABLE (AWR-12).
    pub(super) fn change_audience<T>(
        &mut self,
        owners: &[&str],
        now: Millis,
        change: impl FnOnce(&mut Self) -> Result<T, Rejection>,
    ) -> Result<T, Rejection> {
        let before: Vec<BTreeSet<ConnId>> = owners.iter().map(|o| self.watchers(o)).collect();
        let result = change(self)?;
        for (owner, before) in owners.iter().zip(before) {
            let after = self.watchers(owner);
            for conn in after.difference(&before).chain(before.difference(&after)) {
                let Some(viewer) = self.identity(*conn).cloned() else {
                    continue;
                };
                // A watcher that left but can still see gets nothing (10.4).
                if !after.contains(conn) && self.social.may_see(&viewer.eid, owner) {
                    continue;
                }
                let note = self.awareness_for(owner, &viewer, 0, now);
                self.send(*conn, Payload::AwarenessNotification(note));
            }
        }
        Ok(result)
    }

    /// A user's first session started (AWR-1): ONLINE to the watchers.
    pub(super) fn user_came_online(&mut self, eid: &Arc<str>, now: Millis) {
        self.awareness.presence.insert(
            Arc::clone(eid),
            Presence {
                status: ONLINE,
                lapse_at: None,
            },
        );
        self.announce(eid, 0, None, now);
        self.broadcast(Letter::Presence {
            eid: eid.to_string(),
            status: Some(ONLINE),
            ttl: 0,
            at: now,
        });
    }

    /// A session ended: its live subscriptions go; if it was the user's last,
    /// the user goes OFFLINE (AWR-2) and the location fix is dropped (LOC-4).
    pub(super) fn session_ended(&mut self, conn: ConnId, eid: &str, last: bool, now: Millis) {
        for watched in self.awareness.subscriptions.remove(&conn).unwrap_or_default() {
            if let Some(conns) = self.awareness.subscribers.get_mut(&watched) {
                conns.remove(&conn);
            }
        }
        if !last {
            return;
        }
        if let Some(Presence { lapse_at: Some(at), .. }) = self.awareness.presence.remove(eid) {
            self.timers.cancel(at, Timer::StatusTtl(eid.into()));
        }
        self.awareness.last_seen.insert(eid.to_string(), now);
        self.awareness.fixes.remove(eid);
        self.announce(eid, 0, None, now);
        self.broadcast(Letter::Presence {
            eid: eid.to_string(),
            status: None,
            ttl: 0,
            at: now,
        });
    }

    /// Another shard's user changed presence (`None`: went offline at `at`): the replica follows, and this shard's
    /// watchers hear of it (the user's own devices are on its home, which told them).
    pub(super) fn presence_replica(&mut self, eid: &str, status: Option<i32>, ttl: i32, at: Millis, now: Millis) {
        match status {
            Some(status) => {
                let presence = Presence { status, lapse_at: None };
                match self.awareness.presence.get_mut(eid) {
                    Some(known) => *known = presence,
                    None => {
                        self.awareness.presence.insert(eid.into(), presence);
                    }
                }
            }
            None => {
                self.awareness.presence.remove(eid);
                self.awareness.last_seen.insert(eid.to_string(), at);
                self.awareness.fixes.remove(eid);
            }
        }
        self.announce(eid, ttl, None, now);
    }

    /// Another shard's user changed the graph: the replica follows, and this shard's watchers who gained or lost
    /// sight hear of it (AWR-11, AWR-12).
    pub(super) fn social_replica(&mut self, event: SocialEvent, now: Millis) {
        let owners = event.owners();
        let owners: Vec<&str> = owners.iter().map(String::as_str).collect();
        let _ = self.change_audience(&owners, now, |engine| {
            engine.social.apply(&event);
            if let SocialEvent::Settings {
                eid,
                location_sharing: SHARING_OFF,
                ..
            } = &event
            {
                engine.awareness.fixes.remove(eid);
            }
            Ok(())
        });
    }

    /// AWR-17: the new device learns the state of every user it follows and may see.
    pub(super) fn send_start_body(&mut self, conn: ConnId, now: Millis) {
        let Some(me) = self.identity(conn).cloned() else { return };
        let followed: Vec<String> = (self.social.followed_by(&me.eid))
            .filter(|owner| self.social.may_see(&me.eid, owner))
            .map(str::to_string)
            .collect();
        let mut list = Vec::new();
        let mut size = 0;
        for owner in &followed {
            let note = self.awareness_for(owner, &me, 0, now);
            let note_size = prost::Message::encoded_len(&note) + 4;
            if size + note_size > BODY_BUDGET_BYTES && !list.is_empty() {
                let awareness_list = std::mem::take(&mut list);
                self.send(
                    conn,
                    Payload::Body(Body {
                        awareness_list,
                        timestamp: now,
                    }),
                );
                size = 0;
            }
            size += note_size;
            list.push(note);
        }
        if !list.is_empty() {
            self.send(
                conn,
                Payload::Body(Body {
                    awareness_list: list,
                    timestamp: now,
                }),
            );
        }
    }

    /// AWR-3..8, AWR-18: a presence change or an intention.
    pub(super) fn on_awareness_notification(
        &mut self,
        conn: ConnId,
        mut note: AwarenessNotification,
        now: Millis,
    ) -> Handled {
        self.claim(conn, &mut note.from, "from")?;
        let Some(me) = self.identity(conn).cloned() else {
            return Ok(());
        };
        let peer = note.to.as_ref().map(|t| t.eid.clone()).unwrap_or_default();
        let invalid = |why: &str| Err(Rejection::new(ErrorKind::InvalidField, why.to_string()));
        if note.ttl < 0 {
            return invalid("ttl must not be negative");
        }
        let presence = peer.is_empty() && note.awareness_intention == 0 && matches!(note.status, 1 | 3 | 4 | 5);
        let intention = !peer.is_empty() && note.status == 0 && (1..=3).contains(&note.awareness_intention);
        if !presence && !intention {
            return invalid(
                "an AwarenessNotification is a presence change (no `to`, status 1, 3, 4 or 5) or an intention (`to` a peer, intention 1..=3)",
            );
        }
        if intention && (!valid_eid(&peer) || peer == *me.eid) {
            return invalid("an intention goes to another user's EID");
        }
        if self.with_session(conn, |s| s.awareness_bucket.try_take(AWARENESS_RATE, now)) == Some(false) {
            return Err(Rejection::new(
                ErrorKind::RateLimited,
                "more than 5 awareness changes per second",
            ));
        }
        if intention {
            if self.social.blocked_pair(&me.eid, &peer) {
                return Ok(()); // AWR-8: silently, so the sender cannot learn of the block
            }
            let forwarded = AwarenessNotification {
                from: Some(me.to_proto()),
                awareness_intention: note.awareness_intention,
                ttl: note.ttl,
                timestamp: now,
                ..AwarenessNotification::default()
            };
            let home = self.shard.home_of(&peer);
            if home == self.shard.index {
                self.forward_intention(&peer, &forwarded);
            } else {
                self.mail(
                    home,
                    Letter::Intention {
                        peer,
                        note: Box::new(forwarded),
                    },
                );
            }
            return Ok(());
        }
        self.set_presence(&me.eid, note.status, note.ttl, Some(conn), now);
        Ok(())
    }

    /// An intention to every device of `peer`, a user of this shard (AWR-7).
    pub(super) fn forward_intention(&mut self, peer: &str, note: &AwarenessNotification) {
        self.send_to_devices(peer, |_, to| {
            Payload::AwarenessNotification(AwarenessNotification {
                to: Some(to),
                ..note.clone()
            })
        });
    }

    fn set_presence(&mut self, eid: &str, status: i32, ttl: i32, by: Option<ConnId>, now: Millis) {
        let Some(current) = self.awareness.presence.get(eid).copied() else {
            return;
        };
        if let Some(at) = current.lapse_at {
            self.timers.cancel(at, Timer::StatusTtl(eid.into()));
        }
        let lapse_at = (status != ONLINE && ttl > 0).then(|| now.saturating_add(i64::from(ttl) * 1000));
        if let Some(at) = lapse_at {
            self.timers.set(at, Timer::StatusTtl(eid.into()));
        }
        if let Some(known) = self.awareness.presence.get_mut(eid) {
            *known = Presence { status, lapse_at };
        }
        if current.status != status {
            self.announce(eid, ttl, Some(by), now);
            self.broadcast(Letter::Presence {
                eid: eid.to_string(),
                status: Some(status),
                ttl,
                at: now,
            });
        }
    }

    /// AWR-5: a user-set status lapses back to ONLINE.
    pub(super) fn on_status_ttl(&mut self, eid: &str, at: Millis, now: Millis) {
        if self.awareness.presence.get(eid).is_some_and(|p| p.lapse_at == Some(at)) {
            self.set_presence(eid, ONLINE, 0, None, now);
        }
    }

    /// AWR-13, AWR-14.
    pub(super) fn on_awareness_request(&mut self, conn: ConnId, mut request: AwarenessRequest, now: Millis) -> Handled {
        let ref_id = request.awareness_identifier.to_string();
        self.claim(conn, &mut request.from, "from")
            .map_err(|r| r.with_ref(&ref_id))?;
        let asked = request.to.map(|t| t.eid).unwrap_or_default();
        if !valid_eid(&asked) {
            return Err(Rejection::new(ErrorKind::InvalidField, "`to.eid` is not an EID").with_ref(&ref_id));
        }
        let Some(me) = self.identity(conn).cloned() else {
            return Ok(());
        };
        let state = self.awareness_for(&asked, &me, 0, now);
        let response = AwarenessResponse {
            from: user(&asked),
            to: Some(me.to_proto()),
            awareness_identifier: ref_id,
            status: state.status,
            latitude: state.latitude,
            longitude: state.longitude,
            awareness_intention: 0,
            timestamp: now,
            last_seen: state.last_seen,
        };
        self.send(conn, Payload::AwarenessResponse(response));
        Ok(())
    }

    /// AWR-15, AWR-16.
    pub(super) fn on_awareness_subscription(
        &mut self,
        conn: ConnId,
        mut sub: AwarenessSubscription,
        now: Millis,
    ) -> Handled {
        request_only(sub.r#type, "AwarenessSubscription")?;
        if !matches!(sub.action, SUBSCRIBE | UNSUBSCRIBE) {
            return Err(Rejection::new(
                ErrorKind::InvalidField,
                "action must be 1 (subscribe) or 2 (unsubscribe)",
            ));
        }
        self.claim(conn, &mut sub.from, "from")?;
        let watched = sub.to.as_ref().map(|t| t.eid.clone()).unwrap_or_default();
        if !valid_eid(&watched) {
            return Err(Rejection::new(ErrorKind::InvalidField, "`to.eid` is not an EID"));
        }
        let Some(me) = self.identity(conn).cloned() else {
            return Ok(());
        };
        let answer = AwarenessSubscription {
            from: Some(me.to_proto()),
            to: user(&watched),
            r#type: RESPONSE,
            action: sub.action,
            status: 1,
            timestamp: now,
        };
        self.send(conn, Payload::AwarenessSubscription(answer));
        if sub.action == SUBSCRIBE {
            self.awareness
                .subscriptions
                .entry(conn)
                .or_default()
                .insert(watched.clone());
            self.awareness
                .subscribers
                .entry(watched.clone())
                .or_default()
                .insert(conn);
            if watched != *me.eid && self.social.may_see(&me.eid, &watched) {
                let note = self.awareness_for(&watched, &me, 0, now);
                self.send(conn, Payload::AwarenessNotification(note));
            }
        } else {
            if let Some(set) = self.awareness.subscriptions.get_mut(&conn) {
                set.remove(&watched);
            }
            if let Some(set) = self.awareness.subscribers.get_mut(&watched) {
                set.remove(&conn);
            }
        }
        Ok(())
    }
}
