//! Path rewrites: a prefix stripped or replaced (on path-segment
//! boundaries, as route prefixes match), or a regular expression replaced
//! (the `regex` crate; `$1` and `${name}` name its groups). The query string
//! is not part of the path and is kept as it was.

use regex::Regex;

#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// `/api/users` with `from = "/api"`, `to = "/v2"` becomes `/v2/users`;
    /// `to = ""` strips the prefix.
    Prefix { from: String, to: String },
    /// The first match of `pattern` replaced by `replace`; anchor the
    /// pattern (`^...$`) to rewrite the whole path, as nginx's `rewrite`.
    Regex { pattern: Regex, replace: String },
}

impl PathRewrite {
    /// The rewritten path; `None` when the rule does not apply (the prefix
    /// or the pattern does not match), and the path stays.
    pub fn apply(&self, path: &str) -> Option<String> {
        let new = match self {
            PathRewrite::Prefix { from, to } => {
                let rest = path.strip_prefix(from.as_str())?;
                if !(from.ends_with('/') || rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                let mut new = String::with_capacity(to.len() + rest.len() + 1);
                new.push_str(to);
                match (to.ends_with('/'), rest.strip_prefix('/')) {
                    // `/v2/` + `/users`: one slash between them.
                    (true, Some(rest)) => new.push_str(rest),
                    // `/v2` + `users` (a prefix that ended in '/').
                    (false, None) if !rest.is_empty() && !to.is_empty() => {
                        new.push('/');
                        new.push_str(rest);
                    }
                    _ => new.push_str(rest),
                }
                new
            }
            PathRewrite::Regex { pattern, replace } => {
                if !pattern.is_match(path) {
                    return None;
                }
                pattern.replace(path, replace.as_str()).into_owned()
            }
        };
        Some(if new.starts_with('/') {
            new
        } else {
            format!("/{new}")
        })
    }
}

/// Checks a replacement against its pattern: every group it names exists.
/// (The `regex` crate would render a missing group as nothing, silently.)
pub fn check_replacement(pattern: &Regex, replace: &str) -> Result<(), String> {
    let mut rest = replace;
    while let Some(i) = rest.find('$') {
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(t) = after.strip_prefix('$') {
            rest = t;
            continue;
        } else if let Some(t) = after.strip_prefix('{') {
            let end = t
                .find('}')
                .ok_or_else(|| format!("unclosed group reference in {replace:?}"))?;
            (&t[..end], &t[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let exists = match name.parse::<usize>() {
            Ok(n) => n < pattern.captures_len(),
            Err(_) => !name.is_empty() && pattern.capture_names().flatten().any(|n| n == name),
        };
        if !exists {
            return Err(format!(
                "{replace:?} names group ${name}, which the pattern does not have \
                 (it has {} numbered group(s){}); write $$ for a '$'",
                pattern.captures_len() - 1,
                match pattern.capture_names().flatten().collect::<Vec<_>>() {
                    names if names.is_empty() => String::new(),
                    names => format!(" and named {}", names.join(", ")),
                }
            ));
        }
        rest = tail;
    }
    Ok(())
}

/// The one line of a `regex` syntax error that says what is wrong (its
/// display spans several lines, with a caret under the pattern).
pub fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let what = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or(text.lines().last().unwrap_or(""))
        .trim()
        .to_owned();
    format!("not a valid regular expression: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(from: &str, to: &str) -> PathRewrite {
        PathRewrite::Prefix {
            from: from.into(),
            to: to.into(),
        }
    }

    fn regex(p: &str, r: &str) -> PathRewrite {
        PathRewrite::Regex {
            pattern: Regex::new(p).unwrap(),
            replace: r.into(),
        }
    }

    #[test]
    fn strip_a_prefix_on_segment_boundaries() {
        let r = prefix("/api", "");
        assert_eq!(r.apply("/api/users/7").as_deref(), Some("/users/7"));
        assert_eq!(r.apply("/api").as_deref(), Some("/"));
        assert_eq!(r.apply("/api/").as_deref(), Some("/"));
        assert_eq!(r.apply("/apix"), None);
        assert_eq!(r.apply("/other"), None);
        let r = prefix("/api/", "");
        assert_eq!(r.apply("/api/users").as_deref(), Some("/users"));
    }

    #[test]
    fn replace_a_prefix() {
        let r = prefix("/api", "/v2");
        assert_eq!(r.apply("/api/users").as_deref(), Some("/v2/users"));
        assert_eq!(r.apply("/api").as_deref(), Some("/v2"));
        let r = prefix("/api/", "/v2/");
        assert_eq!(r.apply("/api/users").as_deref(), Some("/v2/users"));
        let r = prefix("/api/", "/v2");
        assert_eq!(r.apply("/api/users").as_deref(), Some("/v2/users"));
        let r = prefix("/api", "/v2/");
        assert_eq!(r.apply("/api/users").as_deref(), Some("/v2/users"));
        let r = prefix("/", "/base");
        assert_eq!(r.apply("/x").as_deref(), Some("/base/x"));
    }

    #[test]
    fn regex_replace_with_captures() {
        let r = regex(r"^/users/(\d+)/(?P<tab>\w+)$", "/u/$1/${tab}");
        assert_eq!(r.apply("/users/42/posts").as_deref(), Some("/u/42/posts"));
        assert_eq!(r.apply("/users/x/posts"), None);
        // Unanchored: only the matching part changes.
        let r = regex("old", "new");
        assert_eq!(r.apply("/a/old/b").as_deref(), Some("/a/new/b"));
        // A result without a leading slash gets one.
        let r = regex("^/x/(.*)$", "$1");
        assert_eq!(r.apply("/x/y").as_deref(), Some("/y"));
    }

    #[test]
    fn replacement_groups_must_exist() {
        let p = Regex::new(r"^/a/(\d+)/(?P<n>\w+)$").unwrap();
        assert!(check_replacement(&p, "/b/$1/${n}/$2/$$").is_ok());
        let e = check_replacement(&p, "/b/$3").unwrap_err();
        assert!(e.contains("names group $3"), "{e}");
        assert!(e.contains("2 numbered group(s) and named n"), "{e}");
        assert!(check_replacement(&p, "/b/${m}").is_err());
        assert!(check_replacement(&p, "/b/${1").is_err());
    }

    #[test]
    fn regex_errors_fit_on_one_line() {
        // Built at run time, as from a config file (clippy checks literals).
        let pattern = String::from("(abc");
        let e = Regex::new(&pattern).unwrap_err();
        assert_eq!(
            regex_error(&e),
            "not a valid regular expression: unclosed group"
        );
    }
}
