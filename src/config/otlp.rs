//! The `[otlp]` section: how OpenTelemetry metrics are translated into Prometheus series
//! (DESIGN §12). The keys and their defaults are those of Prometheus' own `otlp` config
//! block (`config.OTLPConfig`, `DefaultOTLPConfig`), so an operator moving an OTLP
//! pipeline from Prometheus to promgate keeps the same series.

use std::collections::BTreeSet;

use serde::Deserialize;

/// How metric and label names are translated (Prometheus' `translation_strategy`,
/// `otlptranslator.TranslationStrategyOption`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationStrategy {
    /// Invalid characters become `_`; unit and type suffixes are added. The default.
    UnderscoreEscapingWithSuffixes,
    /// Invalid characters become `_`; no suffixes.
    UnderscoreEscapingWithoutSuffixes,
    /// Names kept as sent (UTF-8), suffixes added.
    NoUtf8EscapingWithSuffixes,
    /// Names kept as sent, no suffixes.
    NoTranslation,
}

impl TranslationStrategy {
    /// Whether names are escaped to the legacy character set.
    pub fn escapes(self) -> bool {
        matches!(
            self,
            TranslationStrategy::UnderscoreEscapingWithSuffixes
                | TranslationStrategy::UnderscoreEscapingWithoutSuffixes
        )
    }

    /// Whether unit, `_total` and `_ratio` suffixes are added.
    pub fn adds_suffixes(self) -> bool {
        matches!(
            self,
            TranslationStrategy::UnderscoreEscapingWithSuffixes
                | TranslationStrategy::NoUtf8EscapingWithSuffixes
        )
    }

    fn parse(text: &str) -> Option<TranslationStrategy> {
        Some(match text {
            "UnderscoreEscapingWithSuffixes" => TranslationStrategy::UnderscoreEscapingWithSuffixes,
            "UnderscoreEscapingWithoutSuffixes" => {
                TranslationStrategy::UnderscoreEscapingWithoutSuffixes
            }
            "NoUTF8EscapingWithSuffixes" => TranslationStrategy::NoUtf8EscapingWithSuffixes,
            "NoTranslation" => TranslationStrategy::NoTranslation,
            _ => return None,
        })
    }
}

/// Which resource attributes become labels on every series of the resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Promotion {
    /// `promote_resource_attributes`: these (none by default).
    Listed(BTreeSet<String>),
    /// `promote_all_resource_attributes = true`: all but `ignore_resource_attributes`.
    AllExcept(BTreeSet<String>),
}

impl Promotion {
    pub fn promotes(&self, attribute: &str) -> bool {
        match self {
            Promotion::Listed(listed) => listed.contains(attribute),
            Promotion::AllExcept(ignored) => !ignored.contains(attribute),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Promotion::Listed(listed) if listed.is_empty())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    pub translation_strategy: TranslationStrategy,
    pub promotion: Promotion,
    /// Also keep `service.name`, `service.namespace` and `service.instance.id` on
    /// `target_info` (they are always on every series as `job` and `instance`).
    pub keep_identifying_resource_attributes: bool,
    /// Prefix `key` to label names that start with a single `_` (Prometheus' default,
    /// kept for backwards compatibility).
    pub label_name_underscore_sanitization: bool,
    /// Keep runs of `_` in escaped label names instead of collapsing them (Prometheus'
    /// default, kept for backwards compatibility).
    pub label_name_preserve_multiple_underscores: bool,
    /// Accept delta-temporality sums and histograms and store their points as they come
    /// (Prometheus' `otlp-native-delta-ingestion` feature). Off: they are refused.
    pub allow_delta_temporality: bool,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            translation_strategy: TranslationStrategy::UnderscoreEscapingWithSuffixes,
            promotion: Promotion::Listed(BTreeSet::new()),
            keep_identifying_resource_attributes: false,
            label_name_underscore_sanitization: true,
            label_name_preserve_multiple_underscores: true,
            allow_delta_temporality: false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawOtlp {
    translation_strategy: Option<String>,
    promote_resource_attributes: Option<Vec<String>>,
    promote_all_resource_attributes: Option<bool>,
    ignore_resource_attributes: Option<Vec<String>>,
    keep_identifying_resource_attributes: Option<bool>,
    label_name_underscore_sanitization: Option<bool>,
    label_name_preserve_multiple_underscores: Option<bool>,
    allow_delta_temporality: Option<bool>,
}

impl RawOtlp {
    /// Checks the section the way Prometheus checks its `otlp` block.
    pub(super) fn validate(self, problems: &mut Vec<String>) -> OtlpConfig {
        let defaults = OtlpConfig::default();
        let translation_strategy = match self.translation_strategy.as_deref() {
            None => defaults.translation_strategy,
            Some(text) => TranslationStrategy::parse(text).unwrap_or_else(|| {
                problems.push(format!(
                    "otlp.translation_strategy: {text:?} must be one of \"UnderscoreEscapingWithSuffixes\", \
                     \"UnderscoreEscapingWithoutSuffixes\", \"NoUTF8EscapingWithSuffixes\", \"NoTranslation\""
                ));
                defaults.translation_strategy
            }),
        };
        let promotion = if self.promote_all_resource_attributes.unwrap_or(false) {
            if self.promote_resource_attributes.is_some() {
                problems.push(
                    "otlp: promote_all_resource_attributes and promote_resource_attributes cannot both be set"
                        .into(),
                );
            }
            Promotion::AllExcept(attribute_set(
                "otlp.ignore_resource_attributes",
                self.ignore_resource_attributes.unwrap_or_default(),
                problems,
            ))
        } else {
            if self.ignore_resource_attributes.is_some() {
                problems.push(
                    "otlp.ignore_resource_attributes needs promote_all_resource_attributes = true"
                        .into(),
                );
            }
            Promotion::Listed(attribute_set(
                "otlp.promote_resource_attributes",
                self.promote_resource_attributes.unwrap_or_default(),
                problems,
            ))
        };
        OtlpConfig {
            translation_strategy,
            promotion,
            keep_identifying_resource_attributes: self
                .keep_identifying_resource_attributes
                .unwrap_or(defaults.keep_identifying_resource_attributes),
            label_name_underscore_sanitization: self
                .label_name_underscore_sanitization
                .unwrap_or(defaults.label_name_underscore_sanitization),
            label_name_preserve_multiple_underscores: self
                .label_name_preserve_multiple_underscores
                .unwrap_or(defaults.label_name_preserve_multiple_underscores),
            allow_delta_temporality: self
                .allow_delta_temporality
                .unwrap_or(defaults.allow_delta_temporality),
        }
    }
}

/// Attribute names, trimmed; empty and repeated ones are problems (as in Prometheus).
fn attribute_set(key: &str, names: Vec<String>, problems: &mut Vec<String>) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for name in names {
        let name = name.trim().to_string();
        if name.is_empty() {
            problems.push(format!("{key}: an attribute name is empty"));
        } else if !set.insert(name.clone()) {
            problems.push(format!("{key}: {name:?} is listed twice"));
        }
    }
    set
}
