//! The body of an image download: a byte range of an open file, read into one buffer that is
//! reused from the first chunk to the last.
//!
//! hyper queues a chunk until the socket has taken all of it and asks for the next one before
//! that; a reader that allocates a fresh chunk each time (ServeDir's) ends up with three or four
//! alive per download. Here the buffer is lent to hyper inside the `Bytes` of the chunk, comes
//! back when hyper drops them, and only then is the next chunk read: one buffer per download,
//! while the socket's send buffer keeps the wire busy in between. And when the download ends the
//! buffer goes back to a pool for the next one rather than to the allocator.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

/// The size of a download's buffer, so at most this times `--http-max-downloads` in all
/// (8 MiB at the default 128). With reads from the page cache done in place, 64, 128 and
/// 256 KiB streamed alike (bench/boot, a 300 MiB file to 50 and 200 clients, all within the
/// runs' spread); 64 KiB cost bench/storm's 1,000 machines 8 % more CPU than 256 KiB.
pub const CHUNK: usize = 64 * 1024;

/// The buffers of downloads that ended, for the next ones. There are never more of them than
/// downloads at once (`--http-max-downloads`): 8 MiB at most, kept. Freed and allocated again
/// for each of a storm's thousands of downloads instead, they left the allocator's heaps
/// fragmented: bench/storm's 1,000 machines peaked at 39-41 MiB instead of 35-37.
#[derive(Default)]
pub struct Buffers(Mutex<Vec<Vec<u8>>>);

impl Buffers {
    fn take(&self) -> Vec<u8> {
        self.lock().pop().unwrap_or_else(|| vec![0; CHUNK])
    }

