//! Per-tenant `write_relabel_configs` (DESIGN §16): Prometheus `relabel_config` rules,
//! with Prometheus' field names, defaults and semantics (`model/relabel` in
//! prometheus/prometheus), applied to each series of a tenant's writes before its labels
//! are enforced.
//!
//! - [`RelabelConfig`] is a rule as the admin API and the registry hold it;
//!   [`RelabelRules::compile`] checks a tenant's list the way Prometheus'
//!   `relabel.Config.Validate` does, names each problem with the rule's index, and bounds
//!   what a tenant can make promgate do ([`MAX_RULES`], regex and replacement sizes);
//! - [`RelabelRules::apply`] runs the rules over one series' labels, which stay sorted by
//!   name. A series a rule drops (`keep`, `drop`, `keepequal`, `dropequal`) or whose label
//!   set ends up empty is dropped: counted by the caller, never an error.
//!
//! Regexes are RE2 syntax (the `regex` crate, linear time), fully anchored as
//! `^(?:…)$` as Prometheus anchors them. Like Prometheus' `write_relabel_configs`, the
//! rules see a series' own labels, `__name__` included; labels starting with `__` stay
//! as they are unless a rule removes them.
//!
//! The tenant's enforced labels (the tenant label and `extra_labels`) are protected: a
//! rule may read what the sender put there, but whatever a rule does to them is undone
//! before enforcement sees the series, so a rule can never set, change or remove the
//! tenant label, and a rule that tries changes nothing in what reaches the backend.

use std::fmt;

use md5::{Digest, Md5};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::config::is_legacy_label_name;
use crate::proto::Label;

/// A tenant holds at most this many rules: each series pays for every rule.
pub const MAX_RULES: usize = 100;
/// A rule's regex, in bytes before anchoring.
pub const MAX_REGEX_BYTES: usize = 4096;
/// The compiled size of one regex (the `regex` crate's own limit is 10 MiB).
const MAX_REGEX_COMPILED_BYTES: usize = 1 << 20;
/// How deeply a regex may nest groups and repetitions.
const MAX_REGEX_NESTING: u32 = 64;
/// `source_labels` per rule.
pub const MAX_SOURCE_LABELS: usize = 32;
/// `target_label`, `replacement`, `separator` and each source label name, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;

const DEFAULT_SEPARATOR: &str = ";";
const DEFAULT_REGEX: &str = "(.*)";
const DEFAULT_REPLACEMENT: &str = "$1";

fn default_separator() -> String {
    DEFAULT_SEPARATOR.into()
}
fn default_regex() -> String {
    DEFAULT_REGEX.into()
}
fn default_replacement() -> String {
    DEFAULT_REPLACEMENT.into()
}
fn default_action() -> String {
    "replace".into()
}
fn is_zero(modulus: &u64) -> bool {
    *modulus == 0
}

/// One `relabel_config` as written in the tenant record: Prometheus' field names and
/// defaults. The action is kept as written (Prometheus accepts any case) and checked by
/// [`RelabelRules::compile`], so an unknown action is refused naming its rule. Unknown
/// fields are not denied here: the admin API refuses them with their path
/// (`write_relabel_configs.2.acton`), which names the rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelabelConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_labels: Vec<String>,
    #[serde(default = "default_separator")]
    pub separator: String,
    #[serde(default = "default_regex")]
    pub regex: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub modulus: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_label: String,
    #[serde(default = "default_replacement")]
    pub replacement: String,
    #[serde(default = "default_action")]
    pub action: String,
}

impl Default for RelabelConfig {
    fn default() -> Self {
        RelabelConfig {
            source_labels: Vec::new(),
            separator: default_separator(),
            regex: default_regex(),
            modulus: 0,
            target_label: String::new(),
            replacement: default_replacement(),
            action: default_action(),
        }
    }
}

/// Prometheus' relabel actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

