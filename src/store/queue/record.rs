//! The one on-disk record format, shared by segment files and index chunks.
//!
//! Every record is self-checking (CRC32C over everything after the checksum), so a reader never needs outside
//! knowledge to tell a complete record from a torn or rotten one. Index chunks reuse the same encoding for the
//! device/retention state they carry, so there is exactly one decoder to trust and to fuzz.
//!
//! ```text
//! offset size field
//!   0    4   crc32c of bytes 4..len
//!   4    4   len: whole record, header included (>= 32)
//!   8    1   kind (1 item, 2 device, 3 forget, 4 trim, 5 mark)
//!   9    1   flags (0; anything else is refused, not guessed at)
//!  10    2   eid_len
//!  12    2   aux_len (item: excluded device or 0; device/forget: device id)
//!  14    2   reserved (0)
//!  16    8   a (item: increment_id; device: committed; trim: oldest retained; mark: durable length)
//!  24    8   b (device: last seen ms; forget: forgotten at ms)
//!  32        eid bytes, aux bytes, payload bytes
//! ```
//! All integers are little-endian.

use super::Millis;

/// Size of the fixed record header.
pub const HEADER_LEN: usize = 32;
/// Largest record the decoder accepts; a larger length field is damage, not a record.
pub const MAX_RECORD_LEN: usize = 16 * 1024 * 1024 + 1024;
/// Increments (and committed offsets) are below this.
pub const MAX_INCREMENT: u64 = 1 << 62;
/// Longest EID (SPEC 1.3: 1 to 256 bytes).
pub const MAX_EID_LEN: usize = 256;
/// Longest device id (SPEC 1.3: 1 to 128 bytes).
pub const MAX_DEVICE_LEN: usize = 128;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// A queue item of `eid`: increment `a`, excluded device in aux, payload.
    Item = 1,
    /// A known device's state: committed offset `a`, last seen `b` (last one wins).
    Device = 2,
    /// A device was forgotten at `b` (QUE-11); replaces its `Device` state.
    Forget = 3,
    /// Items of `eid` below `a` are removed (retention); last one wins.
    Trim = 4,
    /// A sync had completed covering this segment up to `a` when the next batch began: proof for recovery that
    /// damage before `a` is rot of acknowledged data, not a torn write.
    Mark = 5,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Item,
            2 => Kind::Device,
            3 => Kind::Forget,
            4 => Kind::Trim,
            5 => Kind::Mark,
            _ => return None,
        })
    }
}

/// A decoded record borrowing from the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub kind: Kind,
    pub eid: &'a [u8],
    pub aux: &'a [u8],
    pub a: u64,
    pub b: u64,
    pub payload: &'a [u8],
    /// Encoded length (the offset of the next record).
    pub len: usize,
}

impl RecordRef<'_> {
    /// Where the payload starts inside the encoded record.
    pub fn payload_offset(&self) -> usize {
        HEADER_LEN + self.eid.len() + self.aux.len()
    }
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends before the record does (a torn tail when at the end of a file).
    Incomplete,
    /// The bytes are damaged or are not a record.
    Bad(&'static str),
}

/// Encodes one record onto `out`. Lengths are the caller's contract (checked by the store's argument checks);
/// the debug assertions document it.
pub fn encode(out: &mut Vec<u8>, kind: Kind, eid: &[u8], aux: &[u8], a: u64, b: u64, payload: &[u8]) {
    debug_assert!(eid.len() <= u16::MAX as usize && aux.len() <= u16::MAX as usize);
    let len = HEADER_LEN + eid.len() + aux.len() + payload.len();
    debug_assert!(len <= MAX_RECORD_LEN);
    let start = out.len();
    out.reserve(len);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&(eid.len() as u16).to_le_bytes());
    out.extend_from_slice(&(aux.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out.extend_from_slice(eid);
    out.extend_from_slice(aux);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Encoded size of a record.
pub fn encoded_len(eid: &[u8], aux: &[u8], payload: &[u8]) -> usize {
    HEADER_LEN + eid.len() + aux.len() + payload.len()
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads the length field and checks the header's shape without the checksum: cheap enough to try at every byte
/// when looking for the next record after damage.
pub fn peek_len(buf: &[u8]) -> Result<usize, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete);
    }
    let len = u32_at(buf, 4) as usize;
    if !(HEADER_LEN..=MAX_RECORD_LEN).contains(&len) {
        return Err(DecodeError::Bad("length out of range"));
    }
    if Kind::from_u8(buf[8]).is_none() {
        return Err(DecodeError::Bad("unknown kind"));
    }
    if buf[9] != 0 || buf[14] != 0 || buf[15] != 0 {
        return Err(DecodeError::Bad("unknown flags"));
    }
    if HEADER_LEN + u16_at(buf, 10) as usize + u16_at(buf, 12) as usize > len {
        return Err(DecodeError::Bad("field lengths exceed record"));
    }
    Ok(len)
}

