//! What a PromQL text may cost before the parser builds a tree of it (SECURITY.md T23).
//!
//! Every check here runs on the token stream of promql-parser's own lexer (a loop, no
//! recursion), so nothing the parser, the printer, the comparisons or the scoping walks
//! would recurse through is built before its size is known:
//! - the text's size ([`MAX_QUERY_BYTES`]);
//! - its nesting: operators plus bracket depth bound the depth of any tree the parser
//!   can build from it ([`MAX_QUERY_NESTING`]); the CPU pool's threads, where queries
//!   are parsed, run on a stack sized for that bound
//!   ([`crate::admission::cpu_pool::STACK_BYTES`]);
//! - its regex matchers: their count, their bytes, and each one's expanded size and
//!   nesting, checked by `regex-syntax` without compiling anything;
//! - durations the parser would turn into a `Duration` (and panic on when too large).
//!
//! Regex matchers are also taken out of the text before it is parsed: each one becomes
//! an equality matcher on a placeholder value, so the parser (which compiles every regex
//! it meets, and the print-and-parse-again check would compile them all a second time)
//! compiles no regex at all; [`Prepared::restore`] puts the regex operators and values
//! back, escaped, into the printed text.

use promql_parser::parser::lexer;
use promql_parser::parser::token::{self, TokenId};
use promql_parser::util::{escape_string, unquote_string};

use lrpar::{Lexeme, Lexer, NonStreamingLexer};

/// The longest query text promgate parses. Grafana's template variables with "All"
/// selected make regex alternations of a few kilobytes; 128 KiB leaves room for
/// hundreds of those and keeps the worst parse in the low milliseconds.
pub const MAX_QUERY_BYTES: usize = 128 * 1024;
/// The largest nesting (operators plus bracket depth) of one query: `a + b + … ` with
/// this many terms, or this many nested parentheses. The printer copies a subtree's
/// text at every level above it, so a long text nested deep costs their product; at
/// 256 levels of 128 KiB the worst query scopes in a few milliseconds
/// (`benches/query_rewrite.rs`, `query_worst_case`).
pub const MAX_QUERY_NESTING: usize = 256;
/// Regex matchers (`=~`, `!~`) in one query.
pub const MAX_QUERY_REGEX_MATCHERS: usize = 256;
/// Bytes of regex matcher values in one query, all of them together.
pub const MAX_QUERY_REGEX_BYTES: usize = 64 * 1024;
/// Ceiling for one regex once its counted repetitions are written out (`a{100}` counts
/// 100): what a regex engine would have to build for it.
pub const MAX_REGEX_EXPANDED_SIZE: u64 = 1 << 17;
/// Nesting depth of groups and repetitions in one regex.
pub const MAX_REGEX_NESTING: u32 = 64;
/// Durations (ranges, steps, offsets) above this many seconds (about 31 700 years) are
/// refused; the parser would panic on one past `Duration`'s range.
const MAX_DURATION_SECONDS: f64 = 1e12;

/// Why a query text was refused before parsing (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooComplex {
    #[error("the query is {0} bytes, over the limit of {MAX_QUERY_BYTES}")]
    TooLong(usize),
    #[error(
        "the query nests {0} operators and brackets deep, over the limit of {MAX_QUERY_NESTING}"
    )]
    TooDeep(usize),
    #[error("the query has {0} regex matchers, over the limit of {MAX_QUERY_REGEX_MATCHERS}")]
    TooManyRegexes(usize),
    #[error(
        "the query's regex matchers hold {0} bytes, over the limit of {MAX_QUERY_REGEX_BYTES}"
    )]
    RegexBytes(usize),
    #[error("regex matcher {0:?} {1}")]
    BadRegex(String, String),
    #[error("duration {0:?} is out of range")]
    Duration(String),
    #[error("{0}")]
    Lex(String),
}

/// A query text ready to parse: its regex matcher values swapped for placeholders.
#[derive(Debug)]
pub struct Prepared {
    /// The text to parse.
    pub text: String,
    /// Each placeholder matcher's operator and value as the printer writes them, and the
    /// regex operator and value they stand for, written the same way.
    regexes: Vec<(String, String)>,
    /// Operators plus the deepest bracket nesting: how deep the parsed tree can be.
    pub nesting: usize,
}

