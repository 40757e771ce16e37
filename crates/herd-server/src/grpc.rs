//! The gRPC listener: the standard `grpc.health.v1.Health` service now; the insight, groups
//! and flags services join it here.

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{Error, Result};

/// Serves gRPC on `listener` until `stop` resolves.
pub async fn serve(listener: TcpListener, stop: impl Future<Output = ()> + Send) -> Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await
        .map_err(|e| Error::Grpc(e.to_string()))
}
