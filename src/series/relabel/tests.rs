//! The cases of Prometheus' `model/relabel/relabel_test.go` (`TestRelabel`,
//! `TestRelabelValidate`, `TestTargetLabelValidity`), ported case by case, and
//! promgate's own: protected labels, bounds, defaults and sorting.

use serde_json::json;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    let mut labels: Vec<Label> = pairs
        .iter()
        .map(|(name, value)| Label {
            name: (*name).into(),
            value: (*value).into(),
        })
        .collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

fn rules(configs: serde_json::Value) -> RelabelRules {
    let configs: Vec<RelabelConfig> = serde_json::from_value(configs).expect("configs");
    RelabelRules::compile(&configs).expect("valid rules")
}

const WIDE: Bounds = Bounds {
    max_labels: 1000,
    max_name_bytes: 1 << 16,
    max_value_bytes: 1 << 16,
};

/// Runs `configs` over `input`: `None` when the series is dropped.
fn process(input: &[(&str, &str)], configs: serde_json::Value) -> Option<Vec<Label>> {
    let mut series = labels(input);
    match rules(configs)
        .apply(&mut series, &[], WIDE)
        .expect("within bounds")
    {
        Relabeled::Keep => Some(series),
        Relabeled::Dropped => None,
    }
}

fn problems(configs: serde_json::Value) -> Vec<String> {
    let configs: Vec<RelabelConfig> = serde_json::from_value(configs).expect("configs");
    RelabelRules::compile(&configs).expect_err("invalid rules")
}

#[test]
fn replace_with_braced_references() {
    let out = process(
        &[("a", "foo"), ("b", "bar"), ("c", "baz")],
        json!([{"source_labels": ["a"], "regex": "f(.*)", "target_label": "d",
                "separator": ";", "replacement": "ch${1}-ch${1}", "action": "replace"}]),
    );
    assert_eq!(
        out,
        Some(labels(&[
            ("a", "foo"),
            ("b", "bar"),
            ("c", "baz"),
            ("d", "choo-choo")
        ]))
    );
}

#[test]
fn replace_chained_over_several_source_labels() {
    let out = process(
        &[("a", "foo"), ("b", "bar"), ("c", "baz")],
        json!([
            {"source_labels": ["a", "b"], "regex": "f(.*);(.*)r", "target_label": "a",
             "separator": ";", "replacement": "b${1}${2}m", "action": "replace"},
            {"source_labels": ["c", "a"], "regex": "(b).*b(.*)ba(.*)", "target_label": "d",
             "separator": ";", "replacement": "$1$2$2$3", "action": "replace"}
        ]),
    );
    assert_eq!(
        out,
        Some(labels(&[
            ("a", "boobam"),
            ("b", "bar"),
            ("c", "baz"),
            ("d", "boooom")
        ]))
    );
}

#[test]
fn drop_stops_before_later_rules() {
    let out = process(
        &[("a", "foo")],
        json!([
            {"source_labels": ["a"], "regex": ".*o.*", "action": "drop"},
            {"source_labels": ["a"], "regex": "f(.*)", "target_label": "d",
             "separator": ";", "replacement": "ch$1-ch$1", "action": "replace"}
        ]),
    );
    assert_eq!(out, None);
}

#[test]
fn drop_on_match() {
    let out = process(
        &[("a", "foo"), ("b", "bar")],
        json!([{"source_labels": ["a"], "regex": ".*o.*", "action": "drop"}]),
    );
    assert_eq!(out, None);
}

#[test]
fn replace_with_a_group_inside_the_match() {
    let out = process(
        &[("a", "abc")],
        json!([{"source_labels": ["a"], "regex": ".*(b).*", "target_label": "d",
                "separator": ";", "replacement": "$1", "action": "replace"}]),
    );
    assert_eq!(out, Some(labels(&[("a", "abc"), ("d", "b")])));
}

#[test]
fn drop_without_a_match_keeps() {
    let out = process(
        &[("a", "foo")],
        json!([{"source_labels": ["a"], "regex": "no-match", "action": "drop"}]),
    );
    assert_eq!(out, Some(labels(&[("a", "foo")])));
}

#[test]
fn regexes_are_anchored() {
    // `f|o` matches neither all of "foo" nor, anchored, any of it.
    let out = process(
        &[("a", "foo")],
        json!([{"source_labels": ["a"], "regex": "f|o", "action": "drop"}]),
    );
    assert_eq!(out, Some(labels(&[("a", "foo")])));
}

