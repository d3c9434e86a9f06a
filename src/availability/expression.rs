//! Availability expressions: `"(lb || lb) -> (app || app) -> (db || db)"`.
//!
//! ```text
//! expr  := term ( "->" term )*        series: every term is needed
//!        | term ( "||" term )*        parallel: any one term is enough
//! term  := NUMBER [ "%" ]             an availability in percent, 0 to 100
//!        | NAME                       a part, its availability given apart
//!        | "(" expr ")"
//!        | N "of" M "(" expr { "," expr } ")"   at least N of the M listed
//! ```
//!
//! `->` and `||` do not mix without parentheses: `a -> b || c` is refused
//! rather than given a precedence a reader would have to remember. Names
//! are letters, digits, `_`, `.` and `-` (not `->`), starting with a letter
//! or `_`. Errors give the column (1-based, in characters) and what was
//! expected there.

use std::fmt;

use super::compose;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// An availability as a fraction (99.9 % is 0.999).
    Value(f64),
    /// A named part; `column` is where it was written, for errors.
    Part {
        name: String,
        column: usize,
    },
    Series(Vec<Expr>),
    Parallel(Vec<Expr>),
    AtLeast {
        needed: usize,
        parts: Vec<Expr>,
    },
}

/// What is wrong, and where (1-based column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ExprError {}

impl ExprError {
    /// The expression with a caret under the column, for a terminal: two
    /// lines, each indented by two spaces.
    pub fn pointed(&self, input: &str) -> String {
        format!(
            "  {input}\n  {}^ {}",
            " ".repeat(self.column.saturating_sub(1)),
            self
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64, String),
    Name(String),
    /// `N of M`.
    Group(usize, usize),
    Open,
    Close,
    Comma,
    Percent,
    Arrow,
    Bars,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Number(_, text) => format!("the number {text}"),
            Token::Name(n) => format!("the name {n:?}"),
            Token::Group(n, m) => format!("{n}of{m}"),
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::Comma => "','".into(),
            Token::Percent => "'%'".into(),
            Token::Arrow => "'->'".into(),
            Token::Bars => "'||'".into(),
            Token::End => "the end of the expression".into(),
        }
    }
}

/// Tokens with their 1-based columns.
fn lex(input: &str) -> Result<Vec<(Token, usize)>, ExprError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let integer = |from: usize| {
        let mut j = from;
        while j < chars.len() && chars[j].is_ascii_digit() {
            j += 1;
        }
        j
    };
    let skip_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let (token, next) = match c {
            '(' => (Token::Open, i + 1),
            ')' => (Token::Close, i + 1),
            ',' => (Token::Comma, i + 1),
            '%' => (Token::Percent, i + 1),
            _ if two == "->" => (Token::Arrow, i + 2),
            _ if two == "||" => (Token::Bars, i + 2),
            '0'..='9' | '.' => {
                let int_end = integer(i);
                let mut end = int_end;
                if end < chars.len() && chars[end] == '.' {
                    end = integer(end + 1);
                }
                let text: String = chars[i..end].iter().collect();
                // `2of3` / `2 of 3`: only after a whole number.
                let after = skip_space(end);
                let is_group = end == int_end
                    && chars.get(after) == Some(&'o')
                    && chars.get(after + 1) == Some(&'f')
                    && !chars
                        .get(after + 2)
                        .is_some_and(|c| c.is_alphabetic() || *c == '_');
                if is_group {
                    let m_from = skip_space(after + 2);
                    let m_end = integer(m_from);
                    let parse = |s: &[char]| s.iter().collect::<String>().parse::<usize>();
                    let (Ok(n), Ok(m)) = (parse(&chars[i..end]), parse(&chars[m_from..m_end]))
                    else {
                        return Err(ExprError {
                            column: m_from + 1,
                            message: format!(
                                "expected how many parts the group has after \"{text} of\" (e.g. 2of3)"
                            ),
                        });
                    };
                    (Token::Group(n, m), m_end)
                } else {
                    let value = text.parse::<f64>().map_err(|_| ExprError {
                        column,
                        message: format!("expected a number, found {text:?}"),
                    })?;
                    (Token::Number(value, text), end)
                }
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut end = i + 1;
                while end < chars.len() {
                    let d = chars[end];
                    let arrow = d == '-' && chars.get(end + 1) == Some(&'>');
                    if (d.is_alphanumeric() || matches!(d, '_' | '.' | '-')) && !arrow {
                        end += 1;
                    } else {
                        break;
                    }
                }
                (Token::Name(chars[i..end].iter().collect()), end)
            }
            other => {
                return Err(ExprError {
                    column,
                    message: format!(
                        "expected a part (a percentage, a name, '(' or NofM(...)) or an operator ('->', '||'), found {other:?}"
                    ),
                });
            }
        };
        out.push((token, column));
        i = next;
    }
    out.push((Token::End, chars.len() + 1));
    Ok(out)
}

