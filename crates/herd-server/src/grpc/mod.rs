//! The gRPC listener: herd's own services (package `herd.v1`, compiled from `proto/`), the
//! standard `grpc.health.v1.Health` service, and server reflection for both.
//!
//! Every herd call authenticates with `authorization: Bearer <project secret key>` metadata,
//! which selects the project; missing or unknown keys get UNAUTHENTICATED.

use std::future::Future;
use std::sync::Arc;

use herd_storage::Db;
use herd_storage::db::ProjectHandle;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::{Error, Result};

/// Generated code of `proto/herd/v1`.
pub mod flags;
pub mod groups;
pub mod insights;
pub mod status;

pub mod proto {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("herd.v1");

    /// The encoded file descriptor set, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("herd_descriptor");
}

use proto::server_info_service_server::{ServerInfoService, ServerInfoServiceServer};
use proto::{GetServerInfoRequest, GetServerInfoResponse, Project};

/// The project a request's `authorization: Bearer <secret key>` selects.
pub fn authenticate<T>(db: &Db, request: &Request<T>) -> Result<Arc<ProjectHandle>, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        status::unauthenticated(
            "missing authorization metadata: send `authorization: Bearer <project secret key>`",
        )
    })?;
    let value = header
        .to_str()
        .map_err(|_| status::unauthenticated("authorization metadata is not ASCII"))?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            status::unauthenticated("authorization must be `Bearer <project secret key>`")
        })?
        .trim();
    db.project_by_secret(key)
        .ok_or_else(|| status::unauthenticated("unknown secret key"))
}

/// `herd.v1.ServerInfoService`.
#[derive(Debug)]
pub struct ServerInfo {
    db: Arc<Db>,
    started_at: i64,
}

#[tonic::async_trait]
impl ServerInfoService for ServerInfo {
    async fn get_server_info(
        &self,
        request: Request<GetServerInfoRequest>,
    ) -> Result<Response<GetServerInfoResponse>, Status> {
        let handle = authenticate(&self.db, &request)?;
        let project = handle.project();
        let group_types = self
            .db
            .group_types(project.id)
            .await
            .map(|m| m.types().to_vec())
            .unwrap_or_default();
        let mut ingestion_warnings = std::collections::HashMap::new();
        for w in self
            .db
            .warnings(project.id)
            .await
            .map_err(|e| status::unavailable("reading ingestion warnings", e))?
        {
            *ingestion_warnings.entry(w.kind).or_insert(0u64) += 1;
        }
        Ok(Response::new(GetServerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_unix_micros: self.started_at,
            project: Some(Project {
                id: project.id,
                name: project.name.clone(),
                group_types,
                ingestion_warnings,
            }),
        }))
    }
}

/// Serves gRPC on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    db: Arc<Db>,
    engine: herd_query::QueryEngine,
    flags: Arc<crate::flags::FlagsState>,
    stop: impl Future<Output = ()> + Send,
) -> Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_serving::<ServerInfoServiceServer<ServerInfo>>()
        .await;
    reporter
        .set_serving::<proto::groups_service_server::GroupsServiceServer<crate::grpc::groups::Groups>>()
        .await;
    reporter
        .set_serving::<proto::insights_service_server::InsightsServiceServer<crate::grpc::insights::Insights>>()
        .await;
    reporter
        .set_serving::<proto::flags_service_server::FlagsServiceServer<crate::grpc::flags::Flags>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Grpc(format!("reflection: {e}")))?;
    // v1alpha too: grpcurl and grpcio-reflection's client still speak it.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Grpc(format!("reflection: {e}")))?;
    let groups = crate::grpc::groups::Groups::new(db.clone(), engine.clone());
    let insights = crate::grpc::insights::Insights::new(engine);
    let info = ServerInfo {
        db,
        started_at: chrono::Utc::now().timestamp_micros(),
    };
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ServerInfoServiceServer::new(info))
        .add_service(proto::groups_service_server::GroupsServiceServer::new(
            groups,
        ))
        .add_service(proto::insights_service_server::InsightsServiceServer::new(
            insights,
        ))
        .add_service(proto::flags_service_server::FlagsServiceServer::new(
            crate::grpc::flags::Flags::new(flags),
        ))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await
        .map_err(|e| Error::Grpc(e.to_string()))
}
