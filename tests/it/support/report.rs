//! Readers for what `verify` prints, as text and as JSON.

use std::collections::BTreeMap;

use serde_json::Value;

/// The lines `verify` prints for `slice`: its header and its indented property lines.
pub fn verify_block(text: &str, slice: &str) -> String {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{slice} (")));
    let mut out = String::new();
    if let Some(head) = lines.next() {
        out.push_str(head);
        out.push('\n');
        for l in lines.take_while(|l| l.starts_with(' ')) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// One slice's entry of a `verify` JSON report.
pub fn verify_slice<'a>(report: &'a Value, slice: &str) -> &'a Value {
    report["slices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slice"] == slice)
        .unwrap_or_else(|| panic!("{slice} not in {report}"))
}

/// One property's entry of a `verify` JSON report.
pub fn verify_entry(report: &Value, slice: &str, property: &str) -> Value {
    verify_slice(report, slice)["properties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["property"] == property)
        .unwrap_or_else(|| panic!("{property} of {slice} not in {report}"))
        .clone()
}

/// slice → property → value on the bus, from a `verify` JSON report.
pub fn live_values(report: &Value) -> BTreeMap<String, BTreeMap<String, Value>> {
    report["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let props = s["properties"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["property"].as_str().unwrap().to_owned(),
                        p["actual_value"].clone(),
                    )
                })
                .collect();
            (s["slice"].as_str().unwrap().to_owned(), props)
        })
        .collect()
}

/// property → the file its effective value comes from, for one slice of a verify report.
pub fn sources(report: &Value, slice: &str) -> BTreeMap<String, String> {
    verify_slice(report, slice)["properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["property"].as_str().unwrap().to_owned(),
                p["source"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}