#[test]
fn keep_without_a_match_drops() {
    let out = process(
        &[("a", "foo")],
        json!([{"source_labels": ["a"], "regex": "no-match", "action": "keep"}]),
    );
    assert_eq!(out, None);
}

#[test]
fn keep_on_match() {
    let out = process(
        &[("a", "foo")],
        json!([{"source_labels": ["a"], "regex": "f.*", "action": "keep"}]),
    );
    assert_eq!(out, Some(labels(&[("a", "foo")])));
}

#[test]
fn no_replacement_without_a_match() {
    let out = process(
        &[("a", "boo")],
        json!([{"source_labels": ["a"], "regex": "f", "target_label": "b",
                "replacement": "bar", "action": "replace"}]),
    );
    assert_eq!(out, Some(labels(&[("a", "boo")])));
}

#[test]
fn hashmod_matches_prometheus() {
    let out = process(
        &[("a", "foo"), ("b", "bar"), ("c", "baz")],
        json!([{"source_labels": ["c"], "target_label": "d", "separator": ";",
                "action": "hashmod", "modulus": 1000}]),
    );
    assert_eq!(
        out,
        Some(labels(&[
            ("a", "foo"),
            ("b", "bar"),
            ("c", "baz"),
            ("d", "976")
        ]))
    );
    let out = process(
        &[("a", "foo\nbar")],
        json!([{"source_labels": ["a"], "target_label": "b", "separator": ";",
                "action": "hashmod", "modulus": 1000}]),
    );
    assert_eq!(out, Some(labels(&[("a", "foo\nbar"), ("b", "734")])));
}

#[test]
fn labelmap_copies_matching_names() {
    let out = process(
        &[("a", "foo"), ("b1", "bar"), ("b2", "baz")],
        json!([{"regex": "(b.*)", "replacement": "bar_${1}", "action": "labelmap"}]),
    );
    assert_eq!(
        out,
        Some(labels(&[
            ("a", "foo"),
            ("b1", "bar"),
            ("b2", "baz"),
            ("bar_b1", "bar"),
            ("bar_b2", "baz")
        ]))
    );
    let out = process(
        &[
            ("a", "foo"),
            ("__meta_my_bar", "aaa"),
            ("__meta_my_baz", "bbb"),
            ("__meta_other", "ccc"),
        ],
        json!([{"regex": "__meta_(my.*)", "replacement": "${1}", "action": "labelmap"}]),
    );
    assert_eq!(
        out,
        Some(labels(&[
            ("a", "foo"),
            ("__meta_my_bar", "aaa"),
            ("__meta_my_baz", "bbb"),
            ("__meta_other", "ccc"),
            ("my_bar", "aaa"),
            ("my_baz", "bbb")
        ]))
    );
}

#[test]
fn target_label_from_a_reference() {
    let out = process(
        &[("a", "some-name-value")],
        json!([{"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)",
                "action": "replace", "replacement": "${2}", "target_label": "${1}"}]),
    );
    assert_eq!(
        out,
        Some(labels(&[("a", "some-name-value"), ("name", "value")]))
    );
}

#[test]
fn an_empty_replacement_writes_nothing() {
    let out = process(
        &[("a", "some-name-value")],
        json!([{"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)",
                "action": "replace", "replacement": "${3}", "target_label": "${1}"}]),
    );
    assert_eq!(out, Some(labels(&[("a", "some-name-value")])));
}

#[test]
fn an_invalid_expanded_target_writes_nothing() {
    let out = process(
        &[("a", "some-name-0")],
        json!([
            {"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)",
             "action": "replace", "replacement": "${1}", "target_label": "${3}"},
            {"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)",
             "action": "replace", "replacement": "${1}", "target_label": "${3}"},
            {"source_labels": ["a"], "regex": "some-([^-]+)(-[^,]+)",
             "action": "replace", "replacement": "${1}", "target_label": "${3}"}
        ]),
    );
    assert_eq!(out, Some(labels(&[("a", "some-name-0")])));
}

#[test]
fn real_life_tags_parsed_into_labels() {
    let out = process(
        &[("__meta_sd_tags", "path:/secret,job:some-job,label:foo=bar")],
        json!([
            {"source_labels": ["__meta_sd_tags"], "regex": "(?:.+,|^)path:(/[^,]+).*",
             "action": "replace", "replacement": "${1}", "target_label": "__metrics_path__"},
            {"source_labels": ["__meta_sd_tags"], "regex": "(?:.+,|^)job:([^,]+).*",
             "action": "replace", "replacement": "${1}", "target_label": "job"},
            {"source_labels": ["__meta_sd_tags"], "regex": "(?:.+,|^)label:([^=]+)=([^,]+).*",
             "action": "replace", "replacement": "${2}", "target_label": "${1}"}
        ]),
    );
    assert_eq!(
        out,
        Some(labels(&[
            ("__meta_sd_tags", "path:/secret,job:some-job,label:foo=bar"),
            ("__metrics_path__", "/secret"),
            ("job", "some-job"),
            ("foo", "bar")
        ]))
    );
}