/// Decodes the record at the start of `buf`. Never panics, whatever the bytes.
pub fn decode(buf: &[u8]) -> Result<RecordRef<'_>, DecodeError> {
    let len = peek_len(buf)?;
    if buf.len() < len {
        return Err(DecodeError::Incomplete);
    }
    let body = &buf[..len];
    if crc32c::crc32c(&body[4..]) != u32_at(body, 0) {
        return Err(DecodeError::Bad("checksum mismatch"));
    }
    let kind = Kind::from_u8(body[8]).ok_or(DecodeError::Bad("unknown kind"))?;
    let eid_len = u16_at(body, 10) as usize;
    let aux_len = u16_at(body, 12) as usize;
    let eid = &body[HEADER_LEN..HEADER_LEN + eid_len];
    let aux = &body[HEADER_LEN + eid_len..HEADER_LEN + eid_len + aux_len];
    let payload = &body[HEADER_LEN + eid_len + aux_len..];
    let rec = RecordRef {
        kind,
        eid,
        aux,
        a: u64_at(body, 16),
        b: u64_at(body, 24),
        payload,
        len,
    };
    check_shape(&rec)?;
    Ok(rec)
}

/// Decodes the item record at the start of `buf` that the index says is increment `increment` of `eid`, `len`
/// bytes long: the replay fast path. It checks the same things as [`decode`] (checksum, shape) but compares the
/// EID with the expected bytes instead of validating it as UTF-8 first.
pub fn decode_item<'a>(buf: &'a [u8], eid: &[u8], increment: u64, len: usize) -> Result<RecordRef<'a>, DecodeError> {
    if buf.len() < len || len < HEADER_LEN + eid.len() {
        return Err(DecodeError::Incomplete);
    }
    let body = &buf[..len];
    let aux_len = u16_at(body, 12) as usize;
    let header_ok = u32_at(body, 4) as usize == len
        && body[8] == Kind::Item as u8
        && body[9..10] == [0]
        && body[14..16] == [0, 0]
        && u16_at(body, 10) as usize == eid.len()
        && HEADER_LEN + eid.len() + aux_len <= len
        && u64_at(body, 16) == increment;
    if !header_ok || &body[HEADER_LEN..HEADER_LEN + eid.len()] != eid {
        return Err(DecodeError::Bad("record is not the indexed item"));
    }
    if crc32c::crc32c(&body[4..]) != u32_at(body, 0) {
        return Err(DecodeError::Bad("checksum mismatch"));
    }
    let aux = &body[HEADER_LEN + eid.len()..HEADER_LEN + eid.len() + aux_len];
    if !aux.is_empty() && (aux.len() > MAX_DEVICE_LEN || std::str::from_utf8(aux).is_err()) {
        return Err(DecodeError::Bad("fields break the record kind's rules"));
    }
    let payload = &body[HEADER_LEN + eid.len() + aux_len..];
    Ok(RecordRef {
        kind: Kind::Item,
        eid: &body[HEADER_LEN..HEADER_LEN + eid.len()],
        aux,
        a: increment,
        b: u64_at(body, 24),
        payload,
        len,
    })
}

