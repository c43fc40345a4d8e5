//! The workload: users with several devices each, chatting, acknowledging,
//! changing presence and intentions, subscribing, blocking, changing
//! visibility and location sharing, streaming locations (SPEC §14), pinging,
//! reconnecting, logging out and revoking tokens. Every
//! choice is drawn from the run's seeded generator, against the runner's
//! belief of who is online (learnt from the history, never from the server's
//! internals).

use std::collections::BTreeSet;

use rand::Rng;
use rand::rngs::StdRng;

use crate::proto::message_scheme::Payload;
use crate::proto::{
    AcknowledgmentRequest, AwarenessNotification, AwarenessRequest, AwarenessSubscription, AwarenessVisibility,
    BlockSubscriber, Identity, LocationStream, Logout, PingPong, SubscriberAddRequest, SubscriberRemove,
    TextPayloadRequest, TokenRevokeRequest,
};

/// The EID of user `u`.
pub fn eid(u: usize) -> String {
    format!("u{u}@sim.test")
}

/// The host name of device `d` of user `u` (also its device id).
pub fn device_name(u: usize, d: usize) -> String {
    format!("u{u}d{d}")
}

/// The user index of an EID this workload made.
pub fn user_of(eid: &str) -> Option<usize> {
    eid.strip_prefix('u')?.strip_suffix("@sim.test")?.parse().ok()
}

fn who(eid: String) -> Option<Identity> {
    Some(Identity {
        eid,
        connection_resource_id: String::new(),
    })
}

/// What the runner believes about one device.
#[derive(Clone, Debug, Default)]
pub struct DeviceModel {
    pub online: bool,
    /// A Connect was sent and its outcome is not in the history yet.
    pub dialing: bool,
    /// The jti of the token it dials with next, and whether it is spent.
    pub jti: String,
    pub token_spent: bool,
    /// Tokens minted so far (names the next jti).
    pub minted: u32,
    pub sent: u32,
    /// Messages it received as a receiver: candidates for a READ.
    pub inbox: Vec<String>,
    pub last_local: Option<(usize, String, String)>,
}

/// A user's social choices as the workload intends them (re-asserted when the
/// network heals, so the final state is known).
#[derive(Clone, Debug, Default)]
pub struct SocialIntent {
    pub visibility: i32,
    /// Location sharing (SPEC §13): 1 ON, 2 OFF (the default).
    pub location_sharing: i32,
    pub subscribers: BTreeSet<usize>,
    pub blocks: BTreeSet<usize>,
}

/// The runner's belief about every device.
#[derive(Clone, Debug)]
pub struct Model {
    pub users: usize,
    pub devices: usize,
    pub dev: Vec<Vec<DeviceModel>>,
    pub social: Vec<SocialIntent>,
}

/// One thing the workload does.
#[derive(Clone, Debug)]
// Payload is large; these are short-lived commands, boxing buys nothing here.
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// Device (u, d) sends a stanza.
    Send(usize, usize, Payload),
    /// Device (u, d) dials with the token described.
    Connect(usize, usize, Token),
}

/// The token a device dials with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// A fresh jti.
    Fresh,
    /// The jti it used last (spent or revoked, maybe), minted again.
    Reuse,
    /// A fresh jti whose `exp` has passed: the server must refuse it.
    Expired,
}

impl Model {
    pub fn new(users: usize, devices: usize) -> Model {
        Model {
            users,
            devices,
            dev: vec![vec![DeviceModel::default(); devices]; users],
            social: vec![
                SocialIntent {
                    visibility: 2,
                    location_sharing: 2,
                    ..SocialIntent::default()
                };
                users
            ],
        }
    }

    fn online_device(&self, rng: &mut StdRng, u: usize) -> Option<usize> {
        let online: Vec<usize> = (0..self.devices).filter(|&d| self.dev[u][d].online).collect();
        (!online.is_empty()).then(|| online[rng.random_range(0..online.len())])
    }

    fn other(&self, rng: &mut StdRng, u: usize) -> usize {
        let v = rng.random_range(0..self.users - 1);
        if v >= u { v + 1 } else { v }
    }

