//! An object store whose reads of a data file fall back to its twins ([`crate::layout::Twin`]):
//! a query that planned on an older catalog still reads a file compaction has since renamed
//! to its retired twin, and a file whose rename after its commit failed is read from its
//! pending twin. Everything else passes through unchanged; the fallback costs nothing unless
//! the file is missing.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use crate::layout::{Twin, twin};

/// The store of a data folder, with twin fallback on reads.
#[derive(Debug)]
pub struct TwinStore {
    inner: Arc<dyn ObjectStore>,
}

impl TwinStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }

    /// The twins to try when `location` is missing: only data files have them.
    fn twins(location: &Path) -> Vec<Path> {
        if location.as_ref().ends_with(".parquet") {
            vec![twin(location, Twin::Retired), twin(location, Twin::Pending)]
        } else {
            Vec::new()
        }
    }
}

/// `read` of `location`, then of its twins in turn while each is missing; when none exists,
/// the first `NotFound`.
async fn read_with_twins<T, F, Fut>(location: &Path, read: F) -> Result<T>
where
    F: Fn(Path) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let missing = match read(location.clone()).await {
        Err(e @ object_store::Error::NotFound { .. }) => e,
        found => return found,
    };
    for twin in TwinStore::twins(location) {
        match read(twin).await {
            Err(object_store::Error::NotFound { .. }) => continue,
            found => return found,
        }
    }
    Err(missing)
}

impl std::fmt::Display for TwinStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TwinStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for TwinStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        read_with_twins(location, |p| {
            let options = options.clone();
            async move { self.inner.get_opts(&p, options).await }
        })
        .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        read_with_twins(location, |p| async move {
            self.inner.get_ranges(&p, ranges).await
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn a_missing_data_file_is_read_from_its_twin() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = TwinStore::new(inner.clone());
        let live = Path::from("p/events/date=2024-01-01/a.parquet");
        inner
            .put(&twin(&live, Twin::Retired), PutPayload::from_static(b"old"))
            .await
            .expect("put");
        let got = store
            .get(&live)
            .await
            .expect("via twin")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(&got[..], b"old");
        assert_eq!(store.head(&live).await.expect("head").size, 3);
        let ranges = store
            .get_ranges(&live, &[0..1, 1..3])
            .await
            .expect("ranges");
        assert_eq!(
            ranges,
            vec![Bytes::from_static(b"o"), Bytes::from_static(b"ld")]
        );
        // Other paths have no twins; a file with neither is still NotFound.
        let other = Path::from("catalog/1/x.json");
        assert!(matches!(
            store.get(&other).await,
            Err(object_store::Error::NotFound { .. })
        ));
        let none = Path::from("p/events/date=2024-01-01/b.parquet");
        assert!(matches!(
            store.get(&none).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }
}