/// A query at most this long, with no regex matcher and at most [`LIGHT_QUERY_NESTING`]
/// deep, is scoped on the request's own thread rather than the CPU pool: it takes
/// microseconds and a shallow stack, and does not wait behind other tenants' heavy jobs.
pub const LIGHT_QUERY_BYTES: usize = 2048;
/// See [`LIGHT_QUERY_BYTES`].
pub const LIGHT_QUERY_NESTING: usize = 16;

/// Whether `text` is light enough to scope off the CPU pool (see [`LIGHT_QUERY_BYTES`]).
/// Lexing is iterative, so this is safe on any thread.
pub fn is_light(text: &str) -> bool {
    text.len() <= LIGHT_QUERY_BYTES
        && prepare(text).is_ok_and(|prepared| {
            prepared.regexes.is_empty() && prepared.nesting <= LIGHT_QUERY_NESTING
        })
}

impl Prepared {
    /// The printed text with every regex matcher's own value back in place. A
    /// placeholder may be gone (its matcher was on the tenant label and was removed)
    /// but never doubled.
    pub fn restore(&self, printed: &str) -> Option<String> {
        let mut text = printed.to_string();
        for (placeholder, value) in &self.regexes {
            match text.matches(placeholder.as_str()).count() {
                0 => {}
                1 => text = text.replacen(placeholder, value, 1),
                _ => return None,
            }
        }
        Some(text)
    }
}

/// Checks `text` against the bounds above and swaps its regex values for placeholders.
pub fn prepare(text: &str) -> Result<Prepared, TooComplex> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(TooComplex::TooLong(text.len()));
    }
    let lexed = lexer(text).map_err(|err| TooComplex::Lex(one_line(&err)))?;
    let nonce = placeholder_nonce(text);
    let mut prepared = Prepared {
        text: String::with_capacity(text.len()),
        regexes: Vec::new(),
        nesting: 0,
    };
    let mut copied_to = 0;
    let (mut depth, mut max_depth, mut operators, mut brace_depth) =
        (0usize, 0usize, 0usize, 0usize);
    let mut bracket_depth = 0usize;
    let mut regex_bytes = 0usize;
    // The two tokens before the current one.
    let (mut previous, mut before_previous): (Option<TokenId>, Option<TokenId>) = (None, None);
    let mut previous_start = 0usize;
    for lexeme in lexed.iter() {
        let Ok(lexeme) = lexeme else {
            return Err(TooComplex::Lex("invalid token".into()));
        };
        let id = lexeme.tok_id();
        let span = lexeme.span();
        match id {
            token::T_LEFT_PAREN
            | token::T_LEFT_BRACE
            | token::T_LEFT_BRACKET
            | token::T_OPEN_HIST => {
                depth += 1;
                max_depth = max_depth.max(depth);
                brace_depth += usize::from(id == token::T_LEFT_BRACE);
                bracket_depth += usize::from(id == token::T_LEFT_BRACKET);
            }
            token::T_RIGHT_PAREN
            | token::T_RIGHT_BRACE
            | token::T_RIGHT_BRACKET
            | token::T_CLOSE_HIST => {
                depth = depth.saturating_sub(1);
                if id == token::T_RIGHT_BRACE {
                    brace_depth = brace_depth.saturating_sub(1);
                }
                if id == token::T_RIGHT_BRACKET {
                    bracket_depth = bracket_depth.saturating_sub(1);
                }
            }
            token::T_COLON if bracket_depth > 0 => operators += 1,
            token::T_NUMBER
                if bracket_depth > 0
                    || previous == Some(token::T_OFFSET)
                    || (before_previous == Some(token::T_OFFSET)
                        && matches!(previous, Some(token::T_SUB | token::T_ADD))) =>
            {
                let literal = lexed.span_str(span);
                if !duration_in_range(literal) {
                    return Err(TooComplex::Duration(literal.to_string()));
                }
            }
            token::T_STRING
                if matches!(previous, Some(token::T_EQL_REGEX | token::T_NEQ_REGEX)) =>
            {
                let literal = lexed.span_str(span);
                let value = unquote_string(literal).map_err(TooComplex::Lex)?;
                regex_bytes += value.len();
                if regex_bytes > MAX_QUERY_REGEX_BYTES {
                    return Err(TooComplex::RegexBytes(regex_bytes));
                }
                if prepared.regexes.len() == MAX_QUERY_REGEX_MATCHERS {
                    return Err(TooComplex::TooManyRegexes(prepared.regexes.len() + 1));
                }
                let regex_matches_empty =
                    check_regex(&value).map_err(|why| TooComplex::BadRegex(value.clone(), why))?;
                let negated = previous == Some(token::T_NEQ_REGEX);
                // The parser refuses a selector whose matchers all match the empty
                // string: the placeholder, an equality matcher the parser compiles
                // nothing for, matches it exactly when the regex matcher does.
                let placeholder_op = if regex_matches_empty != negated {
                    "!="
                } else {
                    "="
                };
                let placeholder = format!(
                    "{placeholder_op}\"promgate{nonce:016x}r{}\"",
                    prepared.regexes.len()
                );
                let op_start = previous_start;
                prepared.text.push_str(&text[copied_to..op_start]);
                prepared.text.push_str(&placeholder);
                copied_to = span.end();
                let original = format!("{}{}", if negated { "!~" } else { "=~" }, quoted(&value));
                prepared.regexes.push((placeholder, original));
            }
            _ if is_operator(id) && brace_depth == 0 => operators += 1,
            _ => {}
        }
        before_previous = previous;
        previous = Some(id);
        previous_start = span.start();
        if operators + max_depth > MAX_QUERY_NESTING {
            return Err(TooComplex::TooDeep(operators + max_depth));
        }
    }
    prepared.nesting = operators + max_depth;
    prepared.text.push_str(&text[copied_to..]);
    Ok(prepared)
}

