//! The descriptors the gateway works from: Keel's contract, plus the
//! `google.rpc` error detail messages so error bodies render their details.

use anyhow::Context as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor};

/// The descriptor pool and the few descriptors the gateway looks up often.
#[derive(Debug, Clone)]
pub struct Descriptors {
    pool: DescriptorPool,
    status: MessageDescriptor,
    http: ExtensionDescriptor,
    anonymous: ExtensionDescriptor,
    stream_resume: ExtensionDescriptor,
}

impl Descriptors {
    /// Keel's descriptor set with tonic-types' `google.rpc` messages added.
    pub fn load() -> anyhow::Result<Self> {
        Self::from_set(keel::FILE_DESCRIPTOR_SET)
    }

    /// An encoded descriptor set (which must import `google/api/annotations.proto`
    /// and `keel/common/v1/options.proto`) with the `google.rpc` messages added.
    pub fn from_set(bytes: &[u8]) -> anyhow::Result<Self> {
        let mut pool = DescriptorPool::decode(bytes).context("decoding the descriptor set")?;
        let rpc = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .context("decoding the google.rpc descriptors")?;
        // Files the contract already holds (e.g. google/protobuf/any.proto)
        // would be added twice, so only the new ones go in.
        let new_files: Vec<_> = rpc
            .file
            .into_iter()
            .filter(|file| pool.get_file_by_name(file.name()).is_none())
            .collect();
        pool.add_file_descriptor_protos(new_files)
            .context("adding the google.rpc descriptors")?;
        let status = pool
            .get_message_by_name("google.rpc.Status")
            .context("google.rpc.Status is missing")?;
        let http = pool
            .get_extension_by_name("google.api.http")
            .context("the descriptor set lacks google.api.http")?;
        let anonymous = pool
            .get_extension_by_name("keel.common.v1.anonymous")
            .context("the descriptor set lacks keel.common.v1.anonymous")?;
        let stream_resume = pool
            .get_extension_by_name("keel.common.v1.stream_resume")
            .context("the descriptor set lacks keel.common.v1.stream_resume")?;
        Ok(Descriptors {
            pool,
            status,
            http,
            anonymous,
            stream_resume,
        })
    }

    /// Every descriptor.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// `google.rpc.Status`, the error body's type.
    pub fn status(&self) -> &MessageDescriptor {
        &self.status
    }

    /// The `google.api.http` method option.
    pub fn http(&self) -> &ExtensionDescriptor {
        &self.http
    }

    /// The `keel.common.v1.anonymous` method option.
    pub fn anonymous(&self) -> &ExtensionDescriptor {
        &self.anonymous
    }

    /// The `keel.common.v1.stream_resume` method option.
    pub fn stream_resume(&self) -> &ExtensionDescriptor {
        &self.stream_resume
    }
}

/// Whether `message` is a well-known type whose JSON form is one string (or
/// number), so a path or query value can set it.
pub fn is_string_like(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BytesValue"
    )
}

/// The fields a dotted path names (by proto or JSON name), when a path or
/// query value can set the last one: a scalar, enum or string-like
/// well-known type, not a map and not inside a repeated field.
pub fn settable_field_path(message: &MessageDescriptor, segments: &[String]) -> Result<Vec<FieldDescriptor>, String> {
    let mut current = message.clone();
    let mut fields = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let field = current
            .get_field_by_name(segment)
            .or_else(|| current.get_field_by_json_name(segment))
            .ok_or_else(|| format!("{} has no field {segment}", current.name()))?;
        let last = i + 1 == segments.len();
        match field.kind() {
            Kind::Message(inner) if !last => current = inner,
            Kind::Message(inner) if !is_string_like(&inner) => {
                return Err(format!("{segment} is a message; name one of its fields"));
            }
            _ if !last => return Err(format!("{segment} has no fields")),
            _ => {}
        }
        if field.is_map() {
            return Err(format!("{segment} is a map and cannot be set here"));
        }
        if field.is_list() && !last {
            return Err(format!("{segment} is repeated; its fields cannot be set here"));
        }
        fields.push(field);
    }
    Ok(fields)
}
