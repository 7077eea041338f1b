//! A WebSocket client for the JSON API, strict about what it receives.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gangway::Gateway;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ApiClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
}

/// What the server did instead of sending a message.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Close(Option<CloseCode>),
    Gone,
}

impl ApiClient {
    /// Connects to `/ws` and reads the `hello`.
    pub async fn connect(gw: &Gateway) -> ApiClient {
        Self::connect_to(gw.http_addr()).await
    }

    pub async fn connect_to(addr: std::net::SocketAddr) -> ApiClient {
        let url = format!("ws://{addr}/ws");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Self::greeted(ws).await
    }

    /// Connects from the loopback address `ip` (e.g. `127.0.0.2`), for the
    /// per-address limits.
    pub async fn connect_from(gw: &Gateway, ip: &str) -> ApiClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(gw.http_addr()).await.expect("TCP connects");
        let url = format!("ws://{}/ws", gw.http_addr());
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("websocket connects");
        Self::greeted(ws).await
    }

    async fn greeted(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> ApiClient {
        let mut c = ApiClient {
            ws,
            hello: Value::Null,
        };
        c.hello = c.recv().await;
        assert_eq!(
            c.hello["type"], "hello",
            "first message is hello: {}",
            c.hello
        );
        c
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    /// Like `send_text`, for sends the server may legitimately cut off.
    pub async fn try_send_text(&mut self, text: String) -> Result<(), String> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Next JSON message; panics on timeout or close.
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(RECV_TIMEOUT).await {
            Ok(v) => v,
            Err(c) => panic!("expected a message, got {c:?}"),
        }
    }

    /// Next JSON message, or how the socket ended. Panics on timeout.
    pub async fn try_recv(&mut self, timeout: Duration) -> Result<Value, Closed> {
        loop {
            let next = tokio::time::timeout(timeout, self.ws.next())
                .await
                .expect("timed out waiting for a message");
            match next {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Closed::Close(frame.map(|f| f.code)))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => return Err(Closed::Gone),
            }
        }
    }

    /// Next JSON message if one arrives within `d`, else `None`; panics if
    /// the socket closes.
    pub async fn recv_within(&mut self, d: Duration) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(d, self.ws.next()).await.ok()?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Next message, which must have this `type`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let m = self.recv().await;
        assert_eq!(m["type"], kind, "expected `{kind}`, got {m}");
        m
    }

    /// Asserts nothing arrives for a while.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("expected no message, got {m:?}");
        }
    }

    pub async fn call(&mut self, id: &str, to: &str, sdp: &str) {
        self.send(json!({"type": "call", "call": id, "to": to, "sdp": sdp}))
            .await;
    }

    pub async fn hangup(&mut self, id: &str) {
        self.send(json!({"type": "hangup", "call": id})).await;
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Closes with a close frame carrying `code` (1000 is a normal close).
    pub async fn close_with(mut self, code: u16) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
        // Read until the gateway's reply closes the connection.
        while let Ok(Some(_)) = tokio::time::timeout(RECV_TIMEOUT, self.ws.next()).await {}
    }

    /// Drops the connection the way a lost network does for the gateway:
    /// the TCP connection ends without a WebSocket close frame.
    pub fn drop_abruptly(self) {
        drop(self.ws);
    }

    /// The resume token from `hello` (`None` when resumption is off).
    pub fn resume_token(&self) -> Option<String> {
        self.hello["resume_token"].as_str().map(str::to_owned)
    }

    /// Sends `resume_session` with `token` and returns the reply.
    pub async fn resume_session(&mut self, token: &str) -> Value {
        self.send(json!({"type": "resume_session", "token": token}))
            .await;
        self.recv().await
    }
}
