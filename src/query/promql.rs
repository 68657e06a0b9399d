//! PromQL scoping (DESIGN §13): every vector and matrix selector of an expression, in
//! every sub-expression, gets the matcher `<label>="<value>"`; the user's own matchers on
//! the tenant label are removed (or refused under `on_conflict = "reject"`). The
//! expression is parsed by `promql-parser` (0.10 or later print quotes and backslashes
//! escaped), never edited as a string, and is printed back only when the printed text
//! parses to the very same tree: what the backend parses is what was scoped.
//!
//! Refused, because the rewrite could not hold them to the tenant:
//! - `{a="1" or b="2"}`: the parser keeps the groups apart, and a printer or backend that
//!   reads only one group would leave the others unscoped;
//! - `info(v)` without its data-label selector: it fetches `target_info` series that no
//!   selector of the user names; `info(v, {…})` is scoped like any selector;
//! - anything that does not print back to the same tree;
//! - a text over the bounds of [`super::guard`] (size, nesting, regex matchers), before
//!   it is parsed.
//!
//! Regex matcher values are parsed, scoped and printed as placeholders and put back
//! into the printed text at the end ([`super::guard::Prepared`]), so no regex is
//! compiled here, once or twice.

use std::panic::{catch_unwind, AssertUnwindSafe};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, VectorSelector};

use super::guard::{self, Prepared, TooComplex};

/// The tenant an expression is scoped to.
#[derive(Clone, Copy, Debug)]
pub struct TenantScope<'a> {
    /// The label promgate owns (`[tenancy] label`).
    pub label: &'a str,
    /// The tenant's `label_value`.
    pub value: &'a str,
    /// `on_conflict = "reject"`: a user matcher on the tenant label other than
    /// `label="value"` is refused instead of removed.
    pub reject_conflicts: bool,
}

/// Why an expression or selector was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("invalid expression: {0}")]
    Parse(String),
    #[error("invalid series selector: {0}")]
    NotSelector(String),
    #[error(
        "\"or\" inside a selector's braces is not supported; write `a or b` between selectors"
    )]
    OrInsideBraces,
    #[error("info() needs an explicit data-label selector as its second argument")]
    InfoWithoutSelector,
    #[error("matchers on {label:?} are not allowed: the tenant is chosen by the credential")]
    TenantMatcher { label: String },
    #[error("the expression cannot be rewritten faithfully; simplify it")]
    NotReprintable,
    #[error("{0}")]
    TooComplex(TooComplex),
}

impl From<TooComplex> for ScopeError {
    fn from(refused: TooComplex) -> ScopeError {
        match refused {
            // What the lexer refuses is a syntax error like any other.
            TooComplex::Lex(message) => ScopeError::Parse(message),
            other => ScopeError::TooComplex(other),
        }
    }
}

/// Scopes a whole PromQL expression (`query` of `/api/v1/query`, `query_range`,
/// `query_exemplars`) and returns the text to send to the backend.
pub fn scope_expression(text: &str, scope: &TenantScope<'_>) -> Result<String, ScopeError> {
    let prepared = guard::prepare(text)?;
    let mut expr = parse(&prepared.text).map_err(ScopeError::Parse)?;
    scope_expr(&mut expr, scope)?;
    reprint(&expr, &prepared, scope)
}

/// Scopes one series selector (`match[]`): a plain vector selector, without offset or
/// `@`, as Prometheus' own `ParseMetricSelector` accepts.
pub fn scope_selector(text: &str, scope: &TenantScope<'_>) -> Result<String, ScopeError> {
    let prepared = guard::prepare(text)?;
    let expr = parse(&prepared.text).map_err(ScopeError::NotSelector)?;
    let Expr::VectorSelector(mut selector) = expr else {
        return Err(ScopeError::NotSelector(format!(
            "{text:?} is not a series selector"
        )));
    };
    if selector.offset.is_some() || selector.at.is_some() {
        return Err(ScopeError::NotSelector(
            "a series selector takes no offset or @ modifier".into(),
        ));
    }
    scope_vector(&mut selector, scope)?;
    reprint(&Expr::VectorSelector(selector), &prepared, scope)
}

/// promql-parser's `parse`, with a panic inside it (a bug of the parser's on input the
/// guard did not foresee) taken as a parse error: the query can never succeed, so it is
/// a 400, and the thread lives on.
fn parse(text: &str) -> Result<Expr, String> {
    match catch_unwind(AssertUnwindSafe(|| parser::parse(text))) {
        Ok(parsed) => parsed.map_err(|err| one_line(&err)),
        Err(_) => Err("the query parser failed on this expression".into()),
    }
}

/// The selector for "all of the tenant's series": a missing `match[]`.
pub fn tenant_selector(scope: &TenantScope<'_>) -> String {
    let matcher = Matcher::new(MatchOp::Equal, scope.label, scope.value);
    format!("{{{matcher}}}")
}

