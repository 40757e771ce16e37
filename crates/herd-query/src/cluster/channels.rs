//! [`Channels`]: the gRPC connections to workers, one per worker, kept and reused. Unlike
//! datafusion-distributed's default they bound how long connecting may take and send HTTP/2
//! keep-alive pings, so a worker whose machine vanishes (no reset, no answer) fails the
//! query within seconds instead of leaving it waiting on TCP, and a restarted worker is
//! reconnected to without a new channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::DataFusionError;
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{ChannelResolver, WorkerChannel};
use tonic::transport::{Channel, Endpoint};
use url::Url;

/// How long connecting to a worker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an open connection is pinged, and how long a ping may go unanswered.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One lazily connected channel per worker URL.
#[derive(Clone, Default)]
pub(crate) struct Channels {
    open: Arc<Mutex<HashMap<Url, Channel>>>,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.open.lock().map(|o| o.len()).unwrap_or_default();
        f.debug_struct("Channels").field("open", &n).finish()
    }
}

impl Channels {
    fn channel(&self, url: &Url) -> Result<Channel, DataFusionError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = open.get(url) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| DataFusionError::Configuration(format!("worker URL {url}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        open.insert(url.clone(), channel.clone());
        Ok(channel)
    }
}

#[async_trait]
impl ChannelResolver for Channels {
    async fn get_worker_client_for_url(
        &self,
        url: &Url,
    ) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        Ok(create_worker_client(BoxCloneSyncChannel::new(
            self.channel(url)?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_channel_per_worker_is_kept() {
        let channels = Channels::default();
        let url = Url::parse("http://127.0.0.1:1").expect("url");
        channels.channel(&url).expect("lazy channel");
        channels.channel(&url).expect("the same");
        assert_eq!(channels.open.lock().expect("lock").len(), 1);
        assert!(
            channels
                .channel(&Url::parse("file:///x").expect("url"))
                .is_err()
        );
    }
}
