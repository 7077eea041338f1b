//! What one call holds in this crate, for the memory bench
//! (`benches/src/call_memory.rs`): the inline sizes of its parts and a
//! bridge built as a shard builds one, so the bench can count its heap.
//! Nothing in the gateway calls this.

use std::time::{Instant, SystemTime};

use gangway_rtc::PeerId;

use crate::bridge::{Bridge, BrowserCodecs};
use crate::types::MediaPolicy;

/// A bridged call's media policy, held only to be measured and dropped.
pub struct BridgeSample {
    _bridge: Box<Bridge>,
}

/// A bridge as the shard makes one for a browser leg that answered with
/// Opus (`opus`: transcoded) or G.711 (passed through), at the default
/// media policy.
pub fn bridge(opus: bool) -> Result<BridgeSample, opus::Error> {
    let browser = BrowserCodecs {
        pcmu: !opus,
        pcma: false,
        opus,
    };
    let bridge = Bridge::new(
        PeerId(0),
        Instant::now(),
        SystemTime::now(),
        &MediaPolicy::default(),
        browser,
    )?;
    Ok(BridgeSample {
        _bridge: Box::new(bridge),
    })
}

/// `std::mem::size_of` of a call's parts in the media crate, by name.
pub fn inline_sizes() -> Vec<(&'static str, usize)> {
    let mut sizes = crate::bridge::inline_sizes();
    sizes.extend(crate::shard::inline_sizes());
    sizes
}