/// Parentheses and groups nest at most this deep: the parser recurses, and
/// no real topology needs more.
const MAX_DEPTH: usize = 64;

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &(Token, usize) {
        // `End` is always last and never consumed past.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> (Token, usize) {
        let t = self.peek().clone();
        if t.0 != Token::End {
            self.at += 1;
        }
        t
    }

    fn expected(&self, what: &str) -> ExprError {
        let (token, column) = self.peek();
        ExprError {
            column: *column,
            message: format!("expected {what}, found {}", token.describe()),
        }
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        let first = self.term()?;
        let op = match self.peek().0 {
            Token::Arrow => Token::Arrow,
            Token::Bars => Token::Bars,
            _ => return Ok(first),
        };
        let mut terms = vec![first];
        loop {
            let (token, column) = self.peek().clone();
            if token == op {
                self.next();
                terms.push(self.term()?);
            } else if matches!(token, Token::Arrow | Token::Bars) {
                return Err(ExprError {
                    column,
                    message: format!(
                        "expected {} again or the end of this group, found {}: mixing '->' and '||' needs parentheses, e.g. \"a -> (b || c)\"",
                        op.describe(),
                        token.describe()
                    ),
                });
            } else {
                break;
            }
        }
        Ok(if op == Token::Arrow {
            Expr::Series(terms)
        } else {
            Expr::Parallel(terms)
        })
    }

    fn term(&mut self) -> Result<Expr, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let column = self.peek().1;
            return Err(ExprError {
                column,
                message: format!("expected at most {MAX_DEPTH} levels of nesting"),
            });
        }
        let term = self.term_inner();
        self.depth -= 1;
        term
    }

    fn term_inner(&mut self) -> Result<Expr, ExprError> {
        const PART: &str = "a part (a percentage such as 99.9, a name, '(' or NofM(...))";
        let (token, column) = self.peek().clone();
        match token {
            Token::Number(value, text) => {
                self.next();
                if self.peek().0 == Token::Percent {
                    self.next();
                }
                if !(0.0..=100.0).contains(&value) {
                    return Err(ExprError {
                        column,
                        message: format!(
                            "expected a percentage from 0 to 100, found {text} (write 99.9 for 99.9 %)"
                        ),
                    });
                }
                Ok(Expr::Value(value / 100.0))
            }
            Token::Name(name) => {
                self.next();
                Ok(Expr::Part { name, column })
            }
            Token::Open => {
                self.next();
                let inner = self.expr()?;
                if self.peek().0 != Token::Close {
                    return Err(self.expected("')' (or '->', '||')"));
                }
                self.next();
                Ok(inner)
            }
            Token::Group(needed, of) => {
                self.next();
                if needed == 0 || needed > of {
                    return Err(ExprError {
                        column,
                        message: format!("expected N of M with 1 <= N <= M, found {needed}of{of}"),
                    });
                }
                if self.peek().0 != Token::Open {
                    return Err(self.expected(&format!("'(' and the {of} parts of {needed}of{of}")));
                }
                self.next();
                let mut parts = vec![self.expr()?];
                while self.peek().0 == Token::Comma {
                    self.next();
                    parts.push(self.expr()?);
                }
                if self.peek().0 != Token::Close {
                    return Err(self.expected("',' and another part, or ')'"));
                }
                let close = self.peek().1;
                self.next();
                if parts.len() != of {
                    return Err(ExprError {
                        column: close,
                        message: format!(
                            "expected {of} parts in {needed}of{of}(...), found {}",
                            parts.len()
                        ),
                    });
                }
                Ok(Expr::AtLeast { needed, parts })
            }
            _ => Err(self.expected(PART)),
        }
    }
}

