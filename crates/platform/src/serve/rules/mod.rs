//! Request rules: the `buf.validate` (protovalidate) field annotations in the
//! protos, read once from the descriptor set, enforced on every request
//! before its handler (see [`ValidateLayer`]) and published by the gateway's
//! OpenAPI document, so the contract says what the server refuses.
//!
//! Only the standard rules Keel's protos use are understood (no CEL): a rule
//! this module does not know fails at start-up, so nothing declared in a proto
//! is silently left unchecked. Each rule has a sentence for people ("must be
//! at least 8 characters"); a pattern's comes from the field's
//! `keel.common.v1.field` option, which every pattern must have.
//!
//! `model` holds the rules and what breaks them, `parse` reads them from the
//! descriptors' options, `set` gathers every request message's rules and
//! finds a message's violations, and `layer` checks requests with them.

mod layer;
mod model;
mod parse;
mod set;

pub use self::{
    layer::{Validate, ValidateLayer},
    model::{Check, FieldRules, FieldText, RequiredWhen},
    set::Rules,
};
