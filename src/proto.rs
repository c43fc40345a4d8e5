//! The generated schema types of `proto/bimip.proto`, and its descriptor pool.
//!
//! The descriptor pool lets prost-reflect read and write stanzas in protobuf's
//! canonical proto3 JSON mapping (the `fields:` of `vectors/` and the CLI's
//! YAML/JSON), without a second, hand-kept copy of the schema.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, MessageDescriptor};

include!(concat!(env!("OUT_DIR"), "/bimip.rs"));

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bimip_descriptor.bin"));

/// The schema's descriptors, decoded once.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTOR_SET).expect("build.rs wrote a valid descriptor set"))
}

/// The descriptor of message `name` in package `bimip` ("ChatMessage" or "bimip.ChatMessage").
pub fn message_descriptor(name: &str) -> Option<MessageDescriptor> {
    let full = if name.contains('.') {
        name.to_string()
    } else {
        format!("bimip.{name}")
    };
    descriptor_pool().get_message_by_name(&full)
}
