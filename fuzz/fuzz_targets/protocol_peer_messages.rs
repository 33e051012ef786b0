//! Every server-to-server message (what the peer port decodes), tried on the same input.
//!
//! Properties: whatever decodes is canonical, round-trips and refuses a trailing byte; the
//! share array of a `SharesMessage` is never longer than its bound nor than the input; the
//! accessors of `PeerMessage` agree with the inner message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpm_fuzz::canonical;
use protocol::{
    AbandonMessage, ArrayHashMessage, AuditMessage, PeerAck, PeerMessage, SetsMessage,
    SharesMessage,
};

fuzz_target!(|data: &[u8]| {
    if let Some(m) = canonical!(PeerMessage, data) {
        let _ = (m.round(), m.from(), m.kind());
        if let PeerMessage::Shares(s) = &m {
            assert!(s.data.len() <= protocol::MAX_SHARE_BYTES);
            assert!(s.data.len() < data.len());
        }
        // The inner message alone is the encoding minus the 4-byte variant tag.
        let inner = &data[4..];
        let same = match &m {
            PeerMessage::Sets(x) => {
                protocol::codec::decode::<SetsMessage>(inner).ok() == Some(x.clone())
            }
            PeerMessage::Audit(x) => {
                protocol::codec::decode::<AuditMessage>(inner).ok() == Some(x.clone())
            }
            PeerMessage::Shares(x) => {
                protocol::codec::decode::<SharesMessage>(inner).ok() == Some(x.clone())
            }
            PeerMessage::ArrayHash(x) => {
                protocol::codec::decode::<ArrayHashMessage>(inner).ok() == Some(x.clone())
            }
            PeerMessage::Abandon(x) => {
                protocol::codec::decode::<AbandonMessage>(inner).ok() == Some(x.clone())
            }
        };
        assert!(same, "inner message does not decode alone");
    }
    canonical!(SetsMessage, data);
    canonical!(AuditMessage, data);
    if let Some(s) = canonical!(SharesMessage, data) {
        assert!(s.data.len() <= protocol::MAX_SHARE_BYTES);
    }
    canonical!(ArrayHashMessage, data);
    canonical!(AbandonMessage, data);
    canonical!(PeerAck, data);
});