/// Parses an expression; see the module doc for the grammar.
pub fn parse(input: &str) -> Result<Expr, ExprError> {
    let mut p = Parser {
        tokens: lex(input)?,
        at: 0,
        depth: 0,
    };
    let expr = p.expr()?;
    if p.peek().0 != Token::End {
        return Err(p.expected("'->', '||' or the end of the expression"));
    }
    Ok(expr)
}

impl Expr {
    /// The availability, with named parts looked up in `part` (a fraction).
    pub fn eval(&self, part: &dyn Fn(&str) -> Option<f64>) -> Result<f64, ExprError> {
        let all = |parts: &[Expr]| -> Result<Vec<f64>, ExprError> {
            parts.iter().map(|p| p.eval(part)).collect()
        };
        Ok(match self {
            Expr::Value(a) => *a,
            Expr::Part { name, column } => part(name).ok_or_else(|| ExprError {
                column: *column,
                message: format!(
                    "expected the availability of part {name:?}: give it with --part {name}=99.9"
                ),
            })?,
            Expr::Series(parts) => compose::series(&all(parts)?),
            Expr::Parallel(parts) => compose::parallel(&all(parts)?),
            Expr::AtLeast { needed, parts } => compose::at_least(*needed, &all(parts)?),
        })
    }

    /// The names the expression uses, each once, in order of appearance.
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        self.collect_names(&mut out);
        out
    }

    fn collect_names<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Expr::Value(_) => {}
            Expr::Part { name, .. } => {
                if !out.contains(&name.as_str()) {
                    out.push(name);
                }
            }
            Expr::Series(p) | Expr::Parallel(p) | Expr::AtLeast { parts: p, .. } => {
                p.iter().for_each(|e| e.collect_names(out));
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, parts: &[Expr], sep: &str| -> fmt::Result {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                match p {
                    Expr::Series(_) | Expr::Parallel(_) => write!(f, "({p})")?,
                    _ => write!(f, "{p}")?,
                }
            }
            Ok(())
        };
        match self {
            Expr::Value(a) => write!(f, "{}", compose::percent_text(*a)),
            Expr::Part { name, .. } => f.write_str(name),
            Expr::Series(p) => join(f, p, " -> "),
            Expr::Parallel(p) => join(f, p, " || "),
            Expr::AtLeast { needed, parts } => {
                write!(f, "{needed}of{}(", parts.len())?;
                join(f, parts, ", ")?;
                f.write_str(")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(input: &str) -> f64 {
        parse(input)
            .and_then(|e| e.eval(&|_| None))
            .unwrap_or_else(|e| panic!("{}", e.pointed(input)))
    }

    fn error(input: &str) -> ExprError {
        match parse(input) {
            Ok(e) => panic!("{input} parsed as {e}"),
            Err(e) => e,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn textbook_figures() {
        assert!(close(value("99.9 -> 99.9 -> 99.9"), 0.997_002_999));
        assert!(close(value("99.9% || 99.9%"), 0.999_999));
        assert!(close(value("99.95"), 0.9995));
    }

    #[test]
    fn named_parts_and_nesting() {
        let input = "(lb || lb) -> (app || app) -> (db || db)";
        let e = parse(input).unwrap();
        assert_eq!(e.names(), ["lb", "app", "db"]);
        let parts = |n: &str| match n {
            "lb" => Some(0.9999),
            "app" => Some(0.999),
            "db" => Some(0.9995),
            _ => None,
        };
        let want = (1.0 - 1e-8) * (1.0 - 1e-6) * (1.0 - 0.0005f64.powi(2));
        assert!(close(e.eval(&parts).unwrap(), want));
        assert_eq!(e.to_string(), "(lb || lb) -> (app || app) -> (db || db)");
    }

    #[test]
    fn n_of_m_groups() {
        assert!(close(value("2of3(90, 90, 90)"), 0.972));
        assert!(close(value("2 of 3 (90, 90, 90)"), 0.972));
        // Groups nest and mix with operators.
        let v = value("99.99 -> 2of3(99, 99 -> 99.9, (99 || 99))");
        let inner = crate::availability::compose::at_least(2, &[0.99, 0.99 * 0.999, 0.9999]);
        assert!(close(v, 0.9999 * inner));
    }

    #[test]
    fn names_may_have_dashes_and_dots() {
        let e = parse("api-v2->db.primary").unwrap();
        assert_eq!(e.names(), ["api-v2", "db.primary"]);
    }

    #[test]
    fn unknown_part_says_which_and_where() {
        let e = parse("99.9 -> db").unwrap();
        let err = e.eval(&|_| None).unwrap_err();
        assert_eq!(err.column, 9);
        assert!(err.message.contains("--part db=99.9"), "{err}");
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        let e = error("99.9 -> ");
        assert_eq!(e.column, 9);
        assert!(e.message.starts_with("expected a part"), "{e}");
        assert!(e.message.contains("found the end"), "{e}");

        let e = error("(99 || 99");
        assert_eq!(e.column, 10);
        assert!(e.message.contains("expected ')'"), "{e}");

        let e = error("99 -> 99 || 99");
        assert_eq!(e.column, 10);
        assert!(e.message.contains("needs parentheses"), "{e}");

        let e = error("99 99");
        assert_eq!(e.column, 4);
        assert!(e.message.contains("expected '->', '||'"), "{e}");

        let e = error("99 -> 120");
        assert_eq!(e.column, 7);
        assert!(e.message.contains("from 0 to 100"), "{e}");

        let e = error("2of3(a, b)");
        assert_eq!(e.column, 10);
        assert!(e.message.contains("expected 3 parts"), "{e}");

        let e = error("4of3(a, b, c)");
        assert_eq!(e.column, 1);
        assert!(e.message.contains("1 <= N <= M"), "{e}");

        let e = error("2of(a, b)");
        assert!(e.message.contains("how many parts"), "{e}");

        let e = error("2of3 a");
        assert!(e.message.contains("expected '('"), "{e}");

        let e = error("a -> $b");
        assert_eq!(e.column, 6);
        assert!(e.message.contains("found '$'"), "{e}");

        let e = error("");
        assert_eq!(e.column, 1);

        let e = error("a -> ()");
        assert_eq!(e.column, 7);
        assert!(e.message.contains("found ')'"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{}99{}", "(".repeat(100_000), ")".repeat(100_000));
        let e = error(&deep);
        assert_eq!(e.column, 65);
        assert!(e.message.contains("levels of nesting"), "{e}");
        let fine = format!("{}99{}", "(".repeat(60), ")".repeat(60));
        assert!(close(value(&fine), 0.99));
    }

    #[test]
    fn the_caret_points_at_the_column() {
        let input = "99 -> )";
        let e = error(input);
        let shown = e.pointed(input);
        let caret = shown.lines().nth(1).unwrap();
        assert_eq!(caret.find('^'), Some(8));
    }
}
