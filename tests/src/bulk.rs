//! Bulk TCP transfers with their bytes checked: a server that sends or
//! receives `len` bytes of a pseudo-random stream, and the client side of
//! both. For the paths where the kernel hands XDP merged (GRO) or
//! segmentation-offload packets far larger than the MTU.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread::JoinHandle,
    time::Duration,
};

/// Bytes per read/write; every transfer is a multiple of it.
pub const CHUNK: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// A reproducible byte stream (xorshift64), the same on both ends.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next `buf.len()` bytes (a multiple of 8).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_exact_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            word.copy_from_slice(&self.0.to_le_bytes());
        }
    }
}

const DOWNLOAD: u8 = b'D';
const UPLOAD: u8 = b'U';

/// Serves `connections` transfers on `listener`, one after the other:
/// a request is one byte (`D` or `U`), a seed and a length (8 bytes each,
/// little endian). `D` sends the stream; `U` reads it, compares, and
/// answers `OK` or `NO`.
pub fn serve(listener: TcpListener, connections: usize) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((mut stream, _)) = listener.accept() else { return };
            let _ = stream.set_read_timeout(Some(TIMEOUT));
            let _ = stream.set_write_timeout(Some(TIMEOUT));
            let mut head = [0_u8; 17];
            if stream.read_exact(&mut head).is_err() {
                continue;
            }
            let seed = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(head[9..17].try_into().expect("8 bytes"));
            let mut pattern = Pattern::new(seed);
            let mut buf = vec![0_u8; CHUNK];
            let mut expected = vec![0_u8; CHUNK];
            let chunks = len / CHUNK as u64;
            let _ = match head[0] {
                DOWNLOAD => (0..chunks).try_for_each(|_| {
                    pattern.fill(&mut buf);
                    stream.write_all(&buf)
                }),
                UPLOAD => {
                    let intact = (0..chunks).try_fold(true, |intact, _| {
                        stream.read_exact(&mut buf)?;
                        pattern.fill(&mut expected);
                        Ok::<_, std::io::Error>(intact && buf == expected)
                    });
                    match intact {
                        Ok(true) => stream.write_all(b"OK"),
                        Ok(false) => stream.write_all(b"NO"),
                        Err(e) => Err(e),
                    }
                }
                _ => Ok(()),
            };
        }
    })
}

fn request(to: SocketAddr, op: u8, seed: u64, len: u64) -> std::io::Result<TcpStream> {
    assert_eq!(len % CHUNK as u64, 0, "a transfer is whole chunks");
    let mut stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut head = [0_u8; 17];
    head[0] = op;
    head[1..9].copy_from_slice(&seed.to_le_bytes());
    head[9..17].copy_from_slice(&len.to_le_bytes());
    stream.write_all(&head)?;
    Ok(stream)
}

/// Downloads `len` bytes from the server at `to`; an error names the first
/// chunk that differs from the stream or the I/O failure.
pub fn download(to: SocketAddr, seed: u64, len: u64) -> std::io::Result<()> {
    let mut stream = request(to, DOWNLOAD, seed, len)?;
    let mut pattern = Pattern::new(seed);
    let (mut buf, mut expected) = (vec![0_u8; CHUNK], vec![0_u8; CHUNK]);
    for chunk in 0..len / CHUNK as u64 {
        stream.read_exact(&mut buf).map_err(|e| {
            std::io::Error::new(e.kind(), format!("after {} bytes: {e}", chunk * CHUNK as u64))
        })?;
        pattern.fill(&mut expected);
        if buf != expected {
            return Err(std::io::Error::other(format!(
                "bytes {}.. differ from what was sent",
                chunk * CHUNK as u64
            )));
        }
    }
    Ok(())
}

/// Uploads `len` bytes to the server at `to`, which compares them.
pub fn upload(to: SocketAddr, seed: u64, len: u64) -> std::io::Result<()> {
    let mut stream = request(to, UPLOAD, seed, len)?;
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0_u8; CHUNK];
    for chunk in 0..len / CHUNK as u64 {
        pattern.fill(&mut buf);
        stream.write_all(&buf).map_err(|e| {
            std::io::Error::new(e.kind(), format!("after {} bytes: {e}", chunk * CHUNK as u64))
        })?;
    }
    let mut verdict = [0_u8; 2];
    stream.read_exact(&mut verdict)?;
    if &verdict == b"OK" {
        Ok(())
    } else {
        Err(std::io::Error::other("the server received bytes that differ from what was sent"))
    }
}
