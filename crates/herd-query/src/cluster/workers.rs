//! [`Workers`]: the herd workers a coordinator sends tasks to. Of the configured URLs, those
//! that accepted a connection at the last probe are live; a background probe keeps that
//! current, so a worker that dies leaves the set and one started later joins it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::common::DataFusionError;
use datafusion_distributed::WorkerResolver;
use url::Url;

/// How long a probe waits for a worker to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The configured workers and which of them are live.
#[derive(Debug, Clone)]
pub struct Workers {
    urls: Arc<Vec<Url>>,
    live: Arc<RwLock<Vec<bool>>>,
    secret: Option<Arc<str>>,
}

impl Workers {
    /// Workers at `urls` (`http://host:port`), all taken as live until probed.
    pub fn new(urls: Vec<Url>) -> Self {
        let live = Arc::new(RwLock::new(vec![true; urls.len()]));
        Self {
            urls: Arc::new(urls),
            live,
            secret: None,
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
        let checks = self.urls.iter().map(|u| accepts(u.clone()));
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

/// Whether `url`'s host accepts a TCP connection at one of its addresses within
/// [`PROBE_TIMEOUT`] (name lookup included).
async fn accepts(url: Url) -> bool {
    let (Some(host), Some(port)) = (url.host_str().map(str::to_string), url.port()) else {
        return false;
    };
    let connect = async move {
        let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await else {
            return false;
        };
        for addr in addrs {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(PROBE_TIMEOUT, connect)
        .await
        .unwrap_or(false)
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
    async fn probes_follow_workers_that_leave_and_join() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let url = |p: u16| Url::parse(&format!("http://127.0.0.1:{p}")).expect("url");
        let w = Workers::new(vec![url(port)]);
        assert_eq!(w.probe().await, 1);
        drop(listener);
        assert_eq!(w.probe().await, 0);
        assert!(w.live().is_empty());
        let _again = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("rebind");
        assert_eq!(w.probe().await, 1);
    }
}