fn is_operator(id: TokenId) -> bool {
    id > token::T_OPERATORS_START && id < token::T_OPERATORS_END
}

/// A number the parser would read as seconds: finite and below the ceiling.
fn duration_in_range(literal: &str) -> bool {
    promql_parser::util::parse_str_radix(literal)
        .is_ok_and(|seconds| seconds.is_finite() && seconds.abs() < MAX_DURATION_SECONDS)
}

/// A placeholder prefix that does not occur in the text.
fn placeholder_nonce(text: &str) -> u64 {
    loop {
        let mut bytes = [0u8; 8];
        if getrandom::getrandom(&mut bytes).is_err() {
            // No randomness: a fixed value, still checked against the text below.
            bytes = 0x5eed_u64.to_le_bytes();
        }
        let nonce = u64::from_le_bytes(bytes);
        if !text.contains(&format!("promgate{nonce:016x}")) {
            return nonce;
        }
    }
}

fn quoted(value: &str) -> String {
    format!("\"{}\"", escape_string(value))
}

/// Parses a regex (linear in its length; nothing is compiled) and refuses one whose
/// expanded size or nesting would make the backend build something huge. Go's RE2
/// reads a `{` that starts no repetition as a literal, as promql-parser does. Returns
/// whether the fully anchored regex matches the empty string.
pub fn check_regex(pattern: &str) -> Result<bool, String> {
    let parse = |pattern: &str| {
        regex_syntax::ParserBuilder::new()
            .nest_limit(MAX_REGEX_NESTING)
            .build()
            .parse(pattern)
            .map_err(|err| err.to_string())
    };
    // Wrapped as PromQL wraps it: `0)(` is then a valid regex, for Prometheus too.
    let anchored = format!("^(?:{pattern})$");
    let hir = match parse(&anchored) {
        Ok(hir) => hir,
        Err(err) => parse(&escape_literal_braces(&anchored))
            .map_err(|_| format!("does not parse: {}", regex_error_line(&err)))?,
    };
    if expanded_size(&hir) > MAX_REGEX_EXPANDED_SIZE {
        return Err(format!(
            "is too large once its repetitions are expanded (over {MAX_REGEX_EXPANDED_SIZE} elements)"
        ));
    }
    Ok(matches_empty(&hir))
}

