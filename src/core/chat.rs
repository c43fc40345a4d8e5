//! Chat (SPEC §15): text and media requests become one accepted message with
//! a server `message_id` and a per-chat `version`, confirmed to the sending
//! device by VersionUpdate once durable, and fanned out through the queues to
//! every receiver device and the sender's other devices. Resends are
//! idempotent.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;

use super::auth::valid_eid;
use super::engine::{Engine, Handled, Rejection};
use super::queue::{Accepted, ChatEvent, QueueItem};
use super::shard::{Answer, Letter, Origin};
use super::{ConnId, Millis, SessionIdentity};
use crate::codec::{ErrorKind, Route};
use crate::proto::message_scheme::Payload;
use crate::proto::{ChatMessage, Identity, MediaPayloadRequest, TextPayloadRequest, VersionUpdate, chat_message};

/// What the server remembers of one accepted message, inside its [`Chat`]: the chat holds the id and both users once,
/// the resend index the sending device's name.
#[derive(Clone, Debug, PartialEq)]
struct MessageMeta {
    sender_device: Arc<str>,
    message_id_local: Box<str>,
    /// The sender is the chat's second user (else its first).
    from_second: bool,
    /// 1 UNREAD, 2 DELIVERED, 3 READ, and when it was reached.
    state: i32,
    state_at: Millis,
    /// When it was accepted: when it became SENT for its sender (ACK-7).
    accepted_at: Millis,
}

/// One chat on its home: its id and users once, its latest version, and its messages by version.
#[derive(Debug)]
struct Chat {
    id: Arc<str>,
    /// The pair's EIDs in order.
    users: [Arc<str>; 2],
    latest: i64,
    messages: BTreeMap<i64, MessageMeta>,
}

/// What an acknowledgment or a resend needs of a message: cheap clones of the chat's shared strings.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct MessageFacts {
    pub chat_id: Arc<str>,
    pub version: i64,
    pub sender: Arc<str>,
    pub receiver: Arc<str>,
    pub message_id_local: Box<str>,
    pub state: i32,
    pub state_at: Millis,
    pub accepted_at: Millis,
}

/// Chats, messages and the resend index, rebuilt from [`ChatEvent`]s. A message id is `{chat}/{version}`
/// (CHAT-8), so a message is found by its chat, then its version: the maps every message and acknowledgment walks
/// compare integers, not 60-byte ids that share all but their last bytes, and each message keeps no copy of its
/// chat's id or users.
#[derive(Debug, Default)]
pub(super) struct ChatState {
    chats: BTreeMap<Arc<str>, Chat>,
    /// The resend index (CHAT-14): sender EID -> sending device -> message_id_local -> (chat, version), nested so
    /// a lookup borrows the session's strings instead of building a key.
    by_local: BTreeMap<Arc<str>, BTreeMap<Arc<str>, SentByDevice>>,
}

/// One device's messages by `message_id_local`: their chat and version.
type SentByDevice = BTreeMap<Box<str>, (Arc<str>, i64)>;

/// A message id's chat and version, if it has the form this server gives (`{chat}/{version}`, the version in
/// its canonical decimal form, so one message has one id).
fn split_message_id(message_id: &str) -> Option<(&str, i64)> {
    let (chat, version) = message_id.rsplit_once('/')?;
    let number: i64 = version.parse().ok()?;
    (number > 0 && !version.starts_with(['0', '+'])).then_some((chat, number))
}

impl ChatState {
    pub fn apply(&mut self, event: &ChatEvent) {
        match event {
            ChatEvent::Accepted(a) => {
                let chat = match self.chats.get_mut(a.chat_id.as_str()) {
                    Some(chat) => chat,
                    None => {
                        let id: Arc<str> = a.chat_id.as_str().into();
                        let mut users: [Arc<str>; 2] = [a.sender.as_str().into(), a.receiver.as_str().into()];
                        users.sort();
                        let chat = Chat {
                            id: Arc::clone(&id),
                            users,
                            latest: 0,
                            messages: BTreeMap::new(),
                        };
                        self.chats.entry(id).or_insert(chat)
                    }
                };
                chat.latest = chat.latest.max(a.version);
                let from_second = *chat.users[1] == *a.sender && *chat.users[0] != *a.sender;
                let sender = Arc::clone(&chat.users[usize::from(from_second)]);
                let devices = self.by_local.entry(sender).or_default();
                let device = match devices.get_key_value(a.sender_device.as_str()) {
                    Some((device, _)) => Arc::clone(device),
                    None => a.sender_device.as_str().into(),
                };
                devices
                    .entry(Arc::clone(&device))
                    .or_default()
                    .insert(a.message_id_local.as_str().into(), (Arc::clone(&chat.id), a.version));
                let meta = MessageMeta {
                    sender_device: device,
                    message_id_local: a.message_id_local.as_str().into(),
                    from_second,
                    state: 1,
                    state_at: a.at,
                    accepted_at: a.at,
                };
                chat.messages.insert(a.version, meta);
            }
            ChatEvent::StateRaised(r) => {
                if let Some(meta) = self.meta_mut(&r.message_id)
                    && r.state > meta.state
                {
                    meta.state = r.state;
                    meta.state_at = r.at;
                }
            }
        }
    }