/// Field rules per kind: a record that passed its checksum but breaks them was written by something else.
fn check_shape(r: &RecordRef<'_>) -> Result<(), DecodeError> {
    let eid_ok = !r.eid.is_empty() && r.eid.len() <= MAX_EID_LEN && std::str::from_utf8(r.eid).is_ok();
    let dev_ok = !r.aux.is_empty() && r.aux.len() <= MAX_DEVICE_LEN && std::str::from_utf8(r.aux).is_ok();
    // Increments and offsets stay far from u64::MAX, so no arithmetic on them can overflow.
    let inc_ok = (1..MAX_INCREMENT).contains(&r.a);
    let ok = match r.kind {
        Kind::Item => eid_ok && inc_ok && (r.aux.is_empty() || dev_ok),
        Kind::Device => eid_ok && dev_ok && r.a < MAX_INCREMENT && r.payload.is_empty(),
        Kind::Forget => eid_ok && dev_ok && r.payload.is_empty(),
        Kind::Trim => eid_ok && inc_ok && r.aux.is_empty() && r.payload.is_empty(),
        Kind::Mark => r.eid.is_empty() && r.aux.is_empty() && r.payload.is_empty(),
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::Bad("fields break the record kind's rules"))
    }
}

/// Millis travel in the unsigned `b` field bit for bit.
pub fn millis_to_u64(ms: Millis) -> u64 {
    ms as u64
}

pub fn u64_to_millis(v: u64) -> Millis {
    v as Millis
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Item),
            Just(Kind::Device),
            Just(Kind::Forget),
            Just(Kind::Trim),
            Just(Kind::Mark)
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            kind in kind_strategy(),
            eid in "[a-z0-9@.]{1,40}",
            dev in "[a-z0-9]{1,20}",
            a in 1u64..MAX_INCREMENT,
            b in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            with_dev in any::<bool>(),
        ) {
            let (eid, aux, payload): (&[u8], &[u8], &[u8]) = match kind {
                Kind::Item => (eid.as_bytes(), if with_dev { dev.as_bytes() } else { b"" }, &payload),
                Kind::Device | Kind::Forget => (eid.as_bytes(), dev.as_bytes(), b""),
                Kind::Trim => (eid.as_bytes(), b"", b""),
                Kind::Mark => (b"", b"", b""),
            };
            let mut out = vec![7u8; 3];
            encode(&mut out, kind, eid, aux, a, b, payload);
            prop_assert_eq!(out.len() - 3, encoded_len(eid, aux, payload));
            let r = decode(&out[3..]).unwrap();
            prop_assert_eq!(r.kind, kind);
            prop_assert_eq!(r.eid, eid);
            prop_assert_eq!(r.aux, aux);
            prop_assert_eq!(r.payload, payload);
            prop_assert_eq!((r.a, r.b, r.len), (a, b, out.len() - 3));
            // Every strict prefix is incomplete, never a different record.
            for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, r.len - 1] {
                if cut < r.len {
                    prop_assert_eq!(decode(&out[3..3 + cut]), Err(DecodeError::Incomplete));
                }
            }
        }

        #[test]
        fn item_fast_path_agrees(payload in proptest::collection::vec(any::<u8>(), 0..100), flip in any::<usize>()) {
            let mut out = Vec::new();
            encode(&mut out, Kind::Item, b"alice", b"phone", 9, 0, &payload);
            prop_assert_eq!(decode_item(&out, b"alice", 9, out.len()), decode(&out));
            prop_assert!(decode_item(&out, b"alice", 8, out.len()).is_err());
            prop_assert!(decode_item(&out, b"alicf", 9, out.len()).is_err());
            let bit = flip % (out.len() * 8);
            out[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_item(&out, b"alice", 9, out.len()).is_err());
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..100), bit in any::<usize>()) {
            let mut out = Vec::new();
            encode(&mut out, Kind::Item, b"alice", b"phone", 9, 0, &payload);
            let bit = bit % (out.len() * 8);
            out[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&out).is_err());
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = peek_len(&bytes);
        }

        #[test]
        fn never_panics_on_plausible_headers(len in 0u32..400, kind in 0u8..8, el in 0u16..300, al in 0u16..300, tail in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut bytes = vec![0u8; HEADER_LEN];
            bytes[4..8].copy_from_slice(&len.to_le_bytes());
            bytes[8] = kind;
            bytes[10..12].copy_from_slice(&el.to_le_bytes());
            bytes[12..14].copy_from_slice(&al.to_le_bytes());
            bytes.extend_from_slice(&tail);
            let crc = crc32c::crc32c(&bytes[4..(len as usize).clamp(4, bytes.len())]);
            bytes[0..4].copy_from_slice(&crc.to_le_bytes());
            let _ = decode(&bytes);
        }
    }
}