/// Whether `hir` matches the empty string as a whole. At the only position of an empty
/// text, line and text anchors hold, word boundaries do not, and their negations and
/// half boundaries do.
fn matches_empty(hir: &regex_syntax::hir::Hir) -> bool {
    use regex_syntax::hir::{HirKind, Look};
    match hir.kind() {
        HirKind::Empty => true,
        HirKind::Literal(literal) => literal.0.is_empty(),
        HirKind::Class(_) => false,
        HirKind::Look(look) => !matches!(
            look,
            Look::WordAscii
                | Look::WordUnicode
                | Look::WordStartAscii
                | Look::WordEndAscii
                | Look::WordStartUnicode
                | Look::WordEndUnicode
        ),
        HirKind::Repetition(repetition) => repetition.min == 0 || matches_empty(&repetition.sub),
        HirKind::Capture(capture) => matches_empty(&capture.sub),
        HirKind::Concat(parts) => parts.iter().all(matches_empty),
        HirKind::Alternation(parts) => parts.iter().any(matches_empty),
    }
}

/// `{` that does not open a counted repetition (`{n}`, `{n,}`, `{n,m}`), escaped.
fn escape_literal_braces(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
            }
            '{' if !opens_repetition(&pattern[index + 1..]) => out.push_str("\\{"),
            _ => out.push(c),
        }
    }
    out
}

fn opens_repetition(rest: &str) -> bool {
    let Some(end) = rest.find('}') else {
        return false;
    };
    let inside = &rest[..end];
    let mut parts = inside.splitn(2, ',');
    let low = parts.next().unwrap_or_default();
    let high = parts.next();
    !low.is_empty()
        && low.bytes().all(|b| b.is_ascii_digit())
        && high.is_none_or(|high| high.bytes().all(|b| b.is_ascii_digit()))
}

fn regex_error_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| text.lines().next().unwrap_or_default())
}

/// The number of pattern elements with every counted repetition written out; saturates.
fn expanded_size(hir: &regex_syntax::hir::Hir) -> u64 {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) | HirKind::Class(_) => 1,
        HirKind::Literal(literal) => literal.0.len() as u64,
        HirKind::Repetition(repetition) => {
            let times = u64::from(
                repetition
                    .max
                    .unwrap_or(repetition.min)
                    .max(repetition.min)
                    .max(1),
            );
            expanded_size(&repetition.sub).saturating_mul(times)
        }
        HirKind::Capture(capture) => expanded_size(&capture.sub),
        HirKind::Concat(parts) | HirKind::Alternation(parts) => parts
            .iter()
            .map(expanded_size)
            .fold(0u64, u64::saturating_add),
    }
}

