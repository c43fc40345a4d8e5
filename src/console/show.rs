//! How the console shows a stanza: one line per stanza, `[connection] <- PayloadName {fields}`, the fields in the
//! proto3 JSON mapping (what `send` takes back), coloured when the output is a terminal: the connection in cyan,
//! the payload's name in green, or in red for an ErrorMessage.

use nu_ansi_term::{Color, Style};

use crate::codec::{self, describe::camel};
use crate::proto::message_scheme::Payload;

/// Whether lines carry ANSI colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    On,
    Off,
}

impl Colour {
    fn paint(self, style: Style, text: &str) -> String {
        match self {
            Colour::On => style.paint(text).to_string(),
            Colour::Off => text.to_string(),
        }
    }
}

/// A stanza that arrived on (`<-`) or left (`->`) the connection `who`.
pub fn stanza(colour: Colour, who: &str, arrow: &str, payload: &Payload) -> String {
    let description = codec::describe(&codec::encode(payload));
    let name = description
        .payload
        .as_deref()
        .and_then(|p| p.split_whitespace().next())
        .unwrap_or("?")
        .to_string();
    let fields = description
        .fields
        .as_ref()
        .and_then(|fields| {
            fields
                .as_object()?
                .iter()
                .find(|(key, _)| *key != "route")
                .map(|(_, v)| v.to_string())
        })
        .unwrap_or_default();
    let name_style = if matches!(payload, Payload::ErrorMessage(_)) {
        Color::Red.bold()
    } else {
        Color::Green.bold()
    };
    format!(
        "{} {arrow} {} {fields}",
        colour.paint(Color::Cyan.normal(), &format!("[{who}]")),
        colour.paint(name_style, &name)
    )
}

/// A line about a connection or a backend call (`note`), or a failure (`problem`).
pub fn note(colour: Colour, who: &str, text: &str) -> String {
    format!("{} {text}", colour.paint(Color::Cyan.normal(), &format!("[{who}]")))
}

pub fn problem(colour: Colour, text: &str) -> String {
    colour.paint(Color::Red.normal(), &format!("error: {text}"))
}

/// The field name a payload has in the JSON mapping (`pingpongMessage`), for `send`'s help.
pub fn field_name(payload: &Payload) -> String {
    let bytes = codec::encode(payload);
    codec::describe(&bytes)
        .payload
        .and_then(|p| p.split_once('(').map(|(_, f)| camel(f.trim_end_matches(')'))))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ErrorMessage, PingPong};

    #[test]
    fn a_stanza_is_one_line_with_its_fields() {
        let ping = Payload::PingpongMessage(PingPong {
            id: "p1".into(),
            r#type: 2,
            ..PingPong::default()
        });
        insta::assert_snapshot!(stanza(Colour::Off, "alice@example.com/phone", "<-", &ping), @r#"[alice@example.com/phone] <- PingPong {"type":2,"id":"p1"}"#);
        assert_eq!(field_name(&ping), "pingpongMessage");
        let error = Payload::ErrorMessage(ErrorMessage {
            code: 401,
            message: "token_revoked".into(),
            ..ErrorMessage::default()
        });
        let coloured = stanza(Colour::On, "b", "<-", &error);
        assert!(coloured.contains("\u{1b}[1;31mErrorMessage"), "{coloured:?}");
        assert!(coloured.contains("token_revoked"), "{coloured:?}");
    }
}
