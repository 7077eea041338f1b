//! SIP messages on a WebSocket (RFC 7118): what arrives, parsed and
//! screened by rsipstack's parser; what we send, written out whole.
//!
//! We answer a browser's request with its own Via (exactly one, with
//! `received`/`rport` added, RFC 3261 §18.2.1), From, To, Call-ID and CSeq.

use std::fmt::Write as _;
use std::net::SocketAddr;

use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Request, Response, SipMessage};

/// Methods we take (also our `Allow`).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY";

/// Why a frame is not a SIP message we can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Not SIP at all (or not parseable): nothing to answer; the socket closes.
    Unparseable(String),
    /// A request missing a header we cannot answer without (Via, From, To,
    /// Call-ID, CSeq): nothing to answer; the socket closes.
    Unanswerable(&'static str),
}

/// A request's header values, enough to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub vias: Vec<String>,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: String,
}

/// A browser's request, screened.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub reply: Reply,
    pub cseq_number: u32,
    pub request: Request,
}

/// What one frame holds.
#[derive(Debug)]
pub enum Frame {
    /// RFC 5626 §4.4.1 keepalive (CRLF CRLF): answered with CRLF.
    Ping,
    Request(Box<Incoming>),
    Response(Box<Response>),
    /// A request the parser refused (an extension method, another SIP
    /// version, a broken header) whose answering headers we found: it
    /// gets a 4xx/5xx instead of a closed socket.
    Unreadable {
        method: String,
        version: String,
        reply: Reply,
    },
}

/// Parses one frame.
pub fn parse(text: &str) -> Result<Frame, Malformed> {
    if text == "\r\n\r\n" || text == "\r\n" {
        return Ok(Frame::Ping);
    }
    let message = match SipMessage::try_from(text) {
        Ok(message) => message,
        Err(e) => {
            return salvage(text).ok_or_else(|| Malformed::Unparseable(e.to_string()));
        }
    };
    match message {
        SipMessage::Response(r) => Ok(Frame::Response(Box::new(r))),
        SipMessage::Request(request) => {
            let vias: Vec<String> = request
                .headers
                .iter()
                .filter(|h| h.name().eq_ignore_ascii_case("Via"))
                .flat_map(|h| split_commas(h.value()))
                .collect();
            if vias.is_empty() {
                return Err(Malformed::Unanswerable("Via"));
            }
            let need = |name: &'static str| {
                request
                    .header_value(name)
                    .ok_or(Malformed::Unanswerable(name))
            };
            let reply = Reply {
                vias,
                from: need("From")?,
                to: need("To")?,
                call_id: need("Call-ID")?,
                cseq: need("CSeq")?,
            };
            let cseq_number = reply
                .cseq
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or(Malformed::Unanswerable("CSeq"))?;
            Ok(Frame::Request(Box::new(Incoming {
                method: request.method.to_string(),
                uri: request.uri.to_string(),
                version: request.version.to_string(),
                reply,
                cseq_number,
                request,
            })))
        }
    }
}

/// The answering headers of a request the parser refused, read line by
/// line; `None` unless its first line is a request line.
fn salvage(text: &str) -> Option<Frame> {
    let mut lines = text.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, _uri, version) = (start.next()?, start.next()?, start.next()?);
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
    };
    if !token(method) || !version.starts_with("SIP/") {
        return None;
    }
    let mut vias = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => vias.extend(split_commas(&value)),
            "from" | "f" => from = Some(value),
            "to" | "t" => to = Some(value),
            "call-id" | "i" => call_id = Some(value),
            "cseq" => cseq = Some(value),
            _ => {}
        }
    }
    if vias.is_empty() {
        return None;
    }
    Some(Frame::Unreadable {
        method: method.to_string(),
        version: version.to_string(),
        reply: Reply {
            vias,
            from: from?,
            to: to?,
            call_id: call_id?,
            cseq: cseq?,
        },
    })
}

/// Splits a header value at the commas between its entries (not inside
/// quotes or angle brackets).
pub fn split_commas(value: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut angle) = (Vec::new(), String::new(), false, false);
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// A `;name=value` parameter of a header value (after the URI's `>` when
/// there is one); `Some("")` for a bare flag.
pub fn param(value: &str, name: &str) -> Option<String> {
    let params = after_uri(value);
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// A header value's parameters: what follows the `<URI>` of a name-addr
/// (whose own `>` may be followed by quoted `<`/`>`), or the first `;` of
/// an addr-spec.
pub fn after_uri(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[b + 1..],
        _ => value.split_once(';').map(|(_, p)| p).unwrap_or(""),
    }
}

