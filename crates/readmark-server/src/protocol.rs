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
    state_row(
        s.conversation.0,
        s.thread.map(|m| m.0),
        s.reader.0,
        s.up_to.0,
        s.read_at.0,
        s.marked_unread,
    )
}

/// One entry of a `state` answer's `states`.
pub(crate) fn state_row(
    conversation: u64,
    thread: Option<u64>,
    reader: u64,
    up_to: u64,
    read_at: u64,
    marked_unread: bool,
) -> Value {
    json!({
        "conversation": conversation,
        "thread": thread,
        "reader": reader,
        "up_to": up_to,
        "read_at": read_at,
        "marked_unread": marked_unread,
    })
}

/// One entry of a `state` answer's `hidden`: `thread` only when only a
/// thread's reader is to be forgotten.
pub(crate) fn hidden_row(conversation: u64, thread: Option<u64>, reader: u64) -> Value {
    match thread {
        None => json!({"conversation": conversation, "reader": reader}),
        Some(t) => json!({"conversation": conversation, "thread": t, "reader": reader}),
    }
}

/// `{"type":"state", ...}`.
pub(crate) fn state_answer(
    states: Vec<Value>,
    hidden: Vec<Value>,
    more: bool,
    cursor: String,
) -> Value {
    json!({"type": "state", "states": states, "hidden": hidden, "more": more, "cursor": cursor})
}

/// `{"type":"unread_counts", ...}` of `(conversation, unread, mentions,
/// marked_unread)`.
pub(crate) fn unread_counts_answer(
    counts: impl IntoIterator<Item = (u64, u64, u64, bool)>,
) -> Value {
    let counts: Vec<Value> = counts
        .into_iter()
        .map(|(c, n, m, f)| {
            json!({"conversation": c, "unread": n, "mentions": m, "marked_unread": f})
        })
        .collect();
    json!({"type": "unread_counts", "counts": counts})
}

/// A `read_by` reader's `read_at`: exact, or a bound.
pub(crate) fn read_time(at: u64, exact: bool) -> Value {
    if exact {
        json!({"at": at})
    } else {
        json!({"no_later_than": at})
    }
}

pub(crate) fn read_time_json(t: ReadTime) -> Value {
    match t {
        ReadTime::At(at) => read_time(at.0, true),
        ReadTime::NoLaterThan(at) => read_time(at.0, false),
        _ => Value::Null,
    }
}

/// `{"type":"read_by", ...}` of `(user, read_at)` readers.
pub(crate) fn read_by_answer(
    count: u64,
    readers: impl IntoIterator<Item = (u64, Value)>,
    next: Option<u64>,
) -> Value {
    let readers: Vec<Value> = readers
        .into_iter()
        .map(|(user, read_at)| json!({"user": user, "read_at": read_at}))
        .collect();
    json!({"type": "read_by", "count": count, "readers": readers, "next": next})
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