impl Action {
    fn parse(text: &str) -> Option<Action> {
        Some(match text.to_ascii_lowercase().as_str() {
            "replace" => Action::Replace,
            "keep" => Action::Keep,
            "drop" => Action::Drop,
            "keepequal" => Action::KeepEqual,
            "dropequal" => Action::DropEqual,
            "hashmod" => Action::HashMod,
            "labelmap" => Action::LabelMap,
            "labeldrop" => Action::LabelDrop,
            "labelkeep" => Action::LabelKeep,
            "lowercase" => Action::Lowercase,
            "uppercase" => Action::Uppercase,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::KeepEqual => "keepequal",
            Action::DropEqual => "dropequal",
            Action::HashMod => "hashmod",
            Action::LabelMap => "labelmap",
            Action::LabelDrop => "labeldrop",
            Action::LabelKeep => "labelkeep",
            Action::Lowercase => "lowercase",
            Action::Uppercase => "uppercase",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule ready to run.
#[derive(Clone, Debug)]
struct Rule {
    source_labels: Vec<String>,
    separator: String,
    regex: Regex,
    /// The regex is the default `(.*)`: Prometheus' fast path for `replace` applies.
    default_regex: bool,
    modulus: u64,
    target_label: String,
    replacement: String,
    action: Action,
}

/// A tenant's compiled rules, in order. Empty for a tenant without rules, which then
/// pays nothing on the write path.
#[derive(Clone, Debug, Default)]
pub struct RelabelRules {
    rules: Vec<Rule>,
}

/// What one series came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relabeled {
    /// Keep it, with its labels as the rules left them.
    Keep,
    /// A rule dropped it, or its label set ended up empty.
    Dropped,
}

/// A series the rules grew past the tenant's limits: the request is refused, as the
/// validation after relabeling would refuse it, before more memory is spent on it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("write_relabel_configs[{rule}] made a series {problem}")]
pub struct Overgrown {
    pub rule: usize,
    pub problem: String,
}

/// The bounds a relabeled series must stay within (the tenant's own label limits).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_labels: usize,
    pub max_name_bytes: usize,
    pub max_value_bytes: usize,
}

impl Bounds {
    /// These bounds, raised to what `labels` already holds.
    fn at_least(self, labels: &[Label]) -> Bounds {
        let mut bounds = self;
        bounds.max_labels = bounds.max_labels.max(labels.len());
        for label in labels {
            bounds.max_name_bytes = bounds.max_name_bytes.max(label.name.len());
            bounds.max_value_bytes = bounds.max_value_bytes.max(label.value.len());
        }
        bounds
    }
}

/// Series and samples (float, histogram and exemplar, as the samples limit counts them)
/// that rules dropped from one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub series: u64,
    pub samples: u64,
}

/// `target_label` and labelmap `replacement` templates: label-name characters and
/// `$name` / `${name}` references (Prometheus' `relabelTarget`, ASCII word characters).
fn is_valid_template(text: &str) -> bool {
    static TEMPLATE: std::sync::OnceLock<Option<Regex>> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            Regex::new(r"^(?:(?:[a-zA-Z_]|\$(?:\{[0-9A-Za-z_]+\}|[0-9A-Za-z_]+))+[0-9A-Za-z_]*)+$")
                .ok()
        })
        .as_ref()
        .is_some_and(|template| template.is_match(text))
}

fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_REGEX_BYTES {
        return Err(format!(
            "regex is {} bytes, over the limit of {MAX_REGEX_BYTES}",
            pattern.len()
        ));
    }
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(MAX_REGEX_COMPILED_BYTES)
        .dfa_size_limit(MAX_REGEX_COMPILED_BYTES)
        .nest_limit(MAX_REGEX_NESTING)
        .build()
        .map_err(|err| {
            let detail = err.to_string();
            let last = detail
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("does not compile")
                .trim()
                .trim_start_matches("error: ");
            format!("regex {pattern:?} is invalid: {last}")
        })
}