#[test]
fn labeldrop_then_replace_then_keep() {
    // prometheus/prometheus#12283.
    let out = process(
        &[
            ("__meta_kubernetes_pod_container_port_name", "foo"),
            ("__meta_kubernetes_pod_annotation_XXX_metrics_port", "9091"),
        ],
        json!([
            {"regex": "^__meta_kubernetes_pod_container_port_name$", "action": "labeldrop"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_XXX_metrics_port"],
             "regex": "(.+)", "action": "replace", "replacement": "metrics",
             "target_label": "__meta_kubernetes_pod_container_port_name"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"],
             "regex": "^metrics$", "action": "keep"}
        ]),
    );
    assert_eq!(
        out,
        Some(labels(&[
            ("__meta_kubernetes_pod_annotation_XXX_metrics_port", "9091"),
            ("__meta_kubernetes_pod_container_port_name", "metrics")
        ]))
    );
}

#[test]
fn labelkeep_and_labeldrop() {
    let input = [("a", "foo"), ("b1", "bar"), ("b2", "baz")];
    assert_eq!(
        process(&input, json!([{"regex": "(b.*)", "action": "labelkeep"}])),
        Some(labels(&[("b1", "bar"), ("b2", "baz")]))
    );
    assert_eq!(
        process(&input, json!([{"regex": "(b.*)", "action": "labeldrop"}])),
        Some(labels(&[("a", "foo")]))
    );
}

#[test]
fn uppercase_and_lowercase() {
    let out = process(
        &[("foo", "bAr123Foo")],
        json!([
            {"source_labels": ["foo"], "action": "uppercase", "target_label": "foo_uppercase"},
            {"source_labels": ["foo"], "action": "lowercase", "target_label": "foo_lowercase"}
        ]),
    );
    assert_eq!(
        out,
        Some(labels(&[
            ("foo", "bAr123Foo"),
            ("foo_lowercase", "bar123foo"),
            ("foo_uppercase", "BAR123FOO")
        ]))
    );
}

#[test]
fn keepequal_and_dropequal() {
    let input = [
        ("__tmp_port", "1234"),
        ("__port1", "1234"),
        ("__port2", "5678"),
    ];
    let rule = |action: &str, target: &str| json!([{"source_labels": ["__tmp_port"], "action": action, "target_label": target}]);
    assert_eq!(
        process(&input, rule("keepequal", "__port1")),
        Some(labels(&input))
    );
    assert_eq!(process(&input, rule("dropequal", "__port1")), None);
    assert_eq!(
        process(&input, rule("dropequal", "__port2")),
        Some(labels(&input))
    );
    assert_eq!(process(&input, rule("keepequal", "__port2")), None);
}

