//! The gateway's WebRTC leg (`gangway_rtc::Endpoint`, configured as the
//! gateway configures it) against str0m client peers in one process, no
//! sockets: each side's transmits are handed to the other's input, on a
//! made-up clock. For `call-memory`: every call into the endpoint runs as
//! [`Side::Gateway`], every call into a peer as [`Side::Peer`], so the
//! counting allocator tells what the gateway's side holds per call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gangway_rtc::{AudioCodec, Endpoint, EndpointConfig, PeerEvent, PeerId};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

use crate::tally::{as_side, Side};

const GATEWAY: &str = "127.0.0.1:40000";
const STEP: Duration = Duration::from_millis(5);

struct Client {
    rtc: Rtc,
    mid: Mid,
    pending: Option<SdpPendingOffer>,
    connected: bool,
    timeout: Instant,
}

/// The endpoint, its peers and the clock.
pub struct Pair {
    pub gateway: Endpoint,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    pub now: Instant,
    pub gateway_connected: usize,
    /// Media frames the gateway received (and echoed).
    pub echoed: usize,
}

fn gateway_addr() -> SocketAddr {
    GATEWAY.parse().unwrap()
}

impl Pair {
    /// An endpoint as the gateway makes one (all three codecs offered).
    pub fn new() -> Pair {
        let gateway = Endpoint::new(EndpointConfig {
            candidate_addr: gateway_addr(),
            codecs: vec![AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma],
        })
        .expect("endpoint");
        Pair {
            gateway,
            clients: Vec::new(),
            by_addr: HashMap::new(),
            now: Instant::now(),
            gateway_connected: 0,
            echoed: 0,
        }
    }

    /// `n` Opus peers offer; the gateway answers each (counted as the
    /// gateway's), the peers apply the answers.
    pub fn add_calls(&mut self, n: usize) {
        let now = self.now;
        let mut offers = Vec::new();
        for i in 0..n {
            let addr: SocketAddr = format!("127.0.0.2:{}", 20_000 + i).parse().unwrap();
            let (client, offer) = as_side(Side::Peer, || {
                let mut rtc = Rtc::builder()
                    .clear_codecs()
                    .enable_opus(true, false)
                    .build(now);
                rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
                let mut change = rtc.sdp_api();
                let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
                let (offer, pending) = change.apply().expect("offer");
                let client = Client {
                    rtc,
                    mid,
                    pending: Some(pending),
                    connected: false,
                    timeout: now,
                };
                (client, offer.to_sdp_string())
            });
            self.by_addr.insert(addr, self.clients.len());
            self.clients.push(client);
            offers.push(offer);
        }
        let first = self.clients.len() - n;
        for (k, offer) in offers.iter().enumerate() {
            let id = PeerId((first + k) as u64);
            let answer = as_side(Side::Gateway, || {
                self.gateway.add_peer(id, offer, &[], now).expect("answer")
            });
            let client = &mut self.clients[first + k];
            as_side(Side::Peer, || {
                let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
                let pending = client.pending.take().unwrap();
                client
                    .rtc
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .expect("answer applies");
            });
        }
        self.settle();
    }

    /// Advances the clock until every peer is connected both ways (false
    /// after 10 s of made-up time).
    pub fn connect(&mut self) -> bool {
        let deadline = self.now + Duration::from_secs(10);
        while self.now < deadline {
            self.tick();
            if self.gateway_connected == self.clients.len()
                && self.clients.iter().all(|c| c.connected)
            {
                return true;
            }
        }
        false
    }

    /// `seconds` of 20 ms Opus frames from every peer, echoed by the gateway.
    pub fn media(&mut self, seconds: u64, start_frame: u64) {
        let payload: Arc<[u8]> = vec![0x08u8; 60].into();
        for k in 0..seconds * 50 {
            let now = self.now;
            let time = MediaTime::new((start_frame + k) * 960, Frequency::FORTY_EIGHT_KHZ);
            for c in &mut self.clients {
                as_side(Side::Peer, || {
                    let Some(writer) = c.rtc.writer(c.mid) else {
                        return;
                    };
                    let Some(pt) = writer
                        .payload_params()
                        .find(|p| p.spec().codec == Codec::Opus)
                        .map(|p| p.pt())
                    else {
                        return;
                    };
                    let _ = writer.write(pt, now, time, payload.clone());
                });
            }
            for _ in 0..4 {
                self.tick();
            }
        }
    }

    /// Removes every call from the gateway.
    pub fn hang_up(&mut self) {
        for i in 0..self.clients.len() {
            as_side(Side::Gateway, || {
                self.gateway.remove_peer(PeerId(i as u64));
            });
        }
        self.settle();
        as_side(Side::Peer, || self.clients.clear());
    }

    fn tick(&mut self) {
        self.now += STEP;
        let now = self.now;
        as_side(Side::Gateway, || self.gateway.handle_timeout(now));
        for c in &mut self.clients {
            if c.timeout <= now {
                as_side(Side::Peer, || {
                    let _ = c.rtc.handle_input(Input::Timeout(now));
                });
            }
        }
        self.settle();
    }

    /// Moves datagrams both ways until neither side has any left.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.clients.len() {
                moved |= self.drain_client(i);
            }
            while let Some(t) = as_side(Side::Gateway, || self.gateway.poll_transmit()) {
                moved = true;
                let Some(&i) = self.by_addr.get(&t.destination) else {
                    continue;
                };
                let input = Input::Receive(
                    self.now,
                    Receive {
                        proto: Protocol::Udp,
                        source: gateway_addr(),
                        destination: t.destination,
                        contents: t.contents.as_slice().try_into().expect("datagram"),
                    },
                );
                let c = &mut self.clients[i];
                as_side(Side::Peer, || {
                    let _ = c.rtc.handle_input(input);
                });
            }
            while let Some(ev) = as_side(Side::Gateway, || self.gateway.poll_event()) {
                match ev {
                    PeerEvent::Connected(_) => self.gateway_connected += 1,
                    PeerEvent::Media(id, f) => {
                        self.echoed += 1;
                        let now = self.now;
                        as_side(Side::Gateway, || {
                            self.gateway
                                .write_media(id, f.mid, f.pt, f.time, now, f.data)
                        });
                    }
                    PeerEvent::Disconnected(_) => {}
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// Hands a peer's output to the gateway; true if it sent anything.
    fn drain_client(&mut self, i: usize) -> bool {
        let now = self.now;
        let mut moved = false;
        loop {
            let c = &mut self.clients[i];
            let out = as_side(Side::Peer, || c.rtc.poll_output());
            match out {
                Ok(Output::Transmit(t)) => {
                    moved = true;
                    as_side(Side::Gateway, || {
                        self.gateway.handle_receive(now, t.source, &t.contents)
                    });
                    as_side(Side::Peer, || drop(t));
                }
                Ok(Output::Timeout(t)) => {
                    c.timeout = t;
                    return moved;
                }
                Ok(Output::Event(Event::Connected)) => c.connected = true,
                Ok(Output::Event(e)) => as_side(Side::Peer, || drop(e)),
                Err(e) => panic!("peer {i}: {e}"),
            }
        }
    }
}

impl Default for Pair {
    fn default() -> Self {
        Pair::new()
    }
}
