//! The binary form of [`Mail`], for mail between shards on different nodes of a cluster (issue 17): within one
//! process a letter moves as a Rust value, across the network it moves as these bytes.
//!
//! The form is protobuf, written by hand as prost messages below: the rest of the wire (stanzas, the stores'
//! records) is protobuf already, and protobuf lets two versions of the server talk during a rolling upgrade: a
//! field one side does not know is skipped, a missing one reads as its default. Each letter kind is one field of
//! the `letter` oneof; a kind an older node does not know decodes to [`WireError::UnknownKind`], never to a wrong
//! letter. Field numbers are the format: never reuse or renumber one, only add.
//!
//! What a letter carries that is protobuf already (stanzas, location fixes, notifications, identities) is nested as
//! it is; a stanza (an [`Answer`]'s payload, a [`QueueItem`]) is carried in its envelope encoding, the bytes a
//! device is sent, so a queue item's bytes cross unchanged.

use bytes::Bytes;
use prost::Message as _;

use super::ack::Acknowledgment;
use super::chat::{Body, Proposal, Request};
use super::engine::Rejection;
use super::queue::{Confirm, QueueItem};
use super::shard::{Answer, Letter, Mail, Origin};
use super::social::SocialEvent;
use super::{ConnId, SessionIdentity};
use crate::codec::{self, EnvelopeError, ErrorKind};

