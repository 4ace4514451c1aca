//! Reading the node's own files (configuration, certificates, tokens, markers) as a hostile
//! folder might hold them: only a regular file is read, it is opened without blocking (a FIFO in
//! its place would hold the unit until systemd's timeout), and never past a bound (`/dev/zero`
//! behind a link would grow without end).

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// cluster-config.json, a certificate chain, a public key: a real one is a few KiB.
pub const MAX_TEXT: u64 = 1024 * 1024;
/// A token, a marker, a lock's PID.
pub const MAX_SMALL: u64 = 64 * 1024;

/// The whole file at `path`, at most `max` bytes. A folder, FIFO, socket or device is an
/// `InvalidInput` error and a longer file `FileTooLarge`, each saying so in its message.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// The file as UTF-8 text, under the same rules.
pub fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, max)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_bounded(&file, 5).unwrap(), b"12345");
        let err = read_bounded(&file, 4).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        let err = read_bounded(dir.path(), 4).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_bounded(&fifo, 4).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = read_bounded(Path::new("/dev/zero"), 4).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
