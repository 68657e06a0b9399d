//! Property tests of the PromQL rewrite (DESIGN §13): for any expression the parser
//! accepts, the scoped text parses; every vector and matrix selector in it carries the
//! tenant matcher exactly once; and nothing else changed — with the tenant-label matchers
//! taken out of both trees, the scoped tree equals the original. Expressions come from a
//! grammar over every node kind (aggregations with parameters and grouping, binary
//! operators with matching and grouping modifiers, subqueries, offsets and `@`, function
//! calls, string and number literals) with hostile label values (quotes, backslashes,
//! braces, newlines, unicode) and user matchers on the tenant label.

use promgate::query::promql::{
    every_selector_scoped, scope_expression, scope_selector, ScopeError, TenantScope,
};
use promql_parser::label::Matcher;
use promql_parser::parser::{self, Expr};
use proptest::prelude::*;

const SCOPE: TenantScope<'static> = TenantScope {
    label: "tenant_id",
    value: "al\"p\\ha",
    reject_conflicts: false,
};

fn label_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("job".to_string()),
        Just("instance".to_string()),
        Just("tenant_id".to_string()),
        Just("__name__".to_string()),
        Just("le".to_string()),
        "[a-z_][a-z0-9_]{0,6}",
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("alpha".to_string()),
        Just("beta".to_string()),
        Just(String::new()),
        Just(".+".to_string()),
        Just("a|b".to_string()),
        "[ -~]{0,8}",
        "[\"\\\\{}=,\n\té😀]{0,4}",
    ]
}

/// A PromQL string literal holding `text`, escaped as PromQL wants it.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

fn matcher() -> impl Strategy<Value = String> {
    (
        label_name(),
        prop_oneof![Just("="), Just("!="), Just("=~"), Just("!~")],
        label_value(),
    )
        .prop_map(|(name, op, value)| format!("{name}{op}{}", quoted(&value)))
}

fn metric_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("up".to_string()),
        Just("http_requests_total".to_string()),
        Just("node:cpu:rate5m".to_string()),
        "[a-z_][a-z0-9_]{0,8}",
    ]
}

fn selector() -> impl Strategy<Value = String> {
    (
        proptest::option::of(metric_name()),
        proptest::collection::vec(matcher(), 0..4),
        proptest::option::of(prop_oneof![
            Just(" offset 5m"),
            Just(" offset -1h"),
            Just(" @ 1700000000"),
            Just(" @ start()"),
        ]),
    )
        .prop_map(|(name, matchers, modifier)| {
            let mut text = name.unwrap_or_default();
            if !matchers.is_empty() || text.is_empty() {
                text.push('{');
                text.push_str(&matchers.join(","));
                text.push('}');
            }
            text.push_str(modifier.unwrap_or(""));
            text
        })
}

fn range() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("1m"), Just("5m"), Just("30s"), Just("1h30m")]
}

fn expression() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => selector(),
        1 => (selector(), range()).prop_map(|(s, r)| format!("rate({s}[{r}])")),
        1 => Just("1".to_string()),
        1 => Just("time()".to_string()),
        1 => Just("vector(2)".to_string()),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (
                prop_oneof![Just("sum"), Just("max"), Just("count"), Just("avg")],
                proptest::option::of(prop_oneof![Just(" by (job)"), Just(" without (tenant_id)")]),
                inner.clone()
            )
                .prop_map(|(op, grouping, e)| format!("{op}{}({e})", grouping.unwrap_or(""))),
            (inner.clone(), inner.clone()).prop_map(|(k, e)| format!("topk(scalar({k}), {e})")),
            (label_value(), inner.clone())
                .prop_map(|(l, e)| format!("count_values({}, {e})", quoted(&l))),
            (
                inner.clone(),
                prop_oneof![
                    Just(" + "),
                    Just(" / on (job) group_left "),
                    Just(" and "),
                    Just(" or "),
                    Just(" unless ignoring (tenant_id) "),
                    Just(" > bool "),
                ],
                inner.clone()
            )
                .prop_map(|(l, op, r)| format!("{l}{op}{r}")),
            inner.clone().prop_map(|e| format!("({e})")),
            inner.clone().prop_map(|e| format!("-{e}")),
            (inner.clone(), range()).prop_map(|(e, r)| format!("max_over_time(({e})[{r}:1m])")),
            (inner.clone(), label_value()).prop_map(|(e, v)| format!(
                "label_replace({e}, \"tenant_id\", {}, \"\", \"\")",
                quoted(&v)
            )),
            inner.clone().prop_map(|e| format!("absent({e})")),
            (selector(), range()).prop_map(|(s, r)| format!(
                "histogram_quantile(0.9, sum by (le) (rate({s}[{r}])))"
            )),
        ]
    })
}

