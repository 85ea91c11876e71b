//! Just enough of PromQL's grammar to find the vector selectors of an expression (the metric
//! name and its `{...}` matchers), so that a test can check every metric an alert rule or a
//! dashboard query uses against what the exporter really exports, and ask Prometheus for each
//! selector alone. Whether an expression is valid is promtool's to say, not this lexer's.

/// Words followed by a parenthesised list of label names, not of expressions.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The other words of the language that are never metric names.
const OPERATORS: [&str; 6] = ["and", "or", "unless", "bool", "offset", "atan2"];

fn keyword(word: &str) -> bool {
    LABEL_LISTS.contains(&word) || OPERATORS.contains(&word)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Open(char),
    Close(char),
    /// Numbers, durations, operators, commas: nothing a selector is made of.
    Other(String),
}

/// The tokens of `expr` with their byte ranges; `#` comments dropped.
fn tokens(expr: &str) -> Vec<(Token, usize, usize)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        let start = i;
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < b.len() && b[i] as char != c {
                if b[i] == b'\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
            out.push((Token::Str(expr[start..i].to_owned()), start, i));
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            out.push((Token::Ident(expr[start..i].to_owned()), start, i));
        } else if "({[".contains(c) {
            i += 1;
            out.push((Token::Open(c), start, i));
        } else if ")}]".contains(c) {
            i += 1;
            out.push((Token::Close(c), start, i));
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (5m, 1h30m).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            out.push((Token::Other(expr[start..i].to_owned()), start, i));
        } else {
            i += 1;
            out.push((Token::Other(c.to_string()), start, i));
        }
    }
    out
}

/// The index just past the bracket that closes the one opened at `open`.
fn past_close(toks: &[(Token, usize, usize)], open: usize) -> usize {
    let mut depth = 0;
    for (k, (t, _, _)) in toks.iter().enumerate().skip(open) {
        match t {
            Token::Open(_) => depth += 1,
            Token::Close(_) => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

/// Every vector selector of `expr` as written (`name{matchers}`, without a range or offset),
/// in order. A selector without a metric name (`{__name__=...}`) is returned as it is, so the
/// caller can refuse it.
pub fn selectors(expr: &str) -> Vec<String> {
    let toks = tokens(expr);
    let mut out = Vec::new();
    let mut k = 0;
    while k < toks.len() {
        let next_open =
            |c: char| matches!(toks.get(k + 1), Some((Token::Open(o), _, _)) if *o == c);
        match &toks[k].0 {
            Token::Ident(word) if LABEL_LISTS.contains(&word.as_str()) && next_open('(') => {
                k = past_close(&toks, k + 1);
            }
            Token::Ident(word) if keyword(word) => k += 1,
            // A function or an aggregation (`sum(...) by (x)`, `sum by (x) (...)`): its
            // arguments are expressions.
            Token::Ident(_)
                if next_open('(')
                    || matches!(toks.get(k + 1), Some((Token::Ident(w), _, _)) if w == "by" || w == "without") =>
            {
                k += 1
            }
            Token::Ident(_) => {
                let start = toks[k].1;
                let mut end = toks[k].2;
                k += 1;
                if matches!(toks.get(k), Some((Token::Open('{'), _, _))) {
                    let past = past_close(&toks, k);
                    end = toks[past - 1].2;
                    k = past;
                }
                out.push(expr[start..end].to_owned());
            }
            Token::Open('{') => {
                let past = past_close(&toks, k);
                out.push(expr[toks[k].1..toks[past - 1].2].to_owned());
                k = past;
            }
            // A range or a subquery's `[5m]`, `[1h:1m]`.
            Token::Open('[') => k = past_close(&toks, k),
            _ => k += 1,
        }
    }
    out
}

/// The metric name of a selector from [`selectors`]; `None` for one without a name.
pub fn metric_name(selector: &str) -> Option<&str> {
    let name = selector.split('{').next()?.trim();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_selectors_and_nothing_else() {
        let expr = r#"
            sum by (user, group) (rate(ds01_a_total{user!="", slice=~"x.*"}[5m] offset 1h))
              / on(instance) group_left(name) ds01_b
            or topk(10, ds01_c{q="a{b}c"} > bool 0.9)
            unless absent(up{job="ds01-slices"}) # a comment ds01_not
            or count without (x) (ds01_e)
            and on(slice) min_over_time(ds01_d[10m:1m]) == 0 and time() - 5
        "#;
        assert_eq!(
            selectors(expr),
            [
                r#"ds01_a_total{user!="", slice=~"x.*"}"#,
                "ds01_b",
                r#"ds01_c{q="a{b}c"}"#,
                r#"up{job="ds01-slices"}"#,
                "ds01_e",
                "ds01_d",
            ]
        );
        assert_eq!(selectors("vector(0)"), Vec::<String>::new());
        assert_eq!(selectors(r#"{__name__="x"}"#), [r#"{__name__="x"}"#]);
        assert_eq!(metric_name(r#"{__name__="x"}"#), None);
        assert_eq!(metric_name(r#"ds01_a{b="c"}"#), Some("ds01_a"));
    }
}