    /// Draws the next action, or `None` when the drawn one has no device to act.
    pub fn next_action(&mut self, rng: &mut StdRng, now_ms: i64) -> Option<Action> {
        let u = rng.random_range(0..self.users);
        // Slots 0..100 are the original mix; 100..108 add location (SPEC §14).
        let roll = rng.random_range(0..108);
        if (92..100).contains(&roll) {
            // Reconnect an offline device (sometimes with its spent token,
            // sometimes with an expired one).
            let offline: Vec<usize> = (0..self.devices)
                .filter(|&d| !self.dev[u][d].online && !self.dev[u][d].dialing)
                .collect();
            if offline.is_empty() {
                return None;
            }
            let d = offline[rng.random_range(0..offline.len())];
            let token = match rng.random_range(0..10) {
                0..=2 => Token::Reuse,
                3 => Token::Expired,
                _ => Token::Fresh,
            };
            return Some(Action::Connect(u, d, token));
        }
        // Location sharing on (mostly) or off, from device 0 (a social change).
        if (100..104).contains(&roll) {
            if !self.dev[u][0].online {
                return None;
            }
            let sharing = if rng.random_bool(0.8) { 1 } else { 2 };
            self.social[u].location_sharing = sharing;
            return Some(Action::Send(u, 0, sharing_request(sharing, now_ms)));
        }
        let d = self.online_device(rng, u)?;
        let v = self.other(rng, u);
        let payload = match roll {
            0..=39 => {
                let model = &mut self.dev[u][d];
                // Sometimes the same request again: an idempotent resend (CHAT-14).
                if let Some((to, local, text)) = model.last_local.clone().filter(|_| rng.random_bool(0.1)) {
                    text_request(to, local, text, now_ms)
                } else {
                    model.sent += 1;
                    let local = format!("{}-{}", device_name(u, d), model.sent);
                    let text = format!("hello {} from {}", eid(v), local);
                    model.last_local = Some((v, local.clone(), text.clone()));
                    text_request(v, local, text, now_ms)
                }
            }
            40..=47 => {
                let inbox = &self.dev[u][d].inbox;
                if inbox.is_empty() {
                    return None;
                }
                let message_id = inbox[rng.random_range(0..inbox.len())].clone();
                Payload::AcknowledgmentRequest(AcknowledgmentRequest {
                    message_id,
                    status: 3,
                    timestamp: now_ms,
                    ..AcknowledgmentRequest::default()
                })
            }
            48..=54 => {
                let status = [1, 3, 4, 5][rng.random_range(0..4)];
                let ttl = if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(1..4)
                };
                Payload::AwarenessNotification(AwarenessNotification {
                    status,
                    ttl,
                    timestamp: now_ms,
                    ..AwarenessNotification::default()
                })
            }
            55..=57 => Payload::AwarenessNotification(AwarenessNotification {
                to: who(eid(v)),
                awareness_intention: rng.random_range(1..4),
                ttl: 5,
                timestamp: now_ms,
                ..AwarenessNotification::default()
            }),
            // Social changes come from device 0 only, so their order is that
            // device's order (see invariants: the social model).
            58..=64 if d == 0 => {
                let intent = &mut self.social[u];
                if intent.subscribers.contains(&v) && rng.random_bool(0.5) {
                    intent.subscribers.remove(&v);
                    remove_subscriber(u, v)
                } else {
                    intent.subscribers.insert(v);
                    add_subscriber(v, now_ms)
                }
            }
            65..=69 if d == 0 => {
                let intent = &mut self.social[u];
                let block = !intent.blocks.contains(&v);
                if block {
                    intent.blocks.insert(v);
                } else {
                    intent.blocks.remove(&v);
                }
                block_request(u, v, block, now_ms)
            }
            70..=72 if d == 0 => {
                let visibility = rng.random_range(1..4);
                self.social[u].visibility = visibility;
                visibility_request(visibility, 0, now_ms)
            }
            73..=75 => Payload::AwarenessRequest(AwarenessRequest {
                to: who(eid(v)),
                awareness_identifier: rng.random_range(1..1_000_000),
                timestamp: now_ms,
                ..AwarenessRequest::default()
            }),
            76..=77 => Payload::AwarenessSubscription(AwarenessSubscription {
                to: who(eid(v)),
                r#type: 1,
                action: rng.random_range(1..3),
                timestamp: now_ms,
                ..AwarenessSubscription::default()
            }),
            78..=81 => Payload::PingpongMessage(PingPong {
                r#type: 1,
                status: 1,
                request_time: now_ms,
                id: format!("p{}", rng.random_range(0..1_000_000)),
                ..PingPong::default()
            }),
            82..=84 => Payload::Logout(Logout {
                r#type: 1,
                ..Logout::default()
            }),
            85..=87 => {
                // Revoke one device of the same user by its live session.
                let target = rng.random_range(0..self.devices);
                Payload::TokenRevokeRequest(TokenRevokeRequest {
                    to: Some(Identity {
                        eid: eid(u),
                        connection_resource_id: device_name(u, target),
                    }),
                    r#type: 1,
                    timestamp: now_ms,
                    ..TokenRevokeRequest::default()
                })
            }
            // A stanza naming another user as its sender (ENV-11): refused.
            88..=89 => {
                let model = &mut self.dev[u][d];
                model.sent += 1;
                let id = format!("{}-spoof{}", device_name(u, d), model.sent);
                let other = Some(Identity {
                    eid: eid(v),
                    connection_resource_id: device_name(v, 0),
                });
                if rng.random_bool(0.5) {
                    Payload::PingpongMessage(PingPong {
                        to: other,
                        r#type: 1,
                        status: 1,
                        request_time: now_ms,
                        id,
                        ..PingPong::default()
                    })
                } else {
                    let mut request = text_request(v, id.clone(), format!("spoofed {id}"), now_ms);
                    if let Payload::TextPayloadRequest(r) = &mut request {
                        r.from = other;
                    }
                    request
                }
            }
            // A location fix from any online device: to one peer or to every
            // allowed viewer, now and then an invalid one (LOC-5: 400).
            90..=91 | 104..=107 => {
                let model = &mut self.dev[u][d];
                model.sent += 1;
                let id = format!("{}-loc{}", device_name(u, d), model.sent);
                let to = rng.random_bool(0.5).then_some(v);
                let mut fix = location_stream(id, to, rng, now_ms);
                match rng.random_range(0..20) {
                    0 => fix.latitude = 90.5,
                    1 => fix.longitude = -180.5,
                    2 => fix.to = who(eid(u)),
                    _ => {}
                }
                Payload::LocationStream(fix)
            }
            _ => return None,
        };
        Some(Action::Send(u, d, payload))
    }
}