/// Removes every matcher on the tenant label, everywhere, and puts the rest in one order
/// (a selector's matchers are a conjunction: their order means nothing).
fn without_tenant_matchers(expr: &mut Expr) {
    let drop = |matchers: &mut Vec<Matcher>| {
        matchers.retain(|m| m.name != SCOPE.label);
        matchers.sort_by_cached_key(ToString::to_string);
    };
    match expr {
        Expr::VectorSelector(selector) => drop(&mut selector.matchers.matchers),
        Expr::MatrixSelector(matrix) => drop(&mut matrix.vs.matchers.matchers),
        Expr::Aggregate(aggregate) => {
            if let Some(param) = aggregate.param.as_deref_mut() {
                without_tenant_matchers(param);
            }
            without_tenant_matchers(&mut aggregate.expr);
        }
        Expr::Unary(unary) => without_tenant_matchers(&mut unary.expr),
        Expr::Binary(binary) => {
            without_tenant_matchers(&mut binary.lhs);
            without_tenant_matchers(&mut binary.rhs);
        }
        Expr::Paren(paren) => without_tenant_matchers(&mut paren.expr),
        Expr::Subquery(subquery) => without_tenant_matchers(&mut subquery.expr),
        Expr::Call(call) => call
            .args
            .args
            .iter_mut()
            .for_each(|a| without_tenant_matchers(a)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// A selector left with no matcher at all once the tenant's is taken out cannot be
/// parsed back, so both sides are compared as trees, not text.
fn check(text: &str) -> Result<bool, TestCaseError> {
    let Ok(mut original) = parser::parse(text) else {
        return Ok(false);
    };
    match scope_expression(text, &SCOPE) {
        Ok(scoped_text) => {
            let mut scoped = parser::parse(&scoped_text).map_err(|err| {
                TestCaseError::fail(format!("{scoped_text:?} does not parse: {err}"))
            })?;
            prop_assert!(
                every_selector_scoped(&scoped, &SCOPE),
                "a selector of {scoped_text:?} is not scoped"
            );
            without_tenant_matchers(&mut original);
            without_tenant_matchers(&mut scoped);
            prop_assert_eq!(
                original,
                scoped,
                "{:?} changed beyond its tenant matchers",
                text
            );
            Ok(true)
        }
        // The only refusals the grammar can meet are the documented ones.
        Err(ScopeError::NotReprintable) => {
            if std::env::var_os("SHOW_UNPRINTABLE").is_some() {
                eprintln!("not reprintable: {text}");
            }
            Ok(false)
        }
        Err(other) => Err(TestCaseError::fail(format!("{text:?} refused: {other}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn any_parseable_expression_is_scoped_and_otherwise_unchanged(text in expression()) {
        check(&text)?;
    }

    #[test]
    fn any_parseable_selector_is_scoped(text in selector()) {
        let Ok(Expr::VectorSelector(original)) = parser::parse(&text) else {
            return Ok(());
        };
        match scope_selector(&text, &SCOPE) {
            Ok(scoped_text) => {
                let scoped = parser::parse(&scoped_text).expect("scoped selector parses");
                prop_assert!(every_selector_scoped(&scoped, &SCOPE));
                prop_assert!(original.offset.is_none() && original.at.is_none());
            }
            Err(ScopeError::NotSelector(_)) => {
                prop_assert!(original.offset.is_some() || original.at.is_some());
            }
            Err(ScopeError::NotReprintable) => {}
            Err(other) => prop_assert!(false, "{text:?}: {other}"),
        }
    }
}

/// Most generated expressions must be accepted, or the property says little.
#[test]
fn the_grammar_mostly_produces_accepted_expressions() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = expression();
    let (mut parsed, mut scoped) = (0, 0);
    for _ in 0..1000 {
        let text = strategy.new_tree(&mut runner).expect("tree").current();
        if parser::parse(&text).is_ok() {
            parsed += 1;
            if check(&text).expect("property holds") {
                scoped += 1;
            }
        }
    }
    assert!(
        parsed > 300,
        "only {parsed} of 1000 generated expressions parse"
    );
    assert!(
        scoped * 10 >= parsed * 9,
        "only {scoped} of {parsed} were scoped"
    );
}
