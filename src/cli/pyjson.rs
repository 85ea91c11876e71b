//! JSON exactly as Python's `json.dumps` prints it by default (`", "` and `": "`
//! separators, non-ASCII escaped), so output that DS01 scripts parsed from the old
//! `get_resource_limits.py` stays byte-identical.

use serde_json::Value;

use crate::config::Written;

pub fn dumps(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

/// A section of the configuration as written, as a JSON object; an infinite value (YAML's
/// `.inf`) as `Infinity`, which is what `json.dumps` prints for it.
pub fn dumps_section(section: &[(String, Written)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in section.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_string(&mut out, key);
        out.push_str(": ");
        match value {
            Written::Json(v) => write_value(&mut out, v),
            Written::Infinity => out.push_str("Infinity"),
        }
    }
    out.push('}');
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(out, k);
                out.push_str(": ");
                write_value(out, v);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_default_format() {
        let v = json!({"cpu_quota": "9600%", "memory_max": "96G", "tasks_max": 12288, "gpu_limit": 2.0, "x": [1, null, true]});
        assert_eq!(
            dumps(&v),
            r#"{"cpu_quota": "9600%", "memory_max": "96G", "tasks_max": 12288, "gpu_limit": 2.0, "x": [1, null, true]}"#
        );
        assert_eq!(dumps(&json!("José😀")), r#""Jos\u00e9\ud83d\ude00""#);
        assert_eq!(dumps(&Value::Null), "null");
    }

    #[test]
    fn an_infinite_value_is_printed_as_python_prints_it() {
        let section = [
            ("gpu_limit".to_owned(), Written::Infinity),
            ("tasks_max".to_owned(), Written::Json(json!(5))),
        ];
        assert_eq!(
            dumps_section(&section),
            r#"{"gpu_limit": Infinity, "tasks_max": 5}"#
        );
    }
}
