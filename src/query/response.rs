//! The backend's query API answers, made the tenant's (DESIGN §13): series whose tenant
//! label names another tenant are dropped and counted (defence in depth: the backend
//! ignored the matcher); the tenant label is stripped when `strip_label_on_read`;
//! label-name answers never list the tenant label, label-value answers never another
//! tenant's value; `metadata` keeps the metric names the tenant has series of. Error
//! answers keep Prometheus' JSON shape.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::params::Api;

/// How answers are made the tenant's.
#[derive(Clone, Debug)]
pub struct ResponseScope {
    pub label: String,
    pub value: String,
    pub strip: bool,
}

/// What filtering saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    /// Series of another tenant the backend returned, dropped.
    pub foreign_series: u64,
}

/// The backend's successful answer is not what the endpoint returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend answer is not a Prometheus API response: {0}")]
pub struct UnexpectedAnswer(pub String);

impl ResponseScope {
    /// Writes a label set of the tenant's to `out` (without the tenant label when
    /// stripping); `false`, with nothing written, for another tenant's series or a label
    /// set that is not an object of strings under the tenant label. Every occurrence of
    /// the tenant label is checked, so a repeated key cannot smuggle another value past.
    fn own_labels(&self, labels: &RawValue, out: &mut Vec<u8>) -> Result<bool, UnexpectedAnswer> {
        let Ok(entries) = serde_json::from_str::<Entries<'_>>(labels.get()) else {
            return Ok(false);
        };
        let mut holds_label = false;
        for (name, value) in &entries.0 {
            if name.as_ref() == self.label {
                match serde_json::from_str::<JsonStr<'_>>(value.get()) {
                    Ok(JsonStr(text)) if text == self.value => holds_label = true,
                    _ => return Ok(false),
                }
            }
        }
        if self.strip && holds_label {
            write_object(&entries, out, |name, _, _| {
                Ok(if name == self.label {
                    Entry::Skip
                } else {
                    Entry::Keep
                })
            })?;
        } else {
            out.extend_from_slice(labels.get().as_bytes());
        }
        Ok(true)
    }

    /// Writes the entries of the list `items` whose label set (under `key`, or the entry
    /// itself) is the tenant's, each as the backend sent it but for a stripped tenant
    /// label; counts the others.
    fn filter_series(
        &self,
        items: &RawValue,
        key: Option<&str>,
        out: &mut Vec<u8>,
        filtered: &mut Filtered,
    ) -> Result<(), UnexpectedAnswer> {
        let items: Vec<&RawValue> = serde_json::from_str(items.get())
            .map_err(|_| UnexpectedAnswer("a series list is not a list".into()))?;
        out.push(b'[');
        let mut first = true;
        for item in items {
            let mark = out.len();
            if !first {
                out.push(b',');
            }
            let own = match key {
                None => self.own_labels(item, out)?,
                Some(key) => self.own_entry(item, key, out)?,
            };
            if own {
                first = false;
            } else {
                out.truncate(mark);
                filtered.foreign_series += 1;
            }
        }
        out.push(b']');
        Ok(())
    }

    /// One entry of a result list whose label set is under `key`: written when every
    /// `key` in it is the tenant's label set (and there is one).
    fn own_entry(
        &self,
        item: &RawValue,
        key: &str,
        out: &mut Vec<u8>,
    ) -> Result<bool, UnexpectedAnswer> {
        let Ok(entries) = serde_json::from_str::<Entries<'_>>(item.get()) else {
            return Ok(false);
        };
        if !entries.0.iter().any(|(name, _)| name.as_ref() == key) {
            return Ok(false);
        }
        let mut own = true;
        write_object(&entries, out, |name, value, out| {
            if name != key {
                // Only the fields Prometheus' answers have: nothing else passes unread.
                return Ok(if ENTRY_FIELDS.contains(&name) {
                    Entry::Keep
                } else {
                    Entry::Skip
                });
            }
            own &= self.own_labels(value, out)?;
            Ok(Entry::Written)
        })?;
        Ok(own)
    }
}

/// The fields of a result entry besides its label set (`metric`, `seriesLabels`).
const ENTRY_FIELDS: [&str; 5] = ["value", "values", "histogram", "histograms", "exemplars"];

