//! What a peer frame will cost once decoded, told before decoding it.
//!
//! A frame is bounded in bytes, but protobuf lets a sender make its decoded
//! form much larger than its encoded one: an empty `Entry` takes two bytes
//! on the wire (a tag and a zero length) and `size_of::<Entry>()` in memory,
//! about twenty-five times as much. So a 64 MiB frame of empty entries would
//! decode into well over a gigabyte. The transport counts a frame's entries
//! with this walk, which allocates nothing, and refuses the frame before
//! decoding it when they would take more than the frame limit in memory.

use bytes::Buf;
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
use prost::DecodeError;

/// Why a frame could not be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A key, varint or skipped field that does not parse.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A length-delimited field longer than what is left of its message.
    #[error("a field of {0} bytes is longer than its message")]
    FieldTooLong(u64),
}

/// `Envelope.message`, `Message.append_entries` and `AppendEntries.entries`
/// in `proto/raft.proto`.
const ENVELOPE_MESSAGE: u32 = 2;
const MESSAGE_APPEND_ENTRIES: u32 = 6;
const APPEND_ENTRIES_ENTRIES: u32 = 3;

/// How many log entries an encoded `Envelope` holds, over every occurrence
/// of each field on the way to them (protobuf merges repeated occurrences
/// of a message field, so a sender may split one append into many).
pub fn entries_in_envelope(payload: &[u8]) -> Result<usize, WireError> {
    let mut count = 0;
    for_each_field(payload, ENVELOPE_MESSAGE, &mut |message| {
        for_each_field(message, MESSAGE_APPEND_ENTRIES, &mut |append| {
            for_each_field(append, APPEND_ENTRIES_ENTRIES, &mut |_| {
                count += 1;
                Ok(())
            })
        })
    })?;
    Ok(count)
}

/// Calls `f` with the bytes of every length-delimited field `tag` of the
/// message encoded in `buf`, skipping every other field.
fn for_each_field(
    mut buf: &[u8],
    tag: u32,
    f: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    while buf.has_remaining() {
        let (field, wire_type) = decode_key(&mut buf)?;
        if field == tag && wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut buf)?;
            let (inner, rest) = usize::try_from(len)
                .ok()
                .and_then(|len| buf.split_at_checked(len))
                .ok_or(WireError::FieldTooLong(len))?;
            f(inner)?;
            buf = rest;
        } else {
            skip_field(wire_type, field, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kv_proto::raft::{message::Body, AppendEntries, Entry, Envelope, Message};
    use prost::Message as _;

    use super::*;

    fn envelope(body: Body) -> Vec<u8> {
        Envelope {
            cluster_id: 7,
            message: Some(Message {
                from: 1,
                to: 2,
                term: 3,
                body: Some(body),
            }),
        }
        .encode_to_vec()
    }

    fn append(entries: usize) -> Body {
        Body::AppendEntries(AppendEntries {
            prev_log_index: 10,
            prev_log_term: 2,
            entries: (0..entries)
                .map(|i| Entry {
                    term: 3,
                    index: 11 + i as u64,
                    data: vec![b'x'; i % 5].into(),
                })
                .collect(),
            leader_commit: 9,
            round: 4,
        })
    }

    #[test]
    fn counts_the_entries_of_an_append_and_none_elsewhere() {
        for n in [0, 1, 2, 300] {
            assert_eq!(entries_in_envelope(&envelope(append(n))), Ok(n));
        }
        let vote = Body::RequestVote(Default::default());
        assert_eq!(entries_in_envelope(&envelope(vote)), Ok(0));
        assert_eq!(entries_in_envelope(&[]), Ok(0));
    }

    #[test]
    fn counts_entries_spread_over_repeated_message_fields() {
        // Protobuf merges these into one append of 5 entries.
        let mut split = envelope(append(2));
        split.extend(envelope(append(3)));
        let decoded = Envelope::decode(split.as_slice()).map(|e| match e.message {
            Some(Message {
                body: Some(Body::AppendEntries(a)),
                ..
            }) => a.entries.len(),
            _ => 0,
        });
        assert_eq!(decoded, Ok(5));
        assert_eq!(entries_in_envelope(&split), Ok(5));
    }

    #[test]
    fn empty_entries_are_two_bytes_each_on_the_wire() {
        let empty = Body::AppendEntries(AppendEntries {
            entries: vec![Entry::default(); 1000],
            ..Default::default()
        });
        let bytes = envelope(empty);
        assert!(bytes.len() < 2 * 1000 + 32, "{} bytes", bytes.len());
        assert_eq!(entries_in_envelope(&bytes), Ok(1000));
    }

    #[test]
    fn truncated_or_garbled_input_is_an_error_never_a_panic() {
        let whole = envelope(append(4));
        for cut in 1..whole.len() {
            // A cut inside a field is an error for both; one between the
            // envelope's fields is a shorter envelope for both.
            let cut = &whole[..cut];
            assert_eq!(
                entries_in_envelope(cut).is_ok(),
                Envelope::decode(cut).is_ok(),
                "{cut:?}"
            );
        }
        assert!(entries_in_envelope(&[0x12, 0x05, 0x01]).is_err());
        assert!(entries_in_envelope(&[0xff; 11]).is_err());
    }

    proptest::proptest! {
        /// Whatever the bytes (pieces of real envelopes, raw bytes, cut
        /// anywhere), the walk never panics, and whenever protobuf decodes
        /// them the walk counts at least the entries decoded (more only
        /// when a later oneof field replaces an append).
        #[test]
        fn the_walk_never_undercounts_what_decodes(
            pieces in proptest::collection::vec((0usize..4, 0usize..40, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)), 0..6),
            cut in 0usize..2000,
        ) {
            let mut wire = Vec::new();
            for (kind, n, raw) in pieces {
                match kind {
                    0 => wire.extend(envelope(append(n))),
                    1 => wire.extend(envelope(Body::RequestVote(Default::default()))),
                    2 => wire.extend(raw),
                    _ => wire.extend(&envelope(append(n))[..n.min(20)]),
                }
            }
            wire.truncate(cut.max(wire.len() / 2));
            let walked = entries_in_envelope(&wire);
            if let Ok(decoded) = Envelope::decode(wire.as_slice()) {
                let decoded = match decoded.message {
                    Some(Message { body: Some(Body::AppendEntries(a)), .. }) => a.entries.len(),
                    _ => 0,
                };
                proptest::prop_assert!(matches!(walked, Ok(n) if n >= decoded), "{walked:?} < {decoded}");
            }
        }
    }
}
