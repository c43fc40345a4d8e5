//! The console's command language: one line, one [`Command`]. Stanza commands become the payload a device sends
//! ([`Command::payload`]); admin commands name a backend API call.

use std::collections::BTreeMap;

use crate::proto::message_scheme::Payload;
use crate::proto::{
    AcknowledgmentRequest, AwarenessNotification, BlockSubscriber, Identity, PingPong, SubscriberAddRequest,
    SubscriberRemove, TextPayloadRequest,
};

/// Every command word, for completion and `help`.
pub const WORDS: &[&str] = &[
    "help",
    "quit",
    "connect",
    "use",
    "list",
    "text",
    "ack",
    "presence",
    "subscribe",
    "unsubscribe",
    "block",
    "unblock",
    "ping",
    "send",
    "logout",
    "close",
    "sessions",
    "revoke",
    "end",
    "push",
    "awareness",
    "stats",
];

/// What `help` prints.
pub const HELP: &str = "\
connections
  connect EID [DEVICE] [--token JWT]   open a session (default device: console); a token is minted when none is given
  use N|EID/DEVICE                     switch the current connection
  list                                 the open connections
  close                                close the current connection
stanzas (from the current connection)
  text EID WORDS...                    a text message
  ack MESSAGE_ID delivered|read        acknowledge a message
  presence online|away|busy|dnd [TTL]  set presence (TTL seconds)
  subscribe EID / unsubscribe EID      add or remove a subscriber
  block EID / unblock EID
  ping [ID]                            a client ping
  send YAML                            any MessageScheme in the proto3 JSON mapping, e.g.
                                       send {route: 6, pingpongMessage: {type: 1, status: 1, id: p1}}
  logout
backend API (gRPC)
  sessions EID                         a user's live sessions
  revoke device EID DEVICE | revoke user EID | revoke token JWT
  end EID DEVICE                       end a session (the token stays good)
  push EID TYPE KEY=VALUE...           a push notification
  awareness EID                        presence, visibility, subscribers, blocks
  stats
quit (or Ctrl-D)";

/// An acknowledgment's status (SPEC §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    Delivered = 2,
    Read = 3,
}

/// A presence a device may set (SPEC AWR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Online = 1,
    Away = 3,
    Busy = 4,
    DoNotDisturb = 5,
}

/// What a backend API command does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    Sessions {
        eid: String,
    },
    RevokeDevice {
        eid: String,
        device: String,
    },
    RevokeUser {
        eid: String,
    },
    RevokeToken {
        token: String,
    },
    End {
        eid: String,
        device: String,
    },
    Push {
        eid: String,
        kind: String,
        data: BTreeMap<String, String>,
    },
    Awareness {
        eid: String,
    },
    Stats,
}

/// One console line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help,
    Quit,
    Connect {
        eid: String,
        device: String,
        token: Option<String>,
    },
    Use {
        which: String,
    },
    List,
    Close,
    Text {
        to: String,
        text: String,
    },
    Ack {
        message_id: String,
        status: AckStatus,
    },
    Presence {
        status: Presence,
        ttl: i32,
    },
    Subscribe {
        eid: String,
    },
    Unsubscribe {
        eid: String,
    },
    Block {
        eid: String,
    },
    Unblock {
        eid: String,
    },
    Ping {
        id: Option<String>,
    },
    Send {
        yaml: String,
    },
    Logout,
    Admin(AdminCommand),
}

/// Why a line is not a command; the text says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

fn usage(text: &str) -> ParseError {
    ParseError(format!("usage: {text}"))
}

fn eid(word: Option<&str>, text: &str) -> Result<String, ParseError> {
    word.map(str::to_string).ok_or_else(|| usage(text))
}

fn user(eid: &str) -> Option<Identity> {
    Some(Identity {
        eid: eid.to_string(),
        connection_resource_id: String::new(),
    })
}