/// Why bytes are not a [`Mail`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// Truncated, or not protobuf of the expected shape.
    #[error("mail does not decode: {0}")]
    Undecodable(#[from] prost::DecodeError),
    /// A letter kind this node does not know (a newer node sent it).
    #[error("mail of unknown kind {0}")]
    UnknownKind(u32),
    #[error("mail without its {0}")]
    Missing(&'static str),
    #[error("mail's {field} has no valid value {value:?}")]
    Invalid { field: &'static str, value: String },
    /// A stanza carried in its envelope encoding does not decode as one.
    #[error("mail's {field} is not a valid stanza: {source}")]
    Stanza {
        field: &'static str,
        #[source]
        source: EnvelopeError,
    },
}

impl Mail {
    pub fn encode(&self) -> Bytes {
        Bytes::from(
            pb::Mail {
                letter: Some(letter_to_pb(&self.0)),
            }
            .encode_to_vec(),
        )
    }

    pub fn decode(bytes: &[u8]) -> Result<Mail, WireError> {
        let mail = pb::Mail::decode(bytes)?;
        let Some(letter) = mail.letter else {
            // prost skips a field it does not know, so an unknown kind leaves the oneof empty: every top-level
            // field is a letter kind, and the first one names it.
            return Err(match prost::encoding::decode_key(&mut &bytes[..]) {
                Ok((tag, _)) => WireError::UnknownKind(tag),
                Err(_) => WireError::Missing("letter"),
            });
        };
        Ok(Mail(Box::new(letter_from_pb(letter)?)))
    }
}

fn letter_to_pb(letter: &Letter) -> pb::Letter {
    match letter {
        Letter::Presence { eid, status, ttl, at } => pb::Letter::Presence(pb::Presence {
            eid: eid.clone(),
            status: *status,
            ttl: *ttl,
            at: *at,
        }),
        Letter::Social(event) => pb::Letter::Social(social_to_pb(event)),
        Letter::Fix { fix, peer } => pb::Letter::Fix(pb::Fix {
            fix: Some((**fix).clone()),
            peer: peer.clone(),
        }),
        Letter::Intention { peer, note } => pb::Letter::Intention(pb::Intention {
            peer: peer.clone(),
            note: Some((**note).clone()),
        }),
        Letter::QueueFull { eid, full } => pb::Letter::QueueFull(pb::QueueFull {
            eid: eid.clone(),
            full: *full,
        }),
        Letter::Propose(proposal) => pb::Letter::Propose(proposal_to_pb(proposal)),
        Letter::Acknowledge(ack) => pb::Letter::Acknowledge(pb::Acknowledge {
            origin: Some(origin_to_pb(&ack.origin)),
            me: Some(ack.me.to_proto()),
            message_id: ack.message_id.clone(),
            status: ack.status,
            timestamp: ack.timestamp,
            upto: ack.upto,
        }),
        Letter::Append { eid, item, ticket } => pb::Letter::Append(pb::Append {
            eid: eid.clone(),
            item: Some(pb::Item {
                exclude_device: item.exclude_device.clone(),
                encoded: item.encoded().clone(),
            }),
            ticket: *ticket,
        }),
        Letter::Appended { ticket, ok, shard } => pb::Letter::Appended(pb::Appended {
            ticket: *ticket,
            ok: *ok,
            shard: u32::try_from(*shard).unwrap_or(u32::MAX),
        }),
        Letter::Answer(answer) => pb::Letter::Answer(answer_to_pb(answer)),
        Letter::Fence { ticket } => pb::Letter::Fence(pb::Fence {
            ticket: *ticket,
            shard: 0,
        }),
        Letter::Passed { ticket, shard } => pb::Letter::Passed(pb::Fence {
            ticket: *ticket,
            shard: u32::try_from(*shard).unwrap_or(u32::MAX),
        }),
    }
}

/// A shard's index as sent: a number no shard has (on a 16-bit platform) names none.
fn index(shard: u32) -> usize {
    usize::try_from(shard).unwrap_or(usize::MAX)
}

fn letter_from_pb(letter: pb::Letter) -> Result<Letter, WireError> {
    Ok(match letter {
        pb::Letter::Presence(p) => Letter::Presence {
            eid: p.eid,
            status: p.status,
            ttl: p.ttl,
            at: p.at,
        },
        pb::Letter::Social(s) => Letter::Social(social_from_pb(s)?),
        pb::Letter::Fix(f) => Letter::Fix {
            fix: Box::new(f.fix.ok_or(WireError::Missing("Fix.fix"))?),
            peer: f.peer,
        },
        pb::Letter::Intention(i) => Letter::Intention {
            peer: i.peer,
            note: Box::new(i.note.ok_or(WireError::Missing("Intention.note"))?),
        },
        pb::Letter::QueueFull(q) => Letter::QueueFull {
            eid: q.eid,
            full: q.full,
        },
        pb::Letter::Propose(p) => Letter::Propose(Box::new(proposal_from_pb(p)?)),
        pb::Letter::Acknowledge(a) => Letter::Acknowledge(Box::new(Acknowledgment {
            origin: origin_from_pb(a.origin, "Acknowledge.origin")?,
            me: identity_from_pb(a.me, "Acknowledge.me")?,
            message_id: a.message_id,
            status: a.status,
            timestamp: a.timestamp,
            upto: a.upto,
        })),
        pb::Letter::Append(a) => {
            let item = a.item.ok_or(WireError::Missing("Append.item"))?;
            // The item's bytes stay as they are; what the queue needs to know of them is read back the way the
            // store reads an item, which also refuses bytes that are no stanza.
            let item = QueueItem::decode(item.exclude_device, item.encoded).map_err(|source| WireError::Stanza {
                field: "Append.item",
                source,
            })?;
            Letter::Append {
                eid: a.eid,
                item: Box::new(item),
                ticket: a.ticket,
            }
        }
        pb::Letter::Appended(a) => Letter::Appended {
            ticket: a.ticket,
            ok: a.ok,
            shard: index(a.shard),
        },
        pb::Letter::Answer(a) => Letter::Answer(Box::new(answer_from_pb(a)?)),
        pb::Letter::Fence(f) => Letter::Fence { ticket: f.ticket },
        pb::Letter::Passed(f) => Letter::Passed {
            ticket: f.ticket,
            shard: index(f.shard),
        },
    })
}

fn social_to_pb(event: &SocialEvent) -> pb::Social {
    let event = match event.clone() {
        SocialEvent::SubscriberAdded {
            owner,
            subscriber,
            resource_id,
            nickname,
            group,
        } => pb::SocialEvent::SubscriberAdded(pb::SubscriberAdded {
            owner,
            subscriber,
            resource_id,
            nickname,
            group,
        }),
        SocialEvent::SubscriberRemoved { owner, subscriber } => {
            pb::SocialEvent::SubscriberRemoved(pb::SubscriberRemoved { owner, subscriber })
        }
        SocialEvent::Blocked { owner, blocked } => pb::SocialEvent::Blocked(pb::Block { owner, blocked }),
        SocialEvent::Unblocked { owner, blocked } => pb::SocialEvent::Unblocked(pb::Block { owner, blocked }),
        SocialEvent::Settings {
            eid,
            visibility,
            location_sharing,
        } => pb::SocialEvent::Settings(pb::Settings {
            eid,
            visibility,
            location_sharing,
        }),
    };
    pb::Social { event: Some(event) }
}

fn social_from_pb(social: pb::Social) -> Result<SocialEvent, WireError> {
    Ok(match social.event.ok_or(WireError::Missing("Social.event"))? {
        pb::SocialEvent::SubscriberAdded(a) => SocialEvent::SubscriberAdded {
            owner: a.owner,
            subscriber: a.subscriber,
            resource_id: a.resource_id,
            nickname: a.nickname,
            group: a.group,
        },
        pb::SocialEvent::SubscriberRemoved(r) => SocialEvent::SubscriberRemoved {
            owner: r.owner,
            subscriber: r.subscriber,
        },
        pb::SocialEvent::Blocked(b) => SocialEvent::Blocked {
            owner: b.owner,
            blocked: b.blocked,
        },
        pb::SocialEvent::Unblocked(b) => SocialEvent::Unblocked {
            owner: b.owner,
            blocked: b.blocked,
        },
        pb::SocialEvent::Settings(s) => SocialEvent::Settings {
            eid: s.eid,
            visibility: s.visibility,
            location_sharing: s.location_sharing,
        },
    })
}

fn proposal_to_pb(proposal: &Proposal) -> pb::Propose {
    let (to, message_id_local, created_at, body) = proposal.request.parts();
    let body = match body {
        Body::Text(text) => pb::Body::Text(text.clone()),
        Body::Media {
            url,
            media_type,
            caption,
            thumbnail_url,
            size,
        } => pb::Body::Media(pb::Media {
            url: url.clone(),
            media_type: *media_type,
            caption: caption.clone(),
            thumbnail_url: thumbnail_url.clone(),
            size: *size,
        }),
    };
    pb::Propose {
        origin: Some(origin_to_pb(&proposal.origin)),
        route: proposal.route,
        me: Some(proposal.me.to_proto()),
        receiver: proposal.receiver.clone(),
        chat: proposal.chat.clone(),
        request: Some(pb::Request {
            to: to.to_vec(),
            message_id_local: message_id_local.to_string(),
            created_at,
            body: Some(body),
        }),
    }
}

fn proposal_from_pb(p: pb::Propose) -> Result<Proposal, WireError> {
    let request = p.request.ok_or(WireError::Missing("Propose.request"))?;
    let body = match request.body.ok_or(WireError::Missing("Propose.request.body"))? {
        pb::Body::Text(text) => Body::Text(text),
        pb::Body::Media(m) => Body::Media {
            url: m.url,
            media_type: m.media_type,
            caption: m.caption,
            thumbnail_url: m.thumbnail_url,
            size: m.size,
        },
    };
    Ok(Proposal {
        origin: origin_from_pb(p.origin, "Propose.origin")?,
        route: p.route,
        me: identity_from_pb(p.me, "Propose.me")?,
        receiver: p.receiver,
        chat: p.chat,
        request: Request::from_parts(request.to, request.message_id_local, request.created_at, body),
    })
}

fn answer_to_pb(answer: &Answer) -> pb::Answer {
    let result = match &answer.result {
        Ok(payload) => pb::AnswerResult::Stanza(codec::encode(payload)),
        Err(rejection) => pb::AnswerResult::Rejection(pb::Rejection {
            kind: rejection.kind.as_str().to_string(),
            details: rejection.details.clone(),
            ref_id: rejection.ref_id.clone(),
        }),
    };
    pb::Answer {
        origin: Some(origin_to_pb(&answer.origin)),
        route: answer.route,
        reference: answer.reference.clone(),
        confirm: answer.confirm.as_ref().map(|c| pb::Confirm {
            message_id: c.message_id.clone(),
            status: c.status,
            receiver_side: c.receiver_side,
            upto: c.upto,
        }),
        result: Some(result),
    }
}

fn answer_from_pb(a: pb::Answer) -> Result<Answer, WireError> {
    let result = match a.result.ok_or(WireError::Missing("Answer.result"))? {
        pb::AnswerResult::Stanza(bytes) => {
            Ok(codec::decode(&bytes, usize::MAX).map_err(|source| WireError::Stanza {
                field: "Answer.stanza",
                source,
            })?)
        }
        // The kind goes by its name: codes are shared by several kinds, and a name survives a reordering.
        pb::AnswerResult::Rejection(r) => Err(Rejection {
            kind: ErrorKind::from_name(&r.kind).ok_or(WireError::Invalid {
                field: "Answer.rejection.kind",
                value: r.kind,
            })?,
            details: r.details,
            ref_id: r.ref_id,
        }),
    };
    Ok(Answer {
        origin: origin_from_pb(a.origin, "Answer.origin")?,
        route: a.route,
        reference: a.reference,
        confirm: a.confirm.map(|c| Confirm {
            message_id: c.message_id,
            status: c.status,
            receiver_side: c.receiver_side,
            upto: c.upto,
        }),
        result,
    })
}

fn origin_to_pb(origin: &Origin) -> pb::Origin {
    pb::Origin {
        shard: origin.shard as u64,
        conn: origin.conn.0,
        seq: origin.seq,
    }
}

fn origin_from_pb(origin: Option<pb::Origin>, field: &'static str) -> Result<Origin, WireError> {
    let origin = origin.ok_or(WireError::Missing(field))?;
    Ok(Origin {
        shard: usize::try_from(origin.shard).map_err(|_| WireError::Invalid {
            field,
            value: origin.shard.to_string(),
        })?,
        conn: ConnId(origin.conn),
        seq: origin.seq,
    })
}

fn identity_from_pb(
    identity: Option<crate::proto::Identity>,
    field: &'static str,
) -> Result<SessionIdentity, WireError> {
    let identity = identity.ok_or(WireError::Missing(field))?;
    Ok(SessionIdentity::new(&identity.eid, &identity.connection_resource_id))
}

/// The messages of the format. A session identity travels as the schema's `Identity` (eid, device).
mod pb {
    use bytes::Bytes;

    use crate::proto::{AwarenessNotification, Identity, LocationStream};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mail {
        #[prost(oneof = "Letter", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12")]
        pub letter: Option<Letter>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Letter {
        #[prost(message, tag = "1")]
        Presence(Presence),
        #[prost(message, tag = "2")]
        Social(Social),
        #[prost(message, tag = "3")]
        Fix(Fix),
        #[prost(message, tag = "4")]
        Intention(Intention),
        #[prost(message, tag = "5")]
        QueueFull(QueueFull),
        #[prost(message, tag = "6")]
        Propose(Propose),
        #[prost(message, tag = "7")]
        Acknowledge(Acknowledge),
        #[prost(message, tag = "8")]
        Append(Append),
        #[prost(message, tag = "9")]
        Appended(Appended),
        #[prost(message, tag = "10")]
        Answer(Answer),
        #[prost(message, tag = "11")]
        Fence(Fence),
        #[prost(message, tag = "12")]
        Passed(Fence),
    }

    /// A `Fence` or its `Passed`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Fence {
        #[prost(uint64, tag = "1")]
        pub ticket: u64,
        /// `Passed`: the shard that passed it.
        #[prost(uint32, tag = "2")]
        pub shard: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Presence {
        #[prost(string, tag = "1")]
        pub eid: String,
        /// Absent: offline.
        #[prost(int32, optional, tag = "2")]
        pub status: Option<i32>,
        #[prost(int32, tag = "3")]
        pub ttl: i32,
        #[prost(int64, tag = "4")]
        pub at: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Social {
        #[prost(oneof = "SocialEvent", tags = "1, 2, 3, 4, 5")]
        pub event: Option<SocialEvent>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum SocialEvent {
        #[prost(message, tag = "1")]
        SubscriberAdded(SubscriberAdded),
        #[prost(message, tag = "2")]
        SubscriberRemoved(SubscriberRemoved),
        #[prost(message, tag = "3")]
        Blocked(Block),
        #[prost(message, tag = "4")]
        Unblocked(Block),
        #[prost(message, tag = "5")]
        Settings(Settings),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubscriberAdded {
        #[prost(string, tag = "1")]
        pub owner: String,
        #[prost(string, tag = "2")]
        pub subscriber: String,
        #[prost(string, tag = "3")]
        pub resource_id: String,
        #[prost(string, tag = "4")]
        pub nickname: String,
        #[prost(string, tag = "5")]
        pub group: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubscriberRemoved {
        #[prost(string, tag = "1")]
        pub owner: String,
        #[prost(string, tag = "2")]
        pub subscriber: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Block {
        #[prost(string, tag = "1")]
        pub owner: String,
        #[prost(string, tag = "2")]
        pub blocked: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Settings {
        #[prost(string, tag = "1")]
        pub eid: String,
        #[prost(int32, tag = "2")]
        pub visibility: i32,
        #[prost(int32, tag = "3")]
        pub location_sharing: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Fix {
        #[prost(message, optional, tag = "1")]
        pub fix: Option<LocationStream>,
        #[prost(string, optional, tag = "2")]
        pub peer: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Intention {
        #[prost(string, tag = "1")]
        pub peer: String,
        #[prost(message, optional, tag = "2")]
        pub note: Option<AwarenessNotification>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct QueueFull {
        #[prost(string, tag = "1")]
        pub eid: String,
        #[prost(bool, tag = "2")]
        pub full: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Origin {
        #[prost(uint64, tag = "1")]
        pub shard: u64,
        #[prost(uint64, tag = "2")]
        pub conn: u64,
        #[prost(uint64, optional, tag = "3")]
        pub seq: Option<u64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Propose {
        #[prost(message, optional, tag = "1")]
        pub origin: Option<Origin>,
        #[prost(int64, tag = "2")]
        pub route: i64,
        #[prost(message, optional, tag = "3")]
        pub me: Option<Identity>,
        #[prost(string, tag = "4")]
        pub receiver: String,
        #[prost(string, tag = "5")]
        pub chat: String,
        #[prost(message, optional, tag = "6")]
        pub request: Option<Request>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Request {
        #[prost(message, repeated, tag = "1")]
        pub to: Vec<Identity>,
        #[prost(string, tag = "2")]
        pub message_id_local: String,
        #[prost(int64, tag = "3")]
        pub created_at: i64,
        #[prost(oneof = "Body", tags = "4, 5")]
        pub body: Option<Body>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        #[prost(string, tag = "4")]
        Text(String),
        #[prost(message, tag = "5")]
        Media(Media),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Media {
        #[prost(string, tag = "1")]
        pub url: String,
        #[prost(int32, tag = "2")]
        pub media_type: i32,
        #[prost(string, tag = "3")]
        pub caption: String,
        #[prost(string, tag = "4")]
        pub thumbnail_url: String,
        #[prost(int64, tag = "5")]
        pub size: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Acknowledge {
        #[prost(message, optional, tag = "1")]
        pub origin: Option<Origin>,
        #[prost(message, optional, tag = "2")]
        pub me: Option<Identity>,
        #[prost(string, tag = "3")]
        pub message_id: String,
        #[prost(int32, tag = "4")]
        pub status: i32,
        #[prost(int64, tag = "5")]
        pub timestamp: i64,
        #[prost(uint64, tag = "6")]
        pub upto: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Append {
        #[prost(string, tag = "1")]
        pub eid: String,
        #[prost(message, optional, tag = "2")]
        pub item: Option<Item>,
        #[prost(uint64, optional, tag = "3")]
        pub ticket: Option<u64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Item {
        #[prost(string, optional, tag = "1")]
        pub exclude_device: Option<String>,
        /// The stanza's envelope encoding (a MessageScheme).
        #[prost(bytes = "bytes", tag = "2")]
        pub encoded: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Appended {
        #[prost(uint64, tag = "1")]
        pub ticket: u64,
        #[prost(bool, tag = "2")]
        pub ok: bool,
        /// The shard that made the append.
        #[prost(uint32, tag = "3")]
        pub shard: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Answer {
        #[prost(message, optional, tag = "1")]
        pub origin: Option<Origin>,
        #[prost(int64, tag = "2")]
        pub route: i64,
        #[prost(string, tag = "3")]
        pub reference: String,
        #[prost(message, optional, tag = "4")]
        pub confirm: Option<Confirm>,
        #[prost(oneof = "AnswerResult", tags = "5, 6")]
        pub result: Option<AnswerResult>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum AnswerResult {
        /// The stanza's envelope encoding (a MessageScheme).
        #[prost(bytes = "vec", tag = "5")]
        Stanza(Vec<u8>),
        #[prost(message, tag = "6")]
        Rejection(Rejection),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Confirm {
        #[prost(string, tag = "1")]
        pub message_id: String,
        #[prost(int32, tag = "2")]
        pub status: i32,
        #[prost(bool, tag = "3")]
        pub receiver_side: bool,
        #[prost(uint64, tag = "4")]
        pub upto: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Rejection {
        /// The kind's name (`ErrorKind::as_str`).
        #[prost(string, tag = "1")]
        pub kind: String,
        #[prost(string, tag = "2")]
        pub details: String,
        #[prost(string, tag = "3")]
        pub ref_id: String,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::proto::message_scheme::Payload;
    use crate::proto::{
        AcknowledgmentResponse, AwarenessNotification, ChatMessage, Identity, LocationStream, PingPong, VersionUpdate,
        chat_message,
    };

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,6}"
    }

    fn identity() -> impl Strategy<Value = Identity> {
        (text(), text()).prop_map(|(eid, connection_resource_id)| Identity {
            eid,
            connection_resource_id,
        })
    }

    fn session() -> impl Strategy<Value = SessionIdentity> {
        (text(), text()).prop_map(|(eid, device)| SessionIdentity::new(&eid, &device))
    }

    /// Finite degrees: a NaN is unequal to itself, so no round trip could compare equal.
    fn degrees() -> impl Strategy<Value = f64> {
        -1.0e3f64..1.0e3
    }

    fn origin() -> impl Strategy<Value = Origin> {
        (any::<usize>(), any::<u64>(), any::<Option<u64>>()).prop_map(|(shard, conn, seq)| Origin {
            shard,
            conn: ConnId(conn),
            seq,
        })
    }

    fn chat_message() -> impl Strategy<Value = ChatMessage> {
        let body = prop_oneof![
            Just(None),
            text().prop_map(|t| Some(chat_message::Payload::Text(t))),
            text().prop_map(|u| Some(chat_message::Payload::MediaUrl(u))),
        ];
        (
            (text(), text(), any::<i64>(), text(), proptest::option::of(identity())),
            (proptest::collection::vec(identity(), 0..3), text(), body),
            (any::<i32>(), any::<i64>(), any::<i64>(), any::<i64>()),
            (any::<i32>(), text(), text(), any::<i64>()),
        )
            .prop_map(|(a, b, c, d)| ChatMessage {
                message_id: a.0,
                message_id_local: a.1,
                version: a.2,
                chat_id: a.3,
                from: a.4,
                to: b.0,
                author: b.1,
                payload: b.2,
                acknowledgment: c.0,
                acknowledgment_timestamp: c.1,
                created_at: c.2,
                server_received_at: c.3,
                media_type: d.0,
                caption: d.1,
                thumbnail_url: d.2,
                media_size_bytes: d.3,
            })
    }

    fn ack_response() -> impl Strategy<Value = AcknowledgmentResponse> {
        (
            proptest::option::of(identity()),
            proptest::option::of(identity()),
            text(),
            any::<i32>(),
            any::<i64>(),
            text(),
            any::<i64>(),
        )
            .prop_map(
                |(from, to, message_id, status, timestamp, chat_id, version)| AcknowledgmentResponse {
                    from,
                    to,
                    message_id,
                    status,
                    timestamp,
                    chat_id,
                    version,
                },
            )
    }

    fn version_update() -> impl Strategy<Value = VersionUpdate> {
        (
            proptest::option::of(identity()),
            (text(), text(), any::<i32>(), any::<i64>()),
            (any::<i32>(), any::<i64>(), text()),
        )
            .prop_map(|(to, a, b)| VersionUpdate {
                to,
                message_id: a.0,
                message_id_local: a.1,
                r#type: a.2,
                timestamp: a.3,
                status: b.0,
                version: b.1,
                chat_id: b.2,
            })
    }

    /// The stanzas items and answers carry, and one the queue knows nothing about (an item `about` nothing).
    fn payload() -> impl Strategy<Value = Payload> {
        prop_oneof![
            chat_message().prop_map(Payload::ChatMessage),
            ack_response().prop_map(Payload::AcknowledgmentResponse),
            version_update().prop_map(Payload::VersionUpdate),
            (proptest::option::of(identity()), any::<i32>(), text()).prop_map(|(to, status, id)| {
                Payload::PingpongMessage(PingPong {
                    to,
                    r#type: 2,
                    status,
                    id,
                    ..PingPong::default()
                })
            }),
        ]
    }

    fn social_event() -> impl Strategy<Value = SocialEvent> {
        prop_oneof![
            (text(), text(), text(), text(), text()).prop_map(|(owner, subscriber, resource_id, nickname, group)| {
                SocialEvent::SubscriberAdded {
                    owner,
                    subscriber,
                    resource_id,
                    nickname,
                    group,
                }
            }),
            (text(), text()).prop_map(|(owner, subscriber)| SocialEvent::SubscriberRemoved { owner, subscriber }),
            (text(), text()).prop_map(|(owner, blocked)| SocialEvent::Blocked { owner, blocked }),
            (text(), text()).prop_map(|(owner, blocked)| SocialEvent::Unblocked { owner, blocked }),
            (text(), any::<i32>(), any::<i32>()).prop_map(|(eid, visibility, location_sharing)| {
                SocialEvent::Settings {
                    eid,
                    visibility,
                    location_sharing,
                }
            }),
        ]
    }

    fn location() -> impl Strategy<Value = LocationStream> {
        (
            text(),
            proptest::option::of(identity()),
            proptest::option::of(identity()),
            (degrees(), degrees(), degrees()),
            any::<i64>(),
        )
            .prop_map(
                |(id, from, to, (latitude, longitude, altitude), timestamp)| LocationStream {
                    id,
                    from,
                    to,
                    latitude,
                    longitude,
                    altitude,
                    timestamp,
                },
            )
    }

    fn notification() -> impl Strategy<Value = AwarenessNotification> {
        (
            proptest::option::of(identity()),
            proptest::option::of(identity()),
            (any::<i32>(), any::<i64>(), degrees(), degrees()),
            (any::<i32>(), any::<i32>(), any::<i64>()),
        )
            .prop_map(|(from, to, a, b)| AwarenessNotification {
                from,
                to,
                status: a.0,
                last_seen: a.1,
                latitude: a.2,
                longitude: a.3,
                awareness_intention: b.0,
                ttl: b.1,
                timestamp: b.2,
            })
    }

    fn request() -> impl Strategy<Value = Request> {
        let body = prop_oneof![
            text().prop_map(Body::Text),
            (text(), any::<i32>(), text(), text(), any::<i64>()).prop_map(
                |(url, media_type, caption, thumbnail_url, size)| Body::Media {
                    url,
                    media_type,
                    caption,
                    thumbnail_url,
                    size,
                }
            ),
        ];
        (proptest::collection::vec(identity(), 0..3), text(), any::<i64>(), body)
            .prop_map(|(to, local, created_at, body)| Request::from_parts(to, local, created_at, body))
    }

    fn rejection() -> impl Strategy<Value = Rejection> {
        (proptest::sample::select(ErrorKind::ALL), text(), text()).prop_map(|(kind, details, ref_id)| Rejection {
            kind,
            details,
            ref_id,
        })
    }

    fn confirm() -> impl Strategy<Value = Confirm> {
        (text(), any::<i32>(), any::<bool>(), any::<u64>()).prop_map(|(message_id, status, receiver_side, upto)| {
            Confirm {
                message_id,
                status,
                receiver_side,
                upto,
            }
        })
    }

    fn letter() -> impl Strategy<Value = Letter> {
        prop_oneof![
            (text(), any::<Option<i32>>(), any::<i32>(), any::<i64>())
                .prop_map(|(eid, status, ttl, at)| Letter::Presence { eid, status, ttl, at }),
            social_event().prop_map(Letter::Social),
            (location(), proptest::option::of(text())).prop_map(|(fix, peer)| Letter::Fix {
                fix: Box::new(fix),
                peer
            }),
            (text(), notification()).prop_map(|(peer, note)| Letter::Intention {
                peer,
                note: Box::new(note)
            }),
            (text(), any::<bool>()).prop_map(|(eid, full)| Letter::QueueFull { eid, full }),
            (origin(), any::<i64>(), session(), text(), text(), request()).prop_map(
                |(origin, route, me, receiver, chat, request)| Letter::Propose(Box::new(Proposal {
                    origin,
                    route,
                    me,
                    receiver,
                    chat,
                    request,
                }))
            ),
            (origin(), session(), text(), any::<i32>(), any::<i64>(), any::<u64>()).prop_map(
                |(origin, me, message_id, status, timestamp, upto)| Letter::Acknowledge(Box::new(Acknowledgment {
                    origin,
                    me,
                    message_id,
                    status,
                    timestamp,
                    upto,
                }))
            ),
            (text(), proptest::option::of(text()), payload(), any::<Option<u64>>()).prop_map(
                |(eid, exclude, stanza, ticket)| Letter::Append {
                    eid,
                    item: Box::new(QueueItem::new(exclude, stanza)),
                    ticket,
                }
            ),
            (any::<u64>(), any::<bool>(), any::<u16>()).prop_map(|(ticket, ok, shard)| Letter::Appended {
                ticket,
                ok,
                shard: usize::from(shard)
            }),
            any::<u64>().prop_map(|ticket| Letter::Fence { ticket }),
            (any::<u64>(), any::<u16>()).prop_map(|(ticket, shard)| Letter::Passed {
                ticket,
                shard: usize::from(shard)
            }),
            (
                origin(),
                any::<i64>(),
                text(),
                proptest::option::of(confirm()),
                prop_oneof![payload().prop_map(Ok), rejection().prop_map(Err)],
            )
                .prop_map(
                    |(origin, route, reference, confirm, result)| Letter::Answer(Box::new(Answer {
                        origin,
                        route,
                        reference,
                        confirm,
                        result,
                    }))
                ),
        ]
    }

    fn mail(letter: Letter) -> Mail {
        Mail(Box::new(letter))
    }

    proptest! {
        #[test]
        fn every_letter_round_trips(letter in letter()) {
            let mail = mail(letter);
            let bytes = mail.encode();
            let back = Mail::decode(&bytes);
            prop_assert_eq!(back.as_ref(), Ok(&mail));
            // One letter, one encoding: a node re-sending what it received sends the same bytes.
            prop_assert_eq!(back.map(|m| m.encode()), Ok(bytes));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Mail::decode(&bytes);
        }

        /// Random bytes rarely get past the outer message; damaged real letters reach every decoder below it.
        #[test]
        fn damaged_letters_never_panic(letter in letter(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), xor in 1u8..) {
            let mut bytes = mail(letter).encode().to_vec();
            let at = flip.index(bytes.len());
            bytes[at] ^= xor;
            let _ = Mail::decode(&bytes);
            bytes.truncate(cut.index(bytes.len()));
            let _ = Mail::decode(&bytes);
        }
    }

    #[test]
    fn an_unknown_kind_is_refused_as_such() {
        // Field 13, length-delimited, empty: the kind a newer node might add next.
        assert_eq!(Mail::decode(&[0x6a, 0x00]), Err(WireError::UnknownKind(13)));
        // Field 99 as a varint.
        assert_eq!(Mail::decode(&[0x98, 0x06, 0x01]), Err(WireError::UnknownKind(99)));
        assert_eq!(Mail::decode(&[]), Err(WireError::Missing("letter")));
    }

    #[test]
    fn missing_and_invalid_fields_are_refused() {
        let fix = pb::Mail {
            letter: Some(pb::Letter::Fix(pb::Fix { fix: None, peer: None })),
        };
        assert_eq!(Mail::decode(&fix.encode_to_vec()), Err(WireError::Missing("Fix.fix")));
        let answer = pb::Mail {
            letter: Some(pb::Letter::Answer(pb::Answer {
                origin: Some(pb::Origin::default()),
                result: Some(pb::AnswerResult::Rejection(pb::Rejection {
                    kind: "no_such_kind".to_string(),
                    ..pb::Rejection::default()
                })),
                ..pb::Answer::default()
            })),
        };
        assert_eq!(
            Mail::decode(&answer.encode_to_vec()),
            Err(WireError::Invalid {
                field: "Answer.rejection.kind",
                value: "no_such_kind".to_string()
            })
        );
        let item = pb::Mail {
            letter: Some(pb::Letter::Append(pb::Append {
                item: Some(pb::Item {
                    exclude_device: None,
                    encoded: Bytes::from_static(b"\xff"),
                }),
                ..pb::Append::default()
            })),
        };
        assert!(matches!(
            Mail::decode(&item.encode_to_vec()),
            Err(WireError::Stanza {
                field: "Append.item",
                ..
            })
        ));
    }

    /// One fixed letter of each kind, so that a change of the format shows in review as a changed snapshot.
    fn fixed_letters() -> Vec<(&'static str, Letter)> {
        let alice = SessionIdentity::new("alice@x", "phone");
        let origin = Origin {
            shard: 1,
            conn: ConnId(7),
            seq: Some(3),
        };
        let ack = AcknowledgmentResponse {
            from: Some(alice.to_proto()),
            to: None,
            message_id: "c.1/1".to_string(),
            status: 2,
            timestamp: 1_000,
            chat_id: "c.1".to_string(),
            version: 1,
        };
        vec![
            (
                "presence",
                Letter::Presence {
                    eid: "alice@x".to_string(),
                    status: Some(1),
                    ttl: 60,
                    at: 1_000,
                },
            ),
            (
                "social",
                Letter::Social(SocialEvent::Blocked {
                    owner: "alice@x".to_string(),
                    blocked: "bob@x".to_string(),
                }),
            ),
            (
                "fix",
                Letter::Fix {
                    fix: Box::new(LocationStream {
                        id: "f1".to_string(),
                        from: Some(alice.to_proto()),
                        latitude: 52.5,
                        longitude: 13.25,
                        timestamp: 1_000,
                        ..LocationStream::default()
                    }),
                    peer: Some("bob@x".to_string()),
                },
            ),
            (
                "intention",
                Letter::Intention {
                    peer: "bob@x".to_string(),
                    note: Box::new(AwarenessNotification {
                        from: Some(alice.to_proto()),
                        awareness_intention: 1,
                        ttl: 5,
                        timestamp: 1_000,
                        ..AwarenessNotification::default()
                    }),
                },
            ),
            (
                "queue_full",
                Letter::QueueFull {
                    eid: "bob@x".to_string(),
                    full: true,
                },
            ),
            (
                "propose",
                Letter::Propose(Box::new(Proposal {
                    origin,
                    route: 11,
                    me: alice.clone(),
                    receiver: "bob@x".to_string(),
                    chat: "c.1".to_string(),
                    request: Request::from_parts(
                        vec![Identity {
                            eid: "bob@x".to_string(),
                            connection_resource_id: String::new(),
                        }],
                        "l1".to_string(),
                        999,
                        Body::Text("hi".to_string()),
                    ),
                })),
            ),
            (
                "acknowledge",
                Letter::Acknowledge(Box::new(Acknowledgment {
                    origin,
                    me: alice.clone(),
                    message_id: "c.1/1".to_string(),
                    status: 3,
                    timestamp: 1_000,
                    upto: 4,
                })),
            ),
            (
                "append",
                Letter::Append {
                    eid: "bob@x".to_string(),
                    item: Box::new(QueueItem::new(
                        Some("phone".to_string()),
                        Payload::AcknowledgmentResponse(ack.clone()),
                    )),
                    ticket: Some(9),
                },
            ),
            (
                "appended",
                Letter::Appended {
                    ticket: 9,
                    ok: true,
                    shard: 2,
                },
            ),
            ("fence", Letter::Fence { ticket: 9 }),
            ("passed", Letter::Passed { ticket: 9, shard: 2 }),
            (
                "answer",
                Letter::Answer(Box::new(Answer {
                    origin,
                    route: 12,
                    reference: "c.1/1".to_string(),
                    confirm: Some(Confirm {
                        message_id: "c.1/1".to_string(),
                        status: 3,
                        receiver_side: true,
                        upto: 4,
                    }),
                    result: Err(Rejection::new(ErrorKind::Blocked, "blocked").with_ref("c.1/1")),
                })),
            ),
        ]
    }

    #[test]
    fn the_format_of_each_kind() {
        let mut lines = String::new();
        for (name, letter) in fixed_letters() {
            let mail = mail(letter);
            let bytes = mail.encode();
            assert_eq!(Mail::decode(&bytes), Ok(mail), "{name}");
            lines.push_str(&format!("{name:<12} {}\n", hex::encode(&bytes)));
        }
        insta::assert_snapshot!(lines);
    }
}