#[test]
fn validation_follows_prometheus() {
    for (config, expected) in [
        (json!({"action": ""}), "unknown action"),
        (
            json!({"action": "replace"}),
            "replace requires a target_label",
        ),
        (
            json!({"action": "lowercase"}),
            "lowercase requires a target_label",
        ),
        (
            json!({"action": "lowercase", "target_label": "${3}"}),
            "\"${3}\" is not a valid target_label for lowercase",
        ),
        (
            json!({"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)",
                   "action": "replace", "replacement": "${1}", "target_label": "0${3}"}),
            "\"0${3}\" is not a valid target_label for replace",
        ),
        (
            json!({"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)",
                   "action": "replace", "replacement": "${1}", "target_label": "-${3}"}),
            "\"-${3}\" is not a valid target_label for replace",
        ),
    ] {
        let found = problems(json!([config]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("write_relabel_configs[0]: ") && found[0].contains(expected),
            "{found:?} should say {expected:?}"
        );
    }
    // A reference in the target of a replace is fine.
    rules(
        json!([{"source_labels": ["a"], "regex": "some-([^-]+)-([^,]+)",
                  "action": "replace", "replacement": "${1}", "target_label": "${3}"}]),
    );
}

#[test]
fn target_label_templates() {
    for (template, valid) in [
        ("-label", false),
        ("label", true),
        ("label${1}", true),
        ("${1}label", true),
        ("${1}", true),
        ("${", false),
        ("$", false),
        ("${}", false),
        ("foo${", false),
        ("$1", true),
        ("asd$2asd", true),
        ("-foo${1}bar-", false),
        ("_${1}_", true),
        ("foo${bar}foo", true),
    ] {
        assert_eq!(is_valid_template(template), valid, "{template}");
    }
}

#[test]
fn promgate_refuses_what_prometheus_refuses_and_more() {
    for (config, expected) in [
        (
            json!({"action": "hashmod", "target_label": "shard", "source_labels": ["a"]}),
            "non-zero modulus",
        ),
        (json!({"action": "Nonsense"}), "unknown action \"Nonsense\""),
        (
            json!({"action": "drop", "regex": "(", "source_labels": ["a"]}),
            "regex \"(\" is invalid",
        ),
        (
            json!({"action": "labeldrop", "regex": "a", "source_labels": ["x"]}),
            "labeldrop takes only a regex",
        ),
        (
            json!({"action": "labelkeep", "regex": "a", "target_label": "x"}),
            "labelkeep takes only a regex",
        ),
        (
            json!({"action": "labelmap", "regex": "a", "target_label": "x"}),
            "labelmap takes only a regex and a replacement",
        ),
        (
            json!({"action": "labelmap", "regex": "(a)", "replacement": "-$1"}),
            "not a valid replacement for labelmap",
        ),
        (
            json!({"action": "keepequal", "source_labels": ["a"], "target_label": "b", "regex": "x"}),
            "keepequal takes only source_labels and target_label",
        ),
        (
            json!({"action": "uppercase", "source_labels": ["a"], "target_label": "b", "replacement": "x"}),
            "uppercase takes no replacement",
        ),
        (
            json!({"action": "replace", "target_label": "bad-name"}),
            "\"bad-name\" is not a valid target_label",
        ),
        (
            json!({"action": "keep", "source_labels": ["not a name"]}),
            "source_labels: \"not a name\" is not a valid label name",
        ),
        (
            json!({"action": "drop", "source_labels": ["a"], "regex": "a{1000}{1000}"}),
            "regex",
        ),
        (
            json!({"action": "drop", "source_labels": ["a"], "regex": "a".repeat(5000)}),
            "over the limit of 4096",
        ),
    ] {
        let found = problems(json!([{"action": "drop", "source_labels": ["ok"]}, config]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("write_relabel_configs[1]: ") && found[0].contains(expected),
            "{found:?} should say {expected:?}"
        );
    }
    let many = vec![json!({"action": "drop", "source_labels": ["a"]}); MAX_RULES + 1];
    let found = problems(serde_json::Value::Array(many));
    assert!(found[0].contains("over the limit of 100"), "{found:?}");
}

#[test]
fn defaults_are_prometheus_defaults() {
    let config: RelabelConfig = serde_json::from_value(json!({})).expect("config");
    assert_eq!(config, RelabelConfig::default());
    assert_eq!(config.separator, ";");
    assert_eq!(config.regex, "(.*)");
    assert_eq!(config.replacement, "$1");
    assert_eq!(config.action, "replace");
    // The default rule copies the joined source labels into the target.
    let out = process(
        &[("a", "x"), ("b", "y")],
        json!([{"source_labels": ["a", "b"], "target_label": "c"}]),
    );
    assert_eq!(out, Some(labels(&[("a", "x"), ("b", "y"), ("c", "x;y")])));
    // An empty source with the default regex sets a literal replacement, or removes the
    // target when the replacement is empty.
    let out = process(
        &[("a", "x"), ("gone", "y")],
        json!([
            {"target_label": "added", "replacement": "lit"},
            {"target_label": "gone", "replacement": ""}
        ]),
    );
    assert_eq!(out, Some(labels(&[("a", "x"), ("added", "lit")])));
    // Actions are case-insensitive, as in Prometheus.
    assert_eq!(
        process(
            &[("a", "x")],
            json!([{"source_labels": ["a"], "action": "DROP"}])
        ),
        None
    );
}

#[test]
fn the_name_can_be_changed_and_labels_stay_sorted() {
    let out = process(
        &[("__name__", "http_requests"), ("zone", "eu"), ("a", "1")],
        json!([
            {"source_labels": ["__name__"], "regex": "http_(.*)", "target_label": "__name__",
             "replacement": "web_$1"},
            {"source_labels": ["zone"], "target_label": "b_region"}
        ]),
    )
    .expect("kept");
    assert_eq!(
        out,
        labels(&[
            ("__name__", "web_requests"),
            ("a", "1"),
            ("b_region", "eu"),
            ("zone", "eu")
        ])
    );
    assert!(out.windows(2).all(|pair| pair[0].name < pair[1].name));
}

#[test]
fn a_series_left_without_labels_is_dropped() {
    let out = process(
        &[("__name__", "up"), ("job", "a")],
        json!([{"regex": ".*", "action": "labeldrop"}]),
    );
    assert_eq!(out, None);
}

#[test]
fn protected_labels_come_out_as_they_went_in() {
    let rules = rules(json!([
        {"target_label": "tenant_id", "replacement": "victim"},
        {"target_label": "team", "replacement": "other"},
        {"regex": "env", "action": "labeldrop"},
        {"regex": "(tenant_id)", "replacement": "copy_$1", "action": "labelmap"}
    ]));
    let protected = ["tenant_id", "env", "team"];
    // The sender sent neither the tenant label nor `team`: they stay absent (a copy a
    // later rule made of what an earlier one wrote is an ordinary label).
    let mut series = labels(&[("__name__", "up"), ("env", "prod")]);
    assert_eq!(
        rules.apply(&mut series, &protected, WIDE),
        Ok(Relabeled::Keep)
    );
    assert_eq!(
        series,
        labels(&[
            ("__name__", "up"),
            ("copy_tenant_id", "victim"),
            ("env", "prod")
        ])
    );
    // What the sender sent there comes back; a copy made of it under another name stays.
    let mut series = labels(&[("__name__", "up"), ("tenant_id", "mine")]);
    rules.apply(&mut series, &protected, WIDE).expect("bounds");
    assert_eq!(
        series,
        labels(&[
            ("__name__", "up"),
            ("copy_tenant_id", "victim"),
            ("tenant_id", "mine")
        ])
    );
}

#[test]
fn a_series_grown_past_the_bounds_is_refused_naming_the_rule() {
    let tight = Bounds {
        max_labels: 4,
        max_name_bytes: 64,
        max_value_bytes: 16,
    };
    // labelmap doubling the labels.
    let rules_grow = rules(json!([
        {"source_labels": ["a"], "action": "drop", "regex": "never"},
        {"regex": "(.*)", "replacement": "x_$1", "action": "labelmap"}
    ]));
    let mut series = labels(&[("__name__", "up"), ("a", "1"), ("b", "2")]);
    let err = rules_grow
        .apply(&mut series, &[], tight)
        .expect_err("too many labels");
    assert_eq!(err.rule, 1);
    assert!(err.to_string().contains("max_labels_per_series"), "{err}");
    // A replacement repeating its input.
    let rules_long = rules(json!([
        {"source_labels": ["a"], "target_label": "a", "replacement": "$1$1$1$1$1$1$1$1"}
    ]));
    let mut series = labels(&[("__name__", "up"), ("a", "abcd")]);
    let err = rules_long
        .apply(&mut series, &[], tight)
        .expect_err("value too long");
    assert!(err.to_string().contains("max_label_value_bytes"), "{err}");
    // What the sender sent over the bounds is not the rules' doing.
    let mut series = labels(&[("__name__", "up"), ("a", &"v".repeat(40))]);
    let rules_none = rules(json!([{"source_labels": ["a"], "regex": "x", "action": "drop"}]));
    assert_eq!(
        rules_none.apply(&mut series, &[], tight),
        Ok(Relabeled::Keep)
    );
}

#[test]
fn no_rules_change_nothing() {
    let rules = RelabelRules::compile(&[]).expect("empty");
    assert!(rules.is_empty());
    let mut series = labels(&[("__name__", "up")]);
    assert_eq!(rules.apply(&mut series, &[], WIDE), Ok(Relabeled::Keep));
    assert_eq!(series, labels(&[("__name__", "up")]));
}

#[test]
fn stored_rules_round_trip() {
    let configs: Vec<RelabelConfig> = serde_json::from_value(json!([
        {"source_labels": ["__name__"], "regex": "go_.*", "action": "drop"},
        {"regex": "pod_uid", "action": "labeldrop"},
        {"source_labels": ["instance"], "modulus": 8, "target_label": "shard", "action": "hashmod"}
    ]))
    .expect("configs");
    let text = serde_json::to_string(&configs).expect("json");
    let back: Vec<RelabelConfig> = serde_json::from_str(&text).expect("back");
    assert_eq!(back, configs);
}
