//! Reads a Keel process's `/metrics` the way Prometheus does, so a test
//! can see which series moved and by how much.

use std::collections::BTreeMap;

use anyhow::Context as _;

/// One sample: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (`keel_rpc_requests_total`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One scrape of a metrics endpoint.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The answer's content type.
    pub content_type: String,
    /// The text as served.
    pub text: String,
    /// Every sample in it.
    pub samples: Vec<Sample>,
}

/// GETs `url` (`http://…/metrics`) as a plain client (the classic text
/// format) and parses it.
pub async fn scrape(url: &str) -> anyhow::Result<Scrape> {
    scrape_accepting(url, "*/*").await
}

/// GETs `url` with the given `Accept` header and parses the answer.
pub async fn scrape_accepting(url: &str, accept: &str) -> anyhow::Result<Scrape> {
    let response = reqwest::Client::new()
        .get(url)
        .header(http::header::ACCEPT, accept)
        .send()
        .await
        .with_context(|| format!("scraping {url}"))?;
    anyhow::ensure!(response.status().is_success(), "{url} answered {}", response.status());
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await?;
    let samples = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(parse_sample)
        .collect::<anyhow::Result<_>>()?;
    Ok(Scrape {
        content_type,
        text,
        samples,
    })
}

impl Scrape {
    /// The sum of the samples called `name` whose labels include `labels`
    /// (0 when there are none, as for a series not yet created).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|sample| sample.value).sum()
    }

    /// The samples called `name` whose labels include `labels`.
    pub fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
    }

    /// Whether any sample is called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|sample| sample.name == name)
    }
}

/// `name{key="value",…} value` (the labels optional).
fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let bad = || anyhow::anyhow!("not a sample: {line:?}");
    let (series, value) = line.rsplit_once(' ').ok_or_else(bad)?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().map_err(|_| bad())?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (
            name,
            parse_labels(rest.strip_suffix('}').ok_or_else(bad)?).ok_or_else(bad)?,
        ),
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `key="value",…`, with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(mut text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (at, '"') => break at,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, other) => value.push(other),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        text = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_and_without_labels() {
        let sample =
            parse_sample(r#"keel_rpc_requests_total{service="auth",method="A/B",code="OK"} 3"#).expect("sample");
        assert_eq!(sample.name, "keel_rpc_requests_total");
        assert_eq!(sample.labels["method"], "A/B");
        assert_eq!(sample.value, 3.0);
        let bucket = parse_sample(r#"x_bucket{le="+Inf",q="a\"b"} 1"#).expect("bucket");
        assert_eq!(bucket.labels["q"], "a\"b");
        assert_eq!(parse_sample("keel_up 1").expect("plain").value, 1.0);
    }
}