    fn meta_mut(&mut self, message_id: &str) -> Option<&mut MessageMeta> {
        let (chat, version) = split_message_id(message_id)?;
        self.chats.get_mut(chat)?.messages.get_mut(&version)
    }

    /// The chat's latest version, 0 before its first message.
    pub fn latest(&self, chat: &str) -> i64 {
        self.chats.get(chat).map_or(0, |c| c.latest)
    }

    pub fn contains(&self, message_id: &str) -> bool {
        self.message(message_id).is_some()
    }

    /// What is remembered of a message, by its id.
    pub fn message(&self, message_id: &str) -> Option<MessageFacts> {
        let (chat, version) = split_message_id(message_id)?;
        self.facts(chat, version)
    }

    fn facts(&self, chat: &str, version: i64) -> Option<MessageFacts> {
        let chat = self.chats.get(chat)?;
        let meta = chat.messages.get(&version)?;
        let sender = usize::from(meta.from_second);
        Some(MessageFacts {
            chat_id: Arc::clone(&chat.id),
            version,
            sender: Arc::clone(&chat.users[sender]),
            receiver: Arc::clone(&chat.users[1 - sender]),
            message_id_local: meta.message_id_local.clone(),
            state: meta.state,
            state_at: meta.state_at,
            accepted_at: meta.accepted_at,
        })
    }

    /// The message a device already sent with this `message_id_local`, if any (CHAT-14).
    pub fn resent(&self, sender: &str, device: &str, local: &str) -> Option<MessageFacts> {
        let (chat, version) = self.by_local.get(sender)?.get(device)?.get(local)?;
        self.facts(chat, *version)
    }
}

/// CHAT-8: one id per unordered pair, stable forever, without storage: the two
/// EIDs in order, each base64url-encoded so no EID can forge the separator.
pub fn chat_id(a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("c.{}.{}", enc.encode(first), enc.encode(second))
}

/// The content of a request, once its fields passed the rules.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Request {
    to: Vec<Identity>,
    message_id_local: String,
    created_at: Millis,
    body: Body,
}

impl Request {
    /// Its recipients, resend key, creation time and content, for the wire (src/core/wire.rs).
    pub(super) fn parts(&self) -> (&[Identity], &str, Millis, &Body) {
        (&self.to, &self.message_id_local, self.created_at, &self.body)
    }

