//! What an application's session does with the queue items it receives (SPEC QUE-4, QUE-7, CLI-3): it confirms
//! each one the way QUE-4 says, and hands each message and acknowledgment update to the application once, however
//! often the queue replays it. The connection client ([`super::Client`]) does neither on its own: the suite drives
//! servers through it and must see exactly what they send.

use std::collections::HashSet;

use crate::core::Millis;
use crate::proto::message_scheme::Payload;
use crate::proto::{AcknowledgmentRequest, AcknowledgmentResponse, ChatMessage};

/// The ChatMessage status a receiver device confirms its copy with (DELIVERED), and a sender device its own
/// (SENT, by the sender-copy rule of QUE-4).
const DELIVERED: i32 = 2;
const SENDER_COPY: i32 = 4;

/// What became of one received stanza.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// First time seen: hand it to the application (QUE-7 drops the rest).
    pub new: bool,
    /// The acknowledgment that confirms it (QUE-4), to send once the application has it; duplicates are confirmed
    /// too, or the server would replay them at every session start.
    pub confirm: Option<AcknowledgmentRequest>,
}

/// The messages and updates one device has received.
#[derive(Debug, Default)]
pub struct Inbox {
    messages: HashSet<String>,
    updates: HashSet<(String, i32)>,
}

impl Inbox {
    /// Takes a stanza the device received; `None` for a stanza that is no queue item.
    pub fn receive(&mut self, payload: &Payload, now: Millis) -> Option<Received> {
        match payload {
            Payload::ChatMessage(message) => Some(self.message(message, now)),
            Payload::AcknowledgmentResponse(update) if is_update(update) => Some(self.update(update, now)),
            _ => None,
        }
    }

    fn message(&mut self, message: &ChatMessage, now: Millis) -> Received {
        let status = if message.author == "sender" {
            SENDER_COPY
        } else {
            DELIVERED
        };
        Received {
            new: self.messages.insert(message.message_id.clone()),
            confirm: Some(confirm(&message.message_id, status, now)),
        }
    }

    fn update(&mut self, update: &AcknowledgmentResponse, now: Millis) -> Received {
        let new = self.updates.insert((update.message_id.clone(), update.status));
        // Sender side: the other user acted; the device confirms with the update's status. Receiver side (a
        // sibling device of the acting user): nothing confirms it (QUE-4), a later item will.
        let from = update.from.as_ref().map(|f| f.eid.as_str());
        let to = update.to.as_ref().map(|t| t.eid.as_str());
        let sender_side = from.is_some() && from != to;
        Received {
            new,
            confirm: sender_side.then(|| confirm(&update.message_id, update.status, now)),
        }
    }
}

/// An update item, not the confirmation of the device's own acknowledgment (which names the device as both
/// `from` and `to`).
fn is_update(response: &AcknowledgmentResponse) -> bool {
    response.from != response.to
}

fn confirm(message_id: &str, status: i32, now: Millis) -> AcknowledgmentRequest {
    AcknowledgmentRequest {
        message_id: message_id.to_string(),
        status,
        timestamp: now,
        ..AcknowledgmentRequest::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Identity;

    fn id(eid: &str, device: &str) -> Option<Identity> {
        Some(Identity {
            eid: eid.into(),
            connection_resource_id: device.into(),
        })
    }

    fn copy(message_id: &str, author: &str) -> Payload {
        Payload::ChatMessage(ChatMessage {
            message_id: message_id.into(),
            author: author.into(),
            ..ChatMessage::default()
        })
    }

    fn update(message_id: &str, status: i32, from: &str, to: &str) -> Payload {
        Payload::AcknowledgmentResponse(AcknowledgmentResponse {
            from: id(from, "a"),
            to: id(to, "b"),
            message_id: message_id.into(),
            status,
            ..AcknowledgmentResponse::default()
        })
    }

    #[test]
    fn a_replayed_message_is_confirmed_again_but_handed_over_once() {
        let mut inbox = Inbox::default();
        let first = inbox.receive(&copy("c/1", "receiver"), 5).expect("an item");
        assert!(first.new);
        assert_eq!(
            first.confirm.as_ref().map(|c| (c.message_id.as_str(), c.status)),
            Some(("c/1", 2))
        );
        let again = inbox.receive(&copy("c/1", "receiver"), 6).expect("an item");
        assert!(!again.new);
        assert!(again.confirm.is_some());
        assert!(inbox.receive(&copy("c/2", "receiver"), 7).expect("an item").new);
    }

    #[test]
    fn a_sender_copy_is_confirmed_with_status_4() {
        let received = Inbox::default().receive(&copy("c/1", "sender"), 0).expect("an item");
        assert_eq!(received.confirm.map(|c| c.status), Some(4));
    }

    #[test]
    fn updates_are_deduplicated_by_message_and_status_and_confirmed_on_the_sender_side_only() {
        let mut inbox = Inbox::default();
        let read = inbox.receive(&update("c/1", 3, "bob", "alice"), 0).expect("an item");
        assert!(read.new);
        assert_eq!(read.confirm.map(|c| c.status), Some(3));
        assert!(
            !inbox
                .receive(&update("c/1", 3, "bob", "alice"), 0)
                .expect("an item")
                .new
        );
        assert!(
            inbox
                .receive(&update("c/1", 2, "bob", "alice"), 0)
                .expect("an item")
                .new
        );
        // A sibling device's acknowledgment, on the receiver side: handed over, never confirmed.
        let sibling = inbox.receive(&update("c/2", 3, "bob", "bob"), 0).expect("an item");
        assert!(sibling.new && sibling.confirm.is_none());
    }

    #[test]
    fn the_confirmation_of_an_own_acknowledgment_is_no_item() {
        let mut inbox = Inbox::default();
        let own = Payload::AcknowledgmentResponse(AcknowledgmentResponse {
            from: id("bob", "phone"),
            to: id("bob", "phone"),
            message_id: "c/1".into(),
            status: 2,
            ..AcknowledgmentResponse::default()
        });
        assert_eq!(inbox.receive(&own, 0), None);
        assert_eq!(inbox.receive(&Payload::PingpongMessage(Default::default()), 0), None);
    }
}
