//! The values of systemd's properties as zbus gives them, read as the plain types the model
//! uses (a property of another type than expected reads as absent), and the model's values as
//! zbus sends them.

use zbus::zvariant::{OwnedValue, Value};

use crate::model::property::BusValue;

pub(super) fn as_u64(v: Option<&OwnedValue>) -> Option<u64> {
    match v.map(|v| &**v) {
        Some(Value::U64(n)) => Some(*n),
        _ => None,
    }
}

pub(super) fn as_bool(v: Option<&OwnedValue>) -> Option<bool> {
    match v.map(|v| &**v) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    }
}

pub(super) fn as_string(v: Option<&OwnedValue>) -> Option<String> {
    match v.map(|v| &**v) {
        Some(Value::Str(s)) => Some(s.to_string()),
        _ => None,
    }
}

pub(super) fn as_strings(v: Option<&OwnedValue>) -> Vec<String> {
    match v.map(|v| &**v) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|item| match item {
                Value::Str(s) => Some(s.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub(super) fn to_value(v: BusValue) -> Value<'static> {
    match v {
        BusValue::Bool(b) => Value::Bool(b),
        BusValue::U64(n) => Value::U64(n),
    }
}