    /// A request from the parts [`Request::parts`] gave, as it crossed the wire: its fields passed the rules on
    /// the sender's shard already.
    pub(super) fn from_parts(to: Vec<Identity>, message_id_local: String, created_at: Millis, body: Body) -> Request {
        Request {
            to,
            message_id_local,
            created_at,
            body,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Body {
    Text(String),
    Media {
        url: String,
        media_type: i32,
        caption: String,
        thumbnail_url: String,
        size: i64,
    },
}

fn invalid(why: &str, local: &str) -> Rejection {
    Rejection::new(ErrorKind::InvalidField, why.to_string()).with_ref(local)
}

impl Engine {
    /// CHAT-2 and the shared rules.
    pub(super) fn on_text(&mut self, conn: ConnId, mut request: TextPayloadRequest, now: Millis) -> Handled {
        let local = request.message_id_local.clone();
        self.claim(conn, &mut request.from, "from")
            .map_err(|r| r.with_ref(&local))?;
        if request.content.is_empty() || request.content.len() > 16_384 {
            return Err(invalid("content must be 1 to 16384 bytes", &local));
        }
        let body = Body::Text(request.content);
        self.accept(
            conn,
            Request {
                to: request.to,
                message_id_local: local,
                created_at: request.created_at,
                body,
            },
            None,
            now,
        )
    }

    /// CHAT-3 and the shared rules.
    pub(super) fn on_media(&mut self, conn: ConnId, mut request: MediaPayloadRequest, now: Millis) -> Handled {
        let local = request.message_id_local.clone();
        self.claim(conn, &mut request.from, "from")
            .map_err(|r| r.with_ref(&local))?;
        let ok = (1..=2048).contains(&request.cdn_url_id.len())
            && (1..=4).contains(&request.r#type)
            && request.caption.len() <= 4096
            && request.thumbnail_url.len() <= 2048
            && request.media_size_bytes >= 0;
        if !ok {
            return Err(invalid("media fields out of their bounds (SPEC 15.1)", &local));
        }
        let body = Body::Media {
            url: request.cdn_url_id,
            media_type: request.r#type,
            caption: request.caption,
            thumbnail_url: request.thumbnail_url,
            size: request.media_size_bytes,
        };
        let claimed_chat = Some(request.chat_id).filter(|c| !c.is_empty());
        let request = Request {
            to: request.to,
            message_id_local: local,
            created_at: request.created_at,
            body,
        };
        self.accept(conn, request, claimed_chat, now)
    }

    /// CHAT-1, CHAT-4..8: the rules the sender's shard checks; the chat's home does the rest ([`Engine::propose`]).
    fn accept(&mut self, conn: ConnId, request: Request, claimed_chat: Option<String>, now: Millis) -> Handled {
        let Some(me) = self.identity(conn).cloned() else {
            return Ok(());
        };
        let local = request.message_id_local.clone();
        let receiver = match &request.to[..] {
            [one] if valid_eid(&one.eid) && one.eid != *me.eid => one.eid.clone(),
            _ => return Err(invalid("`to` must hold exactly one other user's EID", &local)),
        };
        if local.is_empty() || local.len() > 128 {
            return Err(invalid("message_id_local must be 1 to 128 bytes", &local));
        }
        let chat = chat_id(&me.eid, &receiver);
        if claimed_chat.is_some_and(|c| c != chat) {
            return Err(invalid("chat_id is not this pair's chat", &local));
        }
        let route = match request.body {
            Body::Text(_) => Route::TextPayloadRequest,
            Body::Media { .. } => Route::MediaPayloadRequest,
        };
        self.reachable(&[&chat, &receiver]).map_err(|r| r.with_ref(&local))?;
        let mut proposal = Proposal {
            origin: self.origin(conn),
            route: route.number(),
            me,
            receiver,
            chat,
            request,
        };
        let home = self.shard.home_of(&proposal.chat);
        if home == self.shard.index {
            self.propose(proposal, now);
        } else {
            proposal.origin.seq = Some(self.await_answer(conn, home));
            self.mail(home, Letter::Propose(Box::new(proposal)));
        }
        Ok(())
    }

    /// CHAT-9..12, CHAT-14, QUE-1, QUE-10, on the chat's home: the resend check, the block and queue checks, the
    /// version, the durable event, the copies to both users' queues, and the VersionUpdate once all are durable.
    pub(super) fn propose(&mut self, proposal: Proposal, now: Millis) {
        let Proposal {
            origin,
            route,
            me,
            receiver,
            chat,
            request,
        } = proposal;
        let local = request.message_id_local.clone();
        let answer = |result: Result<Payload, Rejection>| Answer {
            origin,
            route,
            reference: local.clone(),
            confirm: None,
            result,
        };
        if let Some(meta) = self.chat.resent(&me.eid, &me.device, &local) {
            // CHAT-14: the original stands; only the VersionUpdate again.
            let message_id = format!("{}/{}", meta.chat_id, meta.version);
            let update = version_update(
                &me,
                &message_id,
                &meta.message_id_local,
                meta.version,
                &meta.chat_id,
                now,
            );
            // SES-11: accepted before this shard last started, its copies for shards on other nodes may have died
            // with that start, unsent; accepted before the shard of a copy started again, the copy may have died
            // there unsynced. They go again, and the answer waits for them (a copy that did arrive comes twice; its
            // device drops it, QUE-7).
            let accepted_at = meta.accepted_at;
            let lost = |engine: &Self, home: usize| {
                (accepted_at <= engine.crossing.replayed_until && engine.crossing.remote.contains(&home))
                    || engine
                        .crossing
                        .restarted
                        .get(&home)
                        .is_some_and(|at| *at >= accepted_at)
            };
            if (accepted_at <= self.crossing.replayed_until && !self.crossing.remote.is_empty())
                || self.crossing.restarted.values().any(|at| *at >= accepted_at)
            {
                let fresh = Fresh {
                    message_id: &message_id,
                    version: meta.version,
                    chat: &meta.chat_id,
                    receiver: &meta.receiver,
                    at: meta.accepted_at,
                };
                let items: Vec<(String, QueueItem)> = copies(&me, &local, &fresh, &request)
                    .into_iter()
                    .filter(|(eid, _)| lost(self, self.shard.home_of(eid)))
                    .collect();
                if !items.is_empty() {
                    return self.append_then_answer(items, answer(Ok(update)), now);
                }
            }
            return self.answer(answer(Ok(update)), now);
        }
        if self.social.blocked_pair(&me.eid, &receiver) {
            let rejection = Rejection::new(ErrorKind::Blocked, "a block stands between sender and receiver");
            return self.answer(answer(Err(rejection)), now);
        }
        if self.queue_full(&receiver) {
            let rejection = Rejection::new(ErrorKind::QueueFull, "the receiver's queue is full");
            return self.answer(answer(Err(rejection)), now);
        }
        if let Err(rejection) = self.reachable(&[&receiver, &me.eid]) {
            return self.answer(answer(Err(rejection)), now);
        }
        let version = self.chat.latest(&chat) + 1;
        let message_id = format!("{chat}/{version}");
        let event = ChatEvent::Accepted(Accepted {
            message_id: message_id.clone(),
            chat_id: chat.clone(),
            version,
            sender: me.eid.to_string(),
            sender_device: me.device.to_string(),
            message_id_local: local.clone(),
            receiver: receiver.clone(),
            at: now,
        });
        if let Err(e) = self.chat_store.record(&event) {
            let rejection = Rejection::new(ErrorKind::Unavailable, format!("could not store: {e}"));
            return self.answer(answer(Err(rejection)), now);
        }
        self.chat.apply(&event);
        self.mark_unsynced();
        let fresh = Fresh {
            message_id: &message_id,
            version,
            chat: &chat,
            receiver: &receiver,
            at: now,
        };
        let items = copies(&me, &local, &fresh, &request);
        let update = version_update(&me, &message_id, &local, version, &chat, now);
        self.append_then_answer(items, answer(Ok(update)), now);
    }
}

/// What the chat's home decided about an accepted message.
struct Fresh<'a> {
    message_id: &'a str,
    version: i64,
    chat: &'a str,
    receiver: &'a str,
    /// When it was accepted.
    at: Millis,
}

/// A message's two copies (CHAT-9, CHAT-10): the receiver's, for every device of the receiver, and the sender's,
/// for the sender's other devices; each with the user whose queue it goes to.
fn copies(me: &SessionIdentity, local: &str, fresh: &Fresh<'_>, request: &Request) -> Vec<(String, QueueItem)> {
    let copy = |author: &str, acknowledgment: i32| {
        let mut message = ChatMessage {
            message_id: fresh.message_id.to_string(),
            message_id_local: local.to_string(),
            version: fresh.version,
            chat_id: fresh.chat.to_string(),
            from: Some(me.to_proto()),
            to: vec![Identity {
                eid: fresh.receiver.to_string(),
                connection_resource_id: String::new(),
            }],
            author: author.into(),
            acknowledgment,
            acknowledgment_timestamp: fresh.at,
            created_at: request.created_at,
            server_received_at: fresh.at,
            ..ChatMessage::default()
        };
        match &request.body {
            Body::Text(text) => message.payload = Some(chat_message::Payload::Text(text.clone())),
            Body::Media {
                url,
                media_type,
                caption,
                thumbnail_url,
                size,
            } => {
                message.payload = Some(chat_message::Payload::MediaUrl(url.clone()));
                message.media_type = *media_type;
                message.caption.clone_from(caption);
                message.thumbnail_url.clone_from(thumbnail_url);
                message.media_size_bytes = *size;
            }
        }
        Payload::ChatMessage(message)
    };
    vec![
        (fresh.receiver.to_string(), QueueItem::new(None, copy("receiver", 1))),
        (
            me.eid.to_string(),
            QueueItem::new(Some(me.device.to_string()), copy("sender", 4)),
        ),
    ]
}

/// The VersionUpdate that confirms an accepted message to its sending device (CHAT-9).
fn version_update(
    me: &SessionIdentity,
    message_id: &str,
    local: &str,
    version: i64,
    chat: &str,
    now: Millis,
) -> Payload {
    Payload::VersionUpdate(VersionUpdate {
        to: Some(me.to_proto()),
        message_id: message_id.to_string(),
        message_id_local: local.to_string(),
        r#type: 1,
        timestamp: now,
        status: 1,
        version,
        chat_id: chat.to_string(),
    })
}

/// A chat message on its way from the sender's shard to the chat's home.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Proposal {
    pub origin: Origin,
    pub route: i64,
    pub me: SessionIdentity,
    pub receiver: String,
    pub chat: String,
    pub request: Request,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids_are_per_unordered_pair_and_unforgeable() {
        assert_eq!(chat_id("a@x", "b@x"), chat_id("b@x", "a@x"));
        assert_ne!(chat_id("a@x", "b@x"), chat_id("a@x", "c@x"));
        // A separator inside an EID cannot make two pairs collide.
        assert_ne!(chat_id("a.b@x", "c@x"), chat_id("a@x", "b.c@x"));
    }
}