fn scope_expr(expr: &mut Expr, scope: &TenantScope<'_>) -> Result<(), ScopeError> {
    match expr {
        Expr::VectorSelector(selector) => scope_vector(selector, scope),
        Expr::MatrixSelector(matrix) => scope_vector(&mut matrix.vs, scope),
        Expr::Aggregate(aggregate) => {
            if let Some(param) = aggregate.param.as_deref_mut() {
                scope_expr(param, scope)?;
            }
            scope_expr(&mut aggregate.expr, scope)
        }
        Expr::Unary(unary) => scope_expr(&mut unary.expr, scope),
        Expr::Binary(binary) => {
            scope_expr(&mut binary.lhs, scope)?;
            scope_expr(&mut binary.rhs, scope)
        }
        Expr::Paren(paren) => scope_expr(&mut paren.expr, scope),
        Expr::Subquery(subquery) => scope_expr(&mut subquery.expr, scope),
        Expr::Call(call) => {
            if call.func.name == "info" && call.args.args.len() < 2 {
                return Err(ScopeError::InfoWithoutSelector);
            }
            call.args
                .args
                .iter_mut()
                .try_for_each(|arg| scope_expr(arg, scope))
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        // The parser never produces one; refuse rather than guess what it selects.
        Expr::Extension(_) => Err(ScopeError::NotReprintable),
    }
}

fn scope_vector(selector: &mut VectorSelector, scope: &TenantScope<'_>) -> Result<(), ScopeError> {
    if !selector.matchers.or_matchers.is_empty() {
        return Err(ScopeError::OrInsideBraces);
    }
    let matchers = &mut selector.matchers.matchers;
    if scope.reject_conflicts
        && matchers
            .iter()
            .any(|m| m.name == scope.label && !(m.op == MatchOp::Equal && m.value == scope.value))
    {
        return Err(ScopeError::TenantMatcher {
            label: scope.label.to_string(),
        });
    }
    matchers.retain(|matcher| matcher.name != scope.label);
    matchers.push(Matcher::new(MatchOp::Equal, scope.label, scope.value));
    // In the order the printer writes them, so the printed text parses back to this tree.
    matchers.sort_by_cached_key(ToString::to_string);
    Ok(())
}

/// Prints the scoped tree and proves the text means that tree: it must parse back to the
/// same tree, in which every selector carries the tenant matcher once. Then the regex
/// values go back in place of their placeholders.
fn reprint(
    expr: &Expr,
    prepared: &Prepared,
    scope: &TenantScope<'_>,
) -> Result<String, ScopeError> {
    let printed = expr.to_string();
    let reparsed = parse(&printed).map_err(|_| ScopeError::NotReprintable)?;
    if &reparsed != expr || !every_selector_scoped(&reparsed, scope) {
        return Err(ScopeError::NotReprintable);
    }
    prepared.restore(&printed).ok_or(ScopeError::NotReprintable)
}

/// Whether `text` parses and every selector in it is scoped (fuzzing and tests).
pub fn is_scoped(text: &str, scope: &TenantScope<'_>) -> bool {
    parser::parse(text).is_ok_and(|expr| every_selector_scoped(&expr, scope))
}

/// Every selector in `expr` has exactly one matcher on the tenant label, `label="value"`,
/// and no `or` groups.
pub fn every_selector_scoped(expr: &Expr, scope: &TenantScope<'_>) -> bool {
    let mut scoped = true;
    visit_selectors(expr, &mut |selector| {
        let on_label: Vec<_> = selector
            .matchers
            .matchers
            .iter()
            .filter(|m| m.name == scope.label)
            .collect();
        scoped &= selector.matchers.or_matchers.is_empty()
            && on_label.len() == 1
            && on_label[0].op == MatchOp::Equal
            && on_label[0].value == scope.value;
    });
    scoped
}

/// Calls `visit` on every vector selector, matrix selectors' included.
pub fn visit_selectors(expr: &Expr, visit: &mut impl FnMut(&VectorSelector)) {
    match expr {
        Expr::VectorSelector(selector) => visit(selector),
        Expr::MatrixSelector(matrix) => visit(&matrix.vs),
        Expr::Aggregate(aggregate) => {
            if let Some(param) = aggregate.param.as_deref() {
                visit_selectors(param, visit);
            }
            visit_selectors(&aggregate.expr, visit);
        }
        Expr::Unary(unary) => visit_selectors(&unary.expr, visit),
        Expr::Binary(binary) => {
            visit_selectors(&binary.lhs, visit);
            visit_selectors(&binary.rhs, visit);
        }
        Expr::Paren(paren) => visit_selectors(&paren.expr, visit),
        Expr::Subquery(subquery) => visit_selectors(&subquery.expr, visit),
        Expr::Call(call) => call
            .args
            .args
            .iter()
            .for_each(|arg| visit_selectors(arg, visit)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Parser errors can span lines; a 400's reason is one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHA: TenantScope<'static> = TenantScope {
        label: "tenant_id",
        value: "alpha",
        reject_conflicts: false,
    };
    const STRICT: TenantScope<'static> = TenantScope {
        reject_conflicts: true,
        ..ALPHA
    };

    fn scoped(text: &str) -> String {
        scope_expression(text, &ALPHA).expect("valid in this test")
    }

    #[test]
    fn every_selector_gets_the_tenant_matcher() {
        assert_eq!(scoped("up"), r#"up{tenant_id="alpha"}"#);
        assert_eq!(
            scoped(r#"rate(http_requests_total{job="api"}[5m])"#),
            r#"rate(http_requests_total{job="api",tenant_id="alpha"}[5m])"#
        );
        let text = scoped(
            r#"sum by (job) (rate(a[1m])) / on (job) group_left max(b offset 1h) or vector(1) + count_values("v", c) + topk(scalar(d), e) + max_over_time(f[10m:1m])"#,
        );
        for name in ["a", "b", "c", "d", "e", "f"] {
            assert!(
                text.contains(&format!(r#"{name}{{tenant_id="alpha"}}"#)),
                "{name} not scoped in {text}"
            );
        }
    }

    #[test]
    fn user_matchers_on_the_tenant_label_are_replaced() {
        assert_eq!(
            scoped(r#"up{tenant_id="beta"}"#),
            r#"up{tenant_id="alpha"}"#
        );
        assert_eq!(
            scoped(r#"up{tenant_id=~".+",tenant_id!="alpha",job="x"}"#),
            r#"up{job="x",tenant_id="alpha"}"#
        );
        assert_eq!(scoped(r#"{tenant_id="beta"}"#), r#"{tenant_id="alpha"}"#);
    }

    #[test]
    fn reject_mode_refuses_other_tenant_matchers_but_keeps_the_own_one() {
        assert_eq!(
            scope_expression(r#"up{tenant_id="beta"}"#, &STRICT),
            Err(ScopeError::TenantMatcher {
                label: "tenant_id".into()
            })
        );
        assert!(scope_expression(r#"up{tenant_id=~"alpha"}"#, &STRICT).is_err());
        assert_eq!(
            scope_expression(r#"up{tenant_id="alpha"}"#, &STRICT).expect("valid in this test"),
            r#"up{tenant_id="alpha"}"#
        );
    }

    #[test]
    fn or_inside_braces_is_refused() {
        assert_eq!(
            scope_expression(r#"up{a="1" or b="2"}"#, &ALPHA),
            Err(ScopeError::OrInsideBraces)
        );
        assert_eq!(
            scope_selector(r#"{a="1" or tenant_id="beta"}"#, &ALPHA),
            Err(ScopeError::OrInsideBraces)
        );
    }

    #[test]
    fn info_needs_its_selector() {
        assert_eq!(
            scope_expression("info(up)", &ALPHA),
            Err(ScopeError::InfoWithoutSelector)
        );
        let text = scoped(r#"info(up, {k8s_cluster_name=~".+"})"#);
        assert_eq!(
            text,
            r#"info(up{tenant_id="alpha"}, {k8s_cluster_name=~".+",tenant_id="alpha"})"#
        );
    }

    #[test]
    fn quotes_and_backslashes_survive() {
        let text = scoped(r#"up{job="a\"b\\c",path=~"x\\.y"}"#);
        assert_eq!(text, r#"up{job="a\"b\\c",path=~"x\\.y",tenant_id="alpha"}"#);
        // A value crafted to close the string and open a matcher stays one value.
        let text = scoped(r#"up{job="x\",tenant_id=\"beta"}"#);
        let expr = parser::parse(&text).expect("valid in this test");
        assert!(every_selector_scoped(&expr, &ALPHA), "{text}");
    }

    #[test]
    fn match_selectors() {
        assert_eq!(
            scope_selector(r#"up{tenant_id="beta"}"#, &ALPHA).expect("valid in this test"),
            r#"up{tenant_id="alpha"}"#
        );
        assert!(matches!(
            scope_selector("rate(up[1m])", &ALPHA),
            Err(ScopeError::NotSelector(_))
        ));
        assert!(matches!(
            scope_selector("up offset 1m", &ALPHA),
            Err(ScopeError::NotSelector(_))
        ));
        assert_eq!(tenant_selector(&ALPHA), r#"{tenant_id="alpha"}"#);
    }

    #[test]
    fn regex_matchers_come_back_as_sent() {
        assert_eq!(
            scoped(r#"{__name__=~"up|scrape_.+",job!~""}"#),
            r#"{__name__=~"up|scrape_.+",job!~"",tenant_id="alpha"}"#
        );
        assert_eq!(
            scoped(r#"sum(rate(x{code=~"5..",path!~".*health.*"}[5m]))"#),
            r#"sum(rate(x{code=~"5..",path!~".*health.*",tenant_id="alpha"}[5m]))"#
        );
        // A selector of only matchers that match the empty string stays refused.
        assert!(matches!(
            scope_expression(r#"{job=~".*"}"#, &ALPHA),
            Err(ScopeError::Parse(_))
        ));
    }

    #[test]
    fn unparseable_input_is_one_line() {
        let Err(ScopeError::Parse(message)) = scope_expression("sum(\nup", &ALPHA) else {
            panic!("accepted");
        };
        assert!(!message.contains('\n'));
    }
}
