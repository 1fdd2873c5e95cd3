//! The backend's HTTP API: membership and messages are the backend's to
//! write, with the service credential. Plus health and metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use readmark::{ConversationId, Error, MessageId, MessageKind, MessageOptions, Timestamp, UserId};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{bearer, service_ok};
use crate::protocol::timeline;
use crate::{App, Backend};
use readmark_cluster::Op;

/// Refuses a backend call without the service credential.
pub(crate) async fn require_service(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    let presented = bearer(
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    if !service_ok(&app.config.service_token, presented) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "service_credential_required"})),
        )
            .into_response();
    }
    next.run(req).await
}

/// The HTTP status of a refusal's code.
fn status_of(code: &str) -> StatusCode {
    match code {
        "unknown_conversation" | "unknown_message" | "unknown_thread" => StatusCode::NOT_FOUND,
        "invalid_argument" => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    }
}

fn refused(code: &str, detail: String) -> Response {
    (
        status_of(code),
        Json(json!({"error": code, "detail": detail})),
    )
        .into_response()
}

/// A store error as an HTTP answer.
fn answer(r: readmark::Result<()>, ok: StatusCode) -> Response {
    match r {
        Ok(()) => ok.into_response(),
        Err(e) => match readmark_cluster::refusal_code(&e) {
            Some(code) => refused(code, e.to_string()),
            None => {
                tracing::error!(error = %e, "store error answering the backend");
                unavailable()
            }
        },
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "unavailable"})),
    )
        .into_response()
}

/// Carries out a backend call: `f` on the embedded store, or `op` through
/// the cluster (answered once the partition's owner applied it, with the
/// same codes). A refusal with the code `tolerated` is answered `ok` too.
async fn carry_out(
    app: &Arc<App>,
    f: impl FnOnce(&readmark::Store) -> readmark::Result<()> + Send + 'static,
    op: Op,
    tolerated: Option<&str>,
    ok: StatusCode,
) -> Response {
    match &app.backend {
        Backend::Embedded { store, .. } => {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || f(&store)).await {
                Ok(r) => answer(r, ok),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }
        Backend::Cluster(c) => match c.write(&op).await {
            Ok(None) => ok.into_response(),
            Ok(Some(code)) if tolerated == Some(code.as_str()) => ok.into_response(),
            Ok(Some(code)) => refused(&code, format!("refused: {code}")),
            Err(_) => unavailable(),
        },
    }
}

/// `PUT /v1/conversations/{c}`: creates it; 204 if it already exists.
pub(crate) async fn create_conversation(
    State(app): State<Arc<App>>,
    Path(c): Path<u64>,
) -> Response {
    let f = move |s: &readmark::Store| match s.create_conversation(ConversationId(c)) {
        Ok(()) | Err(Error::ConversationExists(_)) => Ok(()),
        Err(e) => Err(e),
    };
    let op = Op::CreateConversation { conversation: c };
    carry_out(
        &app,
        f,
        op,
        Some("conversation_exists"),
        StatusCode::NO_CONTENT,
    )
    .await
}

/// `PUT /v1/conversations/{c}/members/{u}`: adds a member (204; 409
/// `already_member`).
pub(crate) async fn add_member(
    State(app): State<Arc<App>>,
    Path((c, u)): Path<(u64, u64)>,
) -> Response {
    let at = Timestamp::now();
    let f = move |s: &readmark::Store| s.add_member(ConversationId(c), UserId(u), at);
    let op = Op::AddMember {
        conversation: c,
        user: u,
        at: at.0,
    };
    carry_out(&app, f, op, None, StatusCode::NO_CONTENT).await
}

/// `DELETE /v1/conversations/{c}/members/{u}`: removes a member and their
/// read state.
pub(crate) async fn remove_member(
    State(app): State<Arc<App>>,
    Path((c, u)): Path<(u64, u64)>,
) -> Response {
    let f = move |s: &readmark::Store| s.remove_member(ConversationId(c), UserId(u));
    let op = Op::RemoveMember {
        conversation: c,
        user: u,
    };
    carry_out(&app, f, op, None, StatusCode::NO_CONTENT).await
}

/// The body of `POST /v1/conversations/{c}/messages`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMessage {
    message: u64,
    sender: u64,
    #[serde(default)]
    thread: Option<u64>,
    #[serde(default)]
    mentions: Vec<u64>,
    #[serde(default)]
    mention_everyone: bool,
    /// `regular` (default) or `system` (counts for nobody's unread).
    #[serde(default)]
    kind: Option<String>,
}

/// `POST /v1/conversations/{c}/messages`: records a message (201).
pub(crate) async fn record_message(
    State(app): State<Arc<App>>,
    Path(c): Path<u64>,
    Json(m): Json<NewMessage>,
) -> Response {
    let kind = match m.kind.as_deref() {
        None | Some("regular") => MessageKind::Regular,
        Some("system") => MessageKind::System,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({"error": "invalid_argument", "detail": "kind is `regular` or `system`"}),
                ),
            )
                .into_response();
        }
    };
    let at = Timestamp::now();
    let op = Op::RecordMessage {
        conversation: c,
        thread: m.thread,
        message: m.message,
        sender: m.sender,
        at: at.0,
        mentions: m.mentions.clone(),
        mention_everyone: m.mention_everyone,
        system: kind == MessageKind::System,
    };
    let f = move |s: &readmark::Store| {
        let mut o = MessageOptions::new()
            .kind(kind)
            .mention(m.mentions.into_iter().map(UserId));
        if m.mention_everyone {
            o = o.mention_everyone();
        }
        s.record_message_with(
            timeline(c, m.thread),
            MessageId(m.message),
            UserId(m.sender),
            at,
            &o,
        )
    };
    carry_out(&app, f, op, None, StatusCode::CREATED).await
}

#[derive(Deserialize)]
pub(crate) struct ThreadQuery {
    thread: Option<u64>,
}

/// `DELETE /v1/conversations/{c}/messages/{m}[?thread=root]`.
pub(crate) async fn delete_message(
    State(app): State<Arc<App>>,
    Path((c, m)): Path<(u64, u64)>,
    Query(q): Query<ThreadQuery>,
) -> Response {
    let f = move |s: &readmark::Store| s.delete_message(timeline(c, q.thread), MessageId(m));
    let op = Op::DeleteMessage {
        conversation: c,
        thread: q.thread,
        message: m,
    };
    carry_out(&app, f, op, None, StatusCode::NO_CONTENT).await
}

/// `GET /v1/health`: 200 while the store answers, 503 once it is poisoned
/// or closed.
pub(crate) async fn health(State(app): State<Arc<App>>) -> Response {
    let ok = match &app.backend {
        Backend::Embedded { store, .. } => {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.member_count(ConversationId(0)))
                .await
                .map(|r| r.is_ok() || matches!(r, Err(Error::UnknownConversation(_))))
                .unwrap_or(false)
        }
        Backend::Cluster(c) => c.healthy(),
    };
    let connections = app.registry.connections();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if ok { "ok" } else { "unavailable" }, "connections": connections})),
    )
        .into_response()
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.render(match &app.backend {
        Backend::Embedded { store, .. } => Some(store),
        Backend::Cluster(_) => None,
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
