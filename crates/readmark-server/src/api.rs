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

use crate::App;
use crate::auth::{bearer, service_ok};
use crate::protocol::timeline;

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

/// A store error as an HTTP answer.
fn answer(r: readmark::Result<()>, ok: StatusCode) -> Response {
    match r {
        Ok(()) => ok.into_response(),
        Err(e) => {
            let (status, code) = match &e {
                Error::UnknownConversation(_) => (StatusCode::NOT_FOUND, "unknown_conversation"),
                Error::UnknownMessage { .. } => (StatusCode::NOT_FOUND, "unknown_message"),
                Error::UnknownThread { .. } => (StatusCode::NOT_FOUND, "unknown_thread"),
                Error::NotMember { .. } => (StatusCode::CONFLICT, "not_member"),
                Error::AlreadyMember { .. } => (StatusCode::CONFLICT, "already_member"),
                Error::ConversationExists(_) => (StatusCode::CONFLICT, "conversation_exists"),
                Error::MessageOutOfOrder { .. } => (StatusCode::CONFLICT, "message_out_of_order"),
                Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
                _ => {
                    tracing::error!(error = %e, "store error answering the backend");
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
            };
            (
                status,
                Json(json!({"error": code, "detail": e.to_string()})),
            )
                .into_response()
        }
    }
}

async fn blocking(
    app: &Arc<App>,
    f: impl FnOnce(&readmark::Store) -> readmark::Result<()> + Send + 'static,
    ok: StatusCode,
) -> Response {
    let store = app.store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(r) => answer(r, ok),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
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
    blocking(&app, f, StatusCode::NO_CONTENT).await
}

/// `PUT /v1/conversations/{c}/members/{u}`: adds a member (204; 409
/// `already_member`).
pub(crate) async fn add_member(
    State(app): State<Arc<App>>,
    Path((c, u)): Path<(u64, u64)>,
) -> Response {
    let f = move |s: &readmark::Store| s.add_member(ConversationId(c), UserId(u), Timestamp::now());
    blocking(&app, f, StatusCode::NO_CONTENT).await
}

/// `DELETE /v1/conversations/{c}/members/{u}`: removes a member and their
/// read state.
pub(crate) async fn remove_member(
    State(app): State<Arc<App>>,
    Path((c, u)): Path<(u64, u64)>,
) -> Response {
    let f = move |s: &readmark::Store| s.remove_member(ConversationId(c), UserId(u));
    blocking(&app, f, StatusCode::NO_CONTENT).await
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
            Timestamp::now(),
            &o,
        )
    };
    blocking(&app, f, StatusCode::CREATED).await
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
    blocking(&app, f, StatusCode::NO_CONTENT).await
}

/// `GET /v1/health`: 200 while the store answers, 503 once it is poisoned
/// or closed.
pub(crate) async fn health(State(app): State<Arc<App>>) -> Response {
    let store = app.store.clone();
    let ok = tokio::task::spawn_blocking(move || store.member_count(ConversationId(0)))
        .await
        .map(|r| r.is_ok() || matches!(r, Err(Error::UnknownConversation(_))))
        .unwrap_or(false);
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
    let text = app.metrics.render(&app.store);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
