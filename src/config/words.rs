//! serde's and toml's error messages in the words of a config file's reader.
//!
//! They name Rust types (`expected usize`, `expected struct RetryConfig`,
//! `integer ... as i128`), which say nothing to someone editing TOML. Each
//! is rewritten to what the file should hold: a whole number and its range,
//! a number, true or false, a list, a table.

/// Rust type names as serde prints them after "expected ", and what a TOML
/// writer should read instead.
const EXPECTED: &[(&str, &str)] = &[
    ("usize", "a whole number (0 or more)"),
    ("u64", "a whole number (0 or more)"),
    ("u32", "a whole number from 0 to 4294967295"),
    ("u16", "a whole number from 0 to 65535"),
    ("u8", "a whole number from 0 to 255"),
    ("isize", "a whole number"),
    ("i64", "a whole number"),
    ("i32", "a whole number from -2147483648 to 2147483647"),
    ("f64", "a number, e.g. 0.5 or 2"),
    ("f32", "a number, e.g. 0.5 or 2"),
    ("a boolean", "true or false"),
    ("a sequence", "a list, e.g. [\"a\", \"b\"]"),
    ("a map", "a table, e.g. { key = \"value\" }"),
    ("a borrowed string", "a string in quotes"),
];

pub(super) fn in_user_words(message: &str) -> String {
    let mut m = message.to_owned();
    // `integer `99999999999999999999` as i128`: the value is enough.
    for width in [" as i128", " as u128"] {
        m = m.replace(width, "");
    }
    m = m.replace("floating point `", "decimal number `");
    if let Some(i) = m.rfind(", expected ") {
        let (head, wanted) = m.split_at(i);
        let wanted = &wanted[", expected ".len()..];
        let better = EXPECTED
            .iter()
            .find(|(rust, _)| *rust == wanted)
            .map(|(_, words)| (*words).to_owned())
            .or_else(|| {
                wanted
                    .starts_with("struct ")
                    .then(|| "a table, e.g. { key = value } or a [section]".to_owned())
            });
        if let Some(better) = better {
            m = format!("{head}, expected {better}");
        }
    }
    if m == "wanted string or table" {
        m = "expected a name in quotes (a string)".into();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::in_user_words as w;

    #[test]
    fn rust_types_become_words() {
        assert_eq!(
            w("invalid value: integer `-1`, expected usize"),
            "invalid value: integer `-1`, expected a whole number (0 or more)"
        );
        assert_eq!(
            w("invalid type: floating point `1.5`, expected u32"),
            "invalid type: decimal number `1.5`, expected a whole number from 0 to 4294967295"
        );
        assert_eq!(
            w("invalid type: integer `99999999999999999999` as i128, expected usize"),
            "invalid type: integer `99999999999999999999`, expected a whole number (0 or more)"
        );
        assert_eq!(
            w("invalid type: string \"x\", expected struct RetryConfig"),
            "invalid type: string \"x\", expected a table, e.g. { key = value } or a [section]"
        );
        assert_eq!(
            w("invalid type: string \"yes\", expected a boolean"),
            "invalid type: string \"yes\", expected true or false"
        );
        assert_eq!(
            w("invalid type: string \"x\", expected f64"),
            "invalid type: string \"x\", expected a number, e.g. 0.5 or 2"
        );
        // Levee's own messages pass unchanged.
        let own = "duration \"3 days\" has unknown unit \"days\"; valid units are ms, s, m, h";
        assert_eq!(w(own), own);
        assert_eq!(
            w("unknown field `x`, expected `workers` or `drain_timeout`"),
            "unknown field `x`, expected `workers` or `drain_timeout`"
        );
    }
}