pub fn text_request(to: usize, local: String, content: String, now_ms: i64) -> Payload {
    Payload::TextPayloadRequest(TextPayloadRequest {
        to: vec![who(eid(to)).unwrap_or_default()],
        content,
        message_id_local: local,
        created_at: now_ms,
        ..TextPayloadRequest::default()
    })
}

pub fn add_subscriber(v: usize, now_ms: i64) -> Payload {
    Payload::SubscriberAddRequest(SubscriberAddRequest {
        subscriber: who(eid(v)),
        nickname: format!("n{v}"),
        timestamp: now_ms,
        ..SubscriberAddRequest::default()
    })
}

pub fn remove_subscriber(u: usize, v: usize) -> Payload {
    Payload::SubscriberRemove(SubscriberRemove {
        owner: who(eid(u)),
        subscriber: who(eid(v)),
        r#type: 1,
        ..SubscriberRemove::default()
    })
}

pub fn block_request(u: usize, v: usize, block: bool, now_ms: i64) -> Payload {
    Payload::BlockSubscriber(BlockSubscriber {
        owner: who(eid(u)),
        subscriber: who(eid(v)),
        r#type: 1,
        action: if block { 1 } else { 2 },
        timestamp: now_ms,
        ..BlockSubscriber::default()
    })
}

/// A valid fix (coordinates on a 1e-4 degree grid) for `to`, or for every
/// allowed viewer when `None`.
pub fn location_stream(id: String, to: Option<usize>, rng: &mut StdRng, now_ms: i64) -> LocationStream {
    let grid = |limit: i64, rng: &mut StdRng| rng.random_range(-limit..=limit) as f64 / 10_000.0;
    LocationStream {
        id,
        to: to.and_then(|v| who(eid(v))),
        latitude: grid(900_000, rng),
        longitude: grid(1_800_000, rng),
        altitude: grid(10_000_000, rng).abs(),
        timestamp: now_ms,
        ..LocationStream::default()
    }
}

/// Location sharing on (1) or off (2), visibility unchanged (VIS-2).
pub fn sharing_request(location_sharing: i32, now_ms: i64) -> Payload {
    Payload::AwarenessVisibility(AwarenessVisibility {
        id: format!("share-{now_ms}"),
        r#type: 1,
        location_sharing,
        timestamp: now_ms,
        ..AwarenessVisibility::default()
    })
}

/// Visibility and location sharing (0 = unchanged, VIS-2).
pub fn visibility_request(visibility: i32, location_sharing: i32, now_ms: i64) -> Payload {
    Payload::AwarenessVisibility(AwarenessVisibility {
        id: format!("vis-{now_ms}"),
        r#type: 1,
        visibility,
        location_sharing,
        timestamp: now_ms,
        ..AwarenessVisibility::default()
    })
}
