//! Object storage by URL (`s3://`, `gs://`, `az://`, `file://` or a plain path) through
//! the `object_store` crate, with a blocking interface for the trainer.
//!
//! Credentials and endpoints come from the standard environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP`, `GOOGLE_*`, `AZURE_*`), which the operator fills from a Secret;
//! they are never logged. Transient failures (timeouts, 5xx) are retried with
//! exponential backoff up to `retry_timeout`, then reported naming the URL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};

use crate::error::{Error, Result};

/// Parts of a multipart upload; several are in flight at once.
const PART_BYTES: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 8;
/// Ranges of a download; several are in flight at once.
const RANGE_BYTES: u64 = 16 << 20;
const RANGES_IN_FLIGHT: usize = 8;

/// A location in object storage: a store and a prefix inside it.
#[derive(Clone)]
pub struct Store {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// The URL as the user wrote it (no credentials ever live in it).
    url: String,
    /// The directory behind a local store (`file://` or a path), for callers that can
    /// write in place instead of copying.
    local_root: Option<PathBuf>,
    rt: Arc<tokio::runtime::Runtime>,
}

/// Work started on the I/O runtime; `wait` blocks for its result.
pub struct Pending<T> {
    task: tokio::task::JoinHandle<Result<T>>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl<T> Pending<T> {
    pub fn wait(self) -> Result<T> {
        self.rt
            .block_on(self.task)
            .map_err(|e| Error::io("an I/O task", std::io::Error::other(e.to_string())))?
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

/// Select rustls's crypto provider before any client is built: reqwest/object_store
/// bring `aws-lc-rs`, and in a workspace build kube adds `ring`; rustls with two
/// providers and no default panics on first use.
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is all we need.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub(crate) fn runtime() -> Result<Arc<tokio::runtime::Runtime>> {
    install_crypto_provider();
    static RT: std::sync::OnceLock<Arc<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt.clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the I/O runtime", e))?;
    Ok(RT.get_or_init(|| Arc::new(rt)).clone())
}

/// An object_store error without the server's XML body (which can run to kilobytes).
fn concise(e: &object_store::Error) -> String {
    let s = e.to_string();
    let s = s
        .split("<?xml")
        .next()
        .unwrap_or_default()
        .trim_end()
        .trim_end_matches(':');
    s.chars().take(600).collect()
}

/// Whether `s` names a remote store rather than a local path.
pub fn is_url(s: &str) -> bool {
    s.contains("://")
}

impl Store {
    /// Open `url` with credentials from the environment. `retry_timeout` bounds how
    /// long one request is retried.
    pub fn open(url: &str, retry_timeout: Duration) -> Result<Self> {
        install_crypto_provider();
        let bad = |e: &dyn std::fmt::Display| Error::Config(format!("storage URL `{url}`: {e}"));
        // The time budget bounds retries, not a count: a refused connection fails in
        // microseconds, and a few seconds of restart must not exhaust ten tries.
        let backoff = object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        };
        let retry = RetryConfig {
            retry_timeout,
            max_retries: usize::MAX,
            backoff,
        };
        let local = !is_url(url) || url.starts_with("file://");
        let local_root = local.then(|| PathBuf::from(url.strip_prefix("file://").unwrap_or(url)));
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = if local {
            let path = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
            std::fs::create_dir_all(&path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| bad(&e))?;
            (Arc::new(fs), ObjectPath::default())
        } else {
            // Exactly the schemes a job's schema accepts (case-sensitive, as there).
            let scheme = url.split("://").next().unwrap_or_default();
            if !janus_crds::url::SCHEMES.contains(&scheme) {
                return Err(bad(&format!(
                    "unsupported scheme `{scheme}` (use {} or a path)",
                    janus_crds::url::SCHEMES
                        .map(|s| format!("{s}://"))
                        .join(", ")
                )));
            }
            let parsed = url::Url::parse(url).map_err(|e| bad(&e))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(bad(&"no bucket or container after the scheme"));
            }
            let prefix = ObjectPath::from_url_path(parsed.path()).map_err(|e| bad(&e))?;
            let store: Arc<dyn ObjectStore> = match scheme {
                "s3" | "s3a" => Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_url(url)
                        .with_retry(retry)
                        .build()
                        .map_err(|e| bad(&e))?,
                ),
                "gs" => Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(url)
                        .with_retry(retry)
                        .build()
                        .map_err(|e| bad(&e))?,
                ),
                "az" | "abfs" | "abfss" => Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(url)
                        .with_retry(retry)
                        .build()
                        .map_err(|e| bad(&e))?,
                ),
                other => {
                    return Err(bad(&format!(
                        "unsupported scheme `{other}` (use s3://, gs://, az://, file:// or a path)"
                    )))
                }
            };
            (store, prefix)
        };
        Ok(Self {
            store,
            prefix,
            url: url.trim_end_matches('/').to_string(),
            local_root,
            rt: runtime()?,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A store for `rel` below this one.
    pub fn child(&self, rel: &str) -> Self {
        let mut s = self.clone();
        s.prefix = self.path(rel);
        s.url = format!("{}/{rel}", self.url);
        s.local_root = self.local_root.as_ref().map(|r| r.join(rel));
        s
    }

    /// The local directory of this store, when it is one.
    pub fn local_dir(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    fn path(&self, rel: &str) -> ObjectPath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }

    fn error(&self, rel: &str, what: &str, e: object_store::Error) -> Error {
        let url = format!("{}/{rel}", self.url);
        match e {
            object_store::Error::NotFound { .. } => Error::io(
                format!("{url}: {what}"),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such object"),
            ),
            other => Error::io(
                format!("{url}: {what}"),
                std::io::Error::other(concise(&other)),
            ),
        }
    }

    pub fn put_bytes(&self, rel: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(rel);
        self.rt
            .block_on(self.store.put(&path, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.error(rel, "upload", e))
    }

    /// Upload a local file with a multipart upload, several parts in flight.
    pub fn put_file(&self, rel: &str, local: &Path) -> Result<()> {
        let path = self.path(rel);
        let file = local.to_path_buf();
        let store = self.store.clone();
        self.rt
            .block_on(async move {
                let upload = store.put_multipart(&path).await?;
                let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                let mut f = tokio::fs::File::open(&file).await.map_err(|e| {
                    object_store::Error::Generic {
                        store: "local",
                        source: Box::new(e),
                    }
                })?;
                let mut buf = vec![0u8; PART_BYTES];
                loop {
                    use tokio::io::AsyncReadExt;
                    let n = f
                        .read(&mut buf)
                        .await
                        .map_err(|e| object_store::Error::Generic {
                            store: "local",
                            source: Box::new(e),
                        })?;
                    if n == 0 {
                        break;
                    }
                    w.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                    w.write(&buf[..n]);
                }
                w.finish().await.map(|_| ())
            })
            .map_err(|e| self.error(rel, &format!("uploading {}", local.display()), e))
    }

    pub fn get_bytes(&self, rel: &str) -> Result<Vec<u8>> {
        let path = self.path(rel);
        self.rt
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| self.error(rel, "download", e))
    }

    /// Download to a local file (written to a temporary name, then renamed).
    pub fn get_file(&self, rel: &str, local: &Path) -> Result<()> {
        self.get_file_hashed(rel, local).map(|_| ())
    }

    /// Download to a local file in ranged GETs (`RANGES_IN_FLIGHT` at a time), each
    /// range written and hashed as it arrives in order, so the file is checked without
    /// reading it again. Written to a temporary name, then renamed; returns the size
    /// and sha256.
    pub fn get_file_hashed(&self, rel: &str, local: &Path) -> Result<(u64, String)> {
        use futures::StreamExt;
        use std::io::Write;
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(parent.display().to_string(), e))?;
        }
        let tmp = local.with_extension("part");
        let path = self.path(rel);
        let size = self
            .rt
            .block_on(self.store.head(&path))
            .map_err(|e| self.error(rel, "download", e))?
            .size;
        let ranges: Vec<std::ops::Range<u64>> = (0..size.div_ceil(RANGE_BYTES))
            .map(|i| i * RANGE_BYTES..((i + 1) * RANGE_BYTES).min(size))
            .collect();
        let file =
            std::fs::File::create(&tmp).map_err(|e| Error::io(tmp.display().to_string(), e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Hasher::new();
        let mut got = 0u64;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes>>(RANGES_IN_FLIGHT);
        let this = self.clone();
        let rel_owned = rel.to_string();
        // Ranges download on the I/O runtime; this thread hashes and writes them in order.
        let task = self.rt.spawn(async move {
            let mut parts = futures::stream::iter(ranges)
                .map(|range| {
                    let this = this.clone();
                    let rel = rel_owned.clone();
                    async move {
                        let path = this.path(&rel);
                        this.store
                            .get_range(&path, range.clone())
                            .await
                            .map_err(|e| {
                                this.error(&rel, &format!("download of bytes {range:?}"), e)
                            })
                    }
                })
                .buffered(RANGES_IN_FLIGHT);
            while let Some(part) = parts.next().await {
                let failed = part.is_err();
                if tx.send(part).await.is_err() || failed {
                    break;
                }
            }
        });
        while let Some(part) = rx.blocking_recv() {
            let part = part?;
            hasher.update(part.clone());
            got += part.len() as u64;
            out.write_all(&part)
                .map_err(|e| Error::io(tmp.display().to_string(), e))?;
        }
        let _ = self.rt.block_on(task);
        if got != size {
            return Err(Error::io(
                format!("{}/{rel}", self.url),
                std::io::Error::other(format!("downloaded {got} of {size} bytes")),
            ));
        }
        out.flush()
            .map_err(|e| Error::io(tmp.display().to_string(), e))?;
        drop(out);
        std::fs::rename(&tmp, local).map_err(|e| Error::io(local.display().to_string(), e))?;
        Ok((size, hasher.finish(&format!("{}/{rel}", self.url))?))
    }

    /// A writer of the object `rel`: bytes are hashed as they are written and go to a
    /// local file directly, or to object storage as a multipart upload whose parts are
    /// sent while the caller produces the next ones (objects under one part are one
    /// PUT). Nothing is staged on disk.
    pub fn writer(&self, rel: &str) -> Result<ObjectWriter> {
        let url = format!("{}/{rel}", self.url);
        let sink = match &self.local_root {
            Some(root) => {
                let path = root.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Error::io(parent.display().to_string(), e))?;
                }
                let f = std::fs::File::create(&path)
                    .map_err(|e| Error::io(path.display().to_string(), e))?;
                Sink::File(std::io::BufWriter::with_capacity(1 << 20, f))
            }
            None => Sink::Upload(Box::new(Upload {
                store: self.clone(),
                rel: rel.to_string(),
                pending: Vec::new(),
                pending_bytes: 0,
                upload: None,
            })),
        };
        Ok(ObjectWriter {
            url,
            sink,
            hasher: Hasher::new(),
            bytes: 0,
        })
    }

    /// Ranged GETs of several objects at once (at most `in_flight` requests open),
    /// results in the order asked.
    pub fn get_ranges(
        &self,
        parts: &[(String, std::ops::Range<u64>)],
        in_flight: usize,
    ) -> Result<Vec<bytes::Bytes>> {
        self.spawn_get_ranges(parts.to_vec(), in_flight).wait()
    }

    /// `get_ranges` started in the background: the requests make progress while the
    /// caller does other work, until it `wait`s for them.
    pub fn spawn_get_ranges(
        &self,
        parts: Vec<(String, std::ops::Range<u64>)>,
        in_flight: usize,
    ) -> Pending<Vec<bytes::Bytes>> {
        let fetches: Vec<_> = parts
            .into_iter()
            .map(|(rel, range)| self.get_part(rel, range))
            .collect();
        self.spawn_in_order(fetches, in_flight)
    }

    /// `spawn_get_ranges` with `then(i, bytes)` run on part `i` as soon as it arrives,
    /// on the runtime's blocking threads: CPU work on the parts (checks, decoding)
    /// runs side by side and overlaps the transfers still in flight, instead of
    /// starting when the last part is in. Results keep the parts' order.
    pub fn spawn_get_ranges_then<R: Send + 'static>(
        &self,
        parts: Vec<(String, std::ops::Range<u64>)>,
        in_flight: usize,
        then: Arc<dyn Fn(usize, bytes::Bytes) -> Result<R> + Send + Sync>,
    ) -> Pending<Vec<R>> {
        let jobs: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(i, (rel, range))| {
                let (get, then) = (self.get_part(rel, range), then.clone());
                async move {
                    let got = get.await?;
                    tokio::task::spawn_blocking(move || then(i, got))
                        .await
                        .map_err(|e| {
                            Error::io(
                                "a download's decoding",
                                std::io::Error::other(e.to_string()),
                            )
                        })?
                }
            })
            .collect();
        self.spawn_in_order(jobs, in_flight)
    }

    fn get_part(
        &self,
        rel: String,
        range: std::ops::Range<u64>,
    ) -> impl std::future::Future<Output = Result<bytes::Bytes>> + Send + 'static {
        let this = self.clone();
        async move {
            let path = this.path(&rel);
            this.store
                .get_range(&path, range.clone())
                .await
                .map_err(|e| this.error(&rel, &format!("download of bytes {range:?}"), e))
        }
    }

    /// Run `jobs`, `in_flight` at a time, on the I/O runtime; results in order.
    fn spawn_in_order<R, F>(&self, jobs: Vec<F>, in_flight: usize) -> Pending<Vec<R>>
    where
        R: Send + 'static,
        F: std::future::Future<Output = Result<R>> + Send + 'static,
    {
        use futures::StreamExt;
        let task = self.rt.spawn(async move {
            futures::stream::iter(jobs)
                .buffered(in_flight.max(1))
                .try_collect::<Vec<_>>()
                .await
        });
        Pending {
            task,
            rt: self.rt.clone(),
        }
    }

    /// Upload local files side by side (each multipart, parts in flight), without
    /// hashing: the raw transfer a checkpoint upload is compared with.
    pub fn put_files(&self, files: &[(String, PathBuf)]) -> Result<()> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = files
                .iter()
                .map(|(rel, local)| scope.spawn(move || self.put_file(rel, local)))
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("upload thread"))
        })
    }

    /// Objects directly below `rel`: (name, size), sorted by name.
    pub fn list_objects(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        let path = self.path(rel);
        let listing = self
            .rt
            .block_on(self.store.list_with_delimiter(Some(&path)))
            .map_err(|e| self.error(rel, "listing", e))?;
        let mut out: Vec<(String, u64)> = listing
            .objects
            .iter()
            .filter_map(|o| Some((o.location.filename()?.to_string(), o.size)))
            .collect();
        out.sort();
        Ok(out)
    }

    pub fn exists(&self, rel: &str) -> Result<bool> {
        let path = self.path(rel);
        match self.rt.block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(rel, "checking", e)),
        }
    }

    /// Names directly below `rel` that are "directories" (common prefixes).
    pub fn list_dirs(&self, rel: &str) -> Result<Vec<String>> {
        let path = self.path(rel);
        let listing = self
            .rt
            .block_on(self.store.list_with_delimiter(Some(&path)))
            .map_err(|e| self.error(rel, "listing", e))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Delete every object below `rel`.
    pub fn delete_prefix(&self, rel: &str) -> Result<()> {
        let path = self.path(rel);
        self.rt
            .block_on(async {
                let objects: Vec<_> = self.store.list(Some(&path)).try_collect().await?;
                for o in objects {
                    self.store.delete(&o.location).await?;
                }
                Ok::<_, object_store::Error>(())
            })
            .map_err(|e| self.error(rel, "deleting", e))
    }

    /// Fail now, naming the URL, when the store cannot be listed (wrong credentials,
    /// missing bucket, unreachable endpoint), before any training work.
    pub fn check_access(&self) -> Result<()> {
        self.rt
            .block_on(async { self.store.list_with_delimiter(Some(&self.prefix)).await })
            .map(|_| ())
            .map_err(|e| {
                let msg = format!("{}: cannot access storage: {}", self.url, concise(&e));
                // Refused credentials will not get better by retrying: bad input.
                if msg.contains(" 403 ")
                    || msg.contains(" 401 ")
                    || matches!(
                        e,
                        object_store::Error::PermissionDenied { .. }
                            | object_store::Error::Unauthenticated { .. }
                    )
                {
                    Error::Config(format!("{msg} (check the storage credentials)"))
                } else {
                    Error::io(
                        msg,
                        std::io::Error::other("unreachable endpoint or missing bucket?"),
                    )
                }
            })
    }
}