/// Checks one rule as Prometheus' `relabel.Config.Validate` does, plus promgate's
/// bounds; the first problem found.
fn compile_rule(config: &RelabelConfig) -> Result<Rule, String> {
    let action = Action::parse(&config.action).ok_or_else(|| {
        format!(
            "unknown action {:?}; use replace, keep, drop, keepequal, dropequal, hashmod, \
             labelmap, labeldrop, labelkeep, lowercase or uppercase",
            config.action
        )
    })?;
    if config.source_labels.len() > MAX_SOURCE_LABELS {
        return Err(format!(
            "source_labels lists {} labels, over the limit of {MAX_SOURCE_LABELS}",
            config.source_labels.len()
        ));
    }
    for name in &config.source_labels {
        if !is_legacy_label_name(name) || name.len() > MAX_FIELD_BYTES {
            return Err(format!("source_labels: {name:?} is not a valid label name"));
        }
    }
    for (field, value) in [
        ("target_label", &config.target_label),
        ("replacement", &config.replacement),
        ("separator", &config.separator),
    ] {
        if value.len() > MAX_FIELD_BYTES {
            return Err(format!(
                "{field} is {} bytes, over the limit of {MAX_FIELD_BYTES}",
                value.len()
            ));
        }
    }
    let target = config.target_label.as_str();
    if action == Action::HashMod && config.modulus == 0 {
        return Err("hashmod requires a non-zero modulus".into());
    }
    let needs_target = matches!(
        action,
        Action::Replace
            | Action::HashMod
            | Action::Lowercase
            | Action::Uppercase
            | Action::KeepEqual
            | Action::DropEqual
    );
    if needs_target && target.is_empty() {
        return Err(format!("{action} requires a target_label"));
    }
    let target_ok = match action {
        Action::Replace if target.contains('$') => is_valid_template(target),
        _ if needs_target => is_legacy_label_name(target),
        _ => true,
    };
    if !target_ok {
        return Err(format!(
            "{target:?} is not a valid target_label for {action}"
        ));
    }
    let takes_no_replacement = matches!(
        action,
        Action::Lowercase | Action::Uppercase | Action::KeepEqual | Action::DropEqual
    );
    if takes_no_replacement && config.replacement != DEFAULT_REPLACEMENT {
        return Err(format!("{action} takes no replacement"));
    }
    if action == Action::LabelMap && !is_valid_template(&config.replacement) {
        return Err(format!(
            "{:?} is not a valid replacement for labelmap (a label name, with $1 or ${{name}} references)",
            config.replacement
        ));
    }
    if matches!(action, Action::KeepEqual | Action::DropEqual)
        && (config.regex != DEFAULT_REGEX
            || config.modulus != 0
            || config.separator != DEFAULT_SEPARATOR)
    {
        return Err(format!(
            "{action} takes only source_labels and target_label, no other fields"
        ));
    }
    if matches!(action, Action::LabelDrop | Action::LabelKeep)
        && (!config.source_labels.is_empty()
            || !target.is_empty()
            || config.modulus != 0
            || config.separator != DEFAULT_SEPARATOR
            || config.replacement != DEFAULT_REPLACEMENT)
    {
        return Err(format!("{action} takes only a regex, no other fields"));
    }
    if action == Action::LabelMap
        && (!config.source_labels.is_empty()
            || !target.is_empty()
            || config.modulus != 0
            || config.separator != DEFAULT_SEPARATOR)
    {
        return Err("labelmap takes only a regex and a replacement, no other fields".into());
    }
    if action != Action::HashMod && config.modulus != 0 {
        return Err(format!("{action} takes no modulus"));
    }
    let regex = compile_regex(&config.regex)?;
    Ok(Rule {
        source_labels: config.source_labels.clone(),
        separator: config.separator.clone(),
        regex,
        default_regex: config.regex == DEFAULT_REGEX,
        modulus: config.modulus,
        target_label: config.target_label.clone(),
        replacement: config.replacement.clone(),
        action,
    })
}

impl RelabelRules {
    /// Compiles a tenant's rules; every problem, each naming its rule's index as
    /// `write_relabel_configs[i]`.
    pub fn compile(configs: &[RelabelConfig]) -> Result<RelabelRules, Vec<String>> {
        if configs.len() > MAX_RULES {
            return Err(vec![format!(
                "write_relabel_configs holds {} rules, over the limit of {MAX_RULES}",
                configs.len()
            )]);
        }
        let mut rules = Vec::with_capacity(configs.len());
        let mut problems = Vec::new();
        for (index, config) in configs.iter().enumerate() {
            match compile_rule(config) {
                Ok(rule) => rules.push(rule),
                Err(problem) => problems.push(format!("write_relabel_configs[{index}]: {problem}")),
            }
        }
        if problems.is_empty() {
            Ok(RelabelRules { rules })
        } else {
            Err(problems)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Runs every rule over `labels` (sorted by name, names unique), in order. The labels
    /// named in `protected` come out exactly as they went in, whatever the rules did to
    /// them. `Err` when a rule grew the series past `bounds`.
    pub fn apply(
        &self,
        labels: &mut Vec<Label>,
        protected: &[&str],
        bounds: Bounds,
    ) -> Result<Relabeled, Overgrown> {
        if self.rules.is_empty() {
            return Ok(Relabeled::Keep);
        }
        let saved: Vec<Option<String>> = protected
            .iter()
            .map(|name| get(labels, name).map(str::to_string))
            .collect();
        // A series that came over the bounds is the validation's to refuse, in its own
        // words; only what a rule adds is measured here.
        let bounds = bounds.at_least(labels);
        let mut set = LabelSet { labels };
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.run(&mut set) {
                return Ok(Relabeled::Dropped);
            }
            set.check(index, bounds)?;
        }
        for (name, value) in protected.iter().zip(saved) {
            match value {
                Some(value) => set.set(name, value),
                None => set.delete(name),
            }
        }
        if set.labels.is_empty() {
            return Ok(Relabeled::Dropped);
        }
        Ok(Relabeled::Keep)
    }
}

fn get<'l>(labels: &'l [Label], name: &str) -> Option<&'l str> {
    labels
        .binary_search_by(|label| label.name.as_str().cmp(name))
        .ok()
        .map(|at| labels[at].value.as_str())
}

