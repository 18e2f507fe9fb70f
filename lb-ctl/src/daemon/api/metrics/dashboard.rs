//! The Grafana dashboard (`examples/grafana/lb.json`) against the
//! exposition `render` really writes: every metric a query names, every
//! label it matches, groups by or shows in a legend, and every literal
//! value it matches on (`outcome=~"reject_tcp|…"`) must be there, so that
//! renaming a metric, a label or a counter without the dashboard fails.
use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{render, tests::stats};

const DASHBOARD: &str = include_str!("../../../../../examples/grafana/lb.json");

/// Labels Prometheus adds to every scraped sample itself.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Sample name -> label -> the values seen.
type Exposed = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn exposed(text: &str) -> Exposed {
    let mut all = Exposed::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = all.entry(line[..name_end].to_owned()).or_default();
        if let Some(set) = line[name_end..].strip_prefix('{').and_then(|r| r.split_once('}')) {
            for pair in set.0.split(',') {
                let (key, value) = pair.split_once('=').expect("label=value");
                labels.entry(key.to_owned()).or_default().insert(value.trim_matches('"').into());
            }
        }
    }
    all
}

/// Every PromQL query of the dashboard with its panel's title and the
/// legend formats of its target: targets' `expr`, and the template
/// variables' `label_values(...)` definitions.
fn queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            found.push((title.to_owned(), expr.to_owned(), legend.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().expect("templating") {
        if let Some(definition) = variable["definition"].as_str() {
            // label_values(METRIC, LABEL) is `METRIC` grouped by `LABEL`.
            let inner = definition.strip_prefix("label_values(").and_then(|d| d.strip_suffix(')'));
            let (metric, label) = inner.and_then(|i| i.split_once(", ")).expect("label_values");
            found.push((
                "templating".into(),
                format!("sum by ({label}) ({metric})"),
                String::new(),
            ));
        }
    }
    found
}

/// The identifiers of `expr` that start with `lb_`: the metrics it reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while let Some(at) = expr[i..].find("lb_").map(|p| p + i) {
        let mut end = at;
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        if at == 0 || !ident(bytes[at - 1]) {
            names.insert(expr[at..end].to_owned());
        }
        i = end;
    }
    names
}

/// `label OP "value"` matchers inside `{…}`: (label, value).
fn matchers(expr: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for block in expr.split('{').skip(1).filter_map(|b| b.split_once('}').map(|(m, _)| m)) {
        for matcher in block.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let op = matcher.find(['=', '!']).expect("a label matcher");
            let value = matcher[op..].trim_start_matches(['=', '!', '~']).trim_matches('"');
            found.push((matcher[..op].trim().to_owned(), value.to_owned()));
        }
    }
    found
}

/// The labels of `by (…)` clauses.
fn grouped_by(expr: &str) -> Vec<String> {
    expr.split("by (")
        .skip(1)
        .filter_map(|rest| rest.split_once(')'))
        .flat_map(|(labels, _)| labels.split(',').map(|l| l.trim().to_owned()))
        .collect()
}

/// `{{label}}` in a legend format.
fn legend_labels(legend: &str) -> Vec<String> {
    legend.split("{{").skip(1).filter_map(|p| p.split_once("}}")).map(|(l, _)| l.into()).collect()
}

/// Checks one query against the exposition; each problem found.
fn problems(exposed: &Exposed, title: &str, expr: &str, legend: &str) -> Vec<String> {
    let mut found = Vec::new();
    let names = metric_names(expr);
    if names.is_empty() {
        found.push(format!("{title}: {expr:?} reads no lb_ metric"));
    }
    let mut labels: BTreeMap<&str, &BTreeSet<String>> = BTreeMap::new();
    for name in &names {
        match exposed.get(name) {
            None => found.push(format!("{title}: {name} is not exported")),
            Some(l) => labels.extend(l.iter().map(|(k, v)| (k.as_str(), v))),
        }
    }
    let known = |label: &str| labels.contains_key(label) || TARGET_LABELS.contains(&label);
    for (label, value) in matchers(expr) {
        let Some(values) = labels.get(label.as_str()) else {
            found.push(format!("{title}: no metric of {expr:?} has the label {label}"));
            continue;
        };
        // A variable's value ($service) or a wildcard is chosen at view time.
        if value.starts_with('$') || value.contains(".*") {
            continue;
        }
        for literal in value.split('|').filter(|v| !values.contains(*v)) {
            found.push(format!("{title}: {label}={literal:?} is never exported"));
        }
    }
    let by = grouped_by(expr);
    for label in by.iter().filter(|l| !known(l)) {
        found.push(format!("{title}: {expr:?} groups by {label}, which no metric of it has"));
    }
    for label in legend_labels(legend) {
        let shown = if by.is_empty() { known(&label) } else { by.contains(&label) };
        if !shown {
            found.push(format!("{title}: the legend shows {{{{{label}}}}}, which the query drops"));
        }
    }
    found
}

#[test]
fn dashboard_queries_name_exported_metrics() {
    let exposed = exposed(&render(&stats()));
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("lb.json is JSON");
    let queries = queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let found: Vec<String> = queries
        .iter()
        .flat_map(|(title, expr, legend)| problems(&exposed, title, expr, legend))
        .collect();
    assert!(found.is_empty(), "the dashboard disagrees with /metrics:\n{}", found.join("\n"));
}

/// The checker itself: a renamed metric, a label no metric has, a counter
/// that does not exist, a legend label the aggregation dropped.
#[test]
fn the_checker_finds_each_kind_of_mismatch() {
    let exposed = exposed(&render(&stats()));
    let wrong = [
        ("rate(lb_service_packet_total[1m])", "", "lb_service_packet_total is not exported"),
        ("sum by (svc) (lb_backend_up)", "", "groups by svc"),
        (r#"lb_packets_total{outcome="reject_sctp"}"#, "", r#"outcome="reject_sctp" is never"#),
        (r#"lb_backend_up{pool="a"}"#, "", "has the label pool"),
        ("sum by (service) (lb_backend_up)", "{{backend}}", "shows {{backend}}"),
    ];
    for (expr, legend, said) in wrong {
        let found = problems(&exposed, "t", expr, legend);
        assert!(found.iter().any(|p| p.contains(said)), "{expr}: {found:?}");
    }
    let fine = r#"sum by (service, backend) (rate(lb_backend_packets_total{service=~"$service", direction="in"}[5m]))"#;
    assert_eq!(problems(&exposed, "t", fine, "{{service}} {{backend}}"), Vec::<String>::new());
}