enum Sink {
    File(std::io::BufWriter<std::fs::File>),
    Upload(Box<Upload>),
}

struct Upload {
    store: Store,
    rel: String,
    /// Bytes not yet handed to an upload (until the object outgrows one part).
    pending: Vec<bytes::Bytes>,
    pending_bytes: usize,
    upload: Option<WriteMultipart>,
}

/// One object being written (see `Store::writer`); `finish` completes it.
pub struct ObjectWriter {
    url: String,
    sink: Sink,
    hasher: Hasher,
    bytes: u64,
}

/// sha256 on a thread of its own, fed the very bytes being written (shared, not
/// copied), so hashing runs beside the write or upload instead of after it.
struct Hasher {
    tx: Option<std::sync::mpsc::SyncSender<bytes::Bytes>>,
    thread: Option<std::thread::JoinHandle<String>>,
}

impl Hasher {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(16);
        let thread = std::thread::Builder::new()
            .name("janus-sha256".into())
            .spawn(move || {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                for b in rx {
                    h.update(&b);
                }
                hex::encode(h.finalize())
            })
            .ok();
        Self {
            tx: Some(tx),
            thread,
        }
    }

    fn update(&mut self, b: bytes::Bytes) {
        if let Some(tx) = &self.tx {
            // A send fails only if the thread is gone; `finish` reports that.
            let _ = tx.send(b);
        }
    }

    fn finish(mut self, what: &str) -> Result<String> {
        self.tx.take();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .ok_or_else(|| {
                Error::io(
                    what.to_string(),
                    std::io::Error::other("hash thread failed"),
                )
            })
    }
}

