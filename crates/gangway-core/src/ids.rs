//! Ids a call table hands out for the legs it creates.
//!
//! One integer used to be the WebRTC peer, the SIP event key and the SDP
//! session id at once. Now each has its own type; both come from one
//! counter per table, packed with the table's number so that ids are unique
//! across tables (the media shards are shared by every table).

/// A WebRTC leg on a media shard (the browser side of a call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

/// One SIP dialog of a call (a transfer adds a second one for a while).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SipLegId(pub u64);

/// Hands out [`LegId`]s and [`SipLegId`]s: `table << 32 | n`.
#[derive(Debug, Clone)]
pub struct IdSpace {
    table: u64,
    next: u32,
}

impl IdSpace {
    pub fn new(table: u32) -> Self {
        IdSpace {
            table: u64::from(table) << 32,
            next: 1,
        }
    }

    fn next(&mut self) -> u64 {
        let n = self.next;
        // 4 billion legs on one connection: wrap rather than panic.
        self.next = self.next.wrapping_add(1).max(1);
        self.table | u64::from(n)
    }

    pub fn leg(&mut self) -> LegId {
        LegId(self.next())
    }

    pub fn sip_leg(&mut self) -> SipLegId {
        SipLegId(self.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_two_tables_never_meet() {
        let (mut a, mut b) = (IdSpace::new(1), IdSpace::new(2));
        let from_a: Vec<u64> = (0..3).map(|_| a.leg().0).collect();
        let from_b: Vec<u64> = (0..3).map(|_| b.sip_leg().0).collect();
        assert!(from_a.iter().all(|x| !from_b.contains(x)));
        assert_eq!(from_a, vec![(1 << 32) | 1, (1 << 32) | 2, (1 << 32) | 3]);
    }
}