/// Lexer errors can span lines; a 400's reason is one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn light_queries_are_short_shallow_and_without_regexes() {
        assert!(is_light(
            "sum by (job) (rate(http_requests_total{code=\"500\"}[5m]))"
        ));
        assert!(!is_light("up{job=~\"a.*\"}"), "a regex to check");
        assert!(!is_light(&vec!["up"; 20].join("+")), "17 deep");
        assert!(!is_light(&format!(
            "up{{a=\"{}\"}}",
            "x".repeat(LIGHT_QUERY_BYTES)
        )));
        assert!(
            !is_light("up{"),
            "does not lex: the pool's parse answers it"
        );
    }

    #[test]
    fn size_nesting_and_regex_budgets_are_refused_before_parsing() {
        let long = "a".repeat(MAX_QUERY_BYTES + 1);
        assert_eq!(
            prepare(&long).expect_err("too long"),
            TooComplex::TooLong(long.len())
        );
        let minus = format!("{}up", "-".repeat(10_000));
        assert!(matches!(prepare(&minus), Err(TooComplex::TooDeep(_))));
        let parens = format!("{}up{}", "(".repeat(7_500), ")".repeat(7_500));
        assert!(matches!(prepare(&parens), Err(TooComplex::TooDeep(_))));
        let sum = vec!["up"; 10_000].join("+");
        assert!(matches!(prepare(&sum), Err(TooComplex::TooDeep(_))));
        let many = (0..MAX_QUERY_REGEX_MATCHERS + 1)
            .map(|i| format!("a{{b=~\"{i}\"}}"))
            .collect::<Vec<_>>()
            .join(" or ");
        // Refused for its operators or for its regexes, before either is parsed.
        assert!(prepare(&many).is_err());
        let big = format!(
            "up{{a=~\"{}\"}}",
            "x|".repeat(MAX_QUERY_REGEX_BYTES / 2 + 1)
        );
        assert!(matches!(prepare(&big), Err(TooComplex::RegexBytes(_))));
        assert!(matches!(
            prepare(r#"up{a=~"(a{1000}){1000}"}"#),
            Err(TooComplex::BadRegex(..))
        ));
        assert!(matches!(
            prepare(r#"up{a=~"("}"#),
            Err(TooComplex::BadRegex(..))
        ));
    }

    #[test]
    fn nesting_just_under_the_bound_is_accepted() {
        let sum = vec!["up"; MAX_QUERY_NESTING / 2].join("+");
        assert!(prepare(&sum).is_ok());
        // Brackets that close again do not add up.
        let rates = vec!["rate(a{b=\"c\"}[5m])"; MAX_QUERY_NESTING - 10].join(" + ");
        assert!(prepare(&rates).is_ok());
    }

    #[test]
    fn durations_past_the_range_are_refused() {
        for text in [
            "rate(up[25e00150])",
            "rate(up[1e400])",
            "up offset inf",
            "up offset 1e300",
            "up offset -1e300",
            "max_over_time(up[5m:1e40])",
        ] {
            assert!(
                matches!(prepare(text), Err(TooComplex::Duration(_))),
                "{text}"
            );
        }
        assert!(prepare("rate(up[300]) offset 60").is_ok());
        // A large number outside a duration is a value, not a duration.
        assert!(prepare("up > 1e300").is_ok());
    }

    #[test]
    fn regex_values_round_trip_through_placeholders() {
        let text = r#"up{a=~"x\"y\\.z", b!~'q|r', c="=~"} or rate(v{d=~`e{2}{x}`}[1m])"#;
        let prepared = prepare(text).expect("valid");
        assert_eq!(prepared.regexes.len(), 3);
        assert!(!prepared.text.contains("q|r"));
        assert!(prepared.text.contains(r#"c="=~""#));
        let restored = prepared.restore(&prepared.text).expect("each once");
        assert!(restored.contains(r#"a=~"x\"y\\.z""#), "{restored}");
        assert!(restored.contains(r#"b!~"q|r""#), "{restored}");
        assert!(restored.contains(r#"d=~"e{2}{x}""#), "{restored}");
        let doubled = format!("{} {}", prepared.text, prepared.regexes[0].0);
        assert_eq!(prepared.restore(&doubled), None);
    }

    #[test]
    fn empty_matching_is_read_as_the_regex_engine_does() {
        for pattern in [
            "",
            ".*",
            "a*",
            "a|",
            "(a?)+",
            "^$",
            "\\B",
            "(?m)^",
            "a{0}",
            "\\b{start-half}",
        ] {
            assert_eq!(check_regex(pattern), Ok(true), "{pattern:?}");
            assert!(regex_syntax::Parser::new().parse(pattern).is_ok());
        }
        for pattern in ["a", ".+", "\\b", "a|b", "[a-z]", "\\b{start}", "(a|b){1,3}"] {
            assert_eq!(check_regex(pattern), Ok(false), "{pattern:?}");
        }
    }

    #[test]
    fn go_style_literal_braces_are_regexes() {
        assert!(check_regex("aaa{bbb}ccc").is_ok());
        assert!(check_regex("a{2,3}").is_ok());
        assert!(check_regex("(").is_err());
    }
}