/// A series' labels, kept sorted by name with unique names; as in Prometheus'
/// `labels.Builder`, setting an empty value removes the label.
struct LabelSet<'l> {
    labels: &'l mut Vec<Label>,
}

impl LabelSet<'_> {
    fn get(&self, name: &str) -> &str {
        get(self.labels, name).unwrap_or("")
    }

    fn set(&mut self, name: &str, value: String) {
        if value.is_empty() {
            self.delete(name);
            return;
        }
        match self
            .labels
            .binary_search_by(|label| label.name.as_str().cmp(name))
        {
            Ok(at) => self.labels[at].value = value,
            Err(at) => self.labels.insert(
                at,
                Label {
                    name: name.to_string(),
                    value,
                },
            ),
        }
    }

    fn delete(&mut self, name: &str) {
        if let Ok(at) = self
            .labels
            .binary_search_by(|label| label.name.as_str().cmp(name))
        {
            self.labels.remove(at);
        }
    }

    fn check(&self, rule: usize, bounds: Bounds) -> Result<(), Overgrown> {
        if self.labels.len() > bounds.max_labels {
            return Err(Overgrown {
                rule,
                problem: format!(
                    "carry {} labels, over max_labels_per_series of {}",
                    self.labels.len(),
                    bounds.max_labels
                ),
            });
        }
        for label in self.labels.iter() {
            if label.name.len() > bounds.max_name_bytes {
                return Err(Overgrown {
                    rule,
                    problem: format!(
                        "carry a label name of {} bytes, over max_label_name_bytes of {}",
                        label.name.len(),
                        bounds.max_name_bytes
                    ),
                });
            }
            if label.value.len() > bounds.max_value_bytes {
                return Err(Overgrown {
                    rule,
                    problem: format!(
                        "carry a value of {} bytes for {:?}, over max_label_value_bytes of {}",
                        label.value.len(),
                        label.name,
                        bounds.max_value_bytes
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Rule {
    /// The source labels' values joined by the separator (absent labels are empty).
    fn source_value(&self, set: &LabelSet<'_>) -> String {
        let mut value = String::new();
        for (at, name) in self.source_labels.iter().enumerate() {
            if at > 0 {
                value.push_str(&self.separator);
            }
            value.push_str(set.get(name));
        }
        value
    }

    /// Applies the rule; false when it drops the series.
    fn run(&self, set: &mut LabelSet<'_>) -> bool {
        let value = self.source_value(set);
        match self.action {
            Action::Drop => return !self.regex.is_match(&value),
            Action::Keep => return self.regex.is_match(&value),
            Action::DropEqual => return set.get(&self.target_label) != value,
            Action::KeepEqual => return set.get(&self.target_label) == value,
            Action::Replace => self.replace(set, &value),
            Action::Lowercase => set.set(&self.target_label, value.to_lowercase()),
            Action::Uppercase => set.set(&self.target_label, value.to_uppercase()),
            Action::HashMod => {
                let hash = Md5::digest(value.as_bytes());
                let mut low = [0u8; 8];
                low.copy_from_slice(&hash[8..]);
                let bucket = u64::from_be_bytes(low) % self.modulus;
                set.set(&self.target_label, bucket.to_string());
            }
            Action::LabelMap => {
                // Over the labels as they were before this rule, as Prometheus does.
                let before: Vec<Label> = set.labels.clone();
                for label in before {
                    if self.regex.is_match(&label.name) {
                        let name = self
                            .regex
                            .replace_all(&label.name, self.replacement.as_str());
                        // A name no label may have is not written (Prometheus would send
                        // it and the backend would refuse the whole request).
                        if is_legacy_label_name(&name) {
                            set.set(&name, label.value);
                        }
                    }
                }
            }
            Action::LabelDrop => set.labels.retain(|label| !self.regex.is_match(&label.name)),
            Action::LabelKeep => set.labels.retain(|label| self.regex.is_match(&label.name)),
        }
        true
    }

    fn replace(&self, set: &mut LabelSet<'_>, value: &str) {
        // Prometheus' fast path: an empty input with the default regex sets (or, with an
        // empty replacement, removes) the target as written.
        if value.is_empty()
            && self.default_regex
            && !self.target_label.contains('$')
            && !self.replacement.contains('$')
        {
            set.set(&self.target_label, self.replacement.clone());
            return;
        }
        // No match, no replacement.
        let Some(captures) = self.regex.captures(value) else {
            return;
        };
        let mut target = String::new();
        captures.expand(&self.target_label, &mut target);
        if !is_legacy_label_name(&target) {
            return;
        }
        let mut replaced = String::new();
        captures.expand(&self.replacement, &mut replaced);
        if replaced.is_empty() {
            set.delete(&target);
        } else {
            set.set(&target, replaced);
        }
    }
}

#[cfg(test)]
mod tests;