    fn give(&self, buffer: Vec<u8>) {
        self.lock().push(buffer);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // The list stays valid whatever panicked while holding it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FileBody {
    file: Arc<File>,
    buffers: Arc<Buffers>,
    /// For the log line of a download cut short.
    path: Box<Path>,
    /// Where the next read starts.
    offset: u64,
    /// Bytes still to send: what the headers promised, less what has been handed to hyper.
    remaining: u64,
    buffer: Buffer,
    /// How long a chunk may stay with hyper, unsent: a client that stops reading would
    /// otherwise hold its download slot, and its buffer, for as long as it keeps the connection.
    stall: Duration,
    /// Runs out `stall` after the last chunk was lent.
    stalled: Pin<Box<Sleep>>,
}

enum Buffer {
    /// Here, free for the next read.
    Home(Vec<u8>),
    /// Moved into a read running on the blocking pool, which hands it back.
    Reading(JoinHandle<(Vec<u8>, io::Result<usize>)>),
    /// With hyper, inside the last chunk's `Bytes`; sent back when they are dropped. So a
    /// consumer gets the next chunk only once it has let go of this one, as hyper does.
    Lent(oneshot::Receiver<Vec<u8>>),
    /// An error was reported: the response is cut short and hyper closes the connection.
    Failed,
}

impl FileBody {
    pub fn new(
        (file, path): (File, PathBuf),
        offset: u64,
        len: u64,
        buffers: Arc<Buffers>,
        stall: Duration,
    ) -> Self {
        Self {
            file: Arc::new(file),
            buffer: Buffer::Home(buffers.take()),
            buffers,
            path: path.into_boxed_path(),
            offset,
            remaining: len,
            stall,
            stalled: Box::pin(tokio::time::sleep(stall)),
        }
    }
}

impl Drop for FileBody {
    fn drop(&mut self) {
        if let Buffer::Home(buffer) = std::mem::replace(&mut self.buffer, Buffer::Failed) {
            self.buffers.give(buffer);
        }
    }
}

/// A chunk's bytes, borrowed from the download's buffer; dropping them returns the buffer, to
/// the download, or to the pool when the download is gone (the client left).
struct Loan {
    buffer: Vec<u8>,
    len: usize,
    home: Option<oneshot::Sender<Vec<u8>>>,
    buffers: Arc<Buffers>,
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(home) = self.home.take()
            && let Err(buffer) = home.send(std::mem::take(&mut self.buffer))
        {
            self.buffers.give(buffer);
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            match &mut this.buffer {
                Buffer::Failed => return Poll::Ready(None),
                // The last chunk may still be with the consumer: it need not come back first.
                _ if this.remaining == 0 => return Poll::Ready(None),
                Buffer::Home(buffer) => {
                    let mut buffer = std::mem::take(buffer);
                    let want = usize::try_from(this.remaining)
                        .map_or(buffer.len(), |r| r.min(buffer.len()));
                    match read_cached(&this.file, &mut buffer[..want], this.offset) {
                        Some(read) => return this.lend(buffer, read),
                        None => {
                            let (file, offset) = (this.file.clone(), this.offset);
                            this.buffer = Buffer::Reading(tokio::task::spawn_blocking(move || {
                                let read = file.read_at(&mut buffer[..want], offset);
                                (buffer, read)
                            }));
                        }
                    }
                }
                Buffer::Reading(read) => match ready!(Pin::new(read).poll(cx)) {
                    Ok((buffer, read)) => return this.lend(buffer, read),
                    Err(e) => return this.fail(io::Error::other(e)),
                },
                Buffer::Lent(back) => match Pin::new(back).poll(cx) {
                    Poll::Ready(Ok(buffer)) => this.buffer = Buffer::Home(buffer),
                    // Only a `Loan` dropped without running its destructor gets here.
                    Poll::Ready(Err(e)) => return this.fail(io::Error::other(e)),
                    Poll::Pending => {
                        // hyper asks for the next chunk while the last one is still queued, and
                        // again when this timer wakes the connection, so the error reaches it.
                        ready!(this.stalled.as_mut().poll(cx));
                        let stall = this.stall;
                        return this.fail(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the client took no byte for {stall:?}"),
                        ));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 || matches!(self.buffer, Buffer::Failed)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A read that is served from the page cache, done here on the runtime's thread: it costs what
/// copying the chunk into the socket costs next, where a trip to the blocking pool costs two
/// thread wakeups and, at thousands of chunks a second, more threads (bench/storm: 449 with
/// 64 KiB chunks). None when the data is not in memory (or the filesystem cannot tell): the
/// read then goes to the blocking pool.
fn read_cached(file: &File, buffer: &mut [u8], offset: u64) -> Option<io::Result<usize>> {
    use rustix::io::{ReadWriteFlags, preadv2};
    match preadv2(
        file,
        &mut [io::IoSliceMut::new(buffer)],
        offset,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(n) => Some(Ok(n)),
        Err(_) => None,
    }
}

impl FileBody {
    /// Hands the bytes just read to hyper, the buffer with them.
    fn lend(
        &mut self,
        buffer: Vec<u8>,
        read: io::Result<usize>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let len = match read {
            Ok(0) => {
                self.buffers.give(buffer);
                return self.fail(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ended {} bytes early", self.remaining),
                ));
            }
            Ok(len) => len,
            Err(e) => {
                self.buffers.give(buffer);
                return self.fail(e);
            }
        };
        self.offset += len as u64;
        self.remaining -= len as u64;
        self.stalled.as_mut().reset(Instant::now() + self.stall);
        let (home, back) = oneshot::channel();
        self.buffer = Buffer::Lent(back);
        let chunk = Bytes::from_owner(Loan {
            buffer,
            len,
            home: Some(home),
            buffers: self.buffers.clone(),
        });
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    /// Ends the response early: hyper closes the connection, so the client sees fewer bytes
    /// than the Content-Length it was promised rather than a wrong file.
    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        tracing::warn!(
            path = %self.path.display(), offset = self.offset, error = %error,
            "images: download cut short"
        );
        self.buffer = Buffer::Failed;
        Poll::Ready(Some(Err(error)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use std::time::Duration;

    /// A consumer that keeps every chunk (one that buffers the whole body) still gets to the
    /// end of a range that fits in one buffer: the body does not wait for the last chunk to come
    /// back before saying it is done.
    #[tokio::test]
    async fn a_consumer_keeping_the_last_chunk_still_sees_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinuz");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = File::open(&path).unwrap();
        let mut body = FileBody::new((file, path), 2, 5, Arc::default(), Duration::from_secs(30));
        let mut kept = Vec::new();
        let all = async {
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                kept.push(frame.unwrap().into_data().unwrap());
            }
        };
        tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .expect("the body ended while its last chunk was kept");
        assert_eq!(kept.concat(), b"23456");
    }
}
