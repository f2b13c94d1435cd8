//! The two text formats a scraper may ask for.
//!
//! prometheus-client writes OpenMetrics, where a counter's descriptor is
//! named without its `_total` suffix and the text ends in `# EOF`. The
//! classic Prometheus format (what `promtool check metrics` and older
//! scrapers read) names the descriptor as the sample, and has neither
//! `# UNIT` nor `# EOF`: [`to_prometheus_text`] rewrites one into the other.

/// The media type Prometheus asks for first.
pub const OPENMETRICS_MEDIA_TYPE: &str = "application/openmetrics-text";
/// The content type of an OpenMetrics answer.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of a classic Prometheus text answer.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `openmetrics` (as prometheus-client encodes it) in the Prometheus text
/// format 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    // Counters are the one type whose samples carry a suffix the
    // descriptor lacks; find them first (TYPE follows HELP).
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) { "_total" } else { "" };
                text.push_str(prefix);
                text.push_str(name);
                text.push_str(suffix);
                text.push(' ');
                text.push_str(tail);
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_as_their_samples_and_the_markers_go() {
        let openmetrics = "# HELP keel_rpc_requests Calls.\n# TYPE keel_rpc_requests counter\n\
                           keel_rpc_requests_total{code=\"ok\"} 3\n\
                           # HELP keel_rpc_duration_seconds Latency.\n# TYPE keel_rpc_duration_seconds histogram\n\
                           # UNIT keel_rpc_duration_seconds seconds\n\
                           keel_rpc_duration_seconds_sum 0.5\nkeel_rpc_duration_seconds_count 1\n\
                           keel_rpc_duration_seconds_bucket{le=\"+Inf\"} 1\n\
                           # HELP keel_in_flight Calls running.\n# TYPE keel_in_flight gauge\nkeel_in_flight 2\n# EOF\n";
        let expected = "# HELP keel_rpc_requests_total Calls.\n# TYPE keel_rpc_requests_total counter\n\
                        keel_rpc_requests_total{code=\"ok\"} 3\n\
                        # HELP keel_rpc_duration_seconds Latency.\n# TYPE keel_rpc_duration_seconds histogram\n\
                        keel_rpc_duration_seconds_sum 0.5\nkeel_rpc_duration_seconds_count 1\n\
                        keel_rpc_duration_seconds_bucket{le=\"+Inf\"} 1\n\
                        # HELP keel_in_flight Calls running.\n# TYPE keel_in_flight gauge\nkeel_in_flight 2\n";
        assert_eq!(to_prometheus_text(openmetrics), expected);
    }
}
