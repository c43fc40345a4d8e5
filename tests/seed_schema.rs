//! Issue 2's compatibility contract: every message of seed 003 section 5
//! (kept verbatim in proto/reference/seed-003.proto) exists in
//! proto/bimip.proto with exactly its fields: name, number, type and label.

use prost_reflect::{DescriptorPool, Kind};

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => format!("message {}", m.name()),
        Kind::Enum(e) => format!("enum {}", e.name()),
        other => format!("{other:?}"),
    }
}

#[test]
fn every_seed_003_field_is_kept() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let seed = protox::compile(["reference/seed-003.proto"], [root]).expect("seed 003's schema compiles");
    let seed = DescriptorPool::from_file_descriptor_set(seed).unwrap();
    let ours = bimip::proto::descriptor_pool();
    let mut fields = 0;
    for message in seed.all_messages() {
        let name = format!("bimip.{}", message.name());
        let mine = ours
            .get_message_by_name(&name)
            .unwrap_or_else(|| panic!("{name} is missing"));
        for field in message.fields() {
            let theirs = mine
                .get_field(field.number())
                .unwrap_or_else(|| panic!("{name}: field {} ({}) is missing", field.number(), field.name()));
            assert_eq!(theirs.name(), field.name(), "{name}.{}", field.number());
            assert_eq!(
                kind_name(&theirs.kind()),
                kind_name(&field.kind()),
                "{name}.{}",
                field.name()
            );
            assert_eq!(theirs.cardinality(), field.cardinality(), "{name}.{}", field.name());
            assert_eq!(
                theirs.containing_oneof().map(|o| o.name().to_string()),
                field.containing_oneof().map(|o| o.name().to_string()),
                "{name}.{}: oneof membership",
                field.name()
            );
            fields += 1;
        }
    }
    assert_eq!(seed.all_messages().count(), 19, "seed 003 defines 19 messages");
    assert!(fields > 120, "{fields} fields checked");
}
