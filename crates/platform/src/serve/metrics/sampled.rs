//! Gauges read at scrape time from state something else already keeps (a
//! pool's counts, a queue's length), so nothing has to copy it on every
//! change.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::gauge::ConstGauge,
};

/// Reads the gauge's value.
type Read = Box<dyn Fn() -> i64 + Send + Sync>;

/// A gauge whose value `read` gives at each scrape.
pub struct SampledGauge {
    name: &'static str,
    help: &'static str,
    read: Read,
}

impl SampledGauge {
    /// `keel_<name>` (the registry adds the prefix), read by `read`.
    pub fn new(name: &'static str, help: &'static str, read: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self {
            name,
            help,
            read: Box::new(read),
        }
    }
}

impl std::fmt::Debug for SampledGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampledGauge")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Collector for SampledGauge {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new((self.read)());
        let metric = encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }
}
