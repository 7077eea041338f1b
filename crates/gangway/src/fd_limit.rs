//! The process's open-file limit. Every WebSocket, SIP over TCP connection
//! and RTP socket is a descriptor; the soft limit is often 1024 while the
//! hard limit allows far more, so the gateway raises its soft limit to the
//! hard one at start (as Go's runtime and nginx's `worker_rlimit_nofile`
//! do) and says when its own connection caps could still run it out:
//! accepting sockets with no descriptor left makes an accept loop spin.

use crate::Config;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit in
/// force afterwards, or `None` where it cannot be read.
pub fn raise() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct
        // passed to them, which lives for the whole call.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
        Some(limit.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Descriptors the configured caps allow the gateway to hold at once: its
/// WebSockets, SIP over TCP connections, two per RTP port, and a margin
/// for listeners, shards and logs.
pub fn needed(config: &Config) -> u64 {
    let mut needed = config.http.max_connections as u64 + 64;
    if config.sip.enabled {
        let ports = u64::from(
            config
                .sip
                .rtp_port_max
                .saturating_sub(config.sip.rtp_port_min),
        ) + 1;
        needed += config.sip.max_tcp_connections as u64 + ports;
    }
    needed
}
