//! WatchRevocations: every verifier follows auth's revocations.

use futures::{StreamExt as _, stream::BoxStream};
use keel::auth::v1 as pb;

use crate::app::Auth;

/// The stream WatchRevocations answers with.
pub type Stream = BoxStream<'static, Result<pb::WatchRevocationsResponse, tonic::Status>>;

pub(super) fn watch(auth: &Auth, _request: pb::WatchRevocationsRequest) -> Stream {
    auth.watch_revocations()
        .map(|batch| {
            batch
                .map(|revocations| pb::WatchRevocationsResponse { revocations })
                .map_err(tonic::Status::from)
        })
        .boxed()
}
