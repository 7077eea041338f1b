//! Waiting on what may not be there, for the connections' `select!`
//! loops: a socket that is parked away, a timer that is not set.

use std::time::Instant;

use axum::extract::ws::{Message, WebSocket};

/// The next frame, or never while there is no socket.
pub(crate) async fn recv(socket: &mut Option<WebSocket>) -> Option<Result<Message, axum::Error>> {
    match socket {
        Some(ws) => ws.recv().await,
        None => std::future::pending().await,
    }
}

/// Wakes at `deadline`, or never.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// WebSocket close code for a socket closed for idleness: no call, no
/// sign-in, nothing sent for `http.idle_timeout_secs`.
pub(crate) const CLOSE_IDLE: u16 = 4002;

/// When an idle connection is closed: `idle` after it was last heard
/// from, while it holds nothing (`holds_nothing`); never with `idle` zero.
pub(crate) fn idle_deadline(
    last_heard: Instant,
    idle: std::time::Duration,
    holds_nothing: bool,
) -> Option<Instant> {
    (holds_nothing && !idle.is_zero()).then(|| last_heard + idle)
}

/// How long a close frame may take to go out: it is a courtesy, and a
/// client that does not read must not hold the connection's task.
const CLOSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends `message`; false when the socket failed or did not take it
/// within `limit` (a client that stopped reading: its TCP window is shut).
pub(crate) async fn send_within(
    ws: &mut WebSocket,
    message: Message,
    limit: std::time::Duration,
) -> bool {
    matches!(
        tokio::time::timeout(limit, ws.send(message)).await,
        Ok(Ok(()))
    )
}

/// Sends a close frame, giving up after a few seconds.
pub(crate) async fn close_within(
    ws: &mut WebSocket,
    frame: Option<axum::extract::ws::CloseFrame>,
) -> bool {
    send_within(ws, Message::Close(frame), CLOSE_LIMIT).await
}
