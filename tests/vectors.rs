//! Runs every case of `vectors/` through the codec, both ways.

use std::collections::{BTreeMap, BTreeSet};

use bimip::codec::{ErrorKind, Route};
use bimip::vectors::{self, VectorFile};

fn all() -> Vec<(String, VectorFile)> {
    vectors::load_dir(&vectors::default_dir())
        .expect("vectors/ loads")
        .into_iter()
        .map(|(p, f)| (p.file_name().unwrap().to_string_lossy().into_owned(), f))
        .collect()
}

fn report(failures: Vec<String>, checked: usize) {
    assert!(checked > 0, "no case was checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_cases_round_trip() {
    let cases: Vec<_> = all().into_iter().flat_map(|(_, f)| f.valid).collect();
    report(cases.iter().filter_map(|c| c.check().err()).collect(), cases.len());
}

#[test]
fn invalid_cases_fail_with_their_kind() {
    let cases: Vec<_> = all().into_iter().flat_map(|(_, f)| f.invalid).collect();
    for case in &cases {
        assert!(
            ErrorKind::from_name(&case.error).is_some(),
            "{}: unknown error kind {}",
            case.id,
            case.error
        );
    }
    report(cases.iter().filter_map(|c| c.check().err()).collect(), cases.len());
}

#[test]
fn framing_cases_reassemble() {
    let cases: Vec<_> = all().into_iter().flat_map(|(_, f)| f.framing).collect();
    report(cases.iter().filter_map(|c| c.check().err()).collect(), cases.len());
}

/// The foundation's floor: two valid cases per payload, twenty invalid cases,
/// framing cases, unique ids, and every case naming a requirement.
#[test]
fn coverage_floor() {
    let files = all();
    let mut per_route: BTreeMap<i64, usize> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let (mut invalid, mut framing) = (0, 0);
    for (name, file) in &files {
        for case in &file.valid {
            assert!(ids.insert(case.id.clone()), "duplicate id {}", case.id);
            assert!(!case.spec.is_empty(), "{name}: {} names no requirement", case.id);
            if case.message == "MessageScheme" {
                let route = case.fields["route"].as_str().and_then(|r| r.parse().ok()).unwrap_or(0);
                *per_route.entry(route).or_default() += 1;
            }
        }
        for case in &file.invalid {
            assert!(ids.insert(case.id.clone()), "duplicate id {}", case.id);
            assert!(!case.spec.is_empty(), "{name}: {} names no requirement", case.id);
            invalid += 1;
        }
        for case in &file.framing {
            assert!(ids.insert(case.id.clone()), "duplicate id {}", case.id);
            framing += 1;
        }
    }
    for route in Route::ALL {
        let n = per_route.get(&route.number()).copied().unwrap_or(0);
        assert!(n >= 2, "route {route} has {n} valid cases, needs 2");
    }
    assert!(invalid >= 20, "{invalid} invalid cases, needs 20");
    assert!(framing >= 6, "{framing} framing cases, needs 6");
}

/// Every requirement a vector cites exists in SPEC.md.
#[test]
fn cited_requirements_exist_in_spec() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SPEC.md")).expect("SPEC.md");
    let mut cited = BTreeSet::new();
    for (_, file) in all() {
        let specs = file.valid.iter().map(|c| &c.spec);
        let specs = specs
            .chain(file.invalid.iter().map(|c| &c.spec))
            .chain(file.framing.iter().map(|c| &c.spec));
        cited.extend(specs.flatten().cloned());
    }
    let missing: Vec<_> = cited
        .iter()
        .filter(|id| !spec.contains(&format!("**{id}** (")))
        .collect();
    assert!(!cited.is_empty());
    assert!(missing.is_empty(), "cited but not defined in SPEC.md: {missing:?}");
}
