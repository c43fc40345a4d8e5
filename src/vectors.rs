//! The YAML test vectors of `vectors/`: loading and checking them.
//!
//! A vector file holds valid cases (a message in proto3 JSON and its canonical
//! bytes), invalid cases (bytes and the SPEC error kind they must produce) and
//! TCP framing cases (a byte stream in chunks and the frames it must yield).
//! Any implementation can load them with its own YAML and protobuf libraries;
//! this module is how this crate does, for its tests and its fuzz corpora.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use serde::Deserialize;
use tokio_util::codec::Decoder;

use crate::codec::{self, DEFAULT_MAX_STANZA_BYTES, FrameError, TcpFrameCodec, json};

/// One vector file (`vectors/<area>.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorFile {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub valid: Vec<ValidCase>,
    #[serde(default)]
    pub invalid: Vec<InvalidCase>,
    #[serde(default)]
    pub framing: Vec<FramingCase>,
}

/// A message and its canonical encoding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidCase {
    pub id: String,
    pub spec: Vec<String>,
    #[serde(default = "message_scheme")]
    pub message: String,
    /// The message in protobuf's canonical proto3 JSON mapping.
    pub fields: serde_json::Value,
    pub hex: String,
    #[serde(default)]
    pub note: String,
}

/// Bytes that must be refused with `error`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidCase {
    pub id: String,
    pub spec: Vec<String>,
    pub hex: String,
    /// A SPEC error kind, e.g. "route_mismatch".
    pub error: String,
    #[serde(default = "default_max")]
    pub max_stanza_bytes: usize,
    #[serde(default)]
    pub note: String,
}

/// A TCP byte stream, as it arrives, and what framing must make of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramingCase {
    pub id: String,
    pub spec: Vec<String>,
    pub chunks: Vec<String>,
    #[serde(default)]
    pub frames: Vec<String>,
    /// "too_large" or "truncated"; absent when the stream is valid.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default = "default_max")]
    pub max_stanza_bytes: usize,
    #[serde(default)]
    pub note: String,
}

fn message_scheme() -> String {
    "MessageScheme".to_string()
}

fn default_max() -> usize {
    DEFAULT_MAX_STANZA_BYTES
}

/// Why a vector file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Yaml { path: PathBuf, source: serde_norway::Error },
}

/// The repository's `vectors/` directory.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// Loads every `*.yaml` in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, VectorFile)>, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths.into_iter().map(|p| load_file(&p).map(|f| (p, f))).collect()
}

/// Loads one vector file.
pub fn load_file(path: &Path) -> Result<VectorFile, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.into(),
        source,
    })?;
    serde_norway::from_str(&text).map_err(|source| LoadError::Yaml {
        path: path.into(),
        source,
    })
}

fn unhex(id: &str, hex_text: &str) -> Result<Vec<u8>, String> {
    hex::decode(hex_text).map_err(|e| format!("{id}: hex is not hexadecimal: {e}"))
}

impl ValidCase {
    /// Checks the case both ways: `fields` encode to exactly `hex`, and `hex`
    /// decodes (envelope rule included) and maps back to exactly `fields`.
    pub fn check(&self) -> Result<(), String> {
        let id = &self.id;
        let expected = unhex(id, &self.hex)?;
        let encoded = json::json_to_bytes(&self.message, &self.fields).map_err(|e| format!("{id}: {e}"))?;
        if encoded != expected {
            return Err(format!(
                "{id}: fields encode to\n  {}\nnot\n  {}",
                hex::encode(&encoded),
                self.hex
            ));
        }
        let back = json::bytes_to_json(&self.message, &expected).map_err(|e| format!("{id}: {e}"))?;
        if back != self.fields {
            return Err(format!(
                "{id}: hex decodes to\n  {back}\nnot the (canonical) fields\n  {}",
                self.fields
            ));
        }
        if self.message == "MessageScheme" {
            let payload = codec::decode(&expected, DEFAULT_MAX_STANZA_BYTES).map_err(|e| format!("{id}: {e}"))?;
            let reencoded = codec::encode(&payload);
            if reencoded != expected {
                return Err(format!("{id}: typed re-encoding differs: {}", hex::encode(reencoded)));
            }
        }
        Ok(())
    }
}

impl InvalidCase {
    /// Checks that decoding the bytes fails with exactly the case's error kind.
    pub fn check(&self) -> Result<(), String> {
        let id = &self.id;
        let bytes = unhex(id, &self.hex)?;
        match codec::decode(&bytes, self.max_stanza_bytes) {
            Ok(payload) => Err(format!(
                "{id}: decoded without error as {:?}",
                codec::Route::of(&payload)
            )),
            Err(e) if e.kind().as_str() == self.error => Ok(()),
            Err(e) => Err(format!(
                "{id}: expected {}, got {} ({e})",
                self.error,
                e.kind().as_str()
            )),
        }
    }
}

impl FramingCase {
    /// Feeds the chunks through the TCP frame decoder and compares the outcome.
    pub fn check(&self) -> Result<(), String> {
        let id = &self.id;
        let mut codec = TcpFrameCodec::new(self.max_stanza_bytes);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut outcome: Result<(), FrameError> = Ok(());
        'feed: for chunk in &self.chunks {
            buf.extend_from_slice(&unhex(id, chunk)?);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => frames.push(hex::encode(frame)),
                    Ok(None) => break,
                    Err(e) => {
                        outcome = Err(e);
                        break 'feed;
                    }
                }
            }
        }
        if outcome.is_ok() {
            outcome = codec
                .decode_eof(&mut buf)
                .map(|last| frames.extend(last.map(hex::encode)));
        }
        let got_error = match outcome {
            Ok(()) => None,
            Err(FrameError::TooLarge { .. }) => Some("too_large"),
            Err(FrameError::Truncated { .. }) => Some("truncated"),
            Err(FrameError::Io(e)) => return Err(format!("{id}: i/o error {e}")),
        };
        if got_error != self.error.as_deref() {
            return Err(format!("{id}: expected error {:?}, got {got_error:?}", self.error));
        }
        if self.error.is_none() && frames != self.frames {
            return Err(format!("{id}: expected frames {:?}, got {frames:?}", self.frames));
        }
        Ok(())
    }
}