/// A JSON object's entries in the order sent, each value left as its raw text: the
/// answer is filtered without building a tree of it (a `serde_json::Value` costs about
/// ten times the answer's size), and what is kept is passed on byte for byte.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Entries<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut entries = Vec::new();
                while let Some(JsonStr(name)) = map.next_key()? {
                    entries.push((name, map.next_value()?));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// A JSON string, borrowed unless it holds escapes.
struct JsonStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for JsonStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = JsonStr<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<JsonStr<'de>, E> {
                Ok(JsonStr(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<JsonStr<'de>, E> {
                Ok(JsonStr(Cow::Owned(text.to_string())))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// What to do with one entry of an object being written again.
enum Entry {
    /// Write the value as sent.
    Keep,
    /// Leave the entry out.
    Skip,
    /// The callback wrote the value.
    Written,
}

/// Writes `entries` as an object, each entry as `each` decides.
fn write_object<'a>(
    entries: &Entries<'a>,
    out: &mut Vec<u8>,
    mut each: impl FnMut(&str, &'a RawValue, &mut Vec<u8>) -> Result<Entry, UnexpectedAnswer>,
) -> Result<(), UnexpectedAnswer> {
    out.push(b'{');
    let mut first = true;
    for (name, value) in &entries.0 {
        let mark = out.len();
        if !first {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, name.as_ref())
            .map_err(|err| UnexpectedAnswer(err.to_string()))?;
        out.push(b':');
        match each(name, value, out)? {
            Entry::Keep => out.extend_from_slice(value.get().as_bytes()),
            Entry::Skip => {
                out.truncate(mark);
                continue;
            }
            Entry::Written => {}
        }
        first = false;
    }
    out.push(b'}');
    Ok(())
}

/// Makes a successful JSON answer of `api` the tenant's. `tenant_names` is the set of
/// metric names the tenant has series of (`metadata` only). The answers that carry
/// series (`query`, `query_range`, `series`, `query_exemplars`) are filtered without
/// building a tree of them: what is kept is copied as sent.
pub fn scope_json(
    api: &Api,
    body: &[u8],
    scope: &ResponseScope,
    tenant_names: Option<&HashSet<String>>,
) -> Result<(Vec<u8>, Filtered), UnexpectedAnswer> {
    match api {
        Api::Query | Api::QueryRange | Api::Series | Api::QueryExemplars => {
            scope_series_answer(api, body, scope)
        }
        _ => scope_small_answer(api, body, scope, tenant_names),
    }
}

/// The answers that list series, filtered on their raw text.
fn scope_series_answer(
    api: &Api,
    body: &[u8],
    scope: &ResponseScope,
) -> Result<(Vec<u8>, Filtered), UnexpectedAnswer> {
    let answer: Entries<'_> =
        serde_json::from_slice(body).map_err(|err| UnexpectedAnswer(err.to_string()))?;
    if !answer.0.iter().any(|(name, _)| name == "data") {
        return Err(UnexpectedAnswer("no \"data\"".into()));
    }
    let unexpected = |what: &str| UnexpectedAnswer(format!("\"data\" is not {what}"));
    let mut filtered = Filtered::default();
    let mut out = Vec::with_capacity(body.len());
    write_object(&answer, &mut out, |name, data, out| {
        if name != "data" {
            // Only the fields Prometheus' answers have: nothing else passes unread.
            return Ok(
                if ["status", "warnings", "infos", "isPartial", "stats"].contains(&name) {
                    Entry::Keep
                } else {
                    Entry::Skip
                },
            );
        }
        match api {
            Api::Query | Api::QueryRange => {
                let data: Entries<'_> =
                    serde_json::from_str(data.get()).map_err(|_| unexpected("an object"))?;
                // Every `resultType` must be one Prometheus sends (an unknown one could
                // carry label sets unfiltered), and any naming label sets has every
                // `result` filtered, whatever a repeated key says.
                let known = data.0.iter().any(|(name, _)| name == "resultType")
                    && data.0.iter().filter(|(name, _)| name == "resultType").all(|(_, value)| {
                        matches!(
                            serde_json::from_str::<JsonStr<'_>>(value.get()),
                            Ok(JsonStr(kind)) if ["vector", "matrix", "scalar", "string"].contains(&kind.as_ref())
                        )
                    });
                if !known {
                    return Err(unexpected("a result of a known type"));
                }
                let vector_like = data.0.iter().any(|(name, value)| {
                    name == "resultType"
                        && matches!(
                            serde_json::from_str::<JsonStr<'_>>(value.get()),
                            Ok(JsonStr(kind)) if kind == "vector" || kind == "matrix"
                        )
                });
                write_object(&data, out, |name, result, out| {
                    if vector_like && name == "result" {
                        scope.filter_series(result, Some("metric"), out, &mut filtered)?;
                        return Ok(Entry::Written);
                    }
                    Ok(if ["resultType", "result", "stats"].contains(&name) {
                        Entry::Keep
                    } else {
                        Entry::Skip
                    })
                })?;
            }
            Api::Series => scope.filter_series(data, None, out, &mut filtered)?,
            Api::QueryExemplars => {
                // VictoriaMetrics answers `null` when there is nothing.
                if data.get() == "null" {
                    return Ok(Entry::Keep);
                }
                scope.filter_series(data, Some("seriesLabels"), out, &mut filtered)?;
            }
            _ => return Err(unexpected("an answer listing series")),
        }
        Ok(Entry::Written)
    })?;
    Ok((out, filtered))
}

/// The answers of names and values (small by nature), filtered as a tree.
fn scope_small_answer(
    api: &Api,
    body: &[u8],
    scope: &ResponseScope,
    tenant_names: Option<&HashSet<String>>,
) -> Result<(Vec<u8>, Filtered), UnexpectedAnswer> {
    let mut answer: Value =
        serde_json::from_slice(body).map_err(|err| UnexpectedAnswer(err.to_string()))?;
    let mut filtered = Filtered::default();
    let data = answer
        .get_mut("data")
        .ok_or_else(|| UnexpectedAnswer("no \"data\"".into()))?;
    let unexpected = |what: &str| UnexpectedAnswer(format!("\"data\" is not {what}"));
    // Names and values are strings: anything else in their lists is not a Prometheus
    // answer, and is never passed on.
    if matches!(api, Api::Labels | Api::LabelValues(_))
        && !data
            .as_array()
            .is_some_and(|items| items.iter().all(Value::is_string))
    {
        return Err(unexpected("a list of strings"));
    }
    match api {
        Api::Labels => {
            let names = data.as_array_mut().ok_or_else(|| unexpected("a list"))?;
            names.retain(|name| name.as_str() != Some(scope.label.as_str()));
        }
        Api::LabelValues(name) if name == &scope.label => {
            let values = data.as_array_mut().ok_or_else(|| unexpected("a list"))?;
            let own = |value: &Value| value.as_str() == Some(scope.value.as_str());
            filtered.foreign_series += values.iter().filter(|value| !own(value)).count() as u64;
            values.retain(|value| !scope.strip && own(value));
        }
        Api::Metadata => {
            let families = data
                .as_object_mut()
                .ok_or_else(|| unexpected("an object"))?;
            let names = tenant_names.ok_or_else(|| unexpected("scoped"))?;
            families.retain(|name, _| names.contains(name));
        }
        Api::LabelValues(_) | Api::Federate | Api::BuildInfo => {}
        Api::Query | Api::QueryRange | Api::Series | Api::QueryExemplars => {
            return Err(unexpected("a small answer"))
        }
    }
    let body = serde_json::to_vec(&answer).map_err(|err| UnexpectedAnswer(err.to_string()))?;
    Ok((body, filtered))
}

/// The metric names in a `label/__name__/values` answer.
pub fn label_values(body: &[u8]) -> Result<HashSet<String>, UnexpectedAnswer> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|err| UnexpectedAnswer(err.to_string()))?;
    let values = answer
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| UnexpectedAnswer("\"data\" is not a list".into()))?;
    Ok(values
        .iter()
        .filter_map(|value| value.as_str().map(str::to_string))
        .collect())
}

