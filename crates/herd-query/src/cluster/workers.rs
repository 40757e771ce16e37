//! [`Workers`]: the herd workers a coordinator sends tasks to. Of the configured URLs, those
//! that answered the last probe (a `GetWorkerInfo` call) are live; a background probe keeps that
//! current, so a worker that dies leaves the set and one started later joins it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::common::DataFusionError;
use datafusion_distributed::{ChannelResolver, GetWorkerInfoRequest, WorkerResolver};

use super::channels::Channels;
use url::Url;

/// How long a probe waits for a worker's answer (connecting included).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The configured workers and which of them are live.
#[derive(Debug, Clone)]
pub struct Workers {
    urls: Arc<Vec<Url>>,
    live: Arc<RwLock<Vec<bool>>>,
    secret: Option<Arc<str>>,
    /// Connections to the workers, for the probe and the queries.
    channels: Channels,
}

impl Workers {
    /// Workers at `urls` (`http://host:port`), all taken as live until probed.
    pub fn new(urls: Vec<Url>) -> Self {
        let live = Arc::new(RwLock::new(vec![true; urls.len()]));
        Self {
            urls: Arc::new(urls),
            live,
            secret: None,
            channels: Channels::default(),
        }
    }

    /// These workers, sent `secret` with every task (they refuse tasks without their
    /// `--cluster-secret`).
    pub fn with_secret(mut self, secret: Option<String>) -> Self {
        self.secret = secret.filter(|s| !s.is_empty()).map(Arc::from);
        self
    }

    /// The secret sent with every task, if any.
    pub(crate) fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// Parses `http://host:port` URLs separated by commas.
    pub fn parse(list: &str) -> Result<Self, String> {
        let urls = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let url = Url::parse(s).map_err(|e| format!("worker URL {s:?}: {e}"))?;
                match (url.scheme(), url.host_str(), url.port()) {
                    ("http", Some(_), Some(_)) => Ok(url),
                    _ => Err(format!("worker URL {s:?}: expected http://host:port")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        match urls.is_empty() {
            true => Err("no worker URLs".into()),
            false => Ok(Self::new(urls)),
        }
    }

    /// Every configured URL.
    pub fn configured(&self) -> &[Url] {
        &self.urls
    }

    /// Whether any worker was live at the last probe.
    pub fn any_live(&self) -> bool {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.iter().any(|up| *up)
    }

    /// The connections to the workers (the probe's, shared with the queries').
    pub(crate) fn channels(&self) -> Channels {
        self.channels.clone()
    }

    /// The URLs live at the last probe.
    pub fn live(&self) -> Vec<Url> {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        self.urls
            .iter()
            .zip(live.iter())
            .filter(|(_, up)| **up)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Probes every worker now; returns how many are live.
    pub async fn probe(&self) -> usize {
        let checks = self.urls.iter().map(|u| answers(&self.channels, u));
        let found = futures::future::join_all(checks).await;
        let n = found.iter().filter(|up| **up).count();
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        for ((url, was), now) in self.urls.iter().zip(live.iter_mut()).zip(found) {
            if *was != now {
                tracing::info!(worker = %url, live = now, "worker {}", if now { "joined" } else { "left" });
            }
            *was = now;
        }
        n
    }

    /// Probes every `interval` until the returned task is aborted.
    pub fn spawn_probe(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let workers = self.clone();
        tokio::spawn(async move {
            loop {
                workers.probe().await;
                tokio::time::sleep(interval).await;
            }
        })
    }
}

/// Whether the worker at `url` answers a `GetWorkerInfo` call within [`PROBE_TIMEOUT`]: a
/// worker whose process is stopped or stuck still has its port accept connections, so
/// only an answer counts.
async fn answers(channels: &Channels, url: &Url) -> bool {
    let call = async {
        let mut client = channels.get_worker_client_for_url(url).await.ok()?;
        client.get_worker_info(GetWorkerInfoRequest {}).await.ok()
    };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, call).await, Ok(Some(_)))
}

impl WorkerResolver for Workers {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(self.live())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lists_are_checked() {
        let w = Workers::parse("http://127.0.0.1:7001, http://localhost:7002").expect("parse");
        assert_eq!(w.configured().len(), 2);
        assert!(Workers::parse("").is_err());
        assert!(Workers::parse("127.0.0.1:7001").is_err());
        assert!(Workers::parse("http://127.0.0.1").is_err());
    }

    #[tokio::test]
    async fn probes_count_only_workers_that_answer() {
        let url = |a: std::net::SocketAddr| Url::parse(&format!("http://{a}")).expect("url");
        // A real worker service.
        let store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let worker = super::super::worker(store, Some(1), None, None).expect("worker");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let serving = url(listener.local_addr().expect("addr"));
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(worker.into_worker_server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        // A port that accepts connections and never answers (a stopped process).
        let stuck = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let stuck_url = url(stuck.local_addr().expect("addr"));
        // A port nothing listens on (a worker that died).
        let gone = url(tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr"));
        let w = Workers::new(vec![serving.clone(), stuck_url, gone]);
        assert_eq!(w.probe().await, 1);
        assert_eq!(w.live(), vec![serving]);
        server.abort();
    }
}
