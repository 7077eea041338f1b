//! The WebRTC port's socket buffers. One socket carries every peer of a
//! shard: at 50 packets/s per call, 250 calls are 12 500 datagrams/s, and
//! peers that started together send in step. The kernel's default receive
//! buffer (208 KiB, about 250 datagrams of this size with their overhead)
//! then overflows whenever the shard thread waits a few milliseconds for a
//! core, and the kernel drops what does not fit. Measured (2026-12-03,
//! `benches/src/burst.rs`, 500 echo calls): 22 139 datagrams dropped in
//! 5 s with the shard threads at 37 % of one core, 16 % of frames lost.

use std::net::UdpSocket;

/// What the shard asks for each way. Linux doubles the value for its
/// bookkeeping and caps it at `net.core.rmem_max` / `wmem_max` (see
/// docs/operations.md).
pub(super) const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive and send buffer on
/// `socket`; returns the sizes in force afterwards (receive, send), as the
/// kernel reports them.
pub(super) fn enlarge(socket: &UdpSocket) -> std::io::Result<(usize, usize)> {
    let s = socket2::SockRef::from(socket);
    s.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
    s.set_send_buffer_size(SOCKET_BUFFER_BYTES)?;
    Ok((s.recv_buffer_size()?, s.send_buffer_size()?))
}

#[cfg(test)]
mod tests {
    use super::enlarge;
    use std::net::UdpSocket;

    #[test]
    fn the_buffers_grow_past_the_kernel_default() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let s = socket2::SockRef::from(&socket);
        let (recv0, send0) = (s.recv_buffer_size().unwrap(), s.send_buffer_size().unwrap());
        let (recv, send) = enlarge(&socket).unwrap();
        // Even where rmem_max is the default, the kernel doubles what is
        // asked for up to it, so the buffer grows.
        assert!(recv > recv0, "receive buffer {recv0} -> {recv}");
        assert!(send > send0, "send buffer {send0} -> {send}");
        assert_eq!(s.recv_buffer_size().unwrap(), recv);
    }
}