/// The URI of a name-addr (`"Bob" <sip:bob@x>;tag=1` → `sip:bob@x`) or of
/// an addr-spec (`sip:bob@x;tag=1` → `sip:bob@x`).
pub fn uri_of(value: &str) -> String {
    if let (Some(a), Some(b)) = (value.find('<'), value.find('>')) {
        if a < b {
            return value[a + 1..b].trim().to_string();
        }
    }
    value.split(';').next().unwrap_or("").trim().to_string()
}

/// The quoted display name of a name-addr, if any.
pub fn display_of(value: &str) -> Option<String> {
    let before = value.split('<').next()?.trim();
    let name = before.trim_matches('"').trim();
    (!name.is_empty() && value.contains('<')).then(|| name.to_string())
}

/// The user part of a `sip:` URI.
pub fn user_of(uri: &str) -> Option<String> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, _) = rest.split_once('@')?;
    let user = user.split(';').next().unwrap_or(user);
    (!user.is_empty()).then(|| user.to_string())
}

/// The top Via with `received` and `rport` filled in for the socket the
/// request came on (the browser's own Via names a `.invalid` host).
fn stamped_via(via: &str, peer: SocketAddr) -> String {
    let mut parts: Vec<String> = via.split(';').map(|p| p.trim().to_string()).collect();
    parts.retain(|p| {
        let k = p.split('=').next().unwrap_or("").trim();
        !k.eq_ignore_ascii_case("received") && !k.eq_ignore_ascii_case("rport")
    });
    let had_rport = via.split(';').any(|p| {
        p.split('=')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("rport")
    });
    parts.push(format!("received={}", peer.ip()));
    if had_rport {
        parts.push(format!("rport={}", peer.port()));
    }
    parts.join(";")
}

/// A response to `reply`'s request. `to_tag` is added to a To without one.
pub fn response(
    reply: &Reply,
    peer: SocketAddr,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &[(&str, String)],
    body: Option<(&str, &str)>,
) -> String {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for (i, via) in reply.vias.iter().enumerate() {
        let via = if i == 0 {
            stamped_via(via, peer)
        } else {
            via.clone()
        };
        let _ = write!(out, "Via: {via}\r\n");
    }
    let to = match to_tag {
        Some(tag) if param(&reply.to, "tag").is_none() => format!("{};tag={tag}", reply.to),
        _ => reply.to.clone(),
    };
    let _ = write!(
        out,
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n",
        reply.from, reply.call_id, reply.cseq
    );
    finish(out, extra, body)
}

/// A request of ours to the browser.
#[allow(clippy::too_many_arguments)]
pub fn request(
    method: &str,
    uri: &str,
    via: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    extra: &[(&str, String)],
    body: Option<(&str, &str)>,
) -> String {
    let out = format!(
        "{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
    );
    finish(out, extra, body)
}

fn finish(mut out: String, extra: &[(&str, String)], body: Option<(&str, &str)>) -> String {
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    match body {
        Some((content_type, body)) => {
            let _ = write!(
                out,
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    out
}

/// A request's body as text, and its content type (lowercase, without
/// parameters).
pub fn body_of(request: &Request) -> Option<(String, String)> {
    if request.body.is_empty() {
        return None;
    }
    let content_type = request
        .header_value("Content-Type")
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let body = String::from_utf8(request.body.clone()).ok()?;
    Some((content_type, body))
}

/// A response's body as text, if it is SDP.
pub fn sdp_of(response: &Response) -> Option<String> {
    let sdp = response
        .header_value("Content-Type")
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/sdp"));
    (sdp && !response.body.is_empty())
        .then(|| String::from_utf8(response.body.clone()).ok())
        .flatten()
}

/// Whether an SDP offer puts the call on hold: `sendonly` or `inactive`
/// (at session or media level), or a `0.0.0.0` connection address.
pub fn offer_holds(sdp: &str) -> bool {
    sdp.lines().any(|l| {
        let l = l.trim();
        l == "a=sendonly" || l == "a=inactive" || l.starts_with("c=IN IP4 0.0.0.0")
    })
}
