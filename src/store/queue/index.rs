//! Segment and index file headers, and the index chunks that spare recovery from reading whole segments.
//!
//! Each segment `NNNNNNNNNN.seg` may have an index `NNNNNNNNNN.idx`: a 16-byte header then append-only chunks.
//! A chunk describes the byte range `(from, to]` of its segment that was already durable when the chunk was
//! written: the location of every item record in it, and the last device/forget/trim record per key (those are
//! last-one-wins, so the last is all that matters). Recovery applies the chunks and scans only the segment bytes
//! after the last chunk's `to`.
//!
//! The index is an accelerator and nothing else: a missing, torn, stale or damaged index is rebuilt from its
//! segment, and an index never makes a record exist: reads check every record they return against its own CRC,
//! EID and increment.
//!
//! ```text
//! file header: magic "BIMIPQ\0I" (segment: "BIMIPQ\0S") | version u32 = 1 | segment id u32
//! chunk:   len u32 | crc32c u32 of bytes 8..len | from u64 | to u64 | n_eids u32 | n_items u32 | meta_len u32
//!          eids:  n_eids x (len u16, utf-8 bytes)
//!          items: n_items x (eid u32 (into this chunk's eids), increment u64, offset u32, record len u32,
//!                            payload len u32)
//!          meta:  meta_len bytes of records (device, forget, trim), in the record format
//! ```
//!
//! Why a dense item list rather than a sparse offset index: a segment interleaves every EID's items, and a replay
//! reads one EID. A sparse index (one entry per N KiB, as in a single-topic log) would make every replay scan the
//! other EIDs' records between its anchors. Twenty-four bytes per item is a sixth of a 100-byte item's record, is
//! read only at start-up, and keeps reads at one positioned read per run of adjacent items.

use super::record::{self, DecodeError, Kind};

pub const SEG_MAGIC: [u8; 8] = *b"BIMIPQ\0S";
pub const IDX_MAGIC: [u8; 8] = *b"BIMIPQ\0I";
pub const VERSION: u32 = 1;
/// Header length of segment and index files.
pub const FILE_HEADER_LEN: usize = 16;
const CHUNK_HEADER_LEN: usize = 36;
const ITEM_ENTRY_LEN: usize = 24;

pub fn file_header(magic: [u8; 8], seg: u32) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(&magic);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&seg.to_le_bytes());
    h
}

/// Checks a segment or index header; `Err` says what is wrong.
pub fn check_header(bytes: &[u8], magic: [u8; 8], seg: u32) -> Result<(), &'static str> {
    if bytes.len() < FILE_HEADER_LEN {
        return Err("file shorter than its header");
    }
    if bytes[..8] != magic {
        return Err("bad magic");
    }
    if bytes[8..12] != VERSION.to_le_bytes() {
        return Err("unsupported version");
    }
    if bytes[12..16] != seg.to_le_bytes() {
        return Err("header names another segment");
    }
    Ok(())
}

/// One item location inside a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemEntry {
    pub eid: u32,
    pub increment: u64,
    pub offset: u32,
    pub rec_len: u32,
    pub payload_len: u32,
}

/// A decoded chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    pub from: u64,
    pub to: u64,
    pub eids: Vec<String>,
    pub items: Vec<ItemEntry>,
    /// Encoded device/forget/trim records.
    pub meta: Vec<u8>,
}

impl Chunk {
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_chunk(
            self.from,
            self.to,
            &self.eids,
            self.items.iter().copied(),
            &self.meta,
            out,
        );
    }

    /// Decodes the chunk at the start of `buf`: `Ok(None)` when the buffer ends inside it (a torn append).
    pub fn decode(buf: &[u8]) -> Result<Option<(Chunk, usize)>, &'static str> {
        if buf.len() < CHUNK_HEADER_LEN {
            return Ok(None);
        }
        let mut r = Reader { buf, at: 0 };
        let len = r.u32()? as usize;
        let crc = r.u32()?;
        if len < CHUNK_HEADER_LEN {
            return Err("chunk length too small");
        }
        if buf.len() < len {
            return Ok(None);
        }
        if crc32c::crc32c(&buf[8..len]) != crc {
            return Err("chunk checksum mismatch");
        }
        let mut r = Reader {
            buf: &buf[..len],
            at: 8,
        };
        let from = r.u64()?;
        let to = r.u64()?;
        let n_eids = r.u32()? as usize;
        let n_items = r.u32()? as usize;
        let meta_len = r.u32()? as usize;
        if from > to {
            return Err("chunk range reversed");
        }
        let mut eids = Vec::with_capacity(n_eids.min(len / 2));
        for _ in 0..n_eids {
            let l = r.u16()? as usize;
            let s = std::str::from_utf8(r.bytes(l)?).map_err(|_| "eid is not utf-8")?;
            eids.push(s.to_owned());
        }
        if n_items.checked_mul(ITEM_ENTRY_LEN).is_none_or(|n| n > len) {
            return Err("item count exceeds chunk");
        }
        let mut items = Vec::with_capacity(n_items);
        for _ in 0..n_items {
            let it = ItemEntry {
                eid: r.u32()?,
                increment: r.u64()?,
                offset: r.u32()?,
                rec_len: r.u32()?,
                payload_len: r.u32()?,
            };
            if it.eid as usize >= eids.len() || it.increment == 0 {
                return Err("item entry out of range");
            }
            let end = it.offset as u64 + it.rec_len as u64;
            if (it.offset as u64) < from || end > to || (it.rec_len as usize) < record::HEADER_LEN {
                return Err("item entry outside the chunk's range");
            }
            items.push(it);
        }
        let meta = r.bytes(meta_len)?.to_vec();
        if r.at != len {
            return Err("chunk has trailing bytes");
        }
        // Meta must be whole records of the kinds an index may carry.
        let mut at = 0;
        while at < meta.len() {
            match record::decode(&meta[at..]) {
                Ok(rec) if matches!(rec.kind, Kind::Device | Kind::Forget | Kind::Trim) => at += rec.len,
                Ok(_) => return Err("unexpected record kind in chunk"),
                Err(DecodeError::Incomplete) | Err(DecodeError::Bad(_)) => return Err("bad record in chunk"),
            }
        }
        Ok(Some((
            Chunk {
                from,
                to,
                eids,
                items,
                meta,
            },
            len,
        )))
    }
}