/// An object written by `ObjectWriter::finish`: its size and sha256, and the upload
/// still completing in the background (`wait` for it before anything names it).
pub struct Written {
    pub bytes: u64,
    pub sha256: String,
    done: Option<Pending<()>>,
}

impl Written {
    pub fn wait(mut self) -> Result<(u64, String)> {
        if let Some(p) = self.done.take() {
            p.wait()?;
        }
        Ok((self.bytes, self.sha256))
    }
}

impl ObjectWriter {
    /// A writer of a local file (outside any store).
    pub fn local_file(path: &Path) -> Result<Self> {
        let f =
            std::fs::File::create(path).map_err(|e| Error::io(path.display().to_string(), e))?;
        Ok(Self {
            url: path.display().to_string(),
            sink: Sink::File(std::io::BufWriter::with_capacity(1 << 20, f)),
            hasher: Hasher::new(),
            bytes: 0,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Append a copy of `b` (small things: headers, JSON).
    pub fn write(&mut self, b: &[u8]) -> Result<()> {
        self.write_shared(bytes::Bytes::copy_from_slice(b))
    }

    /// Append `b` without copying it into a buffer: a file gets these very bytes by
    /// `write`, an upload sends them (a tensor's storage, kept alive by `b`) as part of
    /// a part, and the hash thread reads them at the same time.
    pub fn write_shared(&mut self, b: bytes::Bytes) -> Result<()> {
        use std::io::Write;
        // A part's worth at a time, so the hash keeps pace with the write.
        let mut rest = b;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(PART_BYTES));
            self.hasher.update(piece.clone());
            self.bytes += piece.len() as u64;
            match &mut self.sink {
                Sink::File(f) => f
                    .write_all(&piece)
                    .map_err(|e| Error::io(self.url.clone(), e))?,
                Sink::Upload(_) => self.push_upload(piece)?,
            }
        }
        Ok(())
    }

    fn push_upload(&mut self, piece: bytes::Bytes) -> Result<()> {
        let Sink::Upload(up) = &mut self.sink else {
            unreachable!("an upload sink")
        };
        let Upload {
            store,
            rel,
            pending,
            pending_bytes,
            upload,
        } = up.as_mut();
        if upload.is_none() {
            *pending_bytes += piece.len();
            pending.push(piece);
            if *pending_bytes < PART_BYTES {
                return Ok(());
            }
            let path = store.path(rel);
            let started = store
                .rt
                .block_on(store.store.put_multipart(&path))
                .map_err(|e| store.error(rel, "starting an upload", e))?;
            *upload = Some(WriteMultipart::new_with_chunk_size(started, PART_BYTES));
            let w = upload.as_mut().expect("just set");
            // Parts are spawned on the I/O runtime.
            let _rt = store.rt.enter();
            for p in pending.drain(..) {
                w.put(p);
            }
            return Ok(());
        }
        let w = upload.as_mut().expect("checked");
        store
            .rt
            .block_on(w.wait_for_capacity(PARTS_IN_FLIGHT))
            .map_err(|e| store.error(rel, "upload", e))?;
        let _rt = store.rt.enter();
        w.put(piece);
        Ok(())
    }

    /// Flush; the upload (if any) completes in the background.
    pub fn finish(self) -> Result<Written> {
        use std::io::Write;
        let sha256 = self.hasher.finish(&self.url)?;
        let done = match self.sink {
            Sink::File(mut f) => {
                f.flush().map_err(|e| Error::io(self.url.clone(), e))?;
                None
            }
            Sink::Upload(up) => {
                let Upload {
                    store,
                    rel,
                    pending,
                    upload,
                    ..
                } = *up;
                let this = store.clone();
                let task = store.rt.spawn(async move {
                    let r = match upload {
                        Some(w) => w.finish().await.map(|_| ()),
                        None => {
                            let path = this.path(&rel);
                            let payload: PutPayload = pending.into_iter().collect();
                            this.store.put(&path, payload).await.map(|_| ())
                        }
                    };
                    r.map_err(|e| this.error(&rel, "upload", e))
                });
                Some(Pending {
                    task,
                    rt: store.rt.clone(),
                })
            }
        };
        Ok(Written {
            bytes: self.bytes,
            sha256,
            done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The URLs a job's schema accepts open here, those it refuses do not (an `az://`
    /// URL needs its account from the environment, as a pod gets it from the job's
    /// `storageSecretRef`; without one the error says so).
    #[test]
    fn the_trainer_opens_exactly_the_urls_a_jobs_schema_accepts() {
        let tmp = tempfile::tempdir().unwrap();
        let mut wrong = vec![];
        for (u, accepted) in janus_crds::url::BOUNDARY_URLS {
            let local;
            let u = match u
                .strip_prefix("file://")
                .or_else(|| u.strip_prefix('/').map(|_| u))
            {
                // Local ones under a temporary directory (opening creates it).
                Some(p) => {
                    let prefix = if u.starts_with("file://") {
                        "file://"
                    } else {
                        ""
                    };
                    local = format!(
                        "{prefix}{}/{}",
                        tmp.path().display(),
                        p.trim_start_matches('/')
                    );
                    local.as_str()
                }
                None => u,
            };
            match (Store::open(u, Duration::from_secs(1)), accepted) {
                (Ok(_), true) | (Err(_), false) => {}
                (Err(e), true) if u.starts_with("az://") && e.to_string().contains("ccount") => {}
                (r, _) => wrong.push(format!(
                    "{u}: accepted by the schema: {accepted}, here: {:?}",
                    r.map(|s| s.url().to_string()).map_err(|e| e.to_string())
                )),
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
