//! The WebSocket protocol's messages (documented in the crate's docs, the
//! one place): what a client may ask and the frames the server sends.

use readmark::{ConversationId, MessageId, ReadState, ReadTime, Timeline};
use serde::Deserialize;
use serde_json::{Value, json};

/// A client request, `{"op": ..., "id": ...}`; unknown ops and fields are
/// refused, never ignored (a misspelt field must not do something else).
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    /// Marks the timeline read up to `up_to`.
    Read {
        conversation: u64,
        #[serde(default)]
        thread: Option<u64>,
        up_to: u64,
    },
    /// Records that one message was opened.
    View {
        conversation: u64,
        #[serde(default)]
        thread: Option<u64>,
        message: u64,
    },
    /// Sets or clears the "marked unread" flag.
    UnreadFlag {
        conversation: u64,
        #[serde(default)]
        thread: Option<u64>,
        unread: bool,
    },
    /// Makes the caller's receipts private (or public again), everywhere
    /// or in one conversation.
    Private {
        private: bool,
        #[serde(default)]
        conversation: Option<u64>,
    },
    /// Read states since a cursor (none: a snapshot).
    CatchUp {
        #[serde(default)]
        cursor: Option<String>,
    },
    /// Unread counts of every conversation of the caller.
    UnreadCounts,
    /// Who read a message, a page at a time.
    ReadBy {
        conversation: u64,
        #[serde(default)]
        thread: Option<u64>,
        message: u64,
        #[serde(default)]
        limit: Option<usize>,
        #[serde(default)]
        after: Option<u64>,
    },
    /// Answered `pong`: an application-level liveness check.
    Ping,
}

impl Request {
    /// The op's name, for answers and metrics.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Request::Read { .. } => "read",
            Request::View { .. } => "view",
            Request::UnreadFlag { .. } => "unread_flag",
            Request::Private { .. } => "private",
            Request::CatchUp { .. } => "catch_up",
            Request::UnreadCounts => "unread_counts",
            Request::ReadBy { .. } => "read_by",
            Request::Ping => "ping",
        }
    }
}

/// Parses a text frame into its request id (echoed in the answer) and the
/// request.
///
/// # Errors
///
/// `bad_request` with serde's description: not JSON, not an object, an
/// unknown op or field, a wrong type.
pub(crate) fn parse(text: &str) -> (Option<u64>, Result<Request, String>) {
    let mut v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (None, Err(e.to_string())),
    };
    let Some(obj) = v.as_object_mut() else {
        return (None, Err("a request is a JSON object".into()));
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(_) => return (None, Err("`id` must be a non-negative integer".into())),
    };
    (id, serde_json::from_value(v).map_err(|e| e.to_string()))
}

/// The timeline a request names.
pub(crate) fn timeline(conversation: u64, thread: Option<u64>) -> Timeline {
    match thread {
        None => Timeline::main(ConversationId(conversation)),
        Some(root) => Timeline::thread(ConversationId(conversation), MessageId(root)),
    }
}

/// `{"type":"error", ...}`.
pub(crate) fn error(id: Option<u64>, code: &str, text: &str) -> Value {
    json!({"type": "error", "id": id, "code": code, "error": text})
}

/// `{"type":"ok", "op": ...}`.
pub(crate) fn ok(id: Option<u64>, op: &str) -> Value {
    json!({"type": "ok", "id": id, "op": op})
}

pub(crate) fn state_json(s: &ReadState) -> Value {
    json!({
        "conversation": s.conversation.0,
        "thread": s.thread.map(|m| m.0),
        "reader": s.reader.0,
        "up_to": s.up_to.0,
        "read_at": s.read_at.0,
        "marked_unread": s.marked_unread,
    })
}

pub(crate) fn read_time_json(t: ReadTime) -> Value {
    match t {
        ReadTime::At(at) => json!({"at": at.0}),
        ReadTime::NoLaterThan(at) => json!({"no_later_than": at.0}),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_their_id_and_refuse_what_they_do_not_know() {
        let (id, r) = parse(r#"{"op":"read","conversation":1,"up_to":7,"id":3}"#);
        assert_eq!(id, Some(3));
        assert_eq!(
            r,
            Ok(Request::Read {
                conversation: 1,
                thread: None,
                up_to: 7
            })
        );
        assert!(
            parse(r#"{"op":"read","conversation":1,"upto":7}"#)
                .1
                .is_err()
        );
        assert!(parse(r#"{"op":"fly"}"#).1.is_err());
        assert!(
            parse(r#"{"op":"read","conversation":"1","up_to":7}"#)
                .1
                .is_err()
        );
        assert!(
            parse(r#"{"op":"read","conversation":-1,"up_to":7}"#)
                .1
                .is_err()
        );
        assert!(parse("[1,2]").1.is_err());
        assert!(parse("{").1.is_err());
        assert!(parse(r#"{"op":"ping","id":"x"}"#).1.is_err());
        assert_eq!(
            parse(r#"{"op":"unread_counts"}"#).1,
            Ok(Request::UnreadCounts)
        );
    }
}