/// Whether a backend error body has Prometheus' JSON error shape, so it can be passed on.
pub fn is_prometheus_error(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|answer| {
        answer.get("status").and_then(Value::as_str) == Some("error")
            && answer.get("error").is_some_and(Value::is_string)
    })
}

/// Makes a `/federate` answer (text exposition format) the tenant's: each sample line's
/// label set is parsed; another tenant's samples, and lines that do not parse, are
/// dropped; the tenant label is cut out when stripping. `# TYPE` and `# HELP` lines
/// stay only for families with a sample left. Every `\r` ends a line as `\n` does, so
/// no reader splitting lines at `\r` sees a line this filter did not check, and the
/// output (lines joined by `\n` alone) passes the filter again unchanged.
pub fn scope_federate(text: &str, scope: &ResponseScope) -> (String, Filtered) {
    let mut filtered = Filtered::default();
    let mut kept_lines: Vec<(Option<&str>, String)> = Vec::new();
    let mut families_with_samples = HashSet::new();
    for line in text.split(['\n', '\r']) {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if let (Some("TYPE" | "HELP"), Some(family)) = (words.next(), words.next()) {
                kept_lines.push((Some(family), line.to_string()));
            }
            continue;
        }
        match scope_sample_line(line, scope) {
            Some((name, kept)) => {
                families_with_samples.insert(family_of(name).to_string());
                families_with_samples.insert(name.to_string());
                kept_lines.push((None, kept));
            }
            None => filtered.foreign_series += 1,
        }
    }
    let mut out = String::with_capacity(text.len());
    for (family, line) in kept_lines {
        if family.is_none_or(|family| families_with_samples.contains(family)) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    (out, filtered)
}

