//! What rides in a message's headers besides the event: the W3C trace
//! context, so one trace runs from the producer's span into the consumer's.

use std::collections::HashMap;

use async_nats::{HeaderMap, HeaderName};

/// The W3C trace context headers, as the propagator names them.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Writes `trace_context` (as [`crate::serve::telemetry::trace_context_of`]
/// gives it) into `headers`.
pub(super) fn insert_trace_context(headers: &mut HeaderMap, trace_context: &HashMap<String, String>) {
    for (key, value) in trace_context {
        // Only names a propagator writes, checked rather than asserted.
        if let Ok(name) = key.parse::<HeaderName>() {
            headers.insert(name, value.as_str());
        }
    }
}

/// The trace context in `headers`, for
/// [`crate::serve::telemetry::continue_trace`].
pub(super) fn trace_context(headers: Option<&HeaderMap>) -> HashMap<String, String> {
    let Some(headers) = headers else {
        return HashMap::new();
    };
    TRACE_HEADERS
        .into_iter()
        .filter_map(|name| Some((name.to_owned(), headers.get(name)?.as_str().to_owned())))
        .collect()
}

/// `text` fit for a header value: one line, at most `max` bytes (cut at a
/// character boundary).
pub(super) fn one_line(text: &str, max: usize) -> String {
    let mut line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if line.len() > max {
        let mut end = max;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_goes_in_and_comes_out() {
        let sent = HashMap::from([
            (
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            ),
            ("tracestate".to_owned(), "keel=1".to_owned()),
        ]);
        let mut headers = HeaderMap::new();
        insert_trace_context(&mut headers, &sent);
        headers.insert("Nats-Msg-Id", "e1");
        assert_eq!(trace_context(Some(&headers)), sent);
        assert!(trace_context(None).is_empty());
    }

    #[test]
    fn a_reason_becomes_one_short_line() {
        assert_eq!(one_line("a\nb\r\nc", 100), "a b  c");
        assert_eq!(one_line("ééé", 5), "éé");
    }
}
