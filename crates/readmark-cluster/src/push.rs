//! The frames a WebSocket client is pushed for the store's events, and
//! who gets each: one definition for readmark-server on one store and for
//! the nodes that publish them over NATS to server nodes in front of a
//! cluster (the protocol is described in readmark-server's docs).

use readmark::{Event, UserId};
use serde_json::{Value, json};

/// One push: the frame and the users whose connections get it.
#[derive(Clone, Debug, PartialEq)]
pub struct Push {
    /// The frame, as the client receives it.
    pub frame: Value,
    /// Who gets it: every connection of each.
    pub to: Vec<UserId>,
}

/// The push for `event`: a receipt to the reader's other devices and the
/// recipients readmark names (never a non-member, never a private read);
/// `hidden` to the members who must forget a reader; `unread_flag` to its
/// owner's devices. `None` for [`Event::Lagged`] (every client resyncs:
/// the caller's to send) and kinds without a push.
pub fn push_of(event: &Event) -> Option<Push> {
    match event {
        Event::Receipt(r) => Some(Push {
            frame: json!({
                "type": "receipt",
                "conversation": r.conversation.0,
                "thread": r.thread.map(|m| m.0),
                "reader": r.reader.0,
                "up_to": r.up_to.0,
                "read_at": r.read_at.0,
            }),
            to: std::iter::once(r.reader)
                .chain(r.recipients.iter().copied())
                .collect(),
        }),
        Event::Hidden {
            conversation,
            reader,
            recipients,
        } => Some(Push {
            frame: json!({
                "type": "hidden",
                "conversation": conversation.0,
                "reader": reader.0,
            }),
            to: recipients.clone(),
        }),
        Event::UnreadFlag {
            conversation,
            thread,
            reader,
            marked_unread,
        } => Some(Push {
            frame: json!({
                "type": "unread_flag",
                "conversation": conversation.0,
                "thread": thread.map(|m| m.0),
                "marked_unread": marked_unread,
            }),
            to: vec![*reader],
        }),
        _ => None,
    }
}

/// The frame that tells a client its pushes were dropped: catch up.
pub fn resync_frame() -> Value {
    json!({"type": "resync"})
}