/// A histogram's or summary's series name without its suffix.
fn family_of(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// One sample line, the tenant's: `(metric name, line to emit)`; `None` to drop it.
fn scope_sample_line<'a>(line: &'a str, scope: &ResponseScope) -> Option<(&'a str, String)> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let rest = &line[name_end..];
    let Some(labels_text) = rest.strip_prefix('{') else {
        // No labels: no tenant label, never the tenant's.
        return None;
    };
    let (pairs, after) = parse_label_pairs(labels_text)?;
    let mut own = false;
    let mut kept = Vec::with_capacity(pairs.len());
    for (label, value, raw) in pairs {
        if label == scope.label {
            if value != scope.value || own {
                return None;
            }
            own = true;
            if scope.strip {
                continue;
            }
        }
        kept.push(raw);
    }
    if !own {
        return None;
    }
    Some((name, format!("{name}{{{}}}{after}", kept.join(","))))
}

/// A label pair of a sample line: name, unescaped value, raw text.
type LabelPair<'a> = (&'a str, String, &'a str);

/// Parses `k="v",…}` up to the closing brace: each pair's name, unescaped value and raw
/// text, and what follows the brace.
fn parse_label_pairs(text: &str) -> Option<(Vec<LabelPair<'_>>, &str)> {
    let mut pairs = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((pairs, after));
        }
        let start = rest;
        let eq = rest.find('=')?;
        let name = rest[..eq].trim();
        rest = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                // The exposition format's only escapes; anything else drops the line.
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    escaped @ ('\\' | '"') => value.push(escaped),
                    _ => return None,
                },
                (_, other) => value.push(other),
            }
        };
        rest = &rest[end + 1..];
        let raw = &start[..start.len() - rest.len()];
        pairs.push((name, value, raw));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope(strip: bool) -> ResponseScope {
        ResponseScope {
            label: "tenant_id".into(),
            value: "alpha".into(),
            strip,
        }
    }

    fn run(api: Api, answer: Value, strip: bool) -> (Value, u64) {
        let (body, filtered) = scope_json(&api, answer.to_string().as_bytes(), &scope(strip), None)
            .expect("valid in this test");
        (
            serde_json::from_slice(&body).expect("valid in this test"),
            filtered.foreign_series,
        )
    }

    #[test]
    fn vectors_drop_foreign_series_and_strip_the_label() {
        let answer = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "up", "tenant_id": "alpha"}, "value": [1, "1"]},
            {"metric": {"__name__": "up", "tenant_id": "beta"}, "value": [1, "2"]},
            {"metric": {}, "value": [1, "3"]},
        ]}});
        let (scoped, foreign) = run(Api::Query, answer, true);
        assert_eq!(foreign, 1);
        assert_eq!(
            scoped["data"]["result"],
            json!([{"metric": {"__name__": "up"}, "value": [1, "1"]}, {"metric": {}, "value": [1, "3"]}])
        );
    }

    #[test]
    fn repeated_or_escaped_tenant_labels_never_pass_another_tenant() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"tenant_id":"alpha","tenant_id":"beta"},"values":[[1,"1"]]},
            {"metric":{"tenant_id":"alpha","tenant\u005fid":"beta"},"values":[[1,"2"]]},
            {"metric":{"tenant\u005fid":"alpha","job":"a\"b"},"values":[[1,"3"]]},
            {"metric":{"tenant_id":7},"values":[[1,"4"]]},
            {"metric":{"tenant_id":"alpha"},"metric":{"tenant_id":"beta"},"values":[]},
            {"values":[[1,"5"]]},
            "up"
        ]},"resultType":"scalar"}"#;
        let (out, filtered) =
            scope_json(&Api::QueryRange, body, &scope(true), None).expect("valid in this test");
        assert_eq!(filtered.foreign_series, 6);
        let scoped: Value = serde_json::from_slice(&out).expect("valid output");
        assert_eq!(
            scoped["data"]["result"],
            json!([{"metric": {"job": "a\"b"}, "values": [[1, "3"]]}])
        );
        // A repeated `resultType` cannot turn filtering off.
        let body = br#"{"status":"success","data":{"resultType":"vector","resultType":"scalar",
            "result":[{"metric":{"tenant_id":"beta"},"value":[1,"1"]}]}}"#;
        let (out, filtered) =
            scope_json(&Api::Query, body, &scope(false), None).expect("valid in this test");
        assert_eq!(filtered.foreign_series, 1);
        assert!(!String::from_utf8_lossy(&out).contains("beta"));
    }

    #[test]
    fn kept_series_are_passed_on_as_sent() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"z":"1","tenant_id":"alpha","a":"2"},"value":[1.5,"1e3"]}]},"warnings":["w"]}"#;
        let (out, _) =
            scope_json(&Api::Query, body, &scope(false), None).expect("valid in this test");
        assert_eq!(out, body.to_vec());
        let (out, _) =
            scope_json(&Api::Query, body, &scope(true), None).expect("valid in this test");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"z":"1","a":"2"},"value":[1.5,"1e3"]}]},"warnings":["w"]}"#
        );
        assert!(scope_json(
            &Api::Query,
            br#"{"status":"success","data":[]}"#,
            &scope(true),
            None
        )
        .is_err());
        let (out, _) = scope_json(
            &Api::QueryExemplars,
            br#"{"status":"success","data":null}"#,
            &scope(true),
            None,
        )
        .expect("null is nothing");
        assert_eq!(out, br#"{"status":"success","data":null}"#.to_vec());
    }

    #[test]
    fn label_answers_never_show_the_tenant_label_or_other_values() {
        let answer = json!({"status": "success", "data": ["__name__", "job", "tenant_id"]});
        assert_eq!(
            run(Api::Labels, answer, false).0["data"],
            json!(["__name__", "job"])
        );
        let values = json!({"status": "success", "data": ["alpha", "beta"]});
        let (scoped, foreign) = run(Api::LabelValues("tenant_id".into()), values.clone(), false);
        assert_eq!((scoped["data"].clone(), foreign), (json!(["alpha"]), 1));
        assert_eq!(
            run(Api::LabelValues("tenant_id".into()), values, true).0["data"],
            json!([])
        );
    }

    #[test]
    fn fields_prometheus_does_not_send_are_left_out() {
        let body = br#"{"status":"success","extra":[{"tenant_id":"beta"}],"data":{"resultType":"matrix","resuut":[{"metric":{"tenant_id":"beta"}}],"result":[{"metric":{"tenant_id":"alpha"},"values":[[1,"1"]],"other":{"tenant_id":"beta"}}],"stats":{"timings":{}}}}"#;
        let (out, filtered) =
            scope_json(&Api::QueryRange, body, &scope(false), None).expect("valid in this test");
        assert_eq!(filtered.foreign_series, 0);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"tenant_id":"alpha"},"values":[[1,"1"]]}],"stats":{"timings":{}}}}"#
        );
    }

    #[test]
    fn query_results_of_unknown_types_are_refused() {
        for kind in [r#""m!trix""#, "7", r#""""#] {
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":{kind},"result":[{{"metric":{{"tenant_id":"beta"}}}}]}}}}"#
            );
            assert!(
                scope_json(&Api::Query, body.as_bytes(), &scope(false), None).is_err(),
                "{kind}"
            );
        }
        let body = br#"{"status":"success","data":{"result":[{"metric":{"tenant_id":"beta"}}]}}"#;
        assert!(scope_json(&Api::Query, body, &scope(false), None).is_err());
    }

    #[test]
    fn name_and_value_lists_hold_only_strings() {
        let answer = json!({"status": "success", "data": [{"__name__": "b", "tenant_id": "beta"}]});
        for api in [
            Api::Labels,
            Api::LabelValues("job".into()),
            Api::LabelValues("tenant_id".into()),
        ] {
            assert!(scope_json(&api, answer.to_string().as_bytes(), &scope(false), None).is_err());
        }
    }

    #[test]
    fn series_and_exemplars_are_filtered() {
        let series = json!({"status": "success", "data": [
            {"__name__": "a", "tenant_id": "beta"}, {"__name__": "a", "tenant_id": "alpha"}]});
        assert_eq!(
            run(Api::Series, series, true).0["data"],
            json!([{"__name__": "a"}])
        );
        let exemplars = json!({"status": "success", "data": [
            {"seriesLabels": {"__name__": "a", "tenant_id": "beta"}, "exemplars": []},
            {"seriesLabels": {"__name__": "a", "tenant_id": "alpha"}, "exemplars": []}]});
        let (scoped, foreign) = run(Api::QueryExemplars, exemplars, false);
        assert_eq!(foreign, 1);
        assert_eq!(scoped["data"][0]["seriesLabels"]["tenant_id"], "alpha");
    }

    #[test]
    fn metadata_keeps_the_tenants_names() {
        let answer = json!({"status": "success", "data": {"a": [{}], "b": [{}]}});
        let names = HashSet::from(["a".to_string()]);
        let (body, _) = scope_json(
            &Api::Metadata,
            answer.to_string().as_bytes(),
            &scope(true),
            Some(&names),
        )
        .expect("valid in this test");
        let scoped: Value = serde_json::from_slice(&body).expect("valid in this test");
        assert_eq!(scoped["data"], json!({"a": [{}]}));
    }

    #[test]
    fn federate_lines() {
        let text = "# TYPE up untyped\nup{instance=\"a\",tenant_id=\"alpha\"} 1 1000\n\
                    up{instance=\"b\",tenant_id=\"beta\"} 1 1000\n# TYPE other untyped\n\
                    other{tenant_id=\"beta\"} 2 1000\nweird{a=\"x\\\",tenant_id=\\\"alpha\"} 3\n\
                    h_bucket{le=\"1\",tenant_id=\"alpha\"} 4\n# TYPE h histogram\n";
        let (out, filtered) = scope_federate(text, &scope(true));
        assert_eq!(
            out,
            "# TYPE up untyped\nup{instance=\"a\"} 1 1000\nh_bucket{le=\"1\"} 4\n# TYPE h histogram\n"
        );
        assert_eq!(filtered.foreign_series, 3);
        let (out, _) = scope_federate(
            "up{tenant_id=\"alpha\",tenant_id=\"beta\"} 1\n",
            &scope(false),
        );
        assert_eq!(out, "");
    }

    #[test]
    fn federate_filter_is_idempotent_with_carriage_returns() {
        let own = "up{tenant_id=\"alpha\"} 1";
        let inputs = [
            format!("# TYPE up untyped\r\n{own}\r\n"),
            format!("# TYPE up untyped\r\r\n{own}\r\r\n"),
            format!("{own}\r"),
            format!("{own}\r\r"),
            format!("\r{own}\rother{{tenant_id=\"beta\"}} 2\r"),
            format!("# HELP up x\rother{{tenant_id=\"beta\"}} 2\n{own}\n"),
            "up{tenant_id=\"alpha\",a=\"x\r\"} 1\n".to_string(),
        ];
        for input in inputs {
            // Only an unstripped answer passes again: a stripped one has no tenant label.
            let (once, _) = scope_federate(&input, &scope(false));
            let (twice, filtered) = scope_federate(&once, &scope(false));
            assert_eq!(twice, once, "{input:?}");
            assert_eq!(filtered.foreign_series, 0, "{input:?}");
            assert!(!once.contains("beta"), "{input:?} gave {once:?}");
            let (stripped, _) = scope_federate(&input, &scope(true));
            assert!(!stripped.contains("beta"), "{input:?} gave {stripped:?}");
        }
        let (out, _) = scope_federate(&format!("# TYPE up untyped\r\n{own}\r\n"), &scope(false));
        assert_eq!(out, format!("# TYPE up untyped\n{own}\n"));
    }

    proptest::proptest! {
        #[test]
        fn federate_filter_gives_back_its_own_output(
            text in "((# (TYPE|HELP) up x|up\\{(tenant_id=\"(alpha|beta)\",?|a=\"[ \\r]?\",?)*\\} 1)[\\r\\n ]{0,3}){0,6}"
        ) {
            let (once, _) = scope_federate(&text, &scope(false));
            let (twice, filtered) = scope_federate(&once, &scope(false));
            proptest::prop_assert_eq!(twice, once);
            proptest::prop_assert_eq!(filtered.foreign_series, 0);
        }
    }

    #[test]
    fn error_shape() {
        assert!(is_prometheus_error(
            br#"{"status":"error","errorType":"bad_data","error":"x"}"#
        ));
        assert!(!is_prometheus_error(b"nope"));
    }
}
