//! A WebSocket client and a raw HTTP/1.1 request for the loopback tests:
//! readmark-server's own (`tests/server.rs`) and readmark-cluster's, in
//! front of a cluster (`tests/server_on_cluster.rs`, which includes this
//! file by path). Each test uses part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound of every wait: a failure, never a pace.
pub const BOUND: Duration = Duration::from_secs(20);

/// One raw HTTP/1.1 request; the status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
    bearer: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(BOUND, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub pushes: VecDeque<Value>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, token: &str) -> Result<Client, tungstenite::Error> {
        let mut req = format!("ws://{addr}/v1/ws").into_client_request()?;
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Client {
            ws,
            pushes: VecDeque::new(),
        })
    }

    /// A client whose socket has a 4 KiB receive buffer.
    pub async fn connect_small(addr: SocketAddr, token: &str) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let stream = sock.connect(addr).await.unwrap();
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        Client {
            ws,
            pushes: VecDeque::new(),
        }
    }

    /// Sends a request and returns its answer; pushes that come first are
    /// kept for `push`.
    pub async fn call(&mut self, request: Value) -> Value {
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let frame = self.frame().await;
            if matches!(
                frame["type"].as_str(),
                Some("receipt" | "resync" | "hidden" | "unread_flag")
            ) {
                self.pushes.push_back(frame);
                continue;
            }
            return frame;
        }
    }

    pub async fn ok(&mut self, request: Value) {
        let a = self.call(request.clone()).await;
        assert_eq!(a["type"], "ok", "{request} -> {a}");
    }

    /// The next push.
    pub async fn push(&mut self) -> Value {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        self.frame().await
    }

    pub async fn frame(&mut self) -> Value {
        loop {
            match tokio::time::timeout(BOUND, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).unwrap(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The close frame the server sends next (text frames before it are
    /// skipped).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(BOUND, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                Ok(None | Some(Err(_))) => return None,
                Err(_) => panic!("no close within {BOUND:?}"),
            }
        }
    }
}