/// Parsed index file.
#[derive(Debug, Default)]
pub struct ParsedIndex {
    pub chunks: Vec<Chunk>,
    /// Bytes of the file that parsed (header and whole chunks).
    pub valid_len: usize,
    /// Why parsing stopped before the end of the file, if it did.
    pub damage: Option<&'static str>,
}

impl ParsedIndex {
    /// Segment bytes the chunks cover, from the segment header on.
    pub fn covered(&self) -> u64 {
        self.chunks.last().map_or(FILE_HEADER_LEN as u64, |c| c.to)
    }
}

/// Parses an index file, keeping every leading chunk that is whole, valid and contiguous.
pub fn parse_index(bytes: &[u8], seg: u32) -> Result<ParsedIndex, &'static str> {
    check_header(bytes, IDX_MAGIC, seg)?;
    let mut parsed = ParsedIndex {
        valid_len: FILE_HEADER_LEN,
        ..Default::default()
    };
    let mut at = FILE_HEADER_LEN;
    let mut expect_from = FILE_HEADER_LEN as u64;
    while at < bytes.len() {
        match Chunk::decode(&bytes[at..]) {
            Ok(Some((chunk, len))) => {
                if chunk.from != expect_from {
                    parsed.damage = Some("chunks are not contiguous");
                    break;
                }
                expect_from = chunk.to;
                parsed.chunks.push(chunk);
                at += len;
                parsed.valid_len = at;
            }
            Ok(None) => {
                parsed.damage = Some("torn chunk");
                break;
            }
            Err(e) => {
                parsed.damage = Some(e);
                break;
            }
        }
    }
    Ok(parsed)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("chunk field past its end")?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

/// Appends one chunk's encoding (the layout [`Chunk::decode`] reads) to `out`, from its parts: the writer encodes
/// straight from its builder, with no decoded `Chunk` in between.
pub(super) fn encode_chunk<S: AsRef<str>>(
    from: u64,
    to: u64,
    eids: &[S],
    items: impl ExactSizeIterator<Item = ItemEntry>,
    meta: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.reserve(CHUNK_HEADER_LEN + eids.len() * 40 + items.len() * ITEM_ENTRY_LEN + meta.len());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&to.to_le_bytes());
    out.extend_from_slice(&(eids.len() as u32).to_le_bytes());
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    for eid in eids {
        let eid = eid.as_ref();
        out.extend_from_slice(&(eid.len() as u16).to_le_bytes());
        out.extend_from_slice(eid.as_bytes());
    }
    for it in items {
        out.extend_from_slice(&it.eid.to_le_bytes());
        out.extend_from_slice(&it.increment.to_le_bytes());
        out.extend_from_slice(&it.offset.to_le_bytes());
        out.extend_from_slice(&it.rec_len.to_le_bytes());
        out.extend_from_slice(&it.payload_len.to_le_bytes());
    }
    out.extend_from_slice(meta);
    let len = (out.len() - start) as u32;
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Chunk {
        let mut meta = Vec::new();
        record::encode(&mut meta, Kind::Device, b"bob", b"phone", 4, 99, b"");
        record::encode(&mut meta, Kind::Trim, b"bob", b"", 3, 0, b"");
        Chunk {
            from: 16,
            to: 400,
            eids: vec!["alice".into(), "bob".into()],
            items: vec![
                ItemEntry {
                    eid: 0,
                    increment: 1,
                    offset: 16,
                    rec_len: 50,
                    payload_len: 13,
                },
                ItemEntry {
                    eid: 1,
                    increment: 7,
                    offset: 66,
                    rec_len: 60,
                    payload_len: 20,
                },
            ],
            meta,
        }
    }

    #[test]
    fn chunk_round_trip_and_torn_prefixes() {
        let c = sample();
        let mut out = Vec::new();
        c.encode(&mut out);
        let (d, len) = Chunk::decode(&out).unwrap().unwrap();
        assert_eq!((d, len), (c, out.len()));
        for cut in 0..out.len() {
            assert_eq!(Chunk::decode(&out[..cut]), Ok(None), "cut {cut}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(flip in any::<usize>(), junk in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = file_header(IDX_MAGIC, 3).to_vec();
            sample().encode(&mut out);
            let i = flip % out.len();
            out[i] ^= 0x5a;
            out.extend_from_slice(&junk);
            let _ = parse_index(&out, 3);
            let _ = Chunk::decode(&junk);
        }
    }
}