impl Command {
    /// Parses one line; `Ok(None)` for a blank one.
    pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
        let line = line.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let mut args = rest.split_whitespace();
        let command = match word {
            "" => return Ok(None),
            "help" | "?" => Command::Help,
            "quit" | "exit" => Command::Quit,
            "connect" => {
                let eid = eid(args.next(), "connect EID [DEVICE] [--token JWT]")?;
                let mut device = "console".to_string();
                let mut token = None;
                while let Some(arg) = args.next() {
                    if arg == "--token" {
                        token = Some(
                            args.next()
                                .ok_or_else(|| usage("connect EID [DEVICE] --token JWT"))?
                                .to_string(),
                        );
                    } else {
                        device = arg.to_string();
                    }
                }
                Command::Connect { eid, device, token }
            }
            "use" => Command::Use {
                which: eid(args.next(), "use N|EID/DEVICE")?,
            },
            "list" => Command::List,
            "close" => Command::Close,
            "text" => {
                let (to, text) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| usage("text EID WORDS..."))?;
                Command::Text {
                    to: to.to_string(),
                    text: text.trim().to_string(),
                }
            }
            "ack" => {
                let message_id = eid(args.next(), "ack MESSAGE_ID delivered|read")?;
                let status = match args.next() {
                    Some("delivered") => AckStatus::Delivered,
                    Some("read") => AckStatus::Read,
                    _ => return Err(usage("ack MESSAGE_ID delivered|read")),
                };
                Command::Ack { message_id, status }
            }
            "presence" => {
                let text = "presence online|away|busy|dnd [TTL]";
                let status = match args.next() {
                    Some("online") => Presence::Online,
                    Some("away") => Presence::Away,
                    Some("busy") => Presence::Busy,
                    Some("dnd") => Presence::DoNotDisturb,
                    _ => return Err(usage(text)),
                };
                let ttl = match args.next() {
                    None => 0,
                    Some(n) => n.parse().map_err(|_| usage(text))?,
                };
                Command::Presence { status, ttl }
            }
            "subscribe" => Command::Subscribe {
                eid: eid(args.next(), "subscribe EID")?,
            },
            "unsubscribe" => Command::Unsubscribe {
                eid: eid(args.next(), "unsubscribe EID")?,
            },
            "block" => Command::Block {
                eid: eid(args.next(), "block EID")?,
            },
            "unblock" => Command::Unblock {
                eid: eid(args.next(), "unblock EID")?,
            },
            "ping" => Command::Ping {
                id: args.next().map(str::to_string),
            },
            "send" if !rest.is_empty() => Command::Send { yaml: rest.to_string() },
            "send" => return Err(usage("send YAML (a MessageScheme in the proto3 JSON mapping)")),
            "logout" => Command::Logout,
            "sessions" => Command::Admin(AdminCommand::Sessions {
                eid: eid(args.next(), "sessions EID")?,
            }),
            "revoke" => {
                let text = "revoke device EID DEVICE | revoke user EID | revoke token JWT";
                let admin = match (args.next(), args.next(), args.next()) {
                    (Some("device"), Some(eid), Some(device)) => AdminCommand::RevokeDevice {
                        eid: eid.to_string(),
                        device: device.to_string(),
                    },
                    (Some("user"), Some(eid), None) => AdminCommand::RevokeUser { eid: eid.to_string() },
                    (Some("token"), Some(token), None) => AdminCommand::RevokeToken {
                        token: token.to_string(),
                    },
                    _ => return Err(usage(text)),
                };
                Command::Admin(admin)
            }
            "end" => match (args.next(), args.next()) {
                (Some(eid), Some(device)) => Command::Admin(AdminCommand::End {
                    eid: eid.to_string(),
                    device: device.to_string(),
                }),
                _ => return Err(usage("end EID DEVICE")),
            },
            "push" => {
                let text = "push EID TYPE KEY=VALUE...";
                let (Some(eid), Some(kind)) = (args.next(), args.next()) else {
                    return Err(usage(text));
                };
                let data = args
                    .map(|pair| {
                        pair.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .ok_or_else(|| usage(text))
                    })
                    .collect::<Result<_, _>>()?;
                Command::Admin(AdminCommand::Push {
                    eid: eid.to_string(),
                    kind: kind.to_string(),
                    data,
                })
            }
            "awareness" => Command::Admin(AdminCommand::Awareness {
                eid: eid(args.next(), "awareness EID")?,
            }),
            "stats" => Command::Admin(AdminCommand::Stats),
            other => return Err(ParseError(format!("unknown command {other:?}: try help"))),
        };
        Ok(Some(command))
    }

    /// The stanza a stanza command sends; `now` stamps it and names a text's `message_id_local`.
    pub fn payload(&self, now: i64) -> Option<Payload> {
        Some(match self {
            Command::Text { to, text } => Payload::TextPayloadRequest(TextPayloadRequest {
                to: user(to).into_iter().collect(),
                content: text.clone(),
                message_id_local: format!("console-{now}"),
                text_size_count: text.chars().count().to_string(),
                created_at: now,
                ..TextPayloadRequest::default()
            }),
            Command::Ack { message_id, status } => Payload::AcknowledgmentRequest(AcknowledgmentRequest {
                message_id: message_id.clone(),
                status: *status as i32,
                timestamp: now,
                ..AcknowledgmentRequest::default()
            }),
            Command::Presence { status, ttl } => Payload::AwarenessNotification(AwarenessNotification {
                status: *status as i32,
                ttl: *ttl,
                timestamp: now,
                ..AwarenessNotification::default()
            }),
            Command::Subscribe { eid } => Payload::SubscriberAddRequest(SubscriberAddRequest {
                subscriber: user(eid),
                timestamp: now,
                ..SubscriberAddRequest::default()
            }),
            Command::Unsubscribe { eid } => Payload::SubscriberRemove(SubscriberRemove {
                subscriber: user(eid),
                r#type: 1,
                timestamp: now,
                ..SubscriberRemove::default()
            }),
            Command::Block { eid } | Command::Unblock { eid } => Payload::BlockSubscriber(BlockSubscriber {
                subscriber: user(eid),
                r#type: 1,
                action: if matches!(self, Command::Block { .. }) { 1 } else { 2 },
                timestamp: now,
                ..BlockSubscriber::default()
            }),
            Command::Ping { id } => Payload::PingpongMessage(PingPong {
                id: id.clone().unwrap_or_else(|| format!("console-{now}")),
                r#type: 1,
                status: 1,
                request_time: now,
                ..PingPong::default()
            }),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Command {
        Command::parse(line).unwrap().unwrap()
    }

    #[test]
    fn lines_become_commands() {
        assert_eq!(Command::parse("   ").unwrap(), None);
        assert_eq!(
            parse("connect alice@example.com phone --token a.b.c"),
            Command::Connect {
                eid: "alice@example.com".into(),
                device: "phone".into(),
                token: Some("a.b.c".into())
            }
        );
        assert_eq!(
            parse("connect bob@example.com"),
            Command::Connect {
                eid: "bob@example.com".into(),
                device: "console".into(),
                token: None
            }
        );
        assert_eq!(
            parse("text bob@example.com  hello there "),
            Command::Text {
                to: "bob@example.com".into(),
                text: "hello there".into()
            }
        );
        assert_eq!(
            parse("ack m-1 read"),
            Command::Ack {
                message_id: "m-1".into(),
                status: AckStatus::Read
            }
        );
        assert_eq!(
            parse("presence busy 60"),
            Command::Presence {
                status: Presence::Busy,
                ttl: 60
            }
        );
        assert_eq!(
            parse("revoke device a@x.io phone"),
            Command::Admin(AdminCommand::RevokeDevice {
                eid: "a@x.io".into(),
                device: "phone".into()
            })
        );
        assert_eq!(
            parse("push a@x.io billing due=today n=1"),
            Command::Admin(AdminCommand::Push {
                eid: "a@x.io".into(),
                kind: "billing".into(),
                data: [("due".into(), "today".into()), ("n".into(), "1".into())].into()
            })
        );
        assert_eq!(
            parse("send {route: 6}"),
            Command::Send {
                yaml: "{route: 6}".into()
            }
        );
    }

    #[test]
    fn wrong_lines_say_what_was_expected() {
        for (line, expected) in [
            ("frobnicate", "unknown command"),
            ("ack m-1 seen", "usage: ack"),
            ("presence away soon", "usage: presence"),
            ("revoke device a@x.io", "usage: revoke"),
            ("push a@x.io billing novalue", "usage: push"),
            ("text bob@example.com", "usage: text"),
            ("send", "usage: send"),
        ] {
            let error = Command::parse(line).unwrap_err().to_string();
            assert!(error.contains(expected), "{line}: {error}");
        }
    }

    #[test]
    fn stanza_commands_make_their_stanzas() {
        let Some(Payload::AcknowledgmentRequest(ack)) = parse("ack m-9 delivered").payload(5) else {
            panic!("an AcknowledgmentRequest")
        };
        assert_eq!((ack.message_id.as_str(), ack.status, ack.timestamp), ("m-9", 2, 5));
        let Some(Payload::BlockSubscriber(unblock)) = parse("unblock c@x.io").payload(5) else {
            panic!("a BlockSubscriber")
        };
        assert_eq!((unblock.r#type, unblock.action), (1, 2));
        let Some(Payload::TextPayloadRequest(text)) = parse("text b@x.io hé llo").payload(7) else {
            panic!("a TextPayloadRequest")
        };
        assert_eq!(
            (text.content.as_str(), text.text_size_count.as_str(), text.to.len()),
            ("hé llo", "6", 1)
        );
        let Some(Payload::PingpongMessage(ping)) = parse("ping p7").payload(9) else {
            panic!("a PingPong")
        };
        assert_eq!(
            (ping.id.as_str(), ping.r#type, ping.status, ping.request_time),
            ("p7", 1, 1, 9)
        );
        assert_eq!(parse("stats").payload(1), None);
    }
}
